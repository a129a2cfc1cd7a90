"""`retvlp.lora_targets` selects exactly the intended LoRA layers of each tower (never the MaskedCLIP bridge unless
asked), a PEFT model built with it trains that tower only, and `check_lora_targets` names what a user's own
target list would really adapt."""

import copy
import re

import pytest
import torch
from conftest import make_tiny_config
from torch import nn

import retvlp
from retvlp import (
    KeepFitConfig,
    KeepFitForImageClassification,
    KeepFitModel,
    LoraTargetError,
    MaskedCLIPForImageClassification,
    MaskedCLIPForPreTraining,
    MaskedCLIPModel,
    check_lora_targets,
    lora_targets,
)
from retvlp.families import get_family

KEEPFIT = dict(
    vision_config={
        "model_type": "resnet",
        "embedding_size": 16,
        "hidden_sizes": [16, 32, 32, 64],
        "depths": [1, 1, 1, 1],
        "layer_type": "bottleneck",
    },
    text_config={
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "vocab_size": 400,  # the tiny_batch fixture's token ids
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    },
    projection_dim=16,
    codebook_size=64,
    code_dim=8,
)


# --------------------------------------------------------------------------- independent expectations
def vit_attention(model, root):
    """Linear q/k/v/o projections of the attention blocks under `root` (MaskedCLIP's ViT or bridge)."""
    return {
        name
        for name, module in model.named_modules()
        if name.startswith(f"{root}.")
        and isinstance(module, nn.Linear)
        and name.split(".")[-2] == "attention"
        and name.split(".")[-1] in {"q_proj", "k_proj", "v_proj", "o_proj"}
    }


def bert_attention(model, root):
    ends = (
        ".attention.self.query",
        ".attention.self.key",
        ".attention.self.value",
        ".attention.output.dense",
    )
    return {
        name
        for name, module in model.named_modules()
        if name.startswith(f"{root}.") and isinstance(module, nn.Linear) and name.endswith(ends)
    }


def resnet_blocks(model, root):
    """The convolutions of the residual blocks: every Conv2d of the encoder stages but the shortcuts."""
    return {
        name
        for name, module in model.named_modules()
        if name.startswith(f"{root}.encoder.stages.")
        and isinstance(module, nn.Conv2d)
        and ".shortcut." not in name
    }


def selected(model, targets):
    """What PEFT selects with a string `target_modules` (a full-match regex)."""
    return {name for name, _ in model.named_modules() if re.fullmatch(targets, name)}


def maskedclip_classifier():
    config = make_tiny_config().vision_config
    config.num_labels = 3
    return MaskedCLIPForImageClassification(config)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "maskedclip": MaskedCLIPModel(make_tiny_config()),
        "maskedclip_classifier": maskedclip_classifier(),
        "maskedclip_pretraining": MaskedCLIPForPreTraining(make_tiny_config()),
        "keepfit": KeepFitModel(KeepFitConfig(**KEEPFIT)),
        "keepfit_classifier": KeepFitForImageClassification(KeepFitConfig(**KEEPFIT, num_labels=3)),
    }


CASES = [
    # (model, towers, include_bridge, expected: model -> names)
    ("maskedclip", ("vision",), False, lambda m: vit_attention(m, "vision_model")),
    ("maskedclip", ("text",), False, lambda m: bert_attention(m, "text_model")),
    (
        "maskedclip",
        ("vision", "text"),
        False,
        lambda m: vit_attention(m, "vision_model") | bert_attention(m, "text_model"),
    ),
    (
        "maskedclip",
        ("image",),
        True,
        lambda m: vit_attention(m, "vision_model") | vit_attention(m, "bridge"),
    ),
    ("maskedclip_classifier", ("vision",), False, lambda m: vit_attention(m, "vision_model")),
    # the released model inside the pretraining model; its momentum encoder and decoders have q/k/v/o too
    ("maskedclip_pretraining", ("vision",), False, lambda m: vit_attention(m, "maskedclip.vision_model")),
    ("keepfit", ("vision",), False, lambda m: resnet_blocks(m, "vision_model")),
    ("keepfit", ("text",), False, lambda m: bert_attention(m, "text_model")),
    (
        "keepfit",
        ("vision", "text"),
        False,
        lambda m: resnet_blocks(m, "vision_model") | bert_attention(m, "text_model"),
    ),
    ("keepfit_classifier", ("vision",), False, lambda m: resnet_blocks(m, "vision_model")),
]


