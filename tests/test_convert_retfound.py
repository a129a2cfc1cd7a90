"""Tests for the RETFound (timm MAE ViT) -> transformers ViTMAE converter.

The reference is an independent functional re-implementation of the timm ViT forward written against
the timm key names, so a wrong key mapping, a wrong q/k/v split or a position embedding that does not
land shows up as an output mismatch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pickle
import sys
from pathlib import Path

import prewarmed
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

REPO = Path(__file__).resolve().parents[1]
MODULE_PATH = REPO / "src" / "retvlp" / "maskedclip" / "convert_retfound.py"

# The package has no __init__.py files yet: import the module by file path so the tests do not depend
# on (or break because of) the package's import-time code.
_spec = importlib.util.spec_from_file_location("retvlp_convert_retfound_under_test", MODULE_PATH)
conv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conv)

# Tiny RETFound-like sizes.
D, DEPTH, HEADS, PATCH, IMAGE, MLP = 32, 2, 4, 8, 32, 128
GRID = IMAGE // PATCH
N = GRID * GRID  # patches
DEC_D, DEC_DEPTH, DEC_HEADS, DEC_MLP = 16, 1, 2, 64
EPS = 1e-6


# --------------------------------------------------------------------------------------------------
# Fixtures: a random RETFound-style state dict
# --------------------------------------------------------------------------------------------------
def _block(sd: dict, prefix: str, dim: int, mlp: int, g: torch.Generator) -> None:
    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd[f"{prefix}.norm1.weight"] = 1 + r(dim, scale=0.1)
    sd[f"{prefix}.norm1.bias"] = r(dim, scale=0.1)
    sd[f"{prefix}.attn.qkv.weight"] = r(3 * dim, dim)
    sd[f"{prefix}.attn.qkv.bias"] = r(3 * dim, scale=0.1)
    sd[f"{prefix}.attn.proj.weight"] = r(dim, dim)
    sd[f"{prefix}.attn.proj.bias"] = r(dim, scale=0.1)
    sd[f"{prefix}.norm2.weight"] = 1 + r(dim, scale=0.1)
    sd[f"{prefix}.norm2.bias"] = r(dim, scale=0.1)
    sd[f"{prefix}.mlp.fc1.weight"] = r(mlp, dim)
    sd[f"{prefix}.mlp.fc1.bias"] = r(mlp, scale=0.1)
    sd[f"{prefix}.mlp.fc2.weight"] = r(dim, mlp)
    sd[f"{prefix}.mlp.fc2.bias"] = r(dim, scale=0.1)


def make_retfound_state_dict(seed: int = 0, *, decoder: bool = True, finetuned: bool = False) -> dict:
    """Random timm/MAE-named weights. ``finetuned``: fc_norm + head instead of norm, no decoder."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "cls_token": torch.randn(1, 1, D, generator=g) * 0.5,
        # random (not sin-cos): outputs only match if the converted table really replaces the model's
        "pos_embed": torch.randn(1, N + 1, D, generator=g) * 0.5,
        "patch_embed.proj.weight": torch.randn(D, 3, PATCH, PATCH, generator=g) * 0.05,
        "patch_embed.proj.bias": torch.randn(D, generator=g) * 0.1,
    }
    for i in range(DEPTH):
        _block(sd, f"blocks.{i}", D, MLP, g)
    norm = "fc_norm" if finetuned else "norm"
    sd[f"{norm}.weight"] = 1 + torch.randn(D, generator=g) * 0.1
    sd[f"{norm}.bias"] = torch.randn(D, generator=g) * 0.1
    if finetuned:
        sd["head.weight"] = torch.randn(5, D, generator=g)
        sd["head.bias"] = torch.randn(5, generator=g)
    elif decoder:
        sd["mask_token"] = torch.randn(1, 1, DEC_D, generator=g)
        sd["decoder_embed.weight"] = torch.randn(DEC_D, D, generator=g) * 0.2
        sd["decoder_embed.bias"] = torch.randn(DEC_D, generator=g) * 0.1
        sd["decoder_pos_embed"] = torch.randn(1, N + 1, DEC_D, generator=g) * 0.5
        for j in range(DEC_DEPTH):
            _block(sd, f"decoder_blocks.{j}", DEC_D, DEC_MLP, g)
        sd["decoder_norm.weight"] = 1 + torch.randn(DEC_D, generator=g) * 0.1
        sd["decoder_norm.bias"] = torch.randn(DEC_D, generator=g) * 0.1
        sd["decoder_pred.weight"] = torch.randn(PATCH * PATCH * 3, DEC_D, generator=g) * 0.2
        sd["decoder_pred.bias"] = torch.randn(PATCH * PATCH * 3, generator=g) * 0.1
    return sd


