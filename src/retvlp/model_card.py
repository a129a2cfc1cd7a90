"""Model cards for retvlp checkpoints: Hub metadata (including a `model-index` of evaluation results) and a
Markdown body rendered from the Jinja templates in ``retvlp/model_cards/``.

:func:`render_model_card` reads a checkpoint folder (``config.json``, and when present
``training_summary.json``, ``eval_results.json``, ``processor_config.json`` and the run's ``run_config.yaml``)
and returns a :class:`huggingface_hub.ModelCard`; :func:`render_adapter_card` does the same for a PEFT LoRA
adapter folder. Nothing here touches the network.

Evaluation results are read in the layout of the evaluation suite::

    {"dataset": {"name": ..., "classes": [...], "multi_label": false, "num_train": 900, "num_test": 231},
     "results": [{"model": "pretrained", "task": "linear-probe", "method": null, "fraction": 0.1,
                  "shots": null, "seeds": [0, 1, 2],
                  "metrics": {"roc_auc": {"mean": 0.8, "std": 0.01, "values": [...]}, ...}}, ...]}

(the older per-model summary the pretraining loop writes, ``{"pretrained": {"zero_shot": {"accuracy": ...}}}``,
is accepted too). Rows of the evaluated model become ``EvalResult`` entries of the card metadata; rows of other
models (``random_init``, ...) appear only as baselines in the Markdown table. Newer results also carry
``dataset.positive_class`` (binary tasks: the class PR-AUC is computed for; shown in the PR-AUC column header and
stored in that metric's ``args``) and ``references`` (majority-class and chance levels of the test set; shown as
reference rows of the table, never in ``model-index``).

How the results survive ``model-index``: huggingface_hub groups `EvalResult`s by (task type, dataset type,
config, split, revision) and keeps the task *name* of the first result of each group only, while every metric
entry keeps its own ``name``, ``config`` and ``args``. So the task name here depends on the task type alone
("Zero-shot image classification" / "Image classification"), and the protocol of a row lives with each metric:
``name`` reads e.g. "ROC-AUC (linear probe, 10% labels)", ``config`` is a compact protocol key
(``"linear-probe/fraction=0.1"``) and ``args`` holds protocol, method, label fraction, shots, seeds and the
standard deviation over seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

SUPPORTED_MODEL_TYPES = ("maskedclip", "keepfit")

FAMILY_TITLES = {"maskedclip": "MaskedCLIP", "keepfit": "KeepFIT V2"}

BASE_TAGS = (
    "retvlp",
    "medical-imaging",
    "ophthalmology",
    "retina",
    "vision-language",
    "zero-shot-image-classification",
)

TASK_ORDER = ("zero-shot", "few-shot", "linear-probe", "finetune", "lora")
TASK_LABELS = {
    "zero-shot": "zero-shot",
    "few-shot": "few-shot",
    "linear-probe": "linear probe",
    "finetune": "full fine-tuning",
    "lora": "LoRA fine-tuning",
}
METHOD_LABELS = {
    "tip-adapter": "Tip-Adapter",
    "tip-adapter-f": "Tip-Adapter-F",
    "clip-adapter": "CLIP-Adapter",
    "linear-probe": "linear probe",
    "logistic-regression": "logistic regression",
    "prototypes": "class prototypes",
}
METRIC_ORDER = ("accuracy", "balanced_accuracy", "roc_auc", "pr_auc", "quadratic_kappa", "f1_macro")
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "quadratic_kappa": "Quadratic weighted kappa",
    "f1_macro": "Macro F1",
}
ZERO_SHOT_TASK_NAME = "Zero-shot image classification"
IMAGE_CLASSIFICATION_TASK_NAME = "Image classification"

# Lines of the templates between these markers form the intended-use / limitations section, which the adapter
# card reuses from its base family's template.
SECTION_START = "<!-- retvlp:intended-use:start -->"
SECTION_END = "<!-- retvlp:intended-use:end -->"

_VIT_NAMES = {
    (192, 12, 3): "ViT-Ti",
    (384, 12, 6): "ViT-S",
    (768, 12, 12): "ViT-B",
    (1024, 24, 16): "ViT-L",
    (1280, 32, 16): "ViT-H",
}
_RESNET_NAMES = {
    ("basic", (2, 2, 2, 2)): "ResNet-18",
    ("basic", (3, 4, 6, 3)): "ResNet-34",
    ("bottleneck", (3, 4, 6, 3)): "ResNet-50",
    ("bottleneck", (3, 4, 23, 3)): "ResNet-101",
    ("bottleneck", (3, 8, 36, 3)): "ResNet-152",
}
_DEFAULT_CLASSES = ["diabetic retinopathy", "glaucoma", "normal"]
_PROMPTS = {"maskedclip": "a fundus photograph of {}", "keepfit": "A fundus photograph of {}."}
_SYNTHETIC_PROVENANCE = (
    "Synthetic, procedurally generated fundus-like images and captions from retvlp's demo generator "
    "(`retvlp.data.synthetic`); no real patient data."
)


# --------------------------------------------------------------------------------------------------- inputs


def template_path(name: str) -> Path:
    """Path of a packaged card template (``"maskedclip"`` or ``"keepfit"``)."""
    return Path(str(resources.files("retvlp.model_cards").joinpath(f"{name}.md")))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def _load_optional(value: Mapping | str | Path | None, default: Path, what: str) -> dict | None:
    """A dict given as such, read from a path, or from `default` when it exists; `{}` means 'none'."""
    if value is None:
        return _read_json(default) if default.is_file() else None
    if isinstance(value, Mapping):
        return dict(value) or None
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    return _read_json(path) or None


def _read_config(checkpoint_dir: Path) -> dict:
    path = checkpoint_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} has no config.json: not a saved retvlp checkpoint")
    config = _read_json(path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"cannot render a model card for model_type {model_type!r} (from {path}); "
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return config


def _read_yaml(path: Path) -> dict | None:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return None
    return loaded if isinstance(loaded, dict) else None


def find_run_config(checkpoint_dir: str | Path) -> dict | None:
    """The pretraining loop writes `run_config.yaml` in its output directory, the parent of `final/` (and of
    `checkpoint-*`); other folders are only searched themselves."""
    checkpoint_dir = Path(checkpoint_dir)
    candidates = [checkpoint_dir / "run_config.yaml"]
    name = checkpoint_dir.resolve().name
    if name == "final" or name.startswith("checkpoint-"):
        candidates.append(checkpoint_dir.resolve().parent / "run_config.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return _read_yaml(candidate)
    return None


def _default_model_name(checkpoint_dir: Path, repo_id: str | None) -> str:
    if repo_id:
        return repo_id.rstrip("/").split("/")[-1]
    directory = checkpoint_dir.resolve()
    if directory.name == "final" or directory.name.startswith("checkpoint-"):
        directory = directory.parent
    return directory.name or "retvlp-model"


# ----------------------------------------------------------------------------------------- architecture


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _vit_name(vision: Mapping) -> str:
    width = vision.get("hidden_size")
    depth = vision.get("num_hidden_layers")
    heads = vision.get("num_attention_heads")
    patch = vision.get("patch_size")
    size = vision.get("image_size")
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    size = size[0] if isinstance(size, (list, tuple)) else size
    known = _VIT_NAMES.get((width, depth, heads))
    shape = f"width {width}, depth {depth}, {heads} heads, MLP {vision.get('intermediate_size')}"
    name = f"{known}/{patch}" if known else f"ViT/{patch} ({shape})"
    if known:
        name += f" ({shape})"
    return f"{name}, {size}×{size} px input"


def _bert_description(text: Mapping) -> str:
    width, depth, heads = (
        text.get("hidden_size"),
        text.get("num_hidden_layers"),
        text.get("num_attention_heads"),
    )
    size = " (BERT-base size)" if (width, depth, heads) == (768, 12, 12) else ""
    kind = "BERT" if text.get("model_type", "bert") == "bert" else str(text.get("model_type"))
    return (
        f"{kind}{size}: width {width}, {depth} layers, {heads} heads, vocabulary {text.get('vocab_size')}, "
        f"up to {text.get('max_position_embeddings')} positions"
    )


def _resnet_name(vision: Mapping) -> str:
    if vision.get("model_type") != "resnet":
        sizes = vision.get("hidden_sizes") or vision.get("hidden_size")
        return f"{vision.get('model_type')} backbone (widths {sizes})"
    layer_type = vision.get("layer_type", "bottleneck")
    depths = tuple(vision.get("depths") or ())
    sizes = list(vision.get("hidden_sizes") or ())
    known = _RESNET_NAMES.get((layer_type, depths))
    standard = sizes == ([256, 512, 1024, 2048] if layer_type == "bottleneck" else [64, 128, 256, 512])
    detail = f"{layer_type} blocks, depths {list(depths)}, widths {sizes}"
    if known and standard:
        return f"{known} ({detail})"
    return f"custom ResNet ({detail})"


_RELEASED_CLASS = {"maskedclip": "MaskedCLIPModel", "keepfit": "KeepFitModel"}


def _maskedclip_architecture(config: Mapping) -> list[tuple[str, str]]:
    vision = config.get("vision_config") or {}
    text = config.get("text_config") or {}
    rows = [("Image encoder E_I", f"{_vit_name(vision)} (MAE-style, encodes visible patches + cls)")]
    rows.append(
        (
            "Pixel decoder D_I",
            f"width {vision.get('decoder_hidden_size')}, {vision.get('decoder_num_hidden_layers')} blocks, "
            f"{vision.get('decoder_num_attention_heads')} heads; mask ratio {_fmt(vision.get('mask_ratio'))}, "
            f"per-patch normalised pixel targets: {'yes' if vision.get('norm_pix_loss', True) else 'no'} "
            "(pretraining only: in MaskedCLIPForPreTraining, not in these weights)",
        )
    )
    bridge = (
        f"{config.get('bridge_num_hidden_layers')} transformer blocks at the encoder width"
        if config.get("use_bridge", True)
        else "disabled (CLIP head directly on E_I)"
    )
    rows.append(("Bridge transformer B", bridge))
    if config.get("use_mfd", True):
        rows.append(
            (
                "Feature decoder D_F",
                f"width {config.get('feature_decoder_hidden_size')}, "
                f"{config.get('feature_decoder_num_hidden_layers')} blocks, "
                f"{config.get('feature_decoder_num_attention_heads')} heads; momentum encoder EMA "
                f"{_fmt(config.get('momentum'))} (pretraining only: in MaskedCLIPForPreTraining, not in these weights)",
            )
        )
    rows.append(("Text encoder E_T", _bert_description(text)))
    rows.append(
        (
            "Shared embedding space",
            f"{config.get('projection_dim')}-d, image token: {config.get('clip_image_pooling', 'cls')}, "
            "learnable logit scale",
        )
    )
    losses = [name for name in ("mim", "clip", "mfd") if config.get(f"use_{name}", True)]
    rows.append(
        (
            "Pretraining objective",
            "L_mim + λ_clip·L_lg_clip + λ_mfd·L_mfd with "
            f"λ_clip = {_fmt(config.get('lambda_clip'))}, λ_mfd = {_fmt(config.get('lambda_mfd'))} "
            f"(terms enabled: {', '.join(losses) or 'none'})",
        )
    )
    return rows


def _keepfit_architecture(config: Mapping) -> list[tuple[str, str]]:
    vision = config.get("vision_config") or {}
    text = config.get("text_config") or {}
    layers = config.get("text_pooling_layers")
    rows = [
        ("Image encoder E_v", _resnet_name(vision)),
        (
            "Text encoder E_t",
            f"{_bert_description(text)}; pooling {config.get('text_pooling')} (layers {layers})",
        ),
        ("Shared embedding space", f"{config.get('projection_dim')}-d, learnable logit scale"),
        (
            "Semantic knowledge injection",
            (
                f"{config.get('knowledge_num_heads')}-head cross-attention, dropout "
                f"{_fmt(config.get('knowledge_attention_dropout'))}, softmax over "
                f"{config.get('semantic_softmax_over')} (pretraining only: in KeepFitForPreTraining)"
            )
            if config.get("use_semantic_injection", True)
            else "disabled",
        ),
        (
            "Appearance knowledge injection",
            (
                f"frozen IBQ codebook K×D = {config.get('codebook_size')}×{config.get('code_dim')}, "
                f"attention temperature {_fmt(config.get('appearance_temperature'))} (pretraining only: in "
                "KeepFitForPreTraining, not in these weights)"
            )
            if config.get("use_appearance_injection", True)
            else f"disabled (codebook {config.get('codebook_size')}×{config.get('code_dim')} unused)",
        ),
        (
            "Pretraining objective",
            "L_itc^p + L_itc^m + λ1·L_EK^s + λ2·L_EK^a with "
            f"λ1 = {_fmt(config.get('lambda_semantic'))}, λ2 = {_fmt(config.get('lambda_appearance'))}",
        ),
    ]
    return rows


def _preprocessing(checkpoint_dir: Path) -> str | None:
    """The saved processor's preprocessing in words: a processor (`processor_config.json`, released checkpoints)
    or an image processor alone (`preprocessor_config.json`, classifiers and adapters)."""
    path = checkpoint_dir / "processor_config.json"
    if path.is_file():
        processor = _read_json(path)
        image = processor.get("image_processor") or {}
    elif (checkpoint_dir / "preprocessor_config.json").is_file():
        processor = {}
        image = _read_json(checkpoint_dir / "preprocessor_config.json")
    else:
        return None
    if image.get("size") is None:
        return None
    parts = [f"images resized to {image.get('size')} px"]
    if image.get("pad_to_square"):
        parts[0] += " (aspect kept, zero-padded to a square)"
    if image.get("crop_to_fov"):
        parts.append("cropped to the field of view")
    parts.append(
        "mean/std normalised" if image.get("do_normalize", True) else "pixels in [0, 1], no normalisation"
    )
    if processor.get("max_length"):
        parts.append(f"text up to {processor['max_length']} tokens")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------------ training


def _training_items(summary: Mapping | None, run_config: Mapping | None) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    if summary:
        known = {
            "steps": "Optimizer steps",
            "world_size": "Processes",
            "skipped_samples": "Skipped samples",
            "data_warnings": "Data warnings",
        }
        for key, label in known.items():
            if key in summary:
                items.append((label, _fmt(summary[key])))
        metrics = summary.get("last_metrics") or {}
        if "epoch" in metrics:
            items.append(("Epochs", f"{metrics['epoch']:.2f}"))
        if summary.get("classes"):
            classes = summary["classes"]
            items.append((f"Classes ({len(classes)})", ", ".join(map(str, classes))))
        unused = summary.get("unused_rows_by_role") or {}
        if unused:
            items.append(("Unused rows by role", ", ".join(f"{k}: {v}" for k, v in unused.items())))
        losses = {k: v for k, v in metrics.items() if k.startswith("loss") and isinstance(v, (int, float))}
        if losses:
            items.append(("Final logged losses", ", ".join(f"{k} {v:.4g}" for k, v in losses.items())))
        handled = set(known) | {"last_metrics", "classes", "unused_rows_by_role"}
        for key, value in summary.items():
            if key not in handled and isinstance(value, (str, int, float, bool)):
                items.append((key.replace("_", " ").capitalize(), _fmt(value)))
    if run_config:
        data = run_config.get("data") or {}
        optim = run_config.get("optim") or {}
        run = run_config.get("run") or {}
        if data.get("image_size"):
            items.append(("Training image size", f"{data['image_size']} px"))
        batches = [
            f"{key.removesuffix('_batch_size')} {data[key]}"
            for key in ("paired_batch_size", "categorical_batch_size", "unpaired_batch_size")
            if data.get(key)
        ]
        if batches:
            items.append(("Batch per process", ", ".join(batches)))
        if optim:
            parts = [f"lr {_fmt(optim.get('lr'))}"] if optim.get("lr") is not None else []
            if optim.get("weight_decay") is not None:
                parts.append(f"weight decay {_fmt(optim['weight_decay'])}")
            if optim.get("schedule"):
                parts.append(f"{optim['schedule']} schedule")
            if parts:
                items.append(("Optimizer (AdamW)", ", ".join(parts)))
        if run.get("mixed_precision"):
            items.append(("Mixed precision", str(run["mixed_precision"])))
    return items


def _uses_synthetic(summary: Mapping | None, run_config: Mapping | None) -> bool:
    for key in ("synthetic_data", "synthetic"):
        if summary and summary.get(key):
            return True
    data = (run_config or {}).get("data") or {}
    return bool(data.get("synthetic"))


# ---------------------------------------------------------------------------------------------- evaluation


def _normalise_evaluation(evaluation: Mapping) -> dict:
    """Bring the older per-model summary of the pretraining loop into the evaluation-suite layout."""
    if isinstance(evaluation.get("results"), list):
        return dict(evaluation)
    results = []
    for model, protocols in evaluation.items():
        if not isinstance(protocols, Mapping):
            continue
        for protocol, metrics in protocols.items():
            task = protocol.replace("_", "-")
            if task not in TASK_LABELS or not isinstance(metrics, Mapping):
                continue
            results.append(
                {
                    "model": model,
                    "task": task,
                    "method": None,
                    "fraction": None,
                    "shots": None,
                    "seeds": None,
                    "metrics": {name: {"mean": value, "std": None} for name, value in metrics.items()},
                }
            )
    if not results:
        raise ValueError("evaluation results have neither a 'results' list nor per-model protocol summaries")
    dataset = {
        "name": evaluation.get("dataset_name", "held-out-test"),
        "classes": evaluation.get("classes"),
        "multi_label": False,
        "num_train": evaluation.get("num_probe_train"),
        "num_test": evaluation.get("num_test"),
    }
    return {"dataset": dataset, "results": results}


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _protocol_parts(row: Mapping) -> list[str]:
    task = row.get("task")
    parts = [TASK_LABELS.get(task, str(task))]
    method = row.get("method")
    if method:
        parts.append(METHOD_LABELS.get(method, str(method)))
    shots = row.get("shots")
    if shots is not None:
        parts.append(f"{shots} shot" if shots == 1 else f"{shots} shots")
    fraction = _finite(row.get("fraction"))
    if fraction is not None:
        parts.append(f"{fraction * 100:g}% labels")
    return parts


def protocol_label(row: Mapping) -> str:
    """Readable protocol of a result row, e.g. ``"linear probe, 10% labels"``."""
    return ", ".join(_protocol_parts(row))


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _plain(value: Any) -> Any:
    """numpy scalars (and anything else number-like) as plain Python numbers, so the YAML stays safe."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, float)):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return int(number) if number.is_integer() else number