@pytest.mark.parametrize("name, towers, bridge, expected", CASES)
def test_the_targets_select_exactly_the_intended_modules(models, name, towers, bridge, expected):
    model = models[name]
    targets = lora_targets(model, towers=towers, include_bridge=bridge)
    want = expected(model)
    assert want and selected(model, targets) == want
    if not bridge:
        assert not any(".bridge." in f".{n}" or n.startswith("bridge.") for n in selected(model, targets))
    # the check accepts the helper's own targets for the towers they were made for
    check_lora_targets(model, targets, towers=towers, include_bridge=bridge)


@pytest.mark.parametrize(
    "name, config",
    [
        ("maskedclip", make_tiny_config()),
        ("keepfit", KeepFitConfig(**KEEPFIT)),
        ("maskedclip_classifier", make_tiny_config().vision_config),
    ],
)
def test_a_config_gives_the_targets_of_its_model(models, name, config):
    model = models[name]
    towers = ("vision",) if "classifier" in name else ("vision", "text")
    assert lora_targets(config, towers) == lora_targets(model, towers)


@pytest.mark.parametrize(
    "name, family", [("maskedclip_classifier", "maskedclip"), ("keepfit_classifier", "keepfit")]
)
def test_the_classifier_targets_are_the_fine_tuning_defaults(models, name, family):
    """`retvlp evaluate --task lora` adapts what lora_targets(classifier) names."""
    model = models[name]
    assert selected(model, lora_targets(model)) == selected(model, get_family(family).lora.target_modules)


def test_the_helper_is_a_lazy_root_export():
    assert retvlp.lora_targets is lora_targets and issubclass(LoraTargetError, ValueError)
    assert {"lora_targets", "check_lora_targets", "LoraTargetError"} <= set(retvlp.__all__)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("maskedclip_classifier", {"towers": "text"}, "has no text tower: it has vision"),
        ("keepfit", {"include_bridge": True}, "KeepFitModel has no bridge"),
        ("maskedclip", {"towers": ("audio",)}, "unknown tower 'audio'"),
        ("maskedclip", {"towers": ("bridge",)}, "include_bridge=True"),
        ("maskedclip", {"towers": ()}, "towers is empty"),
    ],
)
def test_the_helper_refuses_what_the_model_does_not_have(models, name, kwargs, message):
    with pytest.raises(LoraTargetError, match=re.escape(message)):
        lora_targets(models[name], **kwargs)


def test_the_helper_refuses_other_models():
    from transformers import BertConfig, BertModel

    bert = BertModel(
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    )
    with pytest.raises(LoraTargetError, match="not a retvlp MaskedCLIP or KeepFIT model"):
        lora_targets(bert)


# --------------------------------------------------------------------------- the named errors
@pytest.mark.parametrize(
    "name, targets, message",
    [
        # the PEFT guide's names: BERT's, so only the text tower of either dual encoder
        ("maskedclip", ["query", "value"], "adapt the text tower of MaskedCLIPModel"),
        ("keepfit", ["query", "value"], "adapt the text tower of KeepFitModel"),
        # the ViT's names: the bridge's too
        ("maskedclip", ["q_proj", "v_proj"], "also select the bridge of MaskedCLIPModel"),
        ("maskedclip", "all-linear", "also select the bridge"),
        # a regex of one tower on a dual encoder when both are meant (the default)
        (
            "keepfit",
            r"vision_model\.encoder\.stages\.\d+\.layers\.\d+\.layer\.\d+\.convolution",
            "adapt the vision tower",
        ),
        ("maskedclip", ["visual_projection"], "adapt no tower"),
    ],
)
def test_a_target_list_missing_a_tower_or_hitting_the_bridge_is_named(models, name, targets, message):
    with pytest.raises(LoraTargetError, match=re.escape(message)) as error:
        check_lora_targets(models[name], targets)
    assert "retvlp.lora_targets(model, towers=" in str(error.value)


