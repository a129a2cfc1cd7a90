"""Convert RETFound (MAE ViT, timm key names) checkpoints to the transformers ``ViTMAEModel`` layout.

RETFound (https://github.com/rmaphoh/RETFound_MAE) releases ViT-L/16 MAE checkpoints as ``.pth`` files
holding ``{"model": state_dict, ...}`` (the MAE training scripts also store ``optimizer``, ``epoch``,
``scaler`` and an ``argparse.Namespace`` under ``args``). The weights use timm ``VisionTransformer`` names::

    cls_token, pos_embed, patch_embed.proj.{weight,bias},
    blocks.{i}.norm1, blocks.{i}.attn.qkv (fused q|k|v), blocks.{i}.attn.proj,
    blocks.{i}.norm2, blocks.{i}.mlp.fc1, blocks.{i}.mlp.fc2, norm
    (fine-tuned models: fc_norm + head instead of norm; MAE pre-training: decoder_*, mask_token)

They are mapped onto the key layout of ``transformers.ViTMAEModel``::

    embeddings.cls_token, embeddings.position_embeddings, embeddings.patch_embeddings.projection,
    layers.{i}.layernorm_before, layers.{i}.attention.{q,k,v,o}_proj, layers.{i}.layernorm_after,
    layers.{i}.mlp.fc1, layers.{i}.mlp.fc2, layernorm

Checkpoints are read with ``torch.load(..., weights_only=True)`` only (``argparse.Namespace`` is
allow-listed because RETFound checkpoints store their training arguments that way); nothing else in a
pickle is ever executed.

CLI::

    python -m retvlp.maskedclip.convert_retfound --checkpoint RETFound_cfp_weights.pth --output DIR

writes ``DIR/model.safetensors`` (ViTMAEModel layout), ``DIR/vision_config_kwargs.json`` (the
``ViTMAEConfig`` keyword arguments), ``DIR/config.json`` (so ``ViTMAEModel.from_pretrained(DIR)`` works; mask
ratio 0 unless ``--mask-ratio``), ``DIR/preprocessor_config.json`` (RETFound's resize and ImageNet
normalisation, so the folder is a model ``retvlp evaluate`` / ``retvlp benchmark`` take) and
``DIR/conversion_info.json`` (inferred sizes, unused checkpoint keys).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

__all__ = [
    "convert_retfound_to_vitmae",
    "load_retfound_into",
    "load_retfound_state_dict",
    "main",
    "retfound_vision_config_kwargs",
]

# The key whose presence identifies a timm ViT state dict (and gives hidden_size).
_ANCHOR_KEY = "blocks.0.attn.qkv.weight"
# Keys under which training scripts nest the weights, in order of preference.
_WRAPPER_KEYS = ("model", "state_dict", "model_state")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_DECODER_BLOCK_RE = re.compile(r"^decoder_blocks\.(\d+)\.")
_DECODER_PREFIXES = ("decoder_embed.", "decoder_blocks.", "decoder_norm.", "decoder_pred.")
_DECODER_KEYS = ("mask_token", "decoder_pos_embed")

Plan = list[tuple[str, tuple[int, ...], list[tuple[str, slice | None]]]]


# --------------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------------
def _is_decoder_key(key: str) -> bool:
    return key in _DECODER_KEYS or key.startswith(_DECODER_PREFIXES)


def _unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Return the flat ``{name: tensor}`` dict inside ``obj`` (a loaded checkpoint), validated."""
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{source}: not a state dict: expected a dict of tensors (or a dict holding one under "
            f"{' / '.join(repr(k) for k in _WRAPPER_KEYS)}), got {type(obj).__name__}."
        )
    for _ in range(3):  # e.g. {"model": sd} or {"state_dict": {"model": sd}}
        for wrapper in _WRAPPER_KEYS:
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
        else:
            break
    if "teacher" in obj and _ANCHOR_KEY not in obj:
        raise ValueError(
            f"{source}: this looks like a DINO/DINOv2 checkpoint (weights under 'teacher'), e.g. "
            "RETFound_dinov2; only the MAE ViT checkpoints (weights under 'model') are supported."
        )
    if not obj:
        raise ValueError(f"{source}: not a state dict: the dict is empty.")
    bad = [
        f"{k!r} ({type(v).__name__})"
        for k, v in obj.items()
        if not isinstance(k, str) or not isinstance(v, torch.Tensor)
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise ValueError(f"{source}: not a state dict: entries that are not tensors: {shown}.")

    state_dict: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        new_key = key[len("module.") :] if key.startswith("module.") else key
        if new_key in state_dict:
            raise ValueError(f"{source}: key {new_key!r} occurs both with and without the 'module.' prefix.")
        state_dict[new_key] = value
    if _ANCHOR_KEY not in state_dict:
        shown = ", ".join(sorted(state_dict)[:8])
        raise ValueError(
            f'{source}: no key "{_ANCHOR_KEY}" — is this a RETFound/timm ViT checkpoint? (first keys: {shown})'
        )
    return state_dict


def _safe_globals_context() -> contextlib.AbstractContextManager:
    # RETFound checkpoints carry their training arguments as an argparse.Namespace; allow-list just that
    # (a plain attribute bag) for the weights-only unpickler. torch < 2.5 lacks the context manager.
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:
        return contextlib.nullcontext()
    return safe_globals([argparse.Namespace])


def _starts_like_a_pickle(path: Path) -> bool:
    """pickle protocols 2+ open with the PROTO opcode (0x80) and the protocol number."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def load_retfound_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a RETFound/timm ViT checkpoint and return its flat state dict (``module.`` prefix stripped).

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(path, map_location="cpu", weights_only=True)``. Weights nested under ``model`` /
    ``state_dict`` / ``model_state`` are unwrapped. Raises ``ValueError`` naming the file when it is not a
    loadable state dict of a timm ViT.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RETFound checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError / OSError
            raise ValueError(f"{path}: could not be read as a safetensors file: {err}") from err
    else:
        try:
            with _safe_globals_context():
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            message = str(err)
            found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
            if found is None:  # not a pickled object, just an unreadable / non-checkpoint file
                detail = re.search(r"WeightsUnpickler error: \s*(.+)", message)
                reason = detail.group(1).strip() if detail else message.splitlines()[0]
                if reason.startswith("Unsupported operand") and _starts_like_a_pickle(path):
                    # torch reads only its own zip / legacy formats; a pickle.dump file fails on its opcodes
                    raise ValueError(
                        f"{path}: not a torch.save checkpoint but a plain pickle (or another format) that "
                        "torch.load(weights_only=True) cannot read; this converter never unpickles arbitrary "
                        "objects, which can execute code. If the file is from a trusted source, load it yourself "
                        "and re-save only its weights with torch.save(state_dict, 'weights.pth') or as "
                        "safetensors."
                    ) from err
                raise ValueError(
                    f"{path}: could not be read as a torch checkpoint with torch.load(weights_only=True): {reason}"
                ) from err
            raise ValueError(
                f"{path}: refused to load: torch.load(weights_only=True) found a Python object that is not a "
                f"tensor or plain container ({found.group(1)}). This converter never unpickles arbitrary "
                "objects (weights_only=False can execute code). If the file is from a trusted source, re-save "
                "only its weights, e.g. torch.save(ckpt['model'], 'weights.pth'), or convert them to safetensors."
            ) from err
        except Exception as err:  # corrupt / non-pickle files surface as RuntimeError, KeyError, EOFError...
            raise ValueError(
                f"{path}: could not be read as a torch checkpoint: {type(err).__name__}: {err}"
            ) from err
    return _unwrap_state_dict(obj, str(path))


# --------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------
def _layer_plan(src: str, dst: str, dim: int, inter: int) -> Plan:
    """Entries (source key, expected source shape, [(target key, row slice)]) for one pre-norm block."""
    qkv_slices = [
        ("q_proj", slice(0, dim)),
        ("k_proj", slice(dim, 2 * dim)),
        ("v_proj", slice(2 * dim, 3 * dim)),
    ]
    plan: Plan = []
    for name in ("weight", "bias"):
        plan.append((f"{src}.norm1.{name}", (dim,), [(f"{dst}.layernorm_before.{name}", None)]))
    plan.append(
        (
            f"{src}.attn.qkv.weight",
            (3 * dim, dim),
            [(f"{dst}.attention.{proj}.weight", sl) for proj, sl in qkv_slices],
        )
    )
    plan.append(
        (
            f"{src}.attn.qkv.bias",
            (3 * dim,),
            [(f"{dst}.attention.{proj}.bias", sl) for proj, sl in qkv_slices],
        )
    )
    plan.append((f"{src}.attn.proj.weight", (dim, dim), [(f"{dst}.attention.o_proj.weight", None)]))
    plan.append((f"{src}.attn.proj.bias", (dim,), [(f"{dst}.attention.o_proj.bias", None)]))
    for name in ("weight", "bias"):
        plan.append((f"{src}.norm2.{name}", (dim,), [(f"{dst}.layernorm_after.{name}", None)]))
    plan.append((f"{src}.mlp.fc1.weight", (inter, dim), [(f"{dst}.mlp.fc1.weight", None)]))
    plan.append((f"{src}.mlp.fc1.bias", (inter,), [(f"{dst}.mlp.fc1.bias", None)]))
    plan.append((f"{src}.mlp.fc2.weight", (dim, inter), [(f"{dst}.mlp.fc2.weight", None)]))
    plan.append((f"{src}.mlp.fc2.bias", (dim,), [(f"{dst}.mlp.fc2.bias", None)]))
    return plan


def _require(state_dict: Mapping[str, torch.Tensor], key: str, why: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f"checkpoint has no key {key!r}, needed to infer {why}.")
    return state_dict[key]


def _num_blocks(state_dict: Mapping[str, torch.Tensor], pattern: re.Pattern) -> int:
    indices = [int(m.group(1)) for m in map(pattern.match, state_dict) if m]
    return max(indices) + 1 if indices else 0


def _shape_error(key: str, got: tuple[int, ...], expected: tuple[int, ...], sizes: str) -> ValueError:
    return ValueError(f"shape mismatch for {key!r}: checkpoint has {got}, expected {expected} ({sizes}).")


class _EncoderSizes(NamedTuple):
    """The encoder sizes a timm ViT state dict implies (a plain tuple, not a dataclass: the tests load this
    module from its file, outside `sys.modules`, where dataclasses cannot resolve their annotations). The head
    count is not among them: the weights do not hold it."""

    hidden: int
    channels: int
    patch: int
    num_patches: int
    image_size: int
    intermediate: int
    depth: int

    def describe(self) -> str:
        """The sizes a shape-mismatch message quotes."""
        return (
            f"hidden_size={self.hidden}, intermediate_size={self.intermediate}, patch_size={self.patch}, "
            f"num_channels={self.channels}"
        )


def convert_retfound_to_vitmae(
    state_dict: Mapping[str, torch.Tensor],
    *,
    include_decoder: bool = False,
    num_attention_heads: int = 16,
    decoder_num_attention_heads: int = 16,
    image_size: int | None = None,
    use_fc_norm_as_final_norm: bool = False,
    strict: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map a RETFound/timm ViT state dict onto the ``transformers.ViTMAEModel`` key layout.

    Args:
        state_dict: flat timm-named state dict (a ``{"model": ...}`` wrapper and ``module.`` prefixes are
            accepted too).
        include_decoder: also convert the MAE pixel decoder. The result then uses the
            ``ViTMAEForPreTraining`` layout (encoder under ``vit.``, decoder under ``decoder.``).
        num_attention_heads: encoder heads; not recoverable from the weights (RETFound ViT-L: 16).
        decoder_num_attention_heads: decoder heads (RETFound MAE decoder: 16).
        image_size: expected input size; must match the length of ``pos_embed`` (inferred when ``None``).
        use_fc_norm_as_final_norm: for fine-tuned checkpoints that have ``fc_norm`` but no ``norm``, use
            ``fc_norm`` as the final ``layernorm``. Otherwise ``layernorm.*`` is reported as missing.
        strict: raise on checkpoint keys this converter does not know (e.g. LayerScale ``ls1.gamma``);
            with ``strict=False`` they are only listed in ``info["unused_keys"]``.

    Returns:
        ``(converted_state_dict, info)``; ``info`` has the inferred sizes (``hidden_size``,
        ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``, ``patch_size``,
        ``image_size``, ``num_channels``; ``decoder_*`` with ``include_decoder``), ``unused_keys``
        (checkpoint keys not converted: decoder, head, fc_norm, ...), ``missing_keys`` (target keys the
        checkpoint could not provide) and ``final_norm_source`` (``"norm"``, ``"fc_norm"`` or ``None``).
    """
    sd = _unwrap_state_dict(state_dict, "state_dict")
    sizes = _encoder_sizes(sd, num_attention_heads, image_size)
    enc = "vit." if include_decoder else ""
    plan, missing, final_norm = _encoder_plan(sd, sizes, enc, use_fc_norm_as_final_norm)
    info: dict[str, Any] = {
        "hidden_size": sizes.hidden,
        "num_hidden_layers": sizes.depth,
        "num_attention_heads": num_attention_heads,
        "intermediate_size": sizes.intermediate,
        "patch_size": sizes.patch,
        "image_size": sizes.image_size,
        "num_channels": sizes.channels,
        "final_norm_source": final_norm,
        "layout": "ViTMAEForPreTraining" if include_decoder else "ViTMAEModel",
    }
    described = sizes.describe()
    if include_decoder:
        decoder_plan, decoder_info, decoder_sizes = _decoder_plan(sd, sizes, decoder_num_attention_heads)
        plan += decoder_plan
        info.update(decoder_info)
        described += decoder_sizes
    # Every shape is checked before anything is converted, so a bad checkpoint yields nothing half-mapped.
    converted, consumed, unprovided = _apply_plan(sd, plan, described)
    info["unused_keys"] = _unused_keys(sd, consumed, strict)
    info["missing_keys"] = sorted(missing + unprovided)
    return converted, info


def _encoder_sizes(
    sd: Mapping[str, torch.Tensor], num_attention_heads: int, image_size: int | None
) -> _EncoderSizes:
    """The encoder sizes, read from the fused qkv, patch-embedding, position-table and first MLP weights;
    `ValueError` when a shape is not a ViT's or `image_size` disagrees with the position table."""
    qkv = sd[_ANCHOR_KEY]
    if qkv.ndim != 2 or qkv.shape[0] != 3 * qkv.shape[1]:
        raise ValueError(f"{_ANCHOR_KEY!r} has shape {tuple(qkv.shape)}; expected (3 * hidden, hidden).")
    dim = int(qkv.shape[1])
    if num_attention_heads <= 0 or dim % num_attention_heads:
        raise ValueError(f"hidden_size {dim} is not divisible by num_attention_heads={num_attention_heads}.")

    patch_w = _require(sd, "patch_embed.proj.weight", "the patch size")
    if patch_w.ndim != 4 or patch_w.shape[0] != dim or patch_w.shape[2] != patch_w.shape[3]:
        raise ValueError(
            f"shape mismatch for 'patch_embed.proj.weight': checkpoint has {tuple(patch_w.shape)}, expected "
            f"({dim}, channels, patch, patch)."
        )
    channels, patch = int(patch_w.shape[1]), int(patch_w.shape[2])
    num_patches, inferred_image_size = _patch_grid(sd, dim, patch, image_size)
    inter = int(_require(sd, "blocks.0.mlp.fc1.weight", "the intermediate size").shape[0])
    return _EncoderSizes(
        hidden=dim,
        channels=channels,
        patch=patch,
        num_patches=num_patches,
        image_size=inferred_image_size,
        intermediate=inter,
        depth=_num_blocks(sd, _BLOCK_RE),
    )


def _patch_grid(
    sd: Mapping[str, torch.Tensor], dim: int, patch: int, image_size: int | None
) -> tuple[int, int]:
    """`(number of patch positions, image size)` from ``pos_embed``: a class-token slot plus a square grid."""
    pos = _require(sd, "pos_embed", "the image size")
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != dim:
        raise _shape_error("pos_embed", tuple(pos.shape), (1, -1, dim), f"hidden_size={dim}")
    num_patches = int(pos.shape[1]) - 1
    grid = math.isqrt(max(num_patches, 0))
    if num_patches < 1 or grid * grid != num_patches:
        raise ValueError(
            f"'pos_embed' has shape {tuple(pos.shape)}: {num_patches} patch positions + 1 class token is not a "
            "square grid with a class-token slot, which this converter requires."
        )
    inferred_image_size = grid * patch
    if image_size is not None and image_size != inferred_image_size:
        raise ValueError(
            f"'pos_embed' has {num_patches} patch positions ({grid}x{grid} patches of {patch} px), i.e. "
            f"image_size={inferred_image_size}, but image_size={image_size} was requested. Set "
            f"image_size={inferred_image_size} in the vision config (position-embedding interpolation is "
            "not done by this converter)."
        )
    return num_patches, inferred_image_size


def _encoder_plan(
    sd: Mapping[str, torch.Tensor], sizes: _EncoderSizes, enc: str, use_fc_norm_as_final_norm: bool
) -> tuple[Plan, list[str], str | None]:
    """`(plan, target keys no checkpoint key can provide, final norm source)` for the encoder under `enc`:
    embeddings, every block, and the final norm (``norm``; else ``fc_norm`` when asked; else missing)."""
    dim, patch, channels = sizes.hidden, sizes.patch, sizes.channels
    plan: Plan = [
        ("cls_token", (1, 1, dim), [(f"{enc}embeddings.cls_token", None)]),
        ("pos_embed", (1, sizes.num_patches + 1, dim), [(f"{enc}embeddings.position_embeddings", None)]),
        (
            "patch_embed.proj.weight",
            (dim, channels, patch, patch),
            [(f"{enc}embeddings.patch_embeddings.projection.weight", None)],
        ),
        ("patch_embed.proj.bias", (dim,), [(f"{enc}embeddings.patch_embeddings.projection.bias", None)]),
    ]
    for i in range(sizes.depth):
        plan += _layer_plan(f"blocks.{i}", f"{enc}layers.{i}", dim, sizes.intermediate)

    has_norm = "norm.weight" in sd or "norm.bias" in sd
    has_fc_norm = "fc_norm.weight" in sd or "fc_norm.bias" in sd
    final_norm = "norm" if has_norm else ("fc_norm" if has_fc_norm and use_fc_norm_as_final_norm else None)
    missing: list[str] = []
    if final_norm is not None:
        for name in ("weight", "bias"):
            plan.append((f"{final_norm}.{name}", (dim,), [(f"{enc}layernorm.{name}", None)]))
    else:
        missing += [f"{enc}layernorm.weight", f"{enc}layernorm.bias"]
    return plan, missing, final_norm


def _decoder_plan(
    sd: Mapping[str, torch.Tensor], sizes: _EncoderSizes, decoder_num_attention_heads: int
) -> tuple[Plan, dict[str, int], str]:
    """`(plan, decoder_* info, the decoder sizes for shape messages)` for the MAE pixel decoder under
    ``decoder.``; `ValueError` when the checkpoint has no decoder or its sizes do not fit the encoder's."""
    if "decoder_embed.weight" not in sd:
        raise ValueError(
            "include_decoder=True but the checkpoint has no MAE decoder (no 'decoder_embed.weight'); "
            "fine-tuned RETFound checkpoints only contain the encoder."
        )
    dim, patch, channels = sizes.hidden, sizes.patch, sizes.channels
    dec_w = sd["decoder_embed.weight"]
    if dec_w.ndim != 2 or dec_w.shape[1] != dim:
        raise _shape_error("decoder_embed.weight", tuple(dec_w.shape), (-1, dim), sizes.describe())
    ddim = int(dec_w.shape[0])
    if decoder_num_attention_heads <= 0 or ddim % decoder_num_attention_heads:
        raise ValueError(
            f"decoder hidden size {ddim} is not divisible by "
            f"decoder_num_attention_heads={decoder_num_attention_heads}."
        )
    dinter = int(_require(sd, "decoder_blocks.0.mlp.fc1.weight", "the decoder intermediate size").shape[0])
    ddepth = _num_blocks(sd, _DECODER_BLOCK_RE)
    plan: Plan = [
        ("decoder_embed.weight", (ddim, dim), [("decoder.decoder_embed.weight", None)]),
        ("decoder_embed.bias", (ddim,), [("decoder.decoder_embed.bias", None)]),
        ("mask_token", (1, 1, ddim), [("decoder.mask_token", None)]),
        ("decoder_pos_embed", (1, sizes.num_patches + 1, ddim), [("decoder.decoder_pos_embed", None)]),
    ]
    for j in range(ddepth):
        plan += _layer_plan(f"decoder_blocks.{j}", f"decoder.decoder_layers.{j}", ddim, dinter)
    pred_out = patch * patch * channels
    plan += [
        ("decoder_norm.weight", (ddim,), [("decoder.decoder_norm.weight", None)]),
        ("decoder_norm.bias", (ddim,), [("decoder.decoder_norm.bias", None)]),
        ("decoder_pred.weight", (pred_out, ddim), [("decoder.decoder_pred.weight", None)]),
        ("decoder_pred.bias", (pred_out,), [("decoder.decoder_pred.bias", None)]),
    ]
    info = {
        "decoder_hidden_size": ddim,
        "decoder_num_hidden_layers": ddepth,
        "decoder_num_attention_heads": decoder_num_attention_heads,
        "decoder_intermediate_size": dinter,
    }
    return plan, info, f", decoder_hidden_size={ddim}, decoder_intermediate_size={dinter}"


def _apply_plan(
    sd: Mapping[str, torch.Tensor], plan: Plan, sizes: str
) -> tuple[dict[str, torch.Tensor], set[str], list[str]]:
    """`(converted tensors, checkpoint keys used, target keys whose source key is absent)`; a source of the
    wrong shape raises (`sizes` says what was inferred)."""
    converted: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    missing: list[str] = []
    for src, expected, targets in plan:
        if src not in sd:
            missing.extend(dst for dst, _ in targets)
            continue
        tensor = sd[src]
        if tuple(tensor.shape) != expected:
            raise _shape_error(src, tuple(tensor.shape), expected, sizes)
        consumed.add(src)
        for dst, rows in targets:
            part = tensor if rows is None else tensor[rows]
            # clone: the q/k/v views share storage, which safetensors refuses to save
            converted[dst] = part.detach().clone().contiguous()
    return converted, consumed, missing


def _unused_keys(sd: Mapping[str, torch.Tensor], consumed: set[str], strict: bool) -> list[str]:
    """The checkpoint keys not converted, sorted; with `strict`, any that is not a known leftover (decoder,
    classification head, fc_norm, an unused final norm) raises: dropping it could change the model."""
    unused = sorted(set(sd) - consumed)
    unknown = [k for k in unused if not (_is_decoder_key(k) or k.startswith(("head.", "fc_norm.", "norm.")))]
    if unknown and strict:
        raise ValueError(
            f"checkpoint keys this converter does not know how to map (dropping them could change the "
            f"model): {unknown}. Pass strict=False to ignore them."
        )
    return unused


def retfound_vision_config_kwargs(info: Mapping[str, Any]) -> dict[str, Any]:
    """``transformers.ViTMAEConfig`` keyword arguments for a converted RETFound encoder (from ``info``)."""
    kwargs: dict[str, Any] = {
        key: info[key]
        for key in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "patch_size",
            "image_size",
            "num_channels",
        )
    }
    kwargs.update(layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu")
    for key in (
        "decoder_hidden_size",
        "decoder_num_hidden_layers",
        "decoder_num_attention_heads",
        "decoder_intermediate_size",
    ):
        if key in info:
            kwargs[key] = info[key]
    return kwargs


# --------------------------------------------------------------------------------------------------
# Loading into a module
# --------------------------------------------------------------------------------------------------
def load_retfound_into(
    vision_module: torch.nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    **kwargs: Any,
) -> dict[str, Any]:
    """Load RETFound weights into a module with the ``ViTMAEModel`` layout (e.g. ``ViTMAEModel``).

    ``kwargs`` go to :func:`convert_retfound_to_vitmae`. Every key of the module must be provided and
    every converted key must exist in the module with the same shape; otherwise a ``ValueError`` lists all
    problems and nothing is loaded. Returns the conversion ``info``.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        state_dict = load_retfound_state_dict(path_or_state_dict)
    else:
        state_dict = path_or_state_dict
    converted, info = convert_retfound_to_vitmae(state_dict, **kwargs)

    target = vision_module.state_dict()
    missing = sorted(set(target) - set(converted))
    unexpected = sorted(set(converted) - set(target))
    mismatched_keys = [
        k for k in sorted(set(target) & set(converted)) if converted[k].shape != target[k].shape
    ]
    mismatched = [
        f"{k}: checkpoint {tuple(converted[k].shape)} vs module {tuple(target[k].shape)}"
        for k in mismatched_keys
    ]
    if missing or unexpected or mismatched:
        lines = [f"cannot load RETFound weights into {type(vision_module).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {mismatched}")
        if any(k.endswith("embeddings.position_embeddings") for k in mismatched_keys):
            lines.append(
                f"  hint: the checkpoint's position embeddings are for image_size={info['image_size']}; "
                "build the vision config with that image_size."
            )
        if info["final_norm_source"] is None and "fc_norm.weight" in info["unused_keys"]:
            lines.append(
                "  hint: the checkpoint has fc_norm but no norm; use_fc_norm_as_final_norm=True maps it."
            )
        if any(k.startswith(("vit.", "decoder.")) for k in unexpected):
            lines.append(
                "  hint: include_decoder=True gives the ViTMAEForPreTraining layout (vit.*, decoder.*); "
                "load it into a ViTMAEForPreTraining or leave include_decoder off."
            )
        elif any(k.startswith(("vit.", "decoder.")) for k in missing):
            lines.append(
                "  hint: for a ViTMAEForPreTraining pass include_decoder=True, or load into its .vit submodule."
            )
        lines.append(
            f"  (inferred: {json.dumps({k: v for k, v in info.items() if not k.endswith('_keys')})})"
        )
        raise ValueError("\n".join(lines))

    result = vision_module.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:  # pragma: no cover - guarded by the checks above
        raise ValueError(
            f"load_state_dict reported missing={result.missing_keys} unexpected={result.unexpected_keys}"
        )
    return info


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retvlp.maskedclip.convert_retfound",
        description="Convert a RETFound (MAE ViT, timm names) checkpoint to the transformers ViTMAEModel layout.",
    )
    parser.add_argument("--checkpoint", required=True, help="RETFound .pth/.pt or .safetensors file")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--num-attention-heads", type=int, default=16, help="encoder heads (ViT-L: 16)")
    parser.add_argument(
        "--image-size", type=int, default=None, help="check against pos_embed (default: infer)"
    )
    parser.add_argument(
        "--use-fc-norm-as-final-norm",
        action="store_true",
        help="fine-tuned checkpoints without 'norm': use 'fc_norm' as the final layernorm",
    )
    parser.add_argument(
        "--include-decoder",
        action="store_true",
        help="also convert the MAE decoder (ViTMAEForPreTraining layout)",
    )
    parser.add_argument("--decoder-num-attention-heads", type=int, default=16)
    parser.add_argument(
        "--mask-ratio",
        type=float,
        default=0.0,
        help="mask_ratio written to config.json (0.0: no masking, for feature extraction)",
    )
    parser.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True)
    return parser


def retfound_image_processor(image_size: int):
    """RETFound's evaluation preprocessing as an image processor, so the converted folder loads with
    `AutoImageProcessor` (and `retvlp evaluate` / `retvlp benchmark` take it as a model): a bicubic square
    resize to `image_size` and ImageNet's mean / std (RETFound's `build_transform`; its resize-then-centre-crop
    by 224/256 is not reproduced: fundus photographs are close to square)."""
    from transformers import ViTImageProcessor

    return ViTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=3,  # PIL.Image.BICUBIC
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


def main(argv: list[str] | None = None) -> int:
    """The command line; a checkpoint that cannot be read or converted ends with its message and exit code 1
    (`RETVLP_DEBUG=1` shows the traceback)."""
    args = _build_parser().parse_args(argv)
    try:
        return _convert(args)
    except (ValueError, FileNotFoundError) as error:
        if os.environ.get("RETVLP_DEBUG") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1


def _convert(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file
    from transformers import ViTMAEConfig

    state_dict = load_retfound_state_dict(args.checkpoint)
    converted, info = convert_retfound_to_vitmae(
        state_dict,
        include_decoder=args.include_decoder,
        num_attention_heads=args.num_attention_heads,
        decoder_num_attention_heads=args.decoder_num_attention_heads,
        image_size=args.image_size,
        use_fc_norm_as_final_norm=args.use_fc_norm_as_final_norm,
        strict=args.strict,
    )
    if info["missing_keys"]:
        hint = ""
        if info["final_norm_source"] is None and "fc_norm.weight" in info["unused_keys"]:
            hint = " (the checkpoint has fc_norm but no norm: add --use-fc-norm-as-final-norm)"
        raise SystemExit(f"error: {args.checkpoint}: missing weights {info['missing_keys']}{hint}")
    config_kwargs = retfound_vision_config_kwargs(info)

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "source": Path(args.checkpoint).name, "layout": info["layout"]}
    save_file(converted, str(out / "model.safetensors"), metadata=metadata)
    (out / "vision_config_kwargs.json").write_text(json.dumps(config_kwargs, indent=2) + "\n")
    report = {"source": str(args.checkpoint), **info}
    (out / "conversion_info.json").write_text(json.dumps(report, indent=2) + "\n")
    ViTMAEConfig(**config_kwargs, mask_ratio=args.mask_ratio).save_pretrained(out)
    retfound_image_processor(info["image_size"]).save_pretrained(out)

    print(
        f"converted {args.checkpoint} -> {out}/model.safetensors ({info['layout']} layout): "
        f"hidden={info['hidden_size']} layers={info['num_hidden_layers']} heads={info['num_attention_heads']} "
        f"mlp={info['intermediate_size']} patch={info['patch_size']} image={info['image_size']}; "
        f"{len(info['unused_keys'])} checkpoint keys not converted (see conversion_info.json)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
