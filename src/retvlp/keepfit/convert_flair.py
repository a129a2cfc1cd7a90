"""Convert FLAIR / KeepFIT V1 checkpoints into KeepFIT models.

A FLAIR checkpoint (a dual encoder) becomes the released [`KeepFitModel`]; a KeepFIT V1 checkpoint, which also
holds the semantic knowledge attention (a pretraining module), becomes a [`KeepFitForPreTraining`] whose
`released_model` is that dual encoder.

FLAIR (Silva-Rodríguez et al.) and KeepFIT V1 (the MM-Retinal reference code) release their pretrained models as
``.pth`` files holding the ``state_dict()`` of one ``torch.nn.Module`` (sometimes nested under ``"model"`` /
``"state_dict"``, sometimes with the ``module.`` prefix of DistributedDataParallel). The names are::

    vision_model.model.*                              torchvision ResNet (conv1, bn1, layer{1..4}.{i}.conv{1,2,3},
                                                      bn{1,2,3}, downsample.{0,1}); fc removed (Identity)
    vision_model.projection_head_vision.projection.weight   (projection_dim, 2048)
    text_model.model.*                                a transformers BertModel, pooler included
    text_model.projection_head_text.projection.weight       (projection_dim, 768)
    logit_scale                                       ()
    attention.W_{q,k,v,o}.weight                      KeepFIT V1's semantic cross-attention (no biases)

and map onto ``KeepFitModel``'s names (``keepfit.`` prefixed inside ``KeepFitForPreTraining``) as::

    vision_model.embedder.embedder.{convolution,normalization}.*        (conv1, bn1)
    vision_model.encoder.stages.S.layers.L.layer.J.{convolution,normalization}.*   (layer{S+1}.L.conv/bn{J+1})
    vision_model.encoder.stages.S.layers.L.shortcut.{convolution,normalization}.*  (layer{S+1}.L.downsample.{0,1})
    text_model.*                                                        (text_model.model.*, pooler dropped)
    visual_projection.weight, text_projection.weight, logit_scale
    semantic_attention.{q,k,v,o}_proj.weight   KeepFitForPreTraining only  (attention.W_{q,k,v,o}.weight)

transformers' ``ResNetModel`` and torchvision's ResNet compute the same function: 7×7/2 stem, 3×3/2 max pool, the
stride of a bottleneck on its 3×3 convolution ("v1.5"), a 1×1 strided projection shortcut wherever the shape
changes, global average pooling. The FLAIR text pooling (mean of BERT layers 1, 2 and the last over all positions,
padding included) and V1's softmax across attention heads are reproduced by ``text_pooling="reference"`` and
``semantic_softmax_over="heads"`` (METHODS.md §2), the defaults of :func:`load_flair_checkpoint`.

Checkpoints are read with ``torch.load(..., weights_only=True)`` only: a file holding pickled Python objects
other than tensors and plain containers is refused, never unpickled.

CLI::

    python -m retvlp.keepfit.convert_flair flair_resnet.pth OUTPUT_DIR [--text-pooling reference]

This file sits in the flat ``keepfit`` folder (copied next to checkpoints for remote code): it imports only its
siblings, nothing from ``retvlp``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .configuration_keepfit import SOFTMAX_OVER, TEXT_POOLING, KeepFitConfig
from .modeling_keepfit import KeepFitForPreTraining, KeepFitModel, upgrade_legacy_state_dict

__all__ = [
    "ConversionReport",
    "convert_flair_state_dict",
    "infer_flair_config_kwargs",
    "load_flair_checkpoint",
    "main",
    "read_flair_state_dict",
]

# Source prefixes (FLAIR / KeepFIT V1 module names).
VISION_SRC = "vision_model.model."
VISION_PROJ_SRC = "vision_model.projection_head_vision.projection.weight"
TEXT_SRC = "text_model.model."
TEXT_PROJ_SRC = "text_model.projection_head_text.projection.weight"
LOGIT_SCALE_SRC = "logit_scale"
ATTENTION_SRC = "attention."
# Target prefixes (KeepFitModel attribute names; under `keepfit.` in KeepFitForPreTraining).
VISION_DST = "vision_model."
TEXT_DST = "text_model."

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "model_state")
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BLOCK_RE = re.compile(r"^layer(\d+)\.(\d+)\.")
_BERT_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.")
_BERT_EMBEDDING_KEYS = (
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
)
_BERT_LAYER_KEYS = tuple(
    f"{module}.{param}"
    for module in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    )
    for param in ("weight", "bias")
)
_ATTENTION_MAP = {f"{ATTENTION_SRC}W_{x}.weight": f"semantic_attention.{x}_proj.weight" for x in "qkvo"}

# Checkpoint keys that are expected and deliberately not converted, with the reason shown in the report.
_KNOWN_UNUSED = (
    (VISION_SRC + "fc.", "ImageNet classifier of the torchvision ResNet (FLAIR replaces it by Identity)"),
    (TEXT_SRC + "pooler.", "BERT pooler: unused by the FLAIR text pooling; KeepFitModel's BERT has none"),
    (TEXT_SRC + "embeddings.position_ids", "non-persistent buffer, rebuilt by BertModel"),
    (TEXT_SRC + "embeddings.token_type_ids", "non-persistent buffer, rebuilt by BertModel"),
    ("atte_TD2KD.", "KeepFIT V1 feature-fusion ablation (training only), not part of the KeepFIT V2 models"),
    ("atte_KD2TD.", "KeepFIT V1 feature-fusion ablation (training only), not part of the KeepFIT V2 models"),
)
UNKNOWN = "unknown key: not converted"


@dataclass
class ConversionReport:
    """What :func:`convert_flair_state_dict` (and :func:`load_flair_checkpoint`) did.

    converted: target key → source key, for every tensor renamed.
    unused_keys: source key → why it was not converted (classifier ``fc.*``, BERT ``pooler.*``, buffers, or
        ``UNKNOWN``).
    missing_keys: target key → the source key that would have provided it, for targets the checkpoint lacks.
    defaulted_keys: targets filled with a default because the checkpoint lacks them (BatchNorm
        ``num_batches_tracked`` = 0, which eval-mode outputs do not depend on).
    has_semantic_attention: whether the checkpoint holds KeepFIT V1's ``attention.*`` weights.
    config_kwargs: the `KeepFitConfig` keyword arguments used (only set by :func:`load_flair_checkpoint`).
    """

    converted: dict[str, str] = field(default_factory=dict)
    unused_keys: dict[str, str] = field(default_factory=dict)
    missing_keys: dict[str, str] = field(default_factory=dict)
    defaulted_keys: list[str] = field(default_factory=list)
    has_semantic_attention: bool = False
    config_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def unknown_keys(self) -> list[str]:
        """Unused source keys this converter does not recognise."""
        return [key for key, why in self.unused_keys.items() if why == UNKNOWN]

    def to_dict(self) -> dict[str, Any]:
        return {
            "converted": len(self.converted),
            "unused_keys": dict(self.unused_keys),
            "unknown_keys": self.unknown_keys,
            "missing_keys": dict(self.missing_keys),
            "defaulted_keys": list(self.defaulted_keys),
            "has_semantic_attention": self.has_semantic_attention,
            "config_kwargs": self.config_kwargs,
        }

    def summary(self) -> str:
        lines = [
            f"converted {len(self.converted)} tensors; semantic attention: "
            f"{'yes' if self.has_semantic_attention else 'no (not in the checkpoint)'}"
        ]
        if self.unused_keys:
            lines.append(f"unused checkpoint keys ({len(self.unused_keys)}):")
            lines += [f"  {key}: {why}" for key, why in self.unused_keys.items()]
        if self.missing_keys:
            lines.append(f"missing weights ({len(self.missing_keys)}):")
            lines += [f"  {dst} (checkpoint key {src!r})" for dst, src in self.missing_keys.items()]
        if self.defaulted_keys:
            lines.append(
                f"filled with defaults ({len(self.defaulted_keys)}): {', '.join(self.defaulted_keys)}"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------------
def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` dict inside a loaded checkpoint, ``module.`` prefixes stripped."""
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{source}: not a state dict: expected a dict of tensors (or one nested under "
            f"{' / '.join(repr(k) for k in _WRAPPER_KEYS)}), got {type(obj).__name__}."
        )
    for _ in range(3):  # {"model": sd, "epoch": ...}, {"state_dict": {"model": sd}}, ...
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not obj:
        raise ValueError(f"{source}: not a state dict: the dict is empty.")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    bad += [repr(k) for k in obj if not isinstance(k, str)]
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise ValueError(f"{source}: not a plain state dict: entries that are not named tensors: {shown}.")
    state_dict: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = key
        while name.startswith("module."):
            name = name[len("module.") :]
        if name in state_dict:
            raise ValueError(f"{source}: key {name!r} occurs both with and without the 'module.' prefix.")
        state_dict[name] = value
    return state_dict


