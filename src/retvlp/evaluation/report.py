"""What a person looks at after an evaluation: `results.json`, `results.md` (mean ± std tables), PNG plots
(label-efficiency curves: metric vs label fraction, one line per model and protocol, as in MaskedCLIP's Fig. 2;
one-vs-rest ROC curves per class) and the test-set probabilities of each run (`predictions/*.npz`).

Every table and curve carries what it is read against: the class order (and where it comes from), whether κ
applies (ordinal classes), the positive class of PR-AUC for binary tasks (in the column header), and the
majority-class and chance levels of the same test set (reference rows / horizontal lines; a model accuracy
that does not beat the majority class is flagged with †)."""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .results import (
    DatasetInfo,
    EvaluationResults,
    MetricSummary,
    Reference,
    ResultRow,
    not_above_majority,
    read_references,
    read_results,
)

__all__ = [
    "describe_dataset",
    "majority_accuracy",
    "markdown_table",
    "metric_header",
    "not_above_majority",
    "plot_label_efficiency",
    "plot_roc",
    "reference_lines",
    "write_report",
]

METRIC_LABELS = {
    "accuracy": "ACC",
    "balanced_accuracy": "bal. ACC",
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "quadratic_kappa": "κ (quadratic)",
    "f1_macro": "macro F1",
}
CURVE_TASKS = ("linear-probe", "finetune", "lora")
REFERENCE_LABELS = (("majority", "majority class"), ("chance", "chance"))


def _setting_text(task: str, method, fraction, shots) -> str:
    if task == "few-shot":
        return f"{method}, {shots} shot{'s' if shots != 1 else ''}"
    if fraction is not None:
        return f"{fraction * 100:g} % labels"
    return "—"


def _setting(row: ResultRow) -> str:
    return _setting_text(row.task, row.method, row.fraction, row.shots)


def _cell(entry: MetricSummary | None) -> str:
    if entry is None or entry.mean is None or math.isnan(entry.mean):
        return "n/a"
    if len(entry.values or ()) > 1:
        return f"{entry.mean:.3f} ± {entry.std:.3f}"
    return f"{entry.mean:.3f}"


def _dataset(dataset: DatasetInfo | Mapping) -> DatasetInfo:
    return dataset if isinstance(dataset, DatasetInfo) else DatasetInfo.from_json(dataset)


def metric_header(metric: str, dataset: DatasetInfo | Mapping) -> str:
    """Column header of a metric; PR-AUC of a binary task names its positive class."""
    label = METRIC_LABELS.get(metric, metric)
    positive = _dataset(dataset).positive_class
    if metric == "pr_auc" and positive is not None:
        return f"{label} (positive: {positive})"
    return label


_ORDER_ORIGINS = {
    "given": "as given",
    "ClassLabel": "from the data's ClassLabel",
    "sorted": "sorted alphabetically, the default; set it with --classes",
}


def _order_origin(order: str) -> str:
    """`class_order` in words ("sorted, positive class last" → "sorted alphabetically ..., positive class last")."""
    base, _, rest = order.partition(", ")
    return _ORDER_ORIGINS.get(base, base) + (f", {rest}" if rest else "")


def describe_dataset(data: DatasetInfo | Mapping) -> str:
    """One sentence: classes in the order every metric uses, task kind, positive class, split sizes."""
    data = _dataset(data)
    origin = f" ({_order_origin(data.class_order)})" if data.class_order else ""
    kind = "multi-label" if data.multi_label else "single-label"
    if data.ordinal:
        kind += ", ordinal (quadratic κ over this order)"
    elif not data.multi_label and data.ordinal is not None and len(data.classes) > 2:
        kind += ", nominal (no κ: pass --ordinal for ordered grades)"
    if data.positive_class is not None:
        kind += f", binary with positive class **{data.positive_class}** (PR-AUC)"
    return (
        f"**{data.name}**: {len(data.classes)} classes in this order: {', '.join(data.classes)}"
        f"{origin}; {kind}; {data.num_train} training-pool / {data.num_test} test images "
        f"(test split: {data.test_split})."
    )


def _reference_setting(name: str, reference: Reference) -> str:
    if name == "chance":
        return "uniform random guess (expected)"
    predicts = reference.predicts
    if isinstance(predicts, list):
        return f"each label's training-pool majority (positive: {', '.join(predicts) or 'none'})"
    return f"always `{predicts}` (training-pool majority)"


def _reference_rows(references: Mapping[str, Reference], metrics: list[str]) -> list[str]:
    lines = []
    for name, label in REFERENCE_LABELS:
        reference = references.get(name)
        if not reference:
            continue
        cells = [_value(reference.metrics.get(m)) for m in metrics]
        lines.append(
            f"| *{label}* | reference | {_reference_setting(name, reference)} | — | — | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _value(value) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def majority_accuracy(results: EvaluationResults | Mapping) -> float | None:
    """The majority-class accuracy of the test set, when the results carry references."""
    reference = read_references(results).get("majority")
    return None if reference is None else reference.metrics.get("accuracy")


def _row_line(row: ResultRow, metrics: list[str]) -> str:
    cells = [_cell(row.metrics.get(m)) for m in metrics]
    if "accuracy" in metrics and row.not_above_majority:
        cells[metrics.index("accuracy")] += " †"
    return (
        f"| {row.model} | {row.task} | {_setting(row)} | {row.num_train:.0f} | {len(row.seeds)} | "
        + " | ".join(cells)
        + " |"
    )


def markdown_table(results: EvaluationResults | Mapping) -> str:
    """One Markdown table of every result row, metrics as mean ± std over seeds, below the majority-class and
    chance reference rows; † marks an accuracy that does not beat the majority class."""
    document = read_results(results)
    rows = document.annotated_rows()
    metrics = [m for m in METRIC_LABELS if any(m in r.metrics for r in rows)]
    data = document.dataset
    lines = [
        describe_dataset(data),
        "",
        "| model | task | setting | train images | seeds | "
        + " | ".join(metric_header(m, data) for m in metrics)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(metrics),
        *_reference_rows(document.references, metrics),
        *(_row_line(row, metrics) for row in rows),
    ]
    if "accuracy" in metrics and any(row.not_above_majority for row in rows):
        lines += [
            "",
            f"† accuracy not above the majority class ({document.majority_accuracy:.3f}, predicting "
            f"`{document.majority.predicts}` for every image): read balanced accuracy and ROC-AUC.",
        ]
    for name, info in document.models.items():
        for problem in info.skipped_tasks:
            lines += ["", f"Not run for {name}: {problem.task} ({problem.reason})."]
    if data.excluded:
        lines += [
            "",
            f"Left out of the data: {data.excluded} (listed in results.json, `dataset.excluded_examples`).",
        ]
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(staging, path)


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(str(p) for p in parts if p is not None)).strip("-")