def protocol_key(row: Mapping) -> str:
    """Compact protocol identifier of a result row, e.g. ``"few-shot/tip-adapter/shots=16"``."""
    parts = [str(row.get("task"))]
    if row.get("method"):
        parts.append(str(row["method"]))
    if row.get("shots") is not None:
        parts.append(f"shots={row['shots']}")
    if _finite(row.get("fraction")) is not None:
        parts.append(f"fraction={_finite(row['fraction']):g}")
    return "/".join(parts)


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " ").capitalize())


def _metric_summary(value: Any) -> tuple[float | None, float | None]:
    if isinstance(value, Mapping):
        return _finite(value.get("mean")), _finite(value.get("std"))
    return _finite(value), None


def _row_sort_key(row: Mapping, evaluated_model: str):
    task = row.get("task")
    return (
        TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER),
        str(row.get("method") or ""),
        _finite(row.get("shots")) or 0.0,
        _finite(row.get("fraction")) or 0.0,
        row.get("model") != evaluated_model,
        str(row.get("model")),
    )


def build_eval_results(
    evaluation: Mapping, *, evaluated_model: str = "pretrained", dataset_name: str | None = None
) -> list[EvalResult]:
    """One `EvalResult` per (row of `evaluated_model`, finite metric mean), in the order of the rows."""
    evaluation = _normalise_evaluation(evaluation)
    dataset = evaluation.get("dataset") or {}
    dataset_type = str(dataset.get("name") or dataset_name or "custom")
    shown_name = dataset_name or dataset_type
    results = []
    for row in evaluation["results"]:
        if row.get("model") != evaluated_model:
            continue
        zero_shot = row.get("task") == "zero-shot"
        label = protocol_label(row)
        seeds = row.get("seeds")
        for metric, value in (row.get("metrics") or {}).items():
            mean, std = _metric_summary(value)
            if mean is None:
                continue
            args: dict[str, Any] = {"protocol": row.get("task")}
            for key, arg in (("method", "method"), ("fraction", "label_fraction"), ("shots", "shots")):
                if row.get(key) is not None:
                    args[arg] = _plain(row[key])
            if row.get("num_train") is not None:
                args["num_train"] = _plain(row["num_train"])
            if seeds:
                args["seeds"] = [_plain(seed) for seed in seeds]
            if std is not None:
                args["std"] = std
            if metric == "pr_auc" and dataset.get("positive_class") is not None:
                args["positive_class"] = str(dataset["positive_class"])
            results.append(
                EvalResult(
                    task_type="zero-shot-image-classification" if zero_shot else "image-classification",
                    task_name=ZERO_SHOT_TASK_NAME if zero_shot else IMAGE_CLASSIFICATION_TASK_NAME,
                    dataset_type=dataset_type,
                    dataset_name=shown_name,
                    dataset_split="test",
                    metric_type=metric,
                    metric_value=mean,
                    metric_name=f"{metric_label(metric)} ({label})",
                    metric_config=protocol_key(row),
                    metric_args=args,
                )
            )
    return results