def read_flair_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a FLAIR / KeepFIT V1 ``.pth`` file with ``torch.load(weights_only=True)``; return its flat state dict.

    Raises ``ValueError`` naming the file when it is not a plain state dict (pickled Python objects are refused,
    not unpickled).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FLAIR checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise ValueError(
            f"{path}: refused to load: torch.load(weights_only=True) cannot read it without unpickling a Python "
            f"object{what}. Only plain state dicts are accepted (a dict of tensors, possibly under 'model' or "
            "'state_dict'); unpickling arbitrary objects can execute code. If the file comes from a trusted "
            "source, re-save just its weights: torch.save(model.state_dict(), 'weights.pth')."
        ) from err
    except Exception as err:  # corrupt or non-torch files: RuntimeError, EOFError, ...
        raise ValueError(
            f"{path}: could not be read as a torch checkpoint: {type(err).__name__}: {err}"
        ) from err
    return _unwrap(obj, str(path))


# --------------------------------------------------------------------------------------------------
# Renaming
# --------------------------------------------------------------------------------------------------
def _resnet_blocks(vision: Mapping[str, torch.Tensor]) -> dict[int, list[int]]:
    """Stage number (1-based, as torchvision's ``layerN``) → sorted block indices found."""
    blocks: dict[int, set[int]] = {}
    for key in vision:
        found = _BLOCK_RE.match(key)
        if found:
            blocks.setdefault(int(found.group(1)), set()).add(int(found.group(2)))
    return {stage: sorted(indices) for stage, indices in sorted(blocks.items())}


