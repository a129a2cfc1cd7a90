"""Tests for the FLAIR / KeepFIT V1 converter (→ KeepFitModel, or KeepFitForPreTraining with V1's attention).

The checkpoint is built here with FLAIR's names for a small torchvision-layout bottleneck ResNet (stem 16, planes
[4, 8, 8, 16] × 4, depths [1, 2, 1, 1]: identity and projection shortcuts, strided stages) and a tiny BERT. The
vision reference is a functional torchvision ResNet forward written against the torchvision names, so a wrong
mapping, a stride on the wrong convolution or a missing shortcut shows up as an output mismatch.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import AutoModel, BertConfig, BertModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from retvlp import KeepFitForPreTraining, KeepFitModel  # noqa: E402
from retvlp.keepfit.convert_flair import (  # noqa: E402
    UNKNOWN,
    convert_flair_state_dict,
    infer_flair_config_kwargs,
    load_flair_checkpoint,
    main,
)

STEM, PLANES, DEPTHS, EXPANSION = 16, [4, 8, 8, 16], [1, 2, 1, 1], 4
OUTS = [p * EXPANSION for p in PLANES]  # [16, 32, 32, 64]
PROJ = 16
TEXT = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    max_position_embeddings=40,
)
HEADS_OVERRIDE = {"text_config": {"num_attention_heads": 2}}  # 32 / 64 is not a head count


class NotATensor:
    """A picklable object that torch.load(weights_only=True) must refuse."""

    def __init__(self):
        self.payload = [1, 2, 3]


# --------------------------------------------------------------------------------------------------
# A random FLAIR-style state dict
# --------------------------------------------------------------------------------------------------
def _vision_state_dict(g: torch.Generator) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}

    def conv(name, out, inp, k):
        sd[f"{name}.weight"] = torch.randn(out, inp, k, k, generator=g) * math.sqrt(1.0 / (inp * k * k))

    def bn(name, c):
        sd[f"{name}.weight"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(123)

    conv("conv1", STEM, 3, 7)
    bn("bn1", STEM)
    inplanes = STEM
    for s, (planes, depth) in enumerate(zip(PLANES, DEPTHS, strict=True)):
        for b in range(depth):
            p = f"layer{s + 1}.{b}"
            stride = 2 if s > 0 and b == 0 else 1
            conv(f"{p}.conv1", planes, inplanes, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * EXPANSION, planes, 1)
            bn(f"{p}.bn3", planes * EXPANSION)
            if stride != 1 or inplanes != planes * EXPANSION:  # torchvision's rule
                conv(f"{p}.downsample.0", planes * EXPANSION, inplanes, 1)
                bn(f"{p}.downsample.1", planes * EXPANSION)
            inplanes = planes * EXPANSION
    sd["fc.weight"] = torch.randn(10, OUTS[-1], generator=g)  # FLAIR sets fc = Identity; must be ignored
    sd["fc.bias"] = torch.randn(10, generator=g)
    return sd


def _reference_bert(text_sd: dict[str, torch.Tensor]) -> BertModel:
    bert = BertModel(BertConfig(**TEXT), add_pooling_layer=True).eval()
    bert.load_state_dict({k: v for k, v in text_sd.items() if k != "embeddings.position_ids"})
    return bert


@pytest.fixture(scope="module")
def flair():
    """(state dict with FLAIR names, its vision part without prefix, its BERT part without prefix)."""
    g = torch.Generator().manual_seed(0)
    vision = _vision_state_dict(g)
    torch.manual_seed(1)
    bert = BertModel(BertConfig(**TEXT), add_pooling_layer=True)
    with torch.no_grad():
        for param in bert.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=g))
    text = {k: v.detach().clone() for k, v in bert.state_dict().items()}
    text["embeddings.position_ids"] = torch.arange(TEXT["max_position_embeddings"])[None]  # old transformers
    sd = {f"vision_model.model.{k}": v for k, v in vision.items()}
    sd |= {f"text_model.model.{k}": v for k, v in text.items()}
    sd["vision_model.projection_head_vision.projection.weight"] = torch.randn(PROJ, OUTS[-1], generator=g)
    sd["text_model.projection_head_text.projection.weight"] = torch.randn(
        PROJ, TEXT["hidden_size"], generator=g
    )
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07) - 0.25)
    for x in "qkvo":
        sd[f"attention.W_{x}.weight"] = torch.randn(PROJ, PROJ, generator=g) / math.sqrt(PROJ)
    return sd, vision, text


@pytest.fixture(scope="module")
def converted(flair):
    """The KeepFIT V1 checkpoint (with its semantic attention) as a KeepFitForPreTraining."""
    model, report = load_flair_checkpoint(flair[0], **HEADS_OVERRIDE)
    return model, report


# --------------------------------------------------------------------------------------------------
# References written against the FLAIR / torchvision names
# --------------------------------------------------------------------------------------------------
def torchvision_resnet(w: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's ResNet-v1.5 bottleneck forward in eval mode: (last feature map, pooled features)."""

    def bn(t, name):
        return F.batch_norm(
            t,
            w[f"{name}.running_mean"],
            w[f"{name}.running_var"],
            w[f"{name}.weight"],
            w[f"{name}.bias"],
            training=False,
            eps=1e-5,
        )

    x = F.relu(bn(F.conv2d(x, w["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for s, depth in enumerate(DEPTHS):
        for b in range(depth):
            p = f"layer{s + 1}.{b}"
            stride = 2 if s > 0 and b == 0 else 1
            out = F.relu(bn(F.conv2d(x, w[f"{p}.conv1.weight"]), f"{p}.bn1"))
            out = F.relu(bn(F.conv2d(out, w[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn2"))
            out = bn(F.conv2d(out, w[f"{p}.conv3.weight"]), f"{p}.bn3")
            if f"{p}.downsample.0.weight" in w:
                identity = bn(F.conv2d(x, w[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            else:
                identity = x
            x = F.relu(out + identity)
    return x, x.mean(dim=(2, 3))


def keepfit_v1_attention(sd, query, key, value, heads=2):
    """KeepFIT V1's MultiHeadAttention (eval mode). Its `softmax(scores)` has no `dim`; for a 3-d tensor torch
    then normalises over dim 0, the heads."""

    def split(x):  # (n, d) -> (heads, n, d / heads)
        return x.reshape(x.shape[0], heads, -1).permute(1, 0, 2)

    q = split(query @ sd["attention.W_q.weight"].T)
    k = split(key @ sd["attention.W_k.weight"].T)
    v = split(value @ sd["attention.W_v.weight"].T)
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=0)
    mixed = (weights @ v).permute(1, 0, 2).reshape(query.shape[0], -1)
    return mixed @ sd["attention.W_o.weight"].T


def _assert_same_weights(model_a, model_b):
    a, b = model_a.state_dict(), model_b.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------------------------------
# (1) vision tower
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True])
def test_vision_tower_reproduces_torchvision_resnet(flair, converted, channels_last):
    sd, vision, _ = flair
    model = converted[0].released_model
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    expected_map, expected_pooled = torchvision_resnet(vision, pixels)
    assert expected_map.shape == (2, OUTS[-1], 2, 2)

    inputs = pixels.contiguous(memory_format=torch.channels_last) if channels_last else pixels
    with torch.no_grad():
        out = model.vision_model(pixel_values=inputs)
    torch.testing.assert_close(out.last_hidden_state, expected_map, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pooler_output.flatten(1), expected_pooled, atol=1e-5, rtol=0)

    # The whole image path: FLAIR's projection head is normalise -> linear -> normalise.
    default = model.config.vision_channels_last
    model.config.vision_channels_last = channels_last
    try:
        with torch.no_grad():
            embeds = F.normalize(model.get_image_features(pixels).pooler_output, dim=-1)
    finally:
        model.config.vision_channels_last = default
    weight = sd["vision_model.projection_head_vision.projection.weight"]
    expected_embeds = F.normalize(F.normalize(expected_pooled, dim=-1) @ weight.T, dim=-1)
    torch.testing.assert_close(embeds, expected_embeds, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# (2) text tower, projections, logit scale, attention
# --------------------------------------------------------------------------------------------------
def test_text_tower_matches_bert_and_flair_pooling(flair, converted):
    sd, _, text = flair
    model = converted[0].released_model
    bert = _reference_bert(text)
    g = torch.Generator().manual_seed(4)
    input_ids = torch.randint(1, TEXT["vocab_size"], (3, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 4:] = 0
    with torch.no_grad():
        ours = model.text_model(input_ids=input_ids, attention_mask=attention_mask)
        ref = bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        embeds = F.normalize(model.get_text_features(input_ids, attention_mask).pooler_output, dim=-1)
    torch.testing.assert_close(ours.last_hidden_state, ref.last_hidden_state, atol=1e-5, rtol=0)

    # FLAIR's TextModel: layers 1, 2, -1 averaged over ALL positions (padding included), then the projection head.
    hidden = ref.hidden_states
    pooled = torch.stack([hidden[1], hidden[2], hidden[-1]]).permute(1, 0, 2, 3).mean(2).mean(1)
    weight = sd["text_model.projection_head_text.projection.weight"]
    expected = F.normalize(F.normalize(pooled, dim=-1) @ weight.T, dim=-1)
    torch.testing.assert_close(embeds, expected, atol=1e-5, rtol=0)


def test_projections_logit_scale_and_attention(flair, converted):
    sd, _, _ = flair
    model, _ = converted
    assert type(model) is KeepFitForPreTraining
    released = model.released_model
    assert torch.equal(
        released.visual_projection.weight, sd["vision_model.projection_head_vision.projection.weight"]
    )
    assert torch.equal(
        released.text_projection.weight, sd["text_model.projection_head_text.projection.weight"]
    )
    assert torch.equal(released.logit_scale, sd["logit_scale"])
    attention = model.semantic_attention
    for x in "qkvo":
        assert torch.equal(getattr(attention, f"{x}_proj").weight, sd[f"attention.W_{x}.weight"])
        assert getattr(attention, f"{x}_proj").bias is None

    g = torch.Generator().manual_seed(5)
    query, key, value = (torch.randn(n, PROJ, generator=g) for n in (5, 3, 3))
    with torch.no_grad():
        knowledge, _ = attention(query, key, value)
    torch.testing.assert_close(knowledge, keepfit_v1_attention(sd, query, key, value), atol=1e-6, rtol=1e-5)


def test_inferred_config(converted):
    model, report = converted
    config = model.config
    assert config.vision_config.depths == DEPTHS
    assert config.vision_config.hidden_sizes == OUTS
    assert config.vision_config.embedding_size == STEM
    assert config.vision_config.layer_type == "bottleneck"
    assert not config.vision_config.downsample_in_first_stage
    assert not config.vision_config.downsample_in_bottleneck
    for name, value in TEXT.items():
        assert getattr(config.text_config, name) == value, name
    assert config.projection_dim == PROJ
    assert config.text_pooling == "reference"
    assert config.semantic_softmax_over == "heads"
    assert config.use_semantic_injection and not config.use_appearance_injection
    assert type(model) is KeepFitForPreTraining
    assert model.semantic_attention is not None and model.appearance_quantizer is None
    assert not model.training and not model.released_model.training
    assert report.config_kwargs["text_pooling"] == "reference"


def test_config_defaults_can_be_overridden(flair):
    kwargs = infer_flair_config_kwargs(
        flair[0], text_pooling="layers_mean", text_config={"num_attention_heads": 4}
    )
    assert kwargs["text_pooling"] == "layers_mean"
    assert kwargs["semantic_softmax_over"] == "heads"
    assert kwargs["text_config"]["num_attention_heads"] == 4
    with pytest.raises(ValueError, match="num_attention_heads"):  # hidden 32 is not a multiple of 64
        infer_flair_config_kwargs(flair[0])


# --------------------------------------------------------------------------------------------------
# Key mapping and report
# --------------------------------------------------------------------------------------------------
def test_key_mapping_and_report(flair):
    sd, _, _ = flair
    converted, report = convert_flair_state_dict(sd)
    src = report.converted
    assert src["vision_model.embedder.embedder.convolution.weight"] == "vision_model.model.conv1.weight"
    assert (
        src["vision_model.encoder.stages.1.layers.0.shortcut.normalization.running_var"]
        == "vision_model.model.layer2.0.downsample.1.running_var"
    )
    assert (
        src["vision_model.encoder.stages.3.layers.0.layer.1.convolution.weight"]
        == "vision_model.model.layer4.0.conv2.weight"
    )
    assert (
        src["text_model.encoder.layer.1.output.LayerNorm.bias"]
        == "text_model.model.encoder.layer.1.output.LayerNorm.bias"
    )
    assert src["semantic_attention.o_proj.weight"] == "attention.W_o.weight"
    assert (
        "vision_model.encoder.stages.0.layers.0.shortcut.convolution.weight" not in converted
    )  # 16 -> 16, stride 1
    assert set(report.unused_keys) == {
        "vision_model.model.fc.weight",
        "vision_model.model.fc.bias",
        "text_model.model.pooler.dense.weight",
        "text_model.model.pooler.dense.bias",
        "text_model.model.embeddings.position_ids",
    }
    assert report.unknown_keys == [] and report.missing_keys == {} and report.defaulted_keys == []
    assert report.has_semantic_attention
    assert "fc.weight" in report.summary() and "pooler" in report.summary()

    # Unknown keys are reported; a missing num_batches_tracked is filled with 0.
    extra = {k: v for k, v in sd.items() if not k.endswith("layer3.0.bn2.num_batches_tracked")}
    extra["some.new.weight"] = torch.zeros(2)
    converted, report = convert_flair_state_dict(extra)
    assert report.unused_keys["some.new.weight"] == UNKNOWN and report.unknown_keys == ["some.new.weight"]
    target = "vision_model.encoder.stages.2.layers.0.layer.1.normalization.num_batches_tracked"
    assert report.defaulted_keys == [target] and converted[target].item() == 0


# --------------------------------------------------------------------------------------------------
# (3) files, wrappers, prefixes
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["plain", "model", "state_dict+module"])
def test_load_from_file(flair, converted, tmp_path, layout):
    sd = flair[0]
    if layout == "model":
        obj = {"model": sd, "epoch": 30, "best_loss": torch.tensor(0.5)}
    elif layout == "state_dict+module":
        obj = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    else:
        obj = sd
    path = tmp_path / "flair.pth"
    torch.save(obj, path)
    model, report = load_flair_checkpoint(path, **HEADS_OVERRIDE)
    _assert_same_weights(model, converted[0])
    assert "vision_model.model.fc.weight" in report.unused_keys
    assert "text_model.model.pooler.dense.weight" in report.unused_keys


def test_checkpoint_without_attention_has_no_semantic_branch(flair, converted):
    """A FLAIR checkpoint (no attention.* weights) is a released dual encoder: a KeepFitModel."""
    sd = {k: v for k, v in flair[0].items() if not k.startswith("attention.")}
    model, report = load_flair_checkpoint(sd, **HEADS_OVERRIDE)
    assert not report.has_semantic_attention
    assert type(model) is KeepFitModel and not model.training
    assert not model.config.use_semantic_injection and not model.config.use_appearance_injection
    assert not any(name.startswith("semantic_attention.") for name in model.state_dict())
    _assert_same_weights(model, converted[0].released_model)  # the V1 checkpoint's dual encoder


# --------------------------------------------------------------------------------------------------
# (4) errors
# --------------------------------------------------------------------------------------------------
def test_missing_key_is_named(flair):
    sd = dict(flair[0])
    del sd["vision_model.model.layer2.0.bn2.running_var"]
    with pytest.raises(ValueError) as info:
        load_flair_checkpoint(sd, **HEADS_OVERRIDE)
    message = str(info.value)
    assert "vision_model.encoder.stages.1.layers.0.layer.1.normalization.running_var" in message
    assert "vision_model.model.layer2.0.bn2.running_var" in message


def test_wrong_shape_is_named_with_both_shapes(flair):
    sd = dict(flair[0])
    sd["text_model.projection_head_text.projection.weight"] = torch.zeros(PROJ + 1, TEXT["hidden_size"])
    with pytest.raises(ValueError) as info:
        load_flair_checkpoint(sd, **HEADS_OVERRIDE)
    message = str(info.value)
    assert (
        "text_projection.weight" in message and "text_model.projection_head_text.projection.weight" in message
    )
    assert f"({PROJ + 1}, {TEXT['hidden_size']})" in message and f"({PROJ}, {TEXT['hidden_size']})" in message


def test_appearance_branch_requested_explicitly_is_refused(flair):
    kwargs = infer_flair_config_kwargs(flair[0], **HEADS_OVERRIDE)
    from retvlp import KeepFitConfig

    config = KeepFitConfig(**{**kwargs, "use_appearance_injection": True, "codebook_size": 8, "code_dim": 4})
    with pytest.raises(ValueError, match="use_appearance_injection=False") as info:
        load_flair_checkpoint(flair[0], config=config)
    assert "into KeepFitForPreTraining" in str(info.value)
    assert "appearance_quantizer.codebook" in str(info.value)


def test_semantic_branch_requested_without_attention_weights_is_refused(flair):
    sd = {k: v for k, v in flair[0].items() if not k.startswith("attention.")}
    with pytest.raises(ValueError, match="use_semantic_injection=False") as info:
        load_flair_checkpoint(sd, use_semantic_injection=True, **HEADS_OVERRIDE)
    assert "semantic_attention.q_proj.weight" in str(info.value)


def test_pickled_object_is_refused(flair, tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": flair[0], "args": NotATensor()}, path)
    with pytest.raises(ValueError, match="Only plain state dicts are accepted") as info:
        load_flair_checkpoint(path, **HEADS_OVERRIDE)
    assert "NotATensor" in str(info.value)


def test_not_a_flair_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="not a FLAIR"):
        convert_flair_state_dict({"blocks.0.attn.qkv.weight": torch.zeros(3, 1)})


# --------------------------------------------------------------------------------------------------
# (5) CLI
# --------------------------------------------------------------------------------------------------
def test_cli_writes_a_loadable_directory(flair, converted, tmp_path, capsys):
    path = tmp_path / "flair.pth"
    torch.save(flair[0], path)
    out = tmp_path / "converted"
    assert main([str(path), str(out), "--text-num-attention-heads", "2"]) == 0
    printed = capsys.readouterr().out
    assert "vision_model.model.fc.weight" in printed and "text_model.model.pooler.dense.weight" in printed
    assert (out / "conversion_report.json").is_file()

    # a KeepFIT V1 checkpoint: the pretraining model's directory, semantic attention kept; AutoModel and
    # KeepFitModel read its dual encoder
    loaded = KeepFitForPreTraining.from_pretrained(out)
    _assert_same_weights(loaded, converted[0])
    assert loaded.config.text_pooling == "reference" and loaded.config.semantic_softmax_over == "heads"
    released = KeepFitModel.from_pretrained(out)
    _assert_same_weights(released, converted[0].released_model)
    assert type(AutoModel.from_pretrained(out)) is KeepFitModel

    # a FLAIR checkpoint (no attention): a released KeepFitModel directory, its keys without prefix
    flair_path = tmp_path / "flair-no-attention.pth"
    torch.save({k: v for k, v in flair[0].items() if not k.startswith("attention.")}, flair_path)
    assert main([str(flair_path), str(tmp_path / "flair"), "--text-num-attention-heads", "2"]) == 0
    with safe_open(str(tmp_path / "flair" / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert keys == set(converted[0].released_model.state_dict())
    _assert_same_weights(KeepFitModel.from_pretrained(tmp_path / "flair"), converted[0].released_model)

    assert (
        main([str(path), str(tmp_path / "mean"), "--text-num-attention-heads", "2", "--text-pooling", "cls"])
        == 0
    )
    assert KeepFitModel.from_pretrained(tmp_path / "mean").config.text_pooling == "cls"


def test_the_converted_folder_carries_flairs_preprocessing_and_the_tokenizer(flair, tmp_path, capsys):
    """`retvlp evaluate` / `benchmark` load the folder as a model: FLAIR's preprocessing (512 px, padded to
    square, not normalised) and the given tokenizer; without a loadable tokenizer the image processor alone,
    with a line saying what zero-shot needs."""
    from retvlp.evaluation.data import geometry_of, normalization_of
    from retvlp.evaluation.runner import load_model
    from retvlp.tokenization import tiny_tokenizer

    path = tmp_path / "flair.pth"
    torch.save(flair[0], path)
    tiny_tokenizer().save_pretrained(tmp_path / "tokenizer")
    out = tmp_path / "with_text"
    common = ["--text-num-attention-heads", "2"]
    assert main([str(path), str(out), *common, "--tokenizer", str(tmp_path / "tokenizer")]) == 0
    loaded = load_model("flair", str(out))
    assert loaded.tokenizer is not None and loaded.tokenizer("retina")["input_ids"]
    assert geometry_of(loaded.image_processor).size == 512 and loaded.image_processor.pad_to_square
    mean, std = normalization_of(loaded.image_processor)
    assert mean.tolist() == [0, 0, 0] and std.tolist() == [1, 1, 1]

    bare = tmp_path / "image_only"
    assert main([str(path), str(bare), *common, "--tokenizer", str(tmp_path / "no_such_tokenizer")]) == 0
    assert "rerun with --tokenizer LOCAL_FOLDER" in capsys.readouterr().out
    loaded = load_model("flair", str(bare))
    assert loaded.tokenizer is None and geometry_of(loaded.image_processor).size == 512