def _metric_header(metric: str, dataset: Mapping) -> str:
    """A table column header; binary PR-AUC names its positive class."""
    positive = dataset.get("positive_class")
    if metric == "pr_auc" and positive is not None:
        return f"{metric_label(metric)} (positive: {positive})"
    return metric_label(metric)


def _reference_rows(evaluation: Mapping, metrics: list[str]) -> list[dict]:
    """Table rows of the majority-class and chance levels (`references` of the results), when present."""
    references = evaluation.get("references") or {}
    rows = []
    for name, label in (("majority", "majority class"), ("chance", "chance")):
        reference = references.get(name)
        if not isinstance(reference, Mapping):
            continue
        values = reference.get("metrics") or {}
        predicts = reference.get("predicts")
        if name == "chance":
            protocol = "Uniform random guess (expected)"
        elif isinstance(predicts, list):
            protocol = f"Each label's training majority (positive: {', '.join(map(str, predicts)) or 'none'})"
        else:
            protocol = f"Always `{predicts}` (training majority)"
        cells = [
            "—" if _finite(values.get(metric)) is None else f"{_finite(values[metric]):.3f}"
            for metric in metrics
        ]
        rows.append(
            {
                "model": f"*{label}* (reference)",
                "protocol": protocol,
                "seeds": "—",
                "num_train": "—",
                "cells": cells,
            }
        )
    return rows