def _resnet_plan(vision: Mapping[str, torch.Tensor]) -> list[tuple[str, str]]:
    """(torchvision name, ResNetModel name) pairs for every tensor the ResNet found in ``vision`` should have."""
    plan = [("conv1.weight", "embedder.embedder.convolution.weight")]
    plan += [(f"bn1.{p}", f"embedder.embedder.normalization.{p}") for p in _BN_PARAMS]
    bottleneck = any(re.match(r"^layer\d+\.\d+\.(conv|bn)3\.", key) for key in vision)
    convs = 3 if bottleneck else 2
    for stage, blocks in _resnet_blocks(vision).items():
        for block in blocks:
            src, dst = f"layer{stage}.{block}", f"encoder.stages.{stage - 1}.layers.{block}"
            for j in range(convs):
                plan.append((f"{src}.conv{j + 1}.weight", f"{dst}.layer.{j}.convolution.weight"))
                plan += [(f"{src}.bn{j + 1}.{p}", f"{dst}.layer.{j}.normalization.{p}") for p in _BN_PARAMS]
            if any(key.startswith(f"{src}.downsample.") for key in vision):
                plan.append((f"{src}.downsample.0.weight", f"{dst}.shortcut.convolution.weight"))
                plan += [(f"{src}.downsample.1.{p}", f"{dst}.shortcut.normalization.{p}") for p in _BN_PARAMS]
    return plan


def _bert_plan(text: Mapping[str, torch.Tensor]) -> list[str]:
    layers = sorted({int(m.group(1)) for m in map(_BERT_LAYER_RE.match, text) if m})
    return list(_BERT_EMBEDDING_KEYS) + [
        f"encoder.layer.{i}.{key}" for i in layers for key in _BERT_LAYER_KEYS
    ]


