"""What goes into a card from the evaluation results: the `model-index` entries (`EvalResult`s) of the evaluated
model's `ResultRow`s and the data of the Markdown results table (rows, headers, reference levels).

How the results survive ``model-index``: huggingface_hub groups `EvalResult`s by (task type, dataset type,
config, split, revision) and keeps the task *name* of the first result of each group only, while every metric
entry keeps its own ``name``, ``config`` and ``args``. So the task name here depends on the task type alone
("Zero-shot image classification" / "Image classification"), and the protocol of a row lives with each metric:
``name`` reads e.g. "ROC-AUC (linear probe, 10% labels)", ``config`` is a compact protocol key
(``"linear-probe/fraction=0.1"``) and ``args`` holds protocol, method, label fraction, shots, seeds and the
standard deviation over seeds. Rows of other models (``random_init``, ...) appear only as baselines in the
table; the reference levels (majority class, chance) only as reference rows of the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from ..evaluation.results import EvaluationResults, ResultRow, read_results

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
FINETUNE_TASKS = ("finetune", "lora")


def evaluation_document(evaluation: Mapping | EvaluationResults) -> EvaluationResults:
    """The results in the schema of `retvlp.evaluation.results` (the quick check's summary is read too)."""
    return read_results(evaluation, "evaluation results")


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _as_row(row: ResultRow | Mapping) -> ResultRow:
    return row if isinstance(row, ResultRow) else ResultRow.from_json(row)


def _protocol_parts(row: ResultRow) -> list[str]:
    parts = [TASK_LABELS.get(row.task, str(row.task))]
    if row.method:
        parts.append(METHOD_LABELS.get(row.method, str(row.method)))
    if row.shots is not None:
        parts.append(f"{row.shots} shot" if row.shots == 1 else f"{row.shots} shots")
    fraction = _finite(row.fraction)
    if fraction is not None:
        parts.append(f"{fraction * 100:g}% labels")
    return parts


def protocol_label(row: ResultRow | Mapping) -> str:
    """Readable protocol of a result row, e.g. ``"linear probe, 10% labels"``."""
    return ", ".join(_protocol_parts(_as_row(row)))


def protocol_key(row: ResultRow | Mapping) -> str:
    """Compact protocol identifier of a result row, e.g. ``"few-shot/tip-adapter/shots=16"``."""
    row = _as_row(row)
    parts = [str(row.task)]
    if row.method:
        parts.append(str(row.method))
    if row.shots is not None:
        parts.append(f"shots={row.shots}")
    if _finite(row.fraction) is not None:
        parts.append(f"fraction={_finite(row.fraction):g}")
    return "/".join(parts)


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " ").capitalize())


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


def _row_sort_key(row: ResultRow, evaluated_model: str):
    return (
        TASK_ORDER.index(row.task) if row.task in TASK_ORDER else len(TASK_ORDER),
        str(row.method or ""),
        _finite(row.shots) or 0.0,
        _finite(row.fraction) or 0.0,
        row.model != evaluated_model,
        str(row.model),
    )


# -------------------------------------------------------------------------------------------- model-index
def _metric_args(row: ResultRow, metric: str, std: float | None, positive_class: str | None) -> dict:
    args: dict[str, Any] = {"protocol": row.task}
    for value, arg in ((row.method, "method"), (row.fraction, "label_fraction"), (row.shots, "shots")):
        if value is not None:
            args[arg] = _plain(value)
    if row.num_train is not None:
        args["num_train"] = _plain(row.num_train)
    if row.seeds:
        args["seeds"] = [_plain(seed) for seed in row.seeds]
    if std is not None:
        args["std"] = std
    if metric == "pr_auc" and positive_class is not None:
        args["positive_class"] = str(positive_class)
    return args


def build_eval_results(
    evaluation: Mapping | EvaluationResults,
    *,
    evaluated_model: str = "pretrained",
    dataset_name: str | None = None,
) -> list[EvalResult]:
    """One `EvalResult` per (row of `evaluated_model`, finite metric mean), in the order of the rows."""
    document = evaluation_document(evaluation)
    dataset = document.dataset
    dataset_type = str(dataset.name or dataset_name or "custom")
    results = []
    for row in document.annotated_rows():
        if row.model != evaluated_model:
            continue
        zero_shot = row.task == "zero-shot"
        label = protocol_label(row)
        for metric, value in row.metrics.items():
            mean = value.finite_mean
            if mean is None:
                continue
            results.append(
                EvalResult(
                    task_type="zero-shot-image-classification" if zero_shot else "image-classification",
                    task_name=ZERO_SHOT_TASK_NAME if zero_shot else IMAGE_CLASSIFICATION_TASK_NAME,
                    dataset_type=dataset_type,
                    dataset_name=dataset_name or dataset_type,
                    dataset_split="test",
                    metric_type=metric,
                    metric_value=mean,
                    metric_name=f"{metric_label(metric)} ({label})",
                    metric_config=protocol_key(row),
                    metric_args=_metric_args(row, metric, value.finite_std, row.positive_class),
                )
            )
    return results


# ------------------------------------------------------------------------------------------ results table
def _metric_header(metric: str, positive_class: str | None) -> str:
    """A table column header; binary PR-AUC names its positive class."""
    if metric == "pr_auc" and positive_class is not None:
        return f"{metric_label(metric)} (positive: {positive_class})"
    return metric_label(metric)


def _reference_protocol(name: str, predicts) -> str:
    if name == "chance":
        return "Uniform random guess (expected)"
    if isinstance(predicts, list):
        return f"Each label's training majority (positive: {', '.join(map(str, predicts)) or 'none'})"
    return f"Always `{predicts}` (training majority)"