def _evaluation_context(evaluation: Mapping, evaluated_model: str, dataset_name: str | None) -> dict:
    evaluation = _normalise_evaluation(evaluation)
    dataset = evaluation.get("dataset") or {}
    rows = sorted(evaluation["results"], key=lambda row: _row_sort_key(row, evaluated_model))
    present = {name for row in rows for name in (row.get("metrics") or {})}
    metrics = [name for name in METRIC_ORDER if name in present] + sorted(present - set(METRIC_ORDER))
    references = _reference_rows(evaluation, metrics)
    table = list(references)
    for row in rows:
        cells = []
        for metric in metrics:
            mean, std = _metric_summary((row.get("metrics") or {}).get(metric))
            if mean is None:
                cells.append("—")
            elif std is not None and len(row.get("seeds") or ()) > 1:
                cells.append(f"{mean:.3f} ± {std:.3f}")
            else:
                cells.append(f"{mean:.3f}")
        model = str(row.get("model"))
        seeds = row.get("seeds")
        table.append(
            {
                "model": f"**{model}** (this model)" if model == evaluated_model else f"{model} (baseline)",
                "protocol": _capitalise(protocol_label(row)),
                "seeds": str(len(seeds)) if seeds else "—",
                "num_train": "—" if row.get("num_train") is None else _fmt(_plain(row["num_train"])),
                "cells": cells,
            }
        )
    classes = dataset.get("classes") or []
    return {
        "dataset_name": dataset_name or dataset.get("name") or "unnamed",
        "classes": [str(c) for c in classes],
        "multi_label": bool(dataset.get("multi_label")),
        "num_train": dataset.get("num_train"),
        "num_test": dataset.get("num_test"),
        "metric_labels": [_metric_header(m, dataset) for m in metrics],
        "positive_class": dataset.get("positive_class"),
        "ordinal": bool(dataset.get("ordinal")),
        "has_references": bool(references),
        "rows": table,
        "has_baselines": any(row.get("model") != evaluated_model for row in rows),
        "show_num_train": any(row.get("num_train") is not None for row in rows),
    }


# -------------------------------------------------------------------------------------------------- cards


def _citation(family: str) -> str:
    if family == "maskedclip":
        return (
            "@misc{zhu_maskedclip,\n"
            "  title  = {MaskedCLIP: Bridging the Masked and CLIP Space for Semi-Supervised Medical\n"
            "            Vision-Language Pre-training},\n"
            "  author = {Zhu, Lei and Zhou, Jun and Goh, Rick Siow Mong and Liu, Yong},\n"
            "  note   = {check the paper for the venue, year and page numbers}\n"
            "}"
        )
    return (
        "@misc{wu_mm_retinal_v2_keepfit_v2,\n"
        "  title  = {MM-Retinal V2: Transfer an Elite Knowledge Spark into Fundus Vision-Language Pretraining},\n"
        "  author = {Wu, Ruiqi and Su, Na and Zhang, Chenran and others},\n"
        "  note   = {placeholder entry: check the paper for the exact reference}\n"
        "}"
    )


def _common_context(
    family: str,
    *,
    model_name: str,
    repo_id: str | None,
    data_provenance: str | None,
    synthetic: bool,
    license: str,
) -> dict:
    provenance = data_provenance
    if provenance is None and synthetic:
        provenance = _SYNTHETIC_PROVENANCE
    return {
        "family": family,
        "family_title": FAMILY_TITLES[family],
        "model_name": model_name,
        "repo_id": repo_id,
        "load_path": repo_id or "path/to/checkpoint",
        "data_provenance": provenance,
        "synthetic_data": synthetic,
        "license": license,
        "citation": _citation(family),
    }