def test_a_target_list_for_the_tower_meant_passes(models):
    matched = check_lora_targets(models["maskedclip"], ["query", "value"], towers="text")
    assert set(matched) == {"text"} and len(matched["text"]) == 2  # one text block: query and value
    with pytest.raises(LoraTargetError, match="adapt the text tower"):
        check_lora_targets(models["maskedclip"], ["query", "value"], towers="vision")


def test_targets_matching_nothing_in_the_classifier_list_its_names(models):
    with pytest.raises(LoraTargetError, match="match no module of MaskedCLIPForImageClassification") as error:
        check_lora_targets(models["maskedclip_classifier"], ["query", "value"])
    assert "vision_model.layers.N.attention.q_proj" in str(error.value)
    assert "retvlp.lora_targets(model, towers=('vision',))" in str(error.value)


def test_the_fine_tuning_path_raises_the_named_error(models):
    from retvlp.evaluation.finetune import FinetuneSettings, lora_wrap

    settings = FinetuneSettings(method="lora", lora_target_modules=["query", "value"])
    with pytest.raises(LoraTargetError, match="match no module"):
        lora_wrap(copy.deepcopy(models["keepfit_classifier"]), settings)


# --------------------------------------------------------------------------- PEFT trains the tower meant
def _step(model, batch):
    """One SGD step of the contrastive loss on the trainable (LoRA) parameters. Eval mode: BatchNorm statistics
    and dropout stay put, so only the adapted weights can change an output."""
    model.eval()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=0.5)
    model(**batch, return_loss=True).loss.backward()
    optimizer.step()


@pytest.mark.parametrize("name, tower", [("maskedclip", "vision"), ("keepfit", "text")])
def test_a_peft_model_built_with_the_targets_trains_that_tower_only(models, tiny_batch, name, tower):
    from peft import LoraConfig, get_peft_model

    original = copy.deepcopy(models[name]).eval()
    model = copy.deepcopy(original)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=lora_targets(model, towers=tower))
    peft_model = get_peft_model(model, config)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    root = {"vision": ".vision_model.", "text": ".text_model."}[tower]
    assert trainable and all("lora_" in n and root in n for n in trainable)
    batch = {key: tiny_batch[key] for key in ("pixel_values", "input_ids", "attention_mask")}
    _step(peft_model, batch)
    merged = peft_model.merge_and_unload().eval()
    with torch.no_grad():
        image = [
            m.get_image_features(pixel_values=batch["pixel_values"]).pooler_output for m in (original, merged)
        ]
        text = [
            m.get_text_features(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).pooler_output
            for m in (original, merged)
        ]
    changed, kept = (image, text) if tower == "vision" else (text, image)
    torch.testing.assert_close(kept[1], kept[0], rtol=0, atol=0)
    assert (changed[1] - changed[0]).abs().max() > 1e-6


def test_an_adapter_on_the_dual_encoder_loads_with_auto_peft_model_and_the_allowlist(models, tmp_path):
    """The docs' line: AutoPeftModel imports the base class (retvlp's) only when allow-listed."""
    from peft import AutoPeftModel, LoraConfig, get_peft_model

    models["maskedclip"].save_pretrained(tmp_path / "base")
    base = MaskedCLIPModel.from_pretrained(tmp_path / "base")
    targets = lora_targets(base, towers=("vision", "text"))
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=targets)).eval()
    with torch.no_grad():
        for parameter_name, parameter in peft_model.named_parameters():
            if "lora_B" in parameter_name:
                parameter.normal_(std=0.1)  # a trained-looking adapter: B starts at zero
    peft_model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match="import_allowlist"):
        AutoPeftModel.from_pretrained(tmp_path / "adapter")
    # the adapter card says so too
    from retvlp.model_card.render import render_adapter_card

    card = render_adapter_card(tmp_path / "adapter").text
    assert 'AutoPeftModel.from_pretrained(\n    "path/to/adapter", import_allowlist=["retvlp"]\n)' in card
    loaded = AutoPeftModel.from_pretrained(tmp_path / "adapter", import_allowlist=["retvlp"]).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.get_image_features(pixel_values=pixels).pooler_output,
            peft_model.get_image_features(pixel_values=pixels).pooler_output,
        )