def _reference_rows(document: EvaluationResults, metrics: list[str]) -> list[dict]:
    """Table rows of the majority-class and chance levels (`references` of the results), when present."""
    rows = []
    for name, label in (("majority", "majority class"), ("chance", "chance")):
        reference = document.references.get(name)
        if reference is None:
            continue
        values = reference.metrics
        cells = ["—" if _finite(values.get(m)) is None else f"{_finite(values[m]):.3f}" for m in metrics]
        rows.append(
            {
                "model": f"*{label}* (reference)",
                "protocol": _reference_protocol(name, reference.predicts),
                "seeds": "—",
                "num_train": "—",
                "cells": cells,
            }
        )
    return rows


def _table_row(row: ResultRow, metrics: list[str], evaluated_model: str) -> dict:
    from .architecture import fmt

    cells = []
    for metric in metrics:
        value = row.metrics.get(metric)
        mean, std = (None, None) if value is None else (value.finite_mean, value.finite_std)
        if mean is None:
            cells.append("—")
            continue
        cell = f"{mean:.3f} ± {std:.3f}" if std is not None and len(row.seeds or ()) > 1 else f"{mean:.3f}"
        interval = [_finite(v) for v in value.ci or ()]
        if len(interval) == 2 and None not in interval:  # the patient-bootstrap 95 % interval
            cell += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
        cells.append(cell)
    model = str(row.model)
    label = protocol_label(row)
    return {
        "model": f"**{model}** (this model)" if model == evaluated_model else f"{model} (baseline)",
        "protocol": label[:1].upper() + label[1:],
        "seeds": str(len(row.seeds)) if row.seeds else "—",
        "num_train": "—" if row.num_train is None else fmt(_plain(row.num_train)),
        "cells": cells,
    }


def evaluation_context(
    evaluation: Mapping | EvaluationResults, evaluated_model: str, dataset_name: str | None
) -> dict:
    """The data of the card's evaluation section: dataset facts, metric headers and the table rows (reference
    levels first, then the rows sorted by protocol, the evaluated model before its baselines)."""
    document = evaluation_document(evaluation)
    dataset = document.dataset
    rows = sorted(document.rows, key=lambda row: _row_sort_key(row, evaluated_model))
    present = {name for row in rows for name in row.metrics}
    metrics = [name for name in METRIC_ORDER if name in present] + sorted(present - set(METRIC_ORDER))
    references = _reference_rows(document, metrics)
    return {
        "dataset_name": dataset_name or dataset.name or "unnamed",
        "classes": [str(c) for c in dataset.classes or []],
        "multi_label": bool(dataset.multi_label),
        "num_train": dataset.num_train,
        "num_test": dataset.num_test,
        "metric_labels": [_metric_header(m, dataset.positive_class) for m in metrics],
        "positive_class": dataset.positive_class,
        "ordinal": bool(dataset.ordinal),
        "has_references": bool(references),
        "rows": references + [_table_row(row, metrics, evaluated_model) for row in rows],
        "has_baselines": any(row.model != evaluated_model for row in rows),
        "show_num_train": any(row.num_train is not None for row in rows),
    }


def artifact_evaluation(
    evaluation: Mapping | EvaluationResults, *, task: str, fraction: Any, seed: Any, evaluated_model: str
) -> EvaluationResults | None:
    """The rows of `evaluation` about one fine-tuned artifact: its own row (task, label fraction, and seed when the
    row has per-seed values) and the other models' rows of the same protocol as baselines. Rows of the same model
    under other protocols describe other models (the base checkpoint, the full fine-tuning of an adapter's
    base, ...) and are dropped. None when the artifact has no row."""
    document = evaluation_document(evaluation)
    fraction = _finite(fraction)
    kept = []
    for row in document.rows:
        if row.task != task:
            continue
        row_fraction = _finite(row.fraction)
        if fraction is not None and row_fraction is not None and not math.isclose(row_fraction, fraction):
            continue
        kept.append(row.at_seed(seed) if row.model == evaluated_model else row)
    if not any(row.model == evaluated_model for row in kept):
        return None
    return document.with_rows(kept)


# ------------------------------------------------------------------------------------- the card's YAML header
BASE_TAGS = (
    "retvlp",
    "medical-imaging",
    "ophthalmology",
    "retina",
    "vision-language",
    "zero-shot-image-classification",
)


def _results_fields(name: str, eval_results: list[EvalResult]) -> dict:
    """The `model-index` part of the card data: metric types, model name and the results (None when empty)."""
    return {
        "metrics": sorted({result.metric_type for result in eval_results}) or None,
        "model_name": name if eval_results else None,
        "eval_results": eval_results or None,
    }


def checkpoint_card_data(family: str, *, name, license, base_model, eval_results) -> ModelCardData:
    """The YAML header of a released (or pretraining) checkpoint's card."""
    return ModelCardData(
        language="en",
        license=license,
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=[BASE_TAGS[0], family, *BASE_TAGS[1:]],
        base_model=list(base_model) if isinstance(base_model, (list, tuple)) else base_model,
        **_results_fields(name, eval_results),
    )


def classifier_card_data(family: str | None, *, name, license, hub_base, eval_results) -> ModelCardData:
    """The YAML header of a fine-tuned classifier's card (`hub_base`: the base model's Hub id, if any)."""
    return ModelCardData(
        language="en",
        license=license,
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=[BASE_TAGS[0], *([family] if family else []), "image-classification", *BASE_TAGS[1:4]],
        base_model=hub_base,
        base_model_relation="finetune" if hub_base else None,
        **_results_fields(name, eval_results),
    )


def adapter_card_data(
    family: str, *, name, license, hub_base, peft_type: str, classification: bool, eval_results
) -> ModelCardData:
    """The YAML header of a PEFT adapter's card."""
    return ModelCardData(
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
        **_results_fields(name, eval_results),
    )