def render_model_card(
    checkpoint_dir: str | Path,
    *,
    evaluation: Mapping | str | Path | None = None,
    training_summary: Mapping | str | Path | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    dataset_name: str | None = None,
    data_provenance: str | None = None,
    license: str = "apache-2.0",
    base_model: str | Sequence[str] | None = None,
    evaluated_model: str = "pretrained",
    synthetic_data: bool | None = None,
    template: str | Path | None = None,
    run_config: Mapping | str | Path | None = None,
) -> ModelCard:
    """Render the model card of a saved MaskedCLIP or KeepFIT checkpoint.

    Args:
        checkpoint_dir: a `save_pretrained` folder; its `config.json` `model_type` picks the template.
        evaluation: results (dict or JSON path, layout in the module docstring); default
            `<checkpoint_dir>/eval_results.json` when it exists; `{}` for none.
        training_summary: dict or JSON path; default `<checkpoint_dir>/training_summary.json` when it exists.
        repo_id: Hub id used in the usage snippets and as the default model name.
        model_name: name in `model-index` (default: the repo name, else the run directory's name).
        dataset_name: readable evaluation dataset name (the dataset block's `name` stays the dataset type).
        data_provenance: the training data the uploader declares (free text, shown under limitations).
        license, base_model: card metadata.
        evaluated_model: the `model` value of the result rows that describe this checkpoint; other rows are
            baselines, shown only in the Markdown table.
        synthetic_data: whether the run trained on the synthetic demo data; default: detected from the
            training summary or the run's `run_config.yaml` next to the checkpoint.
        template: a custom Jinja template path instead of the packaged one.
        run_config: the run's settings (dict or YAML path); default: `run_config.yaml` in the checkpoint
            folder or, for `final/` and `checkpoint-*` folders, in the run directory above it.
    """
    checkpoint_dir = Path(checkpoint_dir)
    config = _read_config(checkpoint_dir)
    family = config["model_type"]
    summary = _load_optional(training_summary, checkpoint_dir / "training_summary.json", "training summary")
    results = _load_optional(evaluation, checkpoint_dir / "eval_results.json", "evaluation results")
    if run_config is None:
        run_config = find_run_config(checkpoint_dir)
    elif not isinstance(run_config, Mapping):
        run_config = _read_yaml(Path(run_config))
    synthetic = _uses_synthetic(summary, run_config) if synthetic_data is None else bool(synthetic_data)
    name = model_name or _default_model_name(checkpoint_dir, repo_id)

    eval_results = (
        build_eval_results(results, evaluated_model=evaluated_model, dataset_name=dataset_name)
        if results
        else []
    )
    evaluation_context = _evaluation_context(results, evaluated_model, dataset_name) if results else None

    classes = (evaluation_context or {}).get("classes") or (summary or {}).get("classes") or _DEFAULT_CLASSES
    card_data = ModelCardData(
        language="en",
        license=license,
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=[BASE_TAGS[0], family, *BASE_TAGS[1:]],
        base_model=list(base_model) if isinstance(base_model, (list, tuple)) else base_model,
        metrics=sorted({result.metric_type for result in eval_results}) or None,
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )
    architecture = (
        _maskedclip_architecture(config) if family == "maskedclip" else _keepfit_architecture(config)
    )
    context = _common_context(
        family,
        model_name=name,
        repo_id=repo_id,
        data_provenance=data_provenance,
        synthetic=synthetic,
        license=license,
    )
    context.update(
        architecture=architecture,
        preprocessing=_preprocessing(checkpoint_dir),
        has_processor=(checkpoint_dir / "processor_config.json").is_file(),
        training_items=_training_items(summary, run_config),
        has_training_summary=bool(summary),
        evaluation=evaluation_context,
        num_eval_results=len(eval_results),
        example_labels=list(classes)[:3],
        prompt_template=_PROMPTS[family],
        base_model=base_model,
        transformers_version=config.get("transformers_version"),
        # the class the weights were saved from: the released model, or a pretraining model pushed as it is
        model_class=(config.get("architectures") or [_RELEASED_CLASS[family]])[0],
    )
    path = Path(template) if template is not None else template_path(family)
    return ModelCard.from_template(card_data, template_path=str(path), **context)


def _intended_use_section(family: str, context: Mapping) -> str:
    """The intended-use / limitations section of a family template, rendered on its own."""
    import jinja2

    text = template_path(family).read_text(encoding="utf-8")
    start, end = text.find(SECTION_START), text.find(SECTION_END)
    if start < 0 or end < 0:
        raise ValueError(f"template {family}.md lacks the {SECTION_START} ... {SECTION_END} markers")
    return jinja2.Template(text[start + len(SECTION_START) : end]).render(**context).strip()


# ------------------------------------------------------------------------------- fine-tuned classifiers, adapters

FINETUNE_TASKS = ("finetune", "lora")
_ARTIFACT_DIR_NAMES = ("model", "adapter", "base", "final")


def is_hub_id(value: Any) -> bool:
    """Whether `value` reads as a Hub repository id (``"name"`` or ``"owner/name"``) and not as a local path."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(value, str) or not value or Path(value).is_absolute() or value.startswith((".", "~")):
        return False
    if Path(value).exists():
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def _family_of(model_type: str | None) -> str | None:
    for family in SUPPORTED_MODEL_TYPES:
        if str(model_type or "").startswith(family):
            return family
    return None


def _class_names(config: Mapping) -> list[str]:
    id2label = config.get("id2label") or {}
    return [str(label) for _, label in sorted(id2label.items(), key=lambda item: int(item[0]))]


def _artifact_name(folder: Path, repo_id: str | None) -> str:
    """The repo name, else the run directory's name for `<run>/model`, `<run>/adapter` and `<run>/base`."""
    if repo_id:
        return repo_id.rstrip("/").split("/")[-1]
    directory = folder.resolve()
    if directory.name in _ARTIFACT_DIR_NAMES and directory.parent.name:
        return (
            f"{directory.parent.name}-{directory.name}" if directory.name == "base" else directory.parent.name
        )
    return directory.name or "retvlp-classifier"


def _seed_row(row: Mapping, seed: Any) -> Mapping:
    """`row` restricted to `seed` when it has per-seed values for every metric; otherwise unchanged."""
    seeds = list(row.get("seeds") or [])
    if seed is None or seed not in seeds or len(seeds) == 1:
        return row
    index = seeds.index(seed)
    metrics = {}
    for name, value in (row.get("metrics") or {}).items():
        values = value.get("values") if isinstance(value, Mapping) else None
        if not values or len(values) != len(seeds):
            return row  # no per-seed values: the protocol summary is all there is
        metrics[name] = {"mean": values[index], "std": None, "values": [values[index]]}
    return {**row, "seeds": [seed], "metrics": metrics}