DECODER_KEYS_IN_FIXTURE = {
    k for k in make_retfound_state_dict() if k.startswith("decoder") or k == "mask_token"
}


@pytest.fixture
def sd() -> dict:
    return make_retfound_state_dict()


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(123))


def save_pth(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


# --------------------------------------------------------------------------------------------------
# Independent reference: timm ViT forward on the timm-named tensors, torch.nn.functional only
# --------------------------------------------------------------------------------------------------
def timm_block(sd: dict, prefix: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, dim = x.shape
    head_dim = dim // heads
    h = F.layer_norm(x, (dim,), sd[f"{prefix}.norm1.weight"], sd[f"{prefix}.norm1.bias"], EPS)
    qkv = F.linear(h, sd[f"{prefix}.attn.qkv.weight"], sd[f"{prefix}.attn.qkv.bias"])
    qkv = qkv.reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
    a = (attn @ v).transpose(1, 2).reshape(b, n, dim)
    x = x + F.linear(a, sd[f"{prefix}.attn.proj.weight"], sd[f"{prefix}.attn.proj.bias"])
    h = F.layer_norm(x, (dim,), sd[f"{prefix}.norm2.weight"], sd[f"{prefix}.norm2.bias"], EPS)
    h = F.gelu(F.linear(h, sd[f"{prefix}.mlp.fc1.weight"], sd[f"{prefix}.mlp.fc1.bias"]))  # exact (erf)
    return x + F.linear(h, sd[f"{prefix}.mlp.fc2.weight"], sd[f"{prefix}.mlp.fc2.bias"])


def timm_vit_forward(sd: dict, pixel_values: torch.Tensor, heads: int = HEADS, norm: str = "norm"):
    w = sd["patch_embed.proj.weight"]
    x = F.conv2d(pixel_values, w, sd["patch_embed.proj.bias"], stride=w.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["pos_embed"]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        x = timm_block(sd, f"blocks.{i}", x, heads)
    return F.layer_norm(x, (x.shape[-1],), sd[f"{norm}.weight"], sd[f"{norm}.bias"], EPS)


def mae_decoder_forward(sd: dict, latent: torch.Tensor, heads: int = DEC_HEADS) -> torch.Tensor:
    """MAE decoder without masking (every patch visible, identity order)."""
    x = F.linear(latent, sd["decoder_embed.weight"], sd["decoder_embed.bias"]) + sd["decoder_pos_embed"]
    for j in range(DEC_DEPTH):
        x = timm_block(sd, f"decoder_blocks.{j}", x, heads)
    x = F.layer_norm(x, (x.shape[-1],), sd["decoder_norm.weight"], sd["decoder_norm.bias"], EPS)
    return F.linear(x, sd["decoder_pred.weight"], sd["decoder_pred.bias"])[:, 1:]


def identity_noise(batch: int) -> torch.Tensor:
    return torch.arange(N).expand(batch, N)


def hf_encoder(info: dict) -> ViTMAEModel:
    config = ViTMAEConfig(**conv.retfound_vision_config_kwargs(info), mask_ratio=0.0)
    return ViTMAEModel(config).eval()


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------
def test_converted_vitmae_matches_plain_timm_forward(sd, pixels, tmp_path):
    path = save_pth({"model": sd}, tmp_path / "RETFound_tiny.pth")
    loaded = conv.load_retfound_state_dict(path)
    _, info = conv.convert_retfound_to_vitmae(loaded, num_attention_heads=HEADS)
    model = hf_encoder(info)
    assert not torch.equal(model.embeddings.position_embeddings, sd["pos_embed"])

    assert conv.load_retfound_into(model, path, num_attention_heads=HEADS) == info
    # the random (non sin-cos) table replaced the model's own
    assert torch.equal(model.embeddings.position_embeddings, sd["pos_embed"])
    assert model.embeddings.position_embeddings.requires_grad is False

    with torch.no_grad():
        out = model(pixel_values=pixels, noise=identity_noise(2)).last_hidden_state
        ref = timm_vit_forward(sd, pixels)
    assert out.shape == (2, N + 1, D)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_info_sizes_and_unused_decoder_keys(sd):
    converted, info = conv.convert_retfound_to_vitmae(sd, num_attention_heads=HEADS)
    assert {k: info[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size")} == {
        "hidden_size": D,
        "num_hidden_layers": DEPTH,
        "intermediate_size": MLP,
    }
    assert (info["patch_size"], info["image_size"], info["num_channels"]) == (PATCH, IMAGE, 3)
    assert info["num_attention_heads"] == HEADS
    assert info["missing_keys"] == []
    assert set(info["unused_keys"]) == DECODER_KEYS_IN_FIXTURE
    assert not any(k.startswith(("decoder", "mask_token", "vit.")) for k in converted)
    assert set(converted) == set(hf_encoder(info).state_dict())

    kwargs = conv.retfound_vision_config_kwargs(info)
    assert kwargs == {
        "hidden_size": D,
        "num_hidden_layers": DEPTH,
        "num_attention_heads": HEADS,
        "intermediate_size": MLP,
        "patch_size": PATCH,
        "image_size": IMAGE,
        "num_channels": 3,
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
        "hidden_act": "gelu",
    }


def test_qkv_split():
    sd = make_retfound_state_dict(decoder=False)
    weight = torch.cat([torch.full((D, D), 1.0), torch.full((D, D), 2.0), torch.full((D, D), 3.0)])
    weight += torch.arange(3 * D, dtype=torch.float32)[:, None] / 1000  # distinct rows too
    bias = torch.arange(3 * D, dtype=torch.float32)
    sd["blocks.1.attn.qkv.weight"], sd["blocks.1.attn.qkv.bias"] = weight, bias
    converted, _ = conv.convert_retfound_to_vitmae(sd, num_attention_heads=HEADS)
    for idx, name in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(converted[f"layers.1.attention.{name}.weight"], weight[idx * D : (idx + 1) * D])
        assert torch.equal(converted[f"layers.1.attention.{name}.bias"], bias[idx * D : (idx + 1) * D])
    # the split tensors own their storage (safetensors refuses shared storage)
    q = converted["layers.1.attention.q_proj.weight"]
    assert q.untyped_storage().data_ptr() != weight.untyped_storage().data_ptr()


def test_shape_mismatch_names_key_and_shapes(sd):
    sd["blocks.1.mlp.fc2.weight"] = torch.zeros(D, MLP + 1)
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc2\.weight") as err:
        conv.convert_retfound_to_vitmae(sd, num_attention_heads=HEADS)
    assert f"({D}, {MLP + 1})" in str(err.value) and f"({D}, {MLP})" in str(err.value)


@pytest.mark.parametrize(
    "payload",
    [[torch.zeros(2), torch.ones(2)], torch.zeros(3, 3), {"epoch": 3, "lr": 0.1}, {}],
    ids=["list", "tensor", "dict-of-scalars", "empty-dict"],
)
def test_non_state_dict_file_is_rejected(payload, tmp_path):
    path = save_pth(payload, tmp_path / "not_a_state_dict.pth")
    with pytest.raises(ValueError, match="not_a_state_dict.pth") as err:
        conv.load_retfound_state_dict(path)
    assert "not a state dict" in str(err.value)


def test_state_dict_without_vit_keys_is_rejected(tmp_path):
    path = save_pth({"model": {"conv1.weight": torch.zeros(4, 3, 3, 3)}}, tmp_path / "resnet.pth")
    with pytest.raises(
        ValueError, match=r'resnet\.pth: no key "blocks\.0\.attn\.qkv\.weight" — is this a RETFound'
    ):
        conv.load_retfound_state_dict(path)


def test_corrupt_file_is_rejected(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"definitely not a torch checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth: could not be read"):
        conv.load_retfound_state_dict(path)


# A pickled object whose unpickling would run code (here: a harmless recorder).
SIDE_EFFECTS: list[str] = []


def _record_side_effect(tag: str) -> str:
    SIDE_EFFECTS.append(tag)
    return tag


class CodeRunningPayload:
    def __reduce__(self):
        return (_record_side_effect, ("unpickled",))


class PlainObject:
    def __init__(self):
        self.value = 1


@pytest.mark.parametrize("payload_cls", [CodeRunningPayload, PlainObject])
def test_pickled_python_object_is_refused_by_weights_only(payload_cls, sd, tmp_path):
    SIDE_EFFECTS.clear()
    if payload_cls is CodeRunningPayload:  # the payload is live under a full unpickle ...
        pickle.loads(pickle.dumps(CodeRunningPayload()))
        assert SIDE_EFFECTS == ["unpickled"]
        SIDE_EFFECTS.clear()
    path = save_pth({"model": sd, "extra": payload_cls()}, tmp_path / "untrusted.pth")
    with pytest.raises(ValueError, match="weights_only") as err:
        conv.load_retfound_state_dict(path)
    message = str(err.value)
    assert "untrusted.pth" in message and "refused" in message
    assert SIDE_EFFECTS == []  # ... but nothing ran here


def test_a_plain_pickle_is_named_as_one(tmp_path):
    """pickle.dump, not torch.save: torch's reader fails on the opcodes ("Unsupported operand 149")."""
    SIDE_EFFECTS.clear()
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps({"model": CodeRunningPayload()}, protocol=4))
    with pytest.raises(ValueError, match=r"raw.pkl: not a torch.save checkpoint but a plain pickle") as err:
        conv.load_retfound_state_dict(path)
    assert "Unsupported operand" not in str(err.value) and SIDE_EFFECTS == []


@pytest.mark.parametrize("kind", ["plain-pickle", "code-running-torch-save", "missing"])
def test_cli_refusals_are_one_line_without_a_traceback(kind, sd, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RETVLP_DEBUG", raising=False)
    SIDE_EFFECTS.clear()
    path = tmp_path / "checkpoint.pth"
    if kind == "plain-pickle":
        path.write_bytes(pickle.dumps({"model": CodeRunningPayload()}))
    elif kind == "code-running-torch-save":
        save_pth({"model": sd, "extra": CodeRunningPayload()}, path)
    code = conv.main(["--checkpoint", str(path), "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 1 and error.startswith("error: ") and "checkpoint.pth" in error
    assert "Traceback" not in error and SIDE_EFFECTS == []
    assert not (tmp_path / "out").exists()


def test_retfound_training_checkpoint_with_argparse_namespace_loads(sd, tmp_path):
    # the MAE/RETFound training scripts save {"model", "optimizer", "epoch", "scaler", "args": Namespace}
    ckpt = {
        "model": sd,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        "epoch": 799,
        "scaler": {"scale": 65536.0},
        "args": argparse.Namespace(model="mae_vit_large_patch16", mask_ratio=0.75, input_size=224),
    }
    loaded = conv.load_retfound_state_dict(save_pth(ckpt, tmp_path / "RETFound_cfp_weights.pth"))
    assert set(loaded) == set(sd)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_module_prefix_is_stripped(sd, pixels, tmp_path):
    ddp = {f"module.{k}": v for k, v in sd.items()}
    path = save_pth({"state_dict": ddp}, tmp_path / "ddp.pt")
    loaded = conv.load_retfound_state_dict(path)
    assert set(loaded) == set(sd)
    assert not any(k.startswith("module.") for k in loaded)

    converted_direct, _ = conv.convert_retfound_to_vitmae(ddp, num_attention_heads=HEADS)
    converted_plain, info = conv.convert_retfound_to_vitmae(sd, num_attention_heads=HEADS)
    assert converted_direct.keys() == converted_plain.keys()
    model = hf_encoder(info)
    conv.load_retfound_into(model, {"model": ddp}, num_attention_heads=HEADS)
    with torch.no_grad():
        out = model(pixel_values=pixels, noise=identity_noise(2)).last_hidden_state
    torch.testing.assert_close(out, timm_vit_forward(sd, pixels), atol=1e-5, rtol=0)


def test_safetensors_checkpoint(sd, tmp_path):
    path = tmp_path / "retfound.safetensors"
    save_file(sd, str(path))
    loaded = conv.load_retfound_state_dict(path)
    assert set(loaded) == set(sd)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="bad.safetensors"):
        conv.load_retfound_state_dict(tmp_path / "bad.safetensors")


def test_finetuned_checkpoint_fc_norm(pixels):
    sd = make_retfound_state_dict(finetuned=True)
    converted, info = conv.convert_retfound_to_vitmae(sd, num_attention_heads=HEADS)
    assert info["missing_keys"] == ["layernorm.bias", "layernorm.weight"]
    assert info["final_norm_source"] is None
    assert {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"} <= set(info["unused_keys"])
    assert "layernorm.weight" not in converted
    with pytest.raises(ValueError, match="missing keys") as err:
        conv.load_retfound_into(hf_encoder(info), sd, num_attention_heads=HEADS)
    assert "layernorm.weight" in str(err.value) and "use_fc_norm_as_final_norm" in str(err.value)

    model = hf_encoder(info)
    info = conv.load_retfound_into(model, sd, num_attention_heads=HEADS, use_fc_norm_as_final_norm=True)
    assert info["final_norm_source"] == "fc_norm" and info["missing_keys"] == []
    assert set(info["unused_keys"]) == {"head.weight", "head.bias"}
    with torch.no_grad():
        out = model(pixel_values=pixels, noise=identity_noise(2)).last_hidden_state
    torch.testing.assert_close(out, timm_vit_forward(sd, pixels, norm="fc_norm"), atol=1e-5, rtol=0)


def test_image_size_mismatch(sd):
    with pytest.raises(ValueError, match=rf"image_size={IMAGE}"):
        conv.convert_retfound_to_vitmae(sd, num_attention_heads=HEADS, image_size=2 * IMAGE)
    _, info = conv.convert_retfound_to_vitmae(sd, num_attention_heads=HEADS)
    big = ViTMAEModel(ViTMAEConfig(**{**conv.retfound_vision_config_kwargs(info), "image_size": 2 * IMAGE}))
    before = {k: v.clone() for k, v in big.state_dict().items()}
    with pytest.raises(ValueError, match="embeddings.position_embeddings") as err:
        conv.load_retfound_into(big, sd, num_attention_heads=HEADS)
    assert f"image_size={IMAGE}" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in big.state_dict().items())  # nothing half-loaded


def test_heads_must_divide_hidden_size(sd):
    with pytest.raises(ValueError, match="num_attention_heads=5"):
        conv.convert_retfound_to_vitmae(sd, num_attention_heads=5)


def test_unknown_keys_are_not_silently_dropped(sd):
    sd["blocks.0.ls1.gamma"] = torch.ones(D)  # LayerScale: dropping it would change the model
    with pytest.raises(ValueError, match=r"blocks\.0\.ls1\.gamma"):
        conv.convert_retfound_to_vitmae(sd, num_attention_heads=HEADS)
    _, info = conv.convert_retfound_to_vitmae(sd, num_attention_heads=HEADS, strict=False)
    assert "blocks.0.ls1.gamma" in info["unused_keys"]


def test_dino_teacher_checkpoint_is_rejected(sd, tmp_path):
    path = save_pth({"teacher": {f"backbone.{k}": v for k, v in sd.items()}}, tmp_path / "dinov2.pth")
    with pytest.raises(ValueError, match="dinov2.pth: this looks like a DINO"):
        conv.load_retfound_state_dict(path)


def test_include_decoder_loads_into_vitmae_for_pretraining(sd, pixels):
    converted, info = conv.convert_retfound_to_vitmae(
        sd, num_attention_heads=HEADS, include_decoder=True, decoder_num_attention_heads=DEC_HEADS
    )
    assert info["unused_keys"] == [] and info["missing_keys"] == []
    assert (info["decoder_hidden_size"], info["decoder_num_hidden_layers"]) == (DEC_D, DEC_DEPTH)
    assert info["decoder_intermediate_size"] == DEC_MLP
    config = ViTMAEConfig(**conv.retfound_vision_config_kwargs(info), mask_ratio=0.0)
    model = ViTMAEForPreTraining(config).eval()
    model.load_state_dict(converted, strict=True)
    assert torch.equal(model.decoder.mask_token, sd["mask_token"])
    with torch.no_grad():
        out = model(pixel_values=pixels, noise=identity_noise(2))
        latent = timm_vit_forward(sd, pixels)
    torch.testing.assert_close(out.logits, mae_decoder_forward(sd, latent), atol=1e-5, rtol=0)


def test_cli_writes_safetensors_that_reproduce_outputs(sd, pixels, tmp_path):
    ckpt = save_pth({"model": sd, "epoch": 1}, tmp_path / "RETFound_cfp_weights.pth")
    out_dir = tmp_path / "converted"
    assert (
        conv.main(["--checkpoint", str(ckpt), "--output", str(out_dir), "--num-attention-heads", str(HEADS)])
        == 0
    )
    kwargs = json.loads((out_dir / "vision_config_kwargs.json").read_text())
    report = json.loads((out_dir / "conversion_info.json").read_text())
    assert set(report["unused_keys"]) == DECODER_KEYS_IN_FIXTURE

    weights = load_file(str(out_dir / "model.safetensors"))
    model = ViTMAEModel(ViTMAEConfig(**kwargs, mask_ratio=0.0)).eval()
    model.load_state_dict(weights, strict=True)
    with torch.no_grad():
        ref = timm_vit_forward(sd, pixels)
        out = model(pixel_values=pixels, noise=identity_noise(2)).last_hidden_state
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        # config.json makes the folder a regular transformers checkpoint (meta-device load included)
        reloaded = ViTMAEModel.from_pretrained(out_dir).eval()
        assert reloaded.config.mask_ratio == 0.0
        out2 = reloaded(pixel_values=pixels, noise=identity_noise(2)).last_hidden_state
        torch.testing.assert_close(out2, ref, atol=1e-5, rtol=0)


def test_cli_refuses_incomplete_conversion(tmp_path):
    ckpt = save_pth({"model": make_retfound_state_dict(finetuned=True)}, tmp_path / "finetuned.pth")
    with pytest.raises(SystemExit, match="use-fc-norm-as-final-norm"):
        conv.main(
            ["--checkpoint", str(ckpt), "--output", str(tmp_path / "out"), "--num-attention-heads", "4"]
        )
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_cli_as_python_module(sd, tmp_path):
    ckpt = save_pth({"model": sd}, tmp_path / "ckpt.pth")
    out_dir = tmp_path / "as_module"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "retvlp.maskedclip.convert_retfound", "--checkpoint", str(ckpt)]
    cmd += ["--output", str(out_dir), "--num-attention-heads", str(HEADS)]
    proc = prewarmed.run(cmd, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected, _ = conv.convert_retfound_to_vitmae(sd, num_attention_heads=HEADS)
    written = load_file(str(out_dir / "model.safetensors"))
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in expected)


def test_a_converted_folder_is_a_model_the_evaluation_takes(sd, pixels, tmp_path):
    """`retvlp evaluate` / `retvlp benchmark --model retfound=DIR` load the converted folder: it carries an
    image processor (RETFound's size, ImageNet statistics), no masking, and its probe feature is RETFound's
    global pooling — the mean of the patch tokens, computed here from the plain timm forward."""
    from retvlp.evaluation.data import geometry_of, normalization_of
    from retvlp.evaluation.features import encode_images
    from retvlp.evaluation.runner import load_model

    ckpt = save_pth({"model": sd}, tmp_path / "RETFound_cfp_weights.pth")
    out_dir = tmp_path / "converted"
    assert (
        conv.main(["--checkpoint", str(ckpt), "--output", str(out_dir), "--num-attention-heads", str(HEADS)])
        == 0
    )
    loaded = load_model("retfound", str(out_dir))
    assert geometry_of(loaded.image_processor).size == IMAGE
    mean, std = normalization_of(loaded.image_processor)
    torch.testing.assert_close(mean, torch.tensor([0.485, 0.456, 0.406]))
    torch.testing.assert_close(std, torch.tensor([0.229, 0.224, 0.225]))
    with torch.no_grad():
        first, embeds = encode_images(loaded.model, pixels)
        second, _ = encode_images(loaded.model, pixels)
        expected = timm_vit_forward(sd, pixels)[:, 1:].mean(1)
    assert embeds is None and first.shape == (2, D)
    # no masking at evaluation: only the token order (and with it the rounding) varies between calls
    torch.testing.assert_close(first, second, atol=1e-6, rtol=0)
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=0)


def test_a_converted_folder_fine_tunes_as_a_stock_vit_classifier(sd, pixels, tmp_path):
    """transformers has no ViTMAE classifier: the fine-tuning protocol builds `ViTForImageClassification` on the
    converted weights (every encoder weight equal, the head new), and its encoder reproduces the timm forward."""
    from transformers import ViTForImageClassification

    from retvlp.evaluation.finetune import FinetuneSettings, build_classifier

    ckpt = save_pth({"model": sd}, tmp_path / "RETFound_cfp_weights.pth")
    out_dir = tmp_path / "converted"
    assert (
        conv.main(["--checkpoint", str(ckpt), "--output", str(out_dir), "--num-attention-heads", str(HEADS)])
        == 0
    )
    model = build_classifier(str(out_dir), ["a", "b", "c"], multi_label=False, settings=FinetuneSettings())
    assert type(model) is ViTForImageClassification and model.config.id2label == {0: "a", 1: "b", 2: "c"}
    encoder = ViTMAEModel.from_pretrained(out_dir).state_dict()
    for name, tensor in encoder.items():
        assert torch.equal(model.vit.state_dict()[name], tensor), name
    with torch.no_grad():
        hidden = model.eval().vit(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(hidden, timm_vit_forward(sd, pixels), atol=1e-5, rtol=0)
    assert model.classifier.weight.shape == (3, D)
