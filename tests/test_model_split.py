"""The released-model / pretraining-model split of both families: what each class holds, loading each
other's checkpoints (and the pre-split single-class layout), the Auto classes, CLIP semantics of the
released models, the output flags, and export / compile in eval mode."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_config
from safetensors.torch import save_file
from test_modeling_keepfit import tiny_config as keepfit_config
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from retvlp import (
    KeepFitForPreTraining,
    KeepFitModel,
    MaskedCLIPForImageClassification,
    MaskedCLIPForPreTraining,
    MaskedCLIPModel,
)

FAMILIES = {
    "maskedclip": (MaskedCLIPModel, MaskedCLIPForPreTraining, make_tiny_config, 32, 400),
    "keepfit": (KeepFitModel, KeepFitForPreTraining, keepfit_config, 64, 300),
}
PRETRAINING_ONLY = {
    "maskedclip": ("pixel_decoder.", "feature_decoder.", "momentum_vision_model.", "momentum_bridge."),
    "keepfit": ("semantic_attention.", "appearance_quantizer.", "appearance_attention."),
}


def _inputs(image_size, vocab, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch, 7, dtype=torch.long)
    attention_mask[1, 5:] = 0
    return dict(
        pixel_values=torch.randn(batch, 3, image_size, image_size, generator=generator),
        input_ids=torch.randint(5, vocab, (batch, 7), generator=generator),
        attention_mask=attention_mask,
    )


def _build(family, seed=0):
    released_class, pretraining_class, make_config, size, vocab = FAMILIES[family]
    torch.manual_seed(seed)
    return pretraining_class(make_config()), released_class, size, vocab


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", FAMILIES)
def test_released_model_holds_only_the_dual_encoder(family):
    pretraining, released_class, _, _ = _build(family)
    prefix = pretraining.base_model_prefix
    released = pretraining.released_model
    assert isinstance(released, released_class) and released is getattr(pretraining, prefix)
    assert not any(key.startswith(PRETRAINING_ONLY[family]) for key in released.state_dict())
    assert {key.split(".")[0] for key in released.state_dict()} >= {
        "vision_model",
        "text_model",
        "visual_projection",
        "text_projection",
        "logit_scale",
    }
    own = {key for key in pretraining.state_dict() if not key.startswith(prefix + ".")}
    assert own and all(key.startswith(PRETRAINING_ONLY[family]) for key in own)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_class_loads_the_others_checkpoint(family, tmp_path):
    pretraining, released_class, size, vocab = _build(family)
    pretraining.save_pretrained(tmp_path / "pretraining")
    pretraining.released_model.save_pretrained(tmp_path / "released")
    released_state = pretraining.released_model.state_dict()

    # Pretraining checkpoint → released model: the extra parts are left behind, nothing is missing.
    released, info = released_class.from_pretrained(tmp_path / "pretraining", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert _same_state(released.state_dict(), released_state)

    # Released checkpoint → pretraining model: the released parts load, the new parts are reported missing.
    loaded, info = type(pretraining).from_pretrained(tmp_path / "released", output_loading_info=True)
    assert info["missing_keys"] and all(k.startswith(PRETRAINING_ONLY[family]) for k in info["missing_keys"])
    assert _same_state(loaded.released_model.state_dict(), released_state)

    # A pretraining checkpoint round-trips completely (momentum encoder / codebook included).
    again, info = type(pretraining).from_pretrained(tmp_path / "pretraining", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert _same_state(again.state_dict(), pretraining.state_dict())

    inputs = _inputs(size, vocab)
    released.eval()
    pretraining.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            released(**inputs).logits_per_image, pretraining.released_model(**inputs).logits_per_image
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_pre_split_checkpoints_still_load(family, tmp_path):
    """Checkpoints written before the split had one flat layout (released parts and pretraining parts side by
    side at the top level); they load into both classes, through from_pretrained and load_state_dict."""
    pretraining, released_class, _, _ = _build(family)
    prefix = pretraining.base_model_prefix + "."
    legacy = {
        key.removeprefix(prefix): value.contiguous()
        for key, value in pretraining.state_dict().items()
        if not key.startswith(("momentum_vision_model.", "momentum_bridge."))  # never in a pre-split release
    }
    folder = tmp_path / "legacy"
    folder.mkdir()
    save_file(legacy, folder / "model.safetensors", metadata={"format": "pt"})
    pretraining.config.save_pretrained(folder)

    loaded, info = type(pretraining).from_pretrained(folder, output_loading_info=True)
    assert not info["unexpected_keys"]
    assert all(key.startswith(("momentum_vision_model.", "momentum_bridge.")) for key in info["missing_keys"])
    assert _same_state(loaded.state_dict(), pretraining.state_dict())  # M̂ rebuilt as the copy it was

    released, info = released_class.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"]
    assert _same_state(released.state_dict(), pretraining.released_model.state_dict())

    # accelerate's load_state reads a plain state dict into the pretraining model
    fresh, _, _, _ = _build(family, seed=1)
    full_legacy = {**legacy}
    full_legacy.update({k: v for k, v in pretraining.state_dict().items() if k.startswith("momentum_")})
    fresh.load_state_dict(full_legacy)
    assert _same_state(fresh.state_dict(), pretraining.state_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_classes_load_either_checkpoint_kind(family, tmp_path):
    pretraining, released_class, _, _ = _build(family)
    pretraining.save_pretrained(tmp_path / "pretraining")
    pretraining.released_model.save_pretrained(tmp_path / "released")
    for kind in ("pretraining", "released"):
        assert type(AutoModel.from_pretrained(tmp_path / kind)) is released_class
        assert type(AutoModelForPreTraining.from_pretrained(tmp_path / kind)) is type(pretraining)
        classifier = AutoModelForImageClassification.from_pretrained(
            tmp_path / kind, num_labels=3, id2label={0: "a", 1: "b", 2: "c"}
        )
        assert classifier.config.num_labels == 3 and classifier.config.id2label[2] == "c"
        assert torch.equal(
            classifier.vision_model.state_dict()[next(iter(classifier.vision_model.state_dict()))],
            pretraining.released_model.vision_model.state_dict()[
                next(iter(pretraining.released_model.vision_model.state_dict()))
            ],
        )
    auto_map = json.loads((tmp_path / "released" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"].endswith(f"{released_class.__name__}")
    assert auto_map["AutoModelForPreTraining"].endswith(type(pretraining).__name__)


def test_maskedclip_classifier_from_a_checkpoint_takes_the_vision_part(tmp_path):
    pretraining, _, _, _ = _build("maskedclip")
    pretraining.released_model.save_pretrained(tmp_path)
    classifier = AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=2)
    assert type(classifier) is MaskedCLIPForImageClassification
    assert classifier.config.model_type == "maskedclip_vision_model"
    vision_state = pretraining.released_model.vision_model.state_dict()
    assert _same_state(classifier.vision_model.state_dict(), vision_state)


def _plain_clip_loss(image_embeds, text_embeds, scale):
    logits = scale * image_embeds @ text_embeds.t()
    target = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


@pytest.mark.parametrize("family", FAMILIES)
def test_released_model_has_clip_semantics(family):
    pretraining, _, size, vocab = _build(family)
    model = pretraining.released_model
    model.train()  # the loss depends on return_loss only, never on the mode
    inputs = _inputs(size, vocab)
    with torch.no_grad():
        plain = model(**inputs)
        assert plain.loss is None and plain.logits_per_image.shape == (3, 3)
        out = model(**inputs, return_loss=True)
    scale = model.clamped_logit_scale()
    expected = _plain_clip_loss(out.image_embeds, out.text_embeds, scale)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(3))
    # the tower outputs travel with the embeddings; the probe feature is the vision pooler output
    assert out.vision_model_output.pooler_output.shape[0] == 3
    assert out.text_model_output.last_hidden_state.shape[:2] == (3, 7)
    with torch.no_grad():
        # labels make pairs of one category positives of each other (L_lg_clip): all-equal labels ≠ CLIP
        guided = model(**inputs, return_loss=True, labels=torch.tensor([0, 0, 0])).loss
    assert not torch.allclose(guided, expected)
    with pytest.raises(ValueError, match="one text per image"):
        model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"][:2], return_loss=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_output_flags_and_return_dict_come_from_arguments_and_config(family):
    pretraining, _, size, vocab = _build(family)
    model = pretraining.released_model.eval()
    inputs = _inputs(size, vocab)
    with torch.no_grad():
        bare = model(**inputs)
        assert bare.vision_model_output.hidden_states is None
        assert bare.text_model_output.hidden_states is None
        flagged = model(**inputs, output_hidden_states=True, output_attentions=True)
        assert flagged.vision_model_output.hidden_states is not None
        assert flagged.text_model_output.hidden_states is not None
        assert (
            flagged.text_model_output.attentions is not None or model.config._attn_implementation != "eager"
        )
        model.config.output_hidden_states = True
        assert model(**inputs).vision_model_output.hidden_states is not None
        model.config.output_hidden_states = False
        model.config.return_dict = False
        as_tuple = model(**inputs)
        assert isinstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[0], bare.logits_per_image)
        assert isinstance(model.get_image_features(inputs["pixel_values"]), tuple)
        model.config.return_dict = True
        features = model.get_image_features(inputs["pixel_values"], output_hidden_states=True)
        assert features.hidden_states is not None


def test_maskedclip_vit_returns_attentions_in_eager_mode():
    pretraining, _, size, vocab = _build("maskedclip")
    model = pretraining.released_model.eval()
    model.set_attn_implementation("eager")
    # every sub-module switched, the plain-module ViT towers included
    implementations = {
        module.config._attn_implementation
        for module in model.modules()
        if hasattr(getattr(module, "config", None), "_attn_implementation")
    }
    assert implementations == {"eager"}, implementations
    with torch.no_grad():
        out = model(**_inputs(size, vocab), output_attentions=True)
    attentions = out.vision_model_output.attentions
    layers = model.config.vision_config.num_hidden_layers
    assert len(attentions) == layers
    tokens = 1 + model.config.vision_config.num_patches
    assert attentions[0].shape == (3, model.config.vision_config.num_attention_heads, tokens, tokens)
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(attentions[0].shape[:-1]))
    assert len(out.text_model_output.attentions) == model.config.text_config.num_hidden_layers


@pytest.mark.parametrize("family", FAMILIES)
def test_released_models_export_in_eval_mode(family):
    """torch.export traces the whole forward (no host sync or data-dependent branch in it); the exported
    program gives the eager outputs, on a padded text batch too."""
    pretraining, _, size, vocab = _build(family)
    model = pretraining.released_model.eval()
    inputs = _inputs(size, vocab)
    program = torch.export.export(model, (), kwargs=inputs, strict=False)
    with torch.no_grad():
        expected = model(**inputs).logits_per_image
    torch.testing.assert_close(program.module()(**inputs).logits_per_image, expected)


def test_maskedclip_feature_decoder_copy_does_not_leak_between_configs():
    pretraining, _, _, _ = _build("maskedclip")
    pretraining.set_attn_implementation("eager")
    assert pretraining.config.vision_config._attn_implementation == "eager"
    pretraining.set_attn_implementation("sdpa")
    decoder_layer = pretraining.pixel_decoder.decoder_layers[0]
    assert decoder_layer.attention.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", FAMILIES)
def test_pretraining_forward_always_returns_the_loss(family):
    pretraining, _, size, vocab = _build(family)
    pretraining.eval()
    inputs = _inputs(size, vocab)
    if family == "keepfit":
        elite = _inputs(size, vocab, batch=2, seed=1)
        inputs.update({f"elite_{k}": v for k, v in elite.items()}, labels=torch.tensor([0, 1, 0]))
    with torch.no_grad():
        out = pretraining(**inputs)
    assert out.loss is not None and torch.isfinite(out.loss)


def test_keepfit_building_a_model_reads_no_files(tmp_path, caplog):
    """The codebook path in a config is provenance: the pretraining side loads it (load_codebook)."""
    config = keepfit_config(ibq_tokenizer_path=str(tmp_path / "missing"))
    KeepFitForPreTraining(config)  # no FileNotFoundError: construction does not read it
    KeepFitModel(config)
    with pytest.raises(FileNotFoundError, match="missing"):
        KeepFitForPreTraining(config).load_codebook(config.ibq_tokenizer_path)


CODE_FILES = {
    "maskedclip": {
        "configuration_maskedclip.py",
        "configuration_support.py",
        "modeling_maskedclip.py",
        "loss_maskedclip.py",
        "contrastive.py",
        "modeling_common.py",
        "modeling_support.py",
        "vit_blocks.py",
    },
    "keepfit": {
        "configuration_keepfit.py",
        "configuration_support.py",
        "modeling_keepfit.py",
        "loss_keepfit.py",
        "contrastive.py",
        "modeling_common.py",
        "modeling_support.py",
        "quantization_ibq.py",
        "resnet_blocks.py",
    },
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["released", "pretraining"])
def test_checkpoints_carry_exactly_the_code_they_import(family, kind, tmp_path):
    """Set equality: no converter (convert_retfound.py, convert_flair.py) or unrelated file rides along."""
    pretraining, _, _, _ = _build(family)
    model = pretraining.released_model if kind == "released" else pretraining
    model.save_pretrained(tmp_path)
    saved = {path.name for path in tmp_path.iterdir()}
    assert saved == CODE_FILES[family] | {"config.json", "model.safetensors"}


def test_resume_refuses_a_pre_split_training_checkpoint(tmp_path):
    from retvlp.training.checkpointing import check_model_layout

    pretraining, _, _, _ = _build("maskedclip")
    flat = {k.removeprefix("maskedclip."): v.contiguous() for k, v in pretraining.state_dict().items()}
    save_file(flat, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="before the released / pretraining model split"):
        check_model_layout(pretraining, tmp_path)
    save_file(
        {k: v.contiguous() for k, v in pretraining.state_dict().items()}, tmp_path / "model.safetensors"
    )
    check_model_layout(pretraining, tmp_path)  # today's layout resumes


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_keepfit_resnet_activation_checkpointing_keeps_gradients_and_batch_norm_statistics(use_reentrant):
    """Checkpointed ResNet stages: the same loss, gradients and running BatchNorm statistics as without."""
    from retvlp import KeepFitForImageClassification

    config = keepfit_config(num_labels=3)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(4, 3, 64, 64, generator=generator)
    labels = torch.tensor([0, 1, 2, 1])

    def one_step(checkpointing: bool):
        torch.manual_seed(0)
        model = KeepFitForImageClassification(config).train()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        pixel_values = pixels.clone().requires_grad_(use_reentrant)  # reentrant needs an input with grad
        loss = model(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        return loss.detach(), grads, buffers

    loss, grads, buffers = one_step(False)
    loss_ckpt, grads_ckpt, buffers_ckpt = one_step(True)
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)
    for name in buffers:  # running_mean / running_var / num_batches_tracked moved once, as without
        torch.testing.assert_close(buffers_ckpt[name], buffers[name], msg=name)


REMOTE_SCRIPT = """
import json, sys
sys.modules["retvlp"] = None  # only the checkpoints' own code may run
import torch
from transformers import AutoModel, AutoModelForImageClassification, AutoModelForPreTraining