def _artifact_evaluation(
    evaluation: Mapping, *, task: str, fraction: Any, seed: Any, evaluated_model: str
) -> dict | None:
    """The rows of `evaluation` about one fine-tuned artifact: its own row (task, label fraction, and seed when the
    row has per-seed values) and the other models' rows of the same protocol as baselines. Rows of the same model
    under other protocols describe other models (the base checkpoint, the full fine-tuning of an adapter's
    base, ...) and are dropped. None when the artifact has no row."""
    evaluation = _normalise_evaluation(evaluation)
    fraction = _finite(fraction)
    kept = []
    for row in evaluation["results"]:
        if row.get("task") != task:
            continue
        row_fraction = _finite(row.get("fraction"))
        if fraction is not None and row_fraction is not None and not math.isclose(row_fraction, fraction):
            continue
        kept.append(_seed_row(row, seed) if row.get("model") == evaluated_model else row)
    if not any(row.get("model") == evaluated_model for row in kept):
        return None
    return {**evaluation, "results": kept}


def _finetune_items(summary: Mapping | None) -> list[tuple[str, str]]:
    if not summary:
        return []
    settings = summary.get("settings") or {}
    lora = summary.get("task") == "lora"
    items: list[tuple[str, str]] = []
    if summary.get("role") == "lora-base":
        items.append(
            ("Role", "the base model of a LoRA adapter (head untrained; the adapter brings its own)")
        )
    else:
        items.append(("Method", "LoRA fine-tuning" if lora else "full fine-tuning"))
    if summary.get("base_model"):
        items.append(("Base model", f"`{summary['base_model']}`"))
    if summary.get("init") == "random":
        items.append(("Initialisation", "seeded random weights (the baseline of the evaluation)"))
    if summary.get("dataset"):
        items.append(("Training data", str(summary["dataset"])))
    if _finite(summary.get("fraction")) is not None:
        items.append(("Label fraction", f"{_finite(summary['fraction']) * 100:g}%"))
    for key, label in (("num_train", "Training images"), ("seed", "Seed"), ("steps", "Optimizer steps")):
        if summary.get(key) is not None:
            items.append((label, _fmt(summary[key])))
    keys = [
        ("lr", "Learning rate (AdamW, cosine)"),
        ("batch_size", "Batch per process"),
        ("weight_decay", "Weight decay"),
        ("layer_decay", "Layer-wise lr decay"),
    ]
    keys += (
        [("lora_rank", "LoRA rank"), ("lora_alpha", "LoRA alpha"), ("lora_dropout", "LoRA dropout")]
        if lora
        else [("drop_path_rate", "Drop path")]
    )
    keys += [("mixed_precision", "Mixed precision")]
    for key, label in keys:
        if settings.get(key) is not None:
            items.append((label, _fmt(settings[key])))
    return items


def _finetuned_intended_use(family: str | None, context: Mapping) -> str:
    """The family template's limitations, after an intended-use section that fits a task-specific classifier."""
    import jinja2

    intended = jinja2.Template(_CLASSIFIER_INTENDED_USE).render(**context).strip()
    if family is None:
        return intended
    section = _intended_use_section(family, context)
    start = section.find("## Limitations and biases")
    return f"{intended}\n\n{section[start:]}" if start >= 0 else intended


_CLASSIFIER_INTENDED_USE = """
## Intended use

Research on retinal image classification into the classes listed above, as a fine-tuned result of the `retvlp`
evaluation protocols, validated by the user on their own data before any further use.

## Out-of-scope use

- Diagnosis, screening, triage, grading or treatment decisions for real patients, with or without a
  clinician in the loop.
- Classes other than the ones it was trained on, non-retinal images, and devices, sites or populations where
  it has not been validated.
"""

_EVALUATION_SECTION = """{% if evaluation %}
## Evaluation

Test set **{{ evaluation.dataset_name }}**{% if evaluation.num_test %}, {{ evaluation.num_test }} images{% endif %}{% if evaluation.classes %}; classes: {{ evaluation.classes | join(", ") }}{% endif %}{% if evaluation.ordinal %} (ordinal, in this order){% endif %}{% if evaluation.positive_class %}; positive class of PR-AUC: **{{ evaluation.positive_class }}**{% endif %}.
The row of this model is its own run{% if seed is not none %} (seed {{ seed }}){% endif %}; other rows are baselines
of the same protocol{% if evaluation.has_references %}, and the *reference* rows the majority-class predictor and
chance on the same test set{% endif %}.

| model | protocol | seeds |{% if evaluation.show_num_train %} train images |{% endif %}{% for label in evaluation.metric_labels %} {{ label }} |{% endfor %}
|---|---|---|{% if evaluation.show_num_train %}---|{% endif %}{% for label in evaluation.metric_labels %}---|{% endfor %}
{%- for row in evaluation.rows %}
| {{ row.model }} | {{ row.protocol }} | {{ row.seeds }} |{% if evaluation.show_num_train %} {{ row.num_train }} |{% endif %}{% for cell in row.cells %} {{ cell }} |{% endfor %}
{%- endfor %}
{% endif %}"""

_TRAINING_SECTION = """{% if training_items %}
## Training

| setting | value |
|---|---|
{%- for key, value in training_items %}
| {{ key }} | {{ value }} |
{%- endfor %}
{% endif %}"""

_CLASSIFIER_TEMPLATE = (
    """---
{{ card_data }}
---

# {{ model_name }}: {{ family_title }} image classifier

`{{ model_class }}`{% if family %} from the `retvlp` package{% endif %}{% if base_model %}, {{ "trained from seeded random weights with the architecture of" if random_init else "fine-tuned from" }} `{{ base_model }}`{% endif %}.
It {{ "tags a retinal image with any of" if multi_label else "sorts a retinal image into one of" }} {{ classes | length }} classes{% if multi_label %} (multi-label: one sigmoid per class){% endif %}:

| id | label |
|---|---|
{%- for label in classes %}
| {{ loop.index0 }} | {{ label }} |
{%- endfor %}

## How to use

```python
import retvlp  # registers the retvlp classes with transformers
from transformers import pipeline

classifier = pipeline("image-classification", model="{{ load_path }}")
classifier("fundus.jpg")  # [{"label": "{{ classes[0] }}", "score": ...}, ...]
```
{% if remote_code %}
Without the `retvlp` package, the code saved with the model runs instead:

```python
from transformers import AutoImageProcessor, AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained("{{ load_path }}", trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained("{{ load_path }}", trust_remote_code=True)
logits = model(**processor(images)).logits  # columns in the order of the table above
```
{% endif %}
{%- if preprocessing %}
Preprocessing (saved image processor): {{ preprocessing }}.
{% endif %}"""
    + _TRAINING_SECTION
    + _EVALUATION_SECTION
    + """
{{ intended_use }}
{% if citation %}
## Citation

```bibtex
{{ citation }}
```
{% endif %}"""
)