def plot_label_efficiency(results: EvaluationResults | Mapping, metric: str, path: Path) -> bool:
    """Metric vs label fraction (log axis), one line (± std band) per (model, protocol). False: nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    document = read_results(results)
    curves: dict[tuple[str, str], list] = {}
    for r in document.rows:
        if r.task in CURVE_TASKS and r.fraction is not None and metric in r.metrics:
            curves.setdefault((r.model, r.task), []).append((r.fraction, r.metrics[metric]))
    if not curves:
        return False
    figure, axis = plt.subplots(figsize=(5.5, 4))
    _reference_lines(axis, document, metric)
    for (model, task), points in sorted(curves.items(), key=lambda item: item[0]):
        points.sort(key=lambda point: point[0])
        x = np.array([p[0] * 100 for p in points])
        mean = np.array([p[1].mean for p in points])
        std = np.array([p[1].std for p in points])
        (line,) = axis.plot(x, mean, marker="o", label=f"{model} ({task})")
        axis.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    axis.set_xscale("log")
    axis.set_xlabel("training labels used (%)")
    axis.set_ylabel(metric_header(metric, document.dataset))
    axis.set_title(f"Label efficiency on {document.dataset.name}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def reference_lines(results: EvaluationResults | Mapping, metric: str) -> list[tuple[str, float]]:
    """`[(label, level)]` of the horizontal reference lines of a metric's plot: majority class and chance,
    merged into one line when they coincide (e.g. ROC-AUC 0.5)."""
    levels = []
    references = read_references(results)
    for name, label in REFERENCE_LABELS:
        value = references[name].metrics.get(metric) if name in references else None
        if value is None or math.isnan(value):
            continue
        if levels and abs(levels[-1][1] - value) < 1e-9:
            levels[-1] = (f"{levels[-1][0]} = {label}", value)
        else:
            levels.append((label, value))
    return levels


def _reference_lines(axis, results: dict, metric: str) -> None:
    for (label, level), style in zip(reference_lines(results, metric), ("--", ":"), strict=False):
        axis.axhline(level, color="grey", linestyle=style, linewidth=1, label=f"{label} ({level:.3f})")


def plot_roc(
    targets: np.ndarray, probabilities: np.ndarray, class_names: list[str], title: str, path: Path
) -> bool:
    """One-vs-rest ROC curve per class (classes without positives or negatives in the test set are skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    onehot = targets if targets.ndim == 2 else np.eye(len(class_names))[targets]
    figure, axis = plt.subplots(figsize=(4.8, 4.5))
    drawn = False
    for c, name in enumerate(class_names):
        positives = onehot[:, c]
        if positives.min() == positives.max():
            continue
        fpr, tpr, _ = roc_curve(positives, probabilities[:, c])
        axis.plot(fpr, tpr, label=f"{name} ({roc_auc_score(positives, probabilities[:, c]):.3f})")
        drawn = True
    if not drawn:
        plt.close(figure)
        return False
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance (0.500)")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def write_report(
    results: EvaluationResults | Mapping, predictions: dict, test_targets: np.ndarray, output_dir: str | Path
) -> dict:
    """Write results.json, results.md, the plots and predictions/*.npz; returns `{what: path}`."""
    output = Path(output_dir)
    (output / "predictions").mkdir(parents=True, exist_ok=True)
    written = {}
    if not isinstance(results, EvaluationResults):
        results = {k: v for k, v in results.items() if k not in ("predictions", "test_targets")}
    document = read_results(results)
    _atomic_write(output / "results.json", document.dumps())
    _atomic_write(output / "results.md", markdown_table(document))
    written.update(json=output / "results.json", markdown=output / "results.md")
    for metric in ("roc_auc", "accuracy", "pr_auc"):
        path = output / f"label_efficiency_{metric}.png"
        if plot_label_efficiency(document, metric, path):
            written[f"label_efficiency_{metric}"] = path
    classes = document.dataset.classes
    for (model, task, method, fraction, shots), probabilities in predictions.items():
        name = _slug(
            model,
            task,
            method,
            f"fraction{fraction:g}" if fraction is not None else None,
            f"{shots}shot" if shots is not None else None,
        )
        np.savez_compressed(
            output / "predictions" / f"{name}.npz", probabilities=probabilities, targets=test_targets
        )
        # ROC plots for the headline settings only: zero-shot and the full-label runs.
        if task == "zero-shot" or (fraction == 1.0 and task in CURVE_TASKS):
            path = output / f"roc_{name}.png"
            if plot_roc(
                test_targets,
                probabilities,
                classes,
                f"{model}: {task} ({_setting_text(task, method, fraction, shots)})",
                path,
            ):
                written[f"roc_{name}"] = path
    return written