def either_kind(pretraining_dir, released_dir, size, vocab):
    g = torch.Generator().manual_seed(0)
    inputs = dict(pixel_values=torch.randn(2, 3, size, size, generator=g),
                  input_ids=torch.randint(5, vocab, (2, 7), generator=g))
    report = {}
    for name, directory in (("pretraining", pretraining_dir), ("released", released_dir)):
        released = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
        full = AutoModelForPreTraining.from_pretrained(directory, trust_remote_code=True).eval()
        with torch.no_grad():
            report[name] = dict(
                released_class=type(released).__name__, pretraining_class=type(full).__name__,
                module=type(full).__module__, logits=released(**inputs).logits_per_image.tolist(),
                inner_logits=full.released_model(**inputs).logits_per_image.tolist(),
            )
    return report


def classifier(directory):
    model = AutoModelForImageClassification.from_pretrained(
        directory, trust_remote_code=True, num_labels=3, drop_path_rate=0.1
    )
    return dict(cls=type(model).__name__, module=type(model).__module__, labels=model.config.num_labels,
                drop_path=model.config.drop_path_rate,
                cls_token=model.vision_model.embeddings.cls_token.flatten().tolist())


jobs = json.loads(sys.argv[1])
print(json.dumps({key: globals()[job](*args) for key, (job, args) in jobs.items()}))
"""


@pytest.fixture(scope="module")
def remote_loads(tmp_path_factory):
    """Every remote-code load of this module in one interpreter that cannot import retvlp (one start-up of
    torch and transformers instead of three): the built models and what the subprocess reported."""
    from conftest import run_without_retvlp

    tmp_path = tmp_path_factory.mktemp("remote")
    built, jobs = {}, {}
    for family in FAMILIES:
        pretraining, released_class, size, vocab = _build(family)
        pretraining.save_pretrained(tmp_path / family / "pretraining")
        pretraining.released_model.save_pretrained(tmp_path / family / "released")
        built[family] = (pretraining, released_class, size, vocab)
        folders = [str(tmp_path / family / kind) for kind in ("pretraining", "released")]
        jobs[family] = ("either_kind", [*folders, size, vocab])
    jobs["classifier"] = ("classifier", [str(tmp_path / "maskedclip" / "released")])
    return built, run_without_retvlp(REMOTE_SCRIPT, tmp_path, json.dumps(jobs)), tmp_path


@pytest.mark.parametrize("family", FAMILIES)
def test_either_checkpoint_kind_loads_as_remote_code_without_retvlp(family, remote_loads):
    built, reports, _ = remote_loads
    pretraining, released_class, size, vocab = built[family]
    generator = torch.Generator().manual_seed(0)
    inputs = dict(
        pixel_values=torch.randn(2, 3, size, size, generator=generator),
        input_ids=torch.randint(5, vocab, (2, 7), generator=generator),
    )
    with torch.no_grad():
        expected = pretraining.released_model.eval()(**inputs).logits_per_image
    for kind in ("pretraining", "released"):
        entry = reports[family][kind]
        assert entry["released_class"] == released_class.__name__
        assert entry["pretraining_class"] == type(pretraining).__name__
        assert not entry["module"].startswith("retvlp")
        torch.testing.assert_close(torch.tensor(entry["logits"]), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(entry["inner_logits"]), expected, atol=1e-5, rtol=1e-4)


def test_maskedclip_checkpoint_builds_a_classifier_as_remote_code_with_vision_settings(remote_loads):
    built, reports, tmp_path = remote_loads
    pretraining = built["maskedclip"][0]
    report = reports["classifier"]
    assert report["cls"] == "MaskedCLIPForImageClassification" and not report["module"].startswith("retvlp")
    assert report["labels"] == 3 and report["drop_path"] == 0.1
    expected = pretraining.released_model.vision_model.embeddings.cls_token.flatten()
    torch.testing.assert_close(torch.tensor(report["cls_token"]), expected)
    # the same with retvlp imported; vision settings the full config does not know reach the vision config
    local = AutoModelForImageClassification.from_pretrained(
        tmp_path / "maskedclip" / "released", num_labels=3, drop_path_rate=0.1, pooling="cls"
    )
    assert type(local) is MaskedCLIPForImageClassification
    assert local.config.drop_path_rate == 0.1 and local.config.pooling == "cls"


@pytest.mark.parametrize("family", FAMILIES)
def test_pretraining_forward_honours_return_dict_false_from_the_config(family):
    pretraining, _, size, vocab = _build(family)
    inputs = _inputs(size, vocab)
    if family == "keepfit":
        elite = _inputs(size, vocab, batch=2, seed=1)
        inputs.update({f"elite_{k}": v for k, v in elite.items()})
    else:  # the same MAE masks in both calls
        inputs["noise"] = torch.rand(3, pretraining.config.vision_config.num_patches)
    pretraining.eval()
    with torch.no_grad():
        expected = pretraining(**inputs).loss
        pretraining.config.return_dict = False
        as_tuple = pretraining(**inputs)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_card_names_the_class_the_weights_were_saved_from(family, tmp_path):
    from retvlp.model_card import render_model_card

    pretraining, released_class, _, _ = _build(family)
    pretraining.save_pretrained(tmp_path / "pretraining")
    pretraining.released_model.save_pretrained(tmp_path / "released")
    released_card = str(render_model_card(tmp_path / "released"))
    pretraining_card = str(render_model_card(tmp_path / "pretraining"))
    assert f"These weights are `{released_class.__name__}`" in released_card
    assert f"These weights are `{type(pretraining).__name__}`" in pretraining_card


def test_keepfit_pretraining_returns_the_prompt_attentions_when_asked():
    pretraining, _, size, vocab = _build("keepfit")
    pretraining.set_attn_implementation("eager")
    inputs = _inputs(size, vocab)
    elite = _inputs(size, vocab, batch=2, seed=1)
    inputs.update({f"elite_{k}": v for k, v in elite.items()})
    with torch.no_grad():
        assert pretraining(**inputs).attentions is None
        attentions = pretraining(**inputs, output_attentions=True).attentions
    assert len(attentions) == pretraining.config.text_config.num_hidden_layers
    assert attentions[0].shape[:2] == (3, pretraining.config.text_config.num_attention_heads)