def _read_folder(folder: Path) -> tuple[dict, dict | None]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a saved classifier")
    return _read_json(config_path), _load_optional(None, folder / "training_summary.json", "training summary")


def _finetuned_evaluation(
    folder: Path,
    evaluation: Mapping | str | Path | None,
    summary: Mapping | None,
    *,
    task: str,
    evaluated_model: str,
    dataset_name: str | None,
) -> tuple[list[EvalResult], dict | None]:
    if (summary or {}).get("role") == "lora-base":
        return [], None  # an untrained head: no results are about it
    results = _load_optional(evaluation, folder / "eval_results.json", "evaluation results")
    if results:
        results = _artifact_evaluation(
            results,
            task=task,
            fraction=(summary or {}).get("fraction"),
            seed=(summary or {}).get("seed"),
            evaluated_model=evaluated_model,
        )
    if not results:
        return [], None
    eval_results = build_eval_results(results, evaluated_model=evaluated_model, dataset_name=dataset_name)
    return eval_results, _evaluation_context(results, evaluated_model, dataset_name)


def render_classifier_card(
    folder: str | Path,
    *,
    evaluation: Mapping | str | Path | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    dataset_name: str | None = None,
    data_provenance: str | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
    evaluated_model: str | None = None,
    synthetic_data: bool | None = None,
) -> ModelCard:
    """The card of a fine-tuned image classifier folder (`save_pretrained` + image processor).

    Reads `config.json` (class names, family), `training_summary.json` (how it was trained, which result row it
    is) and `eval_results.json` (its own test results), or `evaluation` (the results of `retvlp evaluate`: only
    this artifact's row, at its seed when the row has per-seed values, and the other models' rows of the same
    protocol and label fraction, as baselines). `base_model` overrides the
    summary's (e.g. the Hub id of a local base); only a Hub id goes into the metadata. `evaluated_model`
    defaults to the summary's result-row name, else ``"pretrained"``.
    """
    folder = Path(folder)
    config, summary = _read_folder(folder)
    summary = summary or {}
    family = _family_of(config.get("model_type"))
    evaluated_model = evaluated_model or summary.get("model") or "pretrained"
    base_model = base_model or summary.get("base_model")
    eval_results, evaluation_context = _finetuned_evaluation(
        folder,
        evaluation,
        summary,
        task="finetune",
        evaluated_model=evaluated_model,
        dataset_name=dataset_name,
    )
    name = model_name or _artifact_name(folder, repo_id)
    hub_base = base_model if is_hub_id(base_model) else None
    card_data = ModelCardData(
        language="en",
        license=license,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=[BASE_TAGS[0], *([family] if family else []), "image-classification", *BASE_TAGS[1:4]],
        base_model=hub_base,
        base_model_relation="finetune" if hub_base else None,
        metrics=sorted({result.metric_type for result in eval_results}) or None,
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )
    synthetic = bool(synthetic_data if synthetic_data is not None else _uses_synthetic(summary, None))
    context = {
        "family": family,
        "family_title": FAMILY_TITLES.get(family, str(config.get("model_type"))),
        "model_name": name,
        "model_class": (config.get("architectures") or ["AutoModelForImageClassification"])[0],
        "load_path": repo_id or "path/to/classifier",
        "base_model": base_model,
        "random_init": summary.get("init") == "random",
        "classes": _class_names(config) or ["(no class names saved)"],
        "multi_label": config.get("problem_type") == "multi_label_classification",
        "remote_code": "AutoModelForImageClassification" in (config.get("auto_map") or {}),
        "preprocessing": _preprocessing(folder),
        "training_items": _finetune_items(summary),
        "evaluation": evaluation_context,
        "seed": summary.get("seed") if evaluation_context else None,
        "data_provenance": data_provenance or (_SYNTHETIC_PROVENANCE if synthetic else None),
        "synthetic_data": synthetic,
        "citation": _citation(family) if family else None,
    }
    context["intended_use"] = _finetuned_intended_use(family, context)
    return ModelCard.from_template(card_data, template_str=_CLASSIFIER_TEMPLATE, **context)