def convert_flair_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename a FLAIR / KeepFIT V1 state dict to `KeepFitModel` keys, plus `semantic_attention.*` (a
    `KeepFitForPreTraining` module) for KeepFIT V1's attention. No shape checks against a model.

    ``{"model": sd}`` / ``{"state_dict": sd}`` wrappers and ``module.`` prefixes are accepted. Returns the
    converted tensors and a [`ConversionReport`]: checkpoint keys not converted (``fc.*``, ``pooler.*``,
    buffers, unknown keys) and targets the checkpoint should have had but lacks (e.g. a block's BatchNorm
    statistics). A missing ``num_batches_tracked`` is filled with 0 and listed in ``defaulted_keys``.
    """
    sd = _unwrap(state_dict, "state_dict")
    if sd and not any(k.startswith((VISION_SRC, TEXT_SRC)) for k in sd):
        shown = ", ".join(sorted(sd)[:6])
        raise ValueError(
            f"not a FLAIR / KeepFIT V1 checkpoint: no key starts with {VISION_SRC!r} or {TEXT_SRC!r} "
            f"(first keys: {shown})."
        )
    vision = {k[len(VISION_SRC) :]: v for k, v in sd.items() if k.startswith(VISION_SRC)}
    if any(k.startswith("features.") for k in vision):
        raise ValueError(
            "this checkpoint's image encoder is an EfficientNet (vision_model.model.features.*); only the "
            "ResNet variants of FLAIR / KeepFIT can be converted to KeepFitModel."
        )
    text = {k[len(TEXT_SRC) :]: v for k, v in sd.items() if k.startswith(TEXT_SRC)}

    plan: list[tuple[str, str]] = [(VISION_SRC + s, VISION_DST + d) for s, d in _resnet_plan(vision)]
    plan += [(TEXT_SRC + key, TEXT_DST + key) for key in _bert_plan(text)]
    plan += [
        (VISION_PROJ_SRC, "visual_projection.weight"),
        (TEXT_PROJ_SRC, "text_projection.weight"),
        (LOGIT_SCALE_SRC, "logit_scale"),
    ]
    report = ConversionReport(has_semantic_attention=any(k.startswith(ATTENTION_SRC) for k in sd))
    if report.has_semantic_attention:
        plan += list(_ATTENTION_MAP.items())

    converted: dict[str, torch.Tensor] = {}
    for src, dst in plan:
        if src in sd:
            tensor = sd[src]
            if src == LOGIT_SCALE_SRC and tensor.numel() == 1:
                tensor = tensor.reshape(())  # some scripts store it as shape (1,)
            converted[dst] = tensor
            report.converted[dst] = src
        elif dst.endswith(".num_batches_tracked"):
            converted[dst] = torch.tensor(0, dtype=torch.long)
            report.defaulted_keys.append(dst)
        else:
            report.missing_keys[dst] = src

    used = set(report.converted.values())
    for key in sd:
        if key in used:
            continue
        reason = next((why for prefix, why in _KNOWN_UNUSED if key.startswith(prefix)), UNKNOWN)
        report.unused_keys[key] = reason
    return converted, report


# --------------------------------------------------------------------------------------------------
# Config inference
# --------------------------------------------------------------------------------------------------
def _tensor(sd: Mapping[str, torch.Tensor], key: str, ndim: int, why: str) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"checkpoint has no key {key!r}, needed to infer {why}.")
    tensor = sd[key]
    if tensor.ndim != ndim:
        raise ValueError(f"{key!r} has shape {tuple(tensor.shape)}; expected a {ndim}-d tensor ({why}).")
    return tensor


def _infer_resnet(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    vision = {k[len(VISION_SRC) :]: v for k, v in sd.items() if k.startswith(VISION_SRC)}
    stem = _tensor(sd, VISION_SRC + "conv1.weight", 4, "the ResNet stem")
    if tuple(stem.shape[2:]) != (7, 7):
        raise ValueError(
            f"{VISION_SRC}conv1.weight is {tuple(stem.shape)}: transformers' ResNetModel has a 7×7 stem "
            "convolution; this ResNet cannot be converted."
        )
    stages = _resnet_blocks(vision)
    if not stages or list(stages) != list(range(1, len(stages) + 1)):
        raise ValueError(
            f"ResNet stages found: layer{list(stages)}; expected layer1, layer2, ... without gaps."
        )
    for stage, blocks in stages.items():
        if blocks != list(range(len(blocks))):
            raise ValueError(f"ResNet stage layer{stage} has blocks {blocks}; expected 0..{len(blocks) - 1}.")
    bottleneck = any(re.match(r"^layer\d+\.\d+\.(conv|bn)3\.", key) for key in vision)
    last_conv = "conv3" if bottleneck else "conv2"
    hidden_sizes = []
    for stage in stages:
        out = _tensor(sd, f"{VISION_SRC}layer{stage}.0.{last_conv}.weight", 4, "the stage widths")
        hidden_sizes.append(int(out.shape[0]))
        if bottleneck:
            reduce = _tensor(sd, f"{VISION_SRC}layer{stage}.0.conv1.weight", 4, "the bottleneck width")
            middle = _tensor(sd, f"{VISION_SRC}layer{stage}.0.conv2.weight", 4, "the bottleneck width")
            if reduce.shape[0] * 4 != out.shape[0] or middle.shape[1] != middle.shape[0]:
                raise ValueError(
                    f"ResNet stage layer{stage}: bottleneck width {reduce.shape[0]} and 3×3 conv "
                    f"{tuple(middle.shape)} for {out.shape[0]} output channels. transformers' ResNetModel needs "
                    "width = channels / 4 and no groups (ResNet-50/101/152); wide ResNets and ResNeXts are not "
                    "supported."
                )
    return {
        "model_type": "resnet",
        "num_channels": int(stem.shape[1]),
        "embedding_size": int(stem.shape[0]),
        "hidden_sizes": hidden_sizes,
        "depths": [len(blocks) for blocks in stages.values()],
        "layer_type": "bottleneck" if bottleneck else "basic",
        "hidden_act": "relu",
        "downsample_in_first_stage": False,  # torchvision: layer1 has stride 1
        "downsample_in_bottleneck": False,  # torchvision v1.5: the stride is on the 3×3 convolution
    }


def _infer_bert(sd: Mapping[str, torch.Tensor], overrides: Mapping[str, Any]) -> dict[str, Any]:
    words = _tensor(sd, TEXT_SRC + "embeddings.word_embeddings.weight", 2, "the BERT vocabulary and width")
    hidden = int(words.shape[1])
    layers = sorted({int(m.group(1)) for m in (_BERT_LAYER_RE.match(k[len(TEXT_SRC) :]) for k in sd) if m})
    if not layers:
        raise ValueError(f"no BERT layers ({TEXT_SRC}encoder.layer.N.*) in the checkpoint.")
    kwargs: dict[str, Any] = {
        "model_type": "bert",
        "vocab_size": int(words.shape[0]),
        "hidden_size": hidden,
        "num_hidden_layers": max(layers) + 1,
        "intermediate_size": int(
            _tensor(
                sd, TEXT_SRC + "encoder.layer.0.intermediate.dense.weight", 2, "the BERT MLP width"
            ).shape[0]
        ),
        "max_position_embeddings": int(
            _tensor(sd, TEXT_SRC + "embeddings.position_embeddings.weight", 2, "the BERT length").shape[0]
        ),
        "type_vocab_size": int(
            _tensor(sd, TEXT_SRC + "embeddings.token_type_embeddings.weight", 2, "the token types").shape[0]
        ),
    }
    if "num_attention_heads" not in overrides:
        if hidden % 64:
            raise ValueError(
                f"cannot infer the BERT head count from hidden_size {hidden} (not a multiple of the usual head "
                "size 64): pass text_config={'num_attention_heads': N} (CLI: --text-num-attention-heads N)."
            )
        kwargs["num_attention_heads"] = hidden // 64
    return {**kwargs, **overrides}


def infer_flair_config_kwargs(state_dict: Mapping[str, torch.Tensor], **config_kwargs: Any) -> dict[str, Any]:
    """`KeepFitConfig` keyword arguments for a FLAIR / KeepFIT V1 state dict.

    Vision sizes (stem, stage widths and depths) and text sizes (vocabulary, width, layers, MLP width, positions;
    heads = width / 64) come from the tensors, ``projection_dim`` from the projections. Defaults reproduce the
    reference code: ``text_pooling="reference"``, ``semantic_softmax_over="heads"``, no appearance branch,
    ``use_semantic_injection`` = whether ``attention.*`` weights exist. ``config_kwargs`` override all of it;
    ``vision_config`` / ``text_config`` dicts are merged over the inferred ones.
    """
    sd = _unwrap(state_dict, "state_dict")
    overrides = dict(config_kwargs)
    vision_override = overrides.pop("vision_config", None) or {}
    text_override = overrides.pop("text_config", None) or {}
    if not isinstance(vision_override, Mapping):
        vision_config: Any = vision_override  # a ready config object: used as given
    else:
        vision_config = {**_infer_resnet(sd), **vision_override}
    if not isinstance(text_override, Mapping):
        text_config: Any = text_override
    else:
        text_config = _infer_bert(sd, text_override)
    projection_key = VISION_PROJ_SRC if VISION_PROJ_SRC in sd else TEXT_PROJ_SRC
    projection = _tensor(sd, projection_key, 2, "projection_dim")
    kwargs = {
        "vision_config": vision_config,
        "text_config": text_config,
        "projection_dim": int(projection.shape[0]),
        "text_pooling": "reference",
        "semantic_softmax_over": "heads",
        "use_semantic_injection": any(k.startswith(ATTENTION_SRC) for k in sd),
        "use_appearance_injection": False,
    }
    kwargs.update(overrides)
    return kwargs


# --------------------------------------------------------------------------------------------------
# Loading into a KeepFitModel / KeepFitForPreTraining
# --------------------------------------------------------------------------------------------------
def _hints(missing: list[str], unexpected: list[str], config: KeepFitConfig) -> list[str]:
    hints = []
    if any(k.startswith(("appearance_quantizer.", "appearance_attention.")) for k in missing):
        hints.append("FLAIR / KeepFIT V1 have no appearance branch: use use_appearance_injection=False.")
    if any(k.startswith("semantic_attention.") for k in missing) and not any(
        k.startswith("semantic_attention.") for k in unexpected
    ):
        hints.append("the checkpoint has no attention.W_* weights: use use_semantic_injection=False.")
    if any(k.startswith("semantic_attention.") for k in unexpected) and not config.use_semantic_injection:
        hints.append("the checkpoint has KeepFIT V1 attention weights: use use_semantic_injection=True.")
    if any(".shortcut." in k for k in missing + unexpected):
        hints.append(
            "projection shortcuts differ from the vision config: check hidden_sizes / depths / "
            "downsample_in_first_stage against the checkpoint (or pass config=None to infer them)."
        )
    return hints


def load_flair_checkpoint(
    path: str | os.PathLike | Mapping[str, torch.Tensor],
    config: KeepFitConfig | None = None,
    **config_kwargs: Any,
) -> tuple[KeepFitModel | KeepFitForPreTraining, ConversionReport]:
    """Build a KeepFIT model holding the weights of a FLAIR / KeepFIT V1 checkpoint.

    The model is the released dual encoder [`KeepFitModel`] when the config has no knowledge module (FLAIR:
    the inferred default without ``attention.*`` weights), and [`KeepFitForPreTraining`] when it has one
    (KeepFIT V1's semantic attention; ``.released_model`` is the dual encoder).

    Args:
        path: the ``.pth`` file (read with ``torch.load(weights_only=True)``), or an already loaded state dict.
        config: the model configuration; by default it is inferred from the tensors
            (:func:`infer_flair_config_kwargs`, which ``config_kwargs`` override, e.g.
            ``text_pooling="layers_mean"`` or ``text_config={"num_attention_heads": 12}``).

    Every weight of the model must come from the checkpoint (BatchNorm ``num_batches_tracked`` may default to
    0), every converted tensor must fit the model's shape; otherwise a ``ValueError`` names the keys (and both
    shapes) and nothing is returned. The model is returned in eval mode, with the conversion report.
    """
    if isinstance(path, Mapping):
        state_dict = _unwrap(path, "state_dict")
    else:
        state_dict = read_flair_state_dict(path)
    if config is not None and config_kwargs:
        raise TypeError("load_flair_checkpoint: pass either a config or config keyword arguments, not both.")
    converted, report = convert_flair_state_dict(state_dict)
    if config is None:
        kwargs = infer_flair_config_kwargs(state_dict, **config_kwargs)
        config = KeepFitConfig(**kwargs)
    report.config_kwargs = config.to_diff_dict()

    pretraining = config.use_semantic_injection or config.use_appearance_injection
    model = KeepFitForPreTraining(config) if pretraining else KeepFitModel(config)
    # Compared in the converter's names: the released model's at the top level (no `keepfit.` prefix).
    prefix = KeepFitForPreTraining.base_model_prefix + "."
    target = {k.removeprefix(prefix): v for k, v in model.state_dict().items()}
    missing = [k for k in target if k not in converted]
    unexpected = [k for k in converted if k not in target]
    mismatched = [
        f"{k} (checkpoint key {report.converted.get(k, '-')!r}): checkpoint {tuple(converted[k].shape)} vs "
        f"model {tuple(target[k].shape)}"
        for k in converted
        if k in target and converted[k].shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"cannot load the FLAIR / KeepFIT V1 checkpoint into {type(model).__name__}:"]
        if missing:
            shown = [
                f"{k} (checkpoint key {report.missing_keys[k]!r})" if k in report.missing_keys else k
                for k in missing
            ]
            lines.append(f"  missing weights ({len(missing)}): " + "; ".join(shown))
        if unexpected:
            lines.append(
                f"  converted weights the model does not have ({len(unexpected)}): "
                + "; ".join(f"{k} (checkpoint key {report.converted.get(k, '-')!r})" for k in unexpected)
            )
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): " + "; ".join(mismatched))
        lines += [f"  hint: {hint}" for hint in _hints(missing, unexpected, config)]
        raise ValueError("\n".join(lines))
    model.load_state_dict(upgrade_legacy_state_dict(converted) if pretraining else converted, strict=True)
    model.eval()
    return model, report


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
BIO_CLINICAL_BERT = "emilyalsentzer/Bio_ClinicalBERT"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retvlp.keepfit.convert_flair",
        description="Convert a FLAIR / KeepFIT V1 checkpoint (.pth state dict) into a KeepFitModel directory "
        "(a KeepFitForPreTraining one, which AutoModel reads as KeepFitModel, when it has KeepFIT V1's attention).",
    )
    parser.add_argument("checkpoint", help="FLAIR / KeepFIT V1 .pth file (a plain state dict)")
    parser.add_argument("output_dir", help="directory for save_pretrained")
    parser.add_argument(
        "--text-pooling",
        choices=TEXT_POOLING,
        default="reference",
        help="text pooling of the converted model (default: reference, FLAIR's mean over all positions)",
    )
    parser.add_argument(
        "--semantic-softmax-over",
        choices=SOFTMAX_OVER,
        default="heads",
        help="KeepFIT V1 attention softmax (default: heads, as the reference code)",
    )
    parser.add_argument(
        "--text-num-attention-heads", type=int, default=None, help="BERT heads (default: hidden_size / 64)"
    )
    parser.add_argument(
        "--knowledge-num-heads", type=int, default=2, help="heads of the semantic attention (KeepFIT V1: 2)"
    )
    parser.add_argument(
        "--tokenizer",
        default=BIO_CLINICAL_BERT,
        help="the text tower's tokenizer, saved with the model so zero-shot works from the folder alone: a "
        f"local folder or Hub id (default {BIO_CLINICAL_BERT}, FLAIR's; offline, give a local copy)",
    )
    return parser


def save_processor(out: Path, tokenizer_source: str) -> str:
    """Save FLAIR's preprocessing (512 px, aspect-preserving resize and zero pad, no normalisation) with the
    tokenizer, so `retvlp evaluate` / `retvlp benchmark` take the folder as a model. A tokenizer that cannot be
    loaded (offline, no local copy) leaves the image processor alone: image-only protocols still run, and the
    returned line says what zero-shot needs."""
    from transformers import AutoTokenizer

    from .processing_keepfit import KeepFitProcessor, keepfit_image_processor

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    except (OSError, ValueError) as error:
        keepfit_image_processor().save_pretrained(out)
        return (
            f"warning: no tokenizer from {tokenizer_source!r} ({type(error).__name__}); saved the image processor "
            "only: zero-shot and few-shot need text, rerun with --tokenizer LOCAL_FOLDER"
        )
    KeepFitProcessor(image_processor=keepfit_image_processor(), tokenizer=tokenizer).save_pretrained(out)
    return f"processor: FLAIR's 512 px preprocessing and the {tokenizer_source} tokenizer"


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    kwargs: dict[str, Any] = {
        "text_pooling": args.text_pooling,
        "semantic_softmax_over": args.semantic_softmax_over,
        "knowledge_num_heads": args.knowledge_num_heads,
    }
    if args.text_num_attention_heads is not None:
        kwargs["text_config"] = {"num_attention_heads": args.text_num_attention_heads}
    try:
        model, report = load_flair_checkpoint(args.checkpoint, **kwargs)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from err
    out = Path(args.output_dir)
    model.save_pretrained(out)
    processor_line = save_processor(out, args.tokenizer)
    info = {"source": str(args.checkpoint), **report.to_dict()}
    (out / "conversion_report.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    print(f"converted {args.checkpoint} -> {out}")
    print(report.summary())
    print(processor_line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