def _adapter_family(adapter_config: Mapping, config: Mapping | None, family: str | None) -> str:
    if family is not None:
        if family not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unknown family {family!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        return family
    if config and _family_of(config.get("model_type")):
        return _family_of(config.get("model_type"))
    mapping = adapter_config.get("auto_mapping") or {}
    where = f"{mapping.get('parent_library', '')} {mapping.get('base_model_class', '')}".lower()
    return "keepfit" if "keepfit" in where else "maskedclip"


def _adapter_num_labels(adapter_dir: Path) -> int | None:
    """Rows of the saved classifier head (a `modules_to_save` copy), if the adapter carries one."""
    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            if key.endswith("classifier.weight"):
                return int(handle.get_slice(key).get_shape()[0])
    return None


_ADAPTER_TEMPLATE = (
    """---
{{ card_data }}
---

# {{ model_name }}: LoRA adapter for {{ family_title }}

A [PEFT](https://github.com/huggingface/peft) {{ peft_type }} adapter on top of `{{ base_model }}`
(`{{ base_class }}` from the `retvlp` package), trained for retinal image analysis.
Only the adapter weights{% if modules_to_save %} and the fully trained modules ({{ modules_to_save | join(", ") }}){% endif %}
are stored here; the base model is loaded from its own repository.
{%- if classes %}
The classifier config saved with the adapter (`config.json`) carries the head size and the class names
({{ classes | join(", ") }}), which the base checkpoint does not have.
{%- endif %}

## Adapter settings

| setting | value |
|---|---|
{%- for key, value in settings %}
| {{ key }} | {{ value }} |
{%- endfor %}

## How to use
{% if classes %}
```python
import retvlp  # registers the retvlp classes with transformers
from peft import PeftModel
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

config = AutoConfig.from_pretrained("{{ load_path }}")  # the classifier: head size and class names
base = AutoModelForImageClassification.from_pretrained("{{ base_model }}", config=config)
model = PeftModel.from_pretrained(base, "{{ load_path }}").eval()
processor = AutoImageProcessor.from_pretrained("{{ load_path }}")
logits = model(**processor(images)).logits  # model.config.id2label names the columns
# model = model.merge_and_unload()  # optional: a plain {{ base_class }} with the same outputs
```

`peft.AutoPeftModel` imports the class named in `adapter_config.json` only from allow-listed packages, and
builds the base without the class names; give it both:

```python
from peft import AutoPeftModel

model = AutoPeftModel.from_pretrained(
    "{{ load_path }}", import_allowlist=["retvlp"], id2label=config.id2label, label2id=config.label2id
)
```

Without the `retvlp` package, pass `trust_remote_code=True` to `AutoConfig`, `AutoModelForImageClassification`
and `AutoImageProcessor` above: the config and processor code come with the adapter, the model code with the
base checkpoint.
{% else %}
```python
import retvlp  # registers the retvlp classes with transformers
from peft import PeftModel
from retvlp import {{ base_class }}

base = {{ base_class }}.from_pretrained("{{ base_model }}"{% if num_labels %}, num_labels={{ num_labels }}{% endif %})
model = PeftModel.from_pretrained(base, "{{ load_path }}").eval()
# model = model.merge_and_unload()  # optional: fold the LoRA update into plain weights
```

Preprocess images with the base model's processor (`AutoProcessor.from_pretrained("{{ base_model }}")`).
{% endif %}"""
    + _TRAINING_SECTION
    + _EVALUATION_SECTION
    + """
{{ intended_use }}

## Citation

```bibtex
{{ citation }}
```
"""
)


def render_adapter_card(
    adapter_dir: str | Path,
    *,
    base_model: str | None = None,
    evaluation: Mapping | str | Path | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    dataset_name: str | None = None,
    data_provenance: str | None = None,
    license: str = "apache-2.0",
    evaluated_model: str | None = None,
    synthetic_data: bool | None = None,
    family: str | None = None,
) -> ModelCard:
    """A card for a PEFT (LoRA) adapter folder (`adapter_config.json` + `adapter_model.safetensors`, and for
    adapters saved by retvlp the classifier's `config.json`, image processor and `training_summary.json`).

    `base_model` is the Hub id of the base checkpoint (default: the adapter config's
    `base_model_name_or_path`; only a Hub id goes into the metadata). The family (intended use, citation) comes
    from `family`, the saved config's `model_type` or the adapter config's `auto_mapping`. The evaluation is the
    adapter's own (see :func:`render_classifier_card`): its LoRA row, never the other protocols' rows.
    """
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json: not a PEFT adapter folder")
    adapter_config = _read_json(config_path)
    base_model = base_model or adapter_config.get("base_model_name_or_path")
    if not base_model:
        raise ValueError(
            f"no base model for the adapter in {adapter_dir}: pass base_model= (the base checkpoint's Hub id)"
        )
    config = _read_json(adapter_dir / "config.json") if (adapter_dir / "config.json").is_file() else None
    summary = _load_optional(None, adapter_dir / "training_summary.json", "training summary") or {}
    family = _adapter_family(adapter_config, config, family)
    evaluated_model = evaluated_model or summary.get("model") or "pretrained"
    eval_results, evaluation_context = _finetuned_evaluation(
        adapter_dir,
        evaluation,
        summary,
        task="lora",
        evaluated_model=evaluated_model,
        dataset_name=dataset_name,
    )
    name = model_name or _artifact_name(adapter_dir, repo_id)
    mapping = adapter_config.get("auto_mapping") or {}
    base_class = (
        mapping.get("base_model_class")
        or ((config or {}).get("architectures") or ["MaskedCLIPForImageClassification"])[0]
    )
    peft_type = str(adapter_config.get("peft_type", "LORA"))
    settings_keys = (
        ("peft_type", "PEFT method"),
        ("r", "rank r"),
        ("lora_alpha", "lora_alpha"),
        ("lora_dropout", "lora_dropout"),
        ("target_modules", "target modules"),
        ("modules_to_save", "modules trained in full"),
        ("bias", "bias"),
        ("use_dora", "DoRA"),
        ("use_rslora", "rsLoRA"),
        ("peft_version", "peft version"),
    )
    settings = []
    for key, label in settings_keys:
        value = adapter_config.get(key)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(f"`{item}`" for item in sorted(map(str, value)))
        elif key == "peft_type":
            value = "LoRA" if value == "LORA" else value
        settings.append((label, _fmt(value)))
    classification = base_class.endswith("ForImageClassification")
    hub_base = base_model if is_hub_id(base_model) else None
    card_data = ModelCardData(
        language="en",
        license=license,
        library_name="peft",
        base_model=hub_base,
        base_model_relation="adapter" if hub_base else None,
        pipeline_tag="image-classification" if classification else "zero-shot-image-classification",
        tags=[
            "retvlp",
            family,
            "lora" if peft_type == "LORA" else peft_type.lower(),
            "peft",
            *([f"base_model:adapter:{hub_base}"] if hub_base else []),
            *BASE_TAGS[1:5],
        ],
        metrics=sorted({result.metric_type for result in eval_results}) or None,
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )
    synthetic = bool(synthetic_data if synthetic_data is not None else _uses_synthetic(summary, None))
    context = _common_context(
        family,
        model_name=name,
        repo_id=repo_id,
        data_provenance=data_provenance,
        synthetic=synthetic,
        license=license,
    )
    context.update(
        load_path=repo_id or "path/to/adapter",
        base_model=base_model,
        base_class=base_class,
        peft_type="LoRA" if peft_type == "LORA" else peft_type,
        modules_to_save=list(adapter_config.get("modules_to_save") or []),
        settings=settings,
        classes=_class_names(config) if config else [],
        num_labels=_adapter_num_labels(adapter_dir) if classification else None,
        training_items=[item for item in _finetune_items(summary) if item[0] != "Base model"],
        evaluation=evaluation_context,
        seed=summary.get("seed") if evaluation_context else None,
    )
    context["intended_use"] = (
        _finetuned_intended_use(family, context) if classification else _intended_use_section(family, context)
    )
    return ModelCard.from_template(card_data, template_str=_ADAPTER_TEMPLATE, **context)


def render_finetuned_card(folder: str | Path, **kwargs) -> ModelCard:
    """The card of a fine-tuned artifact: :func:`render_adapter_card` for a PEFT adapter folder,
    :func:`render_classifier_card` for a classifier folder."""
    if (Path(folder) / "adapter_config.json").is_file():
        return render_adapter_card(folder, **kwargs)
    return render_classifier_card(folder, **kwargs)


__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "build_eval_results",
    "find_run_config",
    "is_hub_id",
    "metric_label",
    "protocol_key",
    "protocol_label",
    "render_adapter_card",
    "render_classifier_card",
    "render_finetuned_card",
    "render_model_card",
    "template_path",
]
