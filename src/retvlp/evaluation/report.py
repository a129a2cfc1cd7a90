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
    "plot_reliability_diagram",
    "plot_roc",
    "reference_lines",
    "trust_tables",
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


def _cell(entry: MetricSummary | Mapping | None) -> str:
    """`0.873`, `0.873 ± 0.010` over seeds, and the patient-bootstrap interval where there is one:
    `0.873 [0.851, 0.894]`."""
    if isinstance(entry, Mapping):
        entry = MetricSummary.from_json(entry)
    if entry is None or entry.mean is None or math.isnan(entry.mean):
        return "n/a"
    text = f"{entry.mean:.3f}"
    if len(entry.values or ()) > 1:
        text += f" ± {entry.std:.3f}"
    if entry.ci is not None and all(math.isfinite(v) for v in entry.ci):
        text += f" [{entry.ci[0]:.3f}, {entry.ci[1]:.3f}]"
    return text


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
    calibration = ""
    if data.num_calibration:
        calibration = f" / {data.num_calibration} calibration images ({data.calibration_split})"
    elif data.calibration_split:
        calibration = f"; calibration split: {data.calibration_split}"
    return (
        f"**{data.name}**: {len(data.classes)} classes in this order: {', '.join(data.classes)}"
        f"{origin}; {kind}; {data.num_train} training-pool / {data.num_test} test images{calibration} "
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
    if any(row.metrics.get(m) is not None and row.metrics[m].ci for row in rows for m in metrics):
        bootstrap = next((row.extras["bootstrap"] for row in rows if "bootstrap" in row.extras), {})
        lines += [
            "",
            f"[low, high]: {bootstrap.get('confidence', 0.95) * 100:g} % interval from {bootstrap.get('resamples')} "
            "bootstrap resamples of the test patients (all images of a patient drawn together); ± std: spread over "
            "seeds.",
        ]
    lines += trust_tables(rows)
    for name, info in document.models.items():
        for problem in info.skipped_tasks:
            lines += ["", f"Not run for {name}: {problem.task} ({problem.reason})."]
    if data.excluded:
        lines += [
            "",
            f"Left out of the data: {data.excluded} (listed in results.json, `dataset.excluded_examples`).",
        ]
    return "\n".join(lines) + "\n"


def _headline(row: ResultRow) -> bool:
    """Zero-shot and the 100 % label rows: the settings whose operating points the markdown shows."""
    return row.task == "zero-shot" or row.fraction == 1.0


def trust_tables(rows: list[ResultRow]) -> list[str]:
    """The calibration, conformal-set and operating-point tables of the rows that carry them (`trust.py`)."""
    lines: list[str] = []
    calibrated = [row for row in rows if "calibration" in row.extras]
    if calibrated:
        first = calibrated[0].extras["calibration"]
        scaled = any("scaled" in row.extras["calibration"] for row in calibrated)
        n_cal = next((row.extras["calibration"].get("n_calibration") for row in calibrated), None)
        lines += [
            "",
            f"**Calibration** on the test images (top-label ECE over {first['n_bins']} equal-mass bins: the mean gap "
            "between how sure the model is and how often it is right; Brier score and NLL: lower is better)"
            + (
                f"; then temperature scaling, T fitted on the {n_cal} calibration images (T > 1: the model was "
                "over-confident)."
                if scaled
                else "."
            ),
            "",
            "| model | task | setting | ECE | class-wise ECE | Brier | NLL |"
            + (" T | ECE after T | Brier after T | NLL after T |" if scaled else ""),
            "|---|---|---|---|---|---|---|" + ("---|---|---|---|" if scaled else ""),
        ]
        for row in calibrated:
            c = row.extras["calibration"]
            cells = [_cell(c[k]) for k in ("ece", "classwise_ece", "brier", "nll")]
            if scaled:
                after = c.get("scaled", {})
                cells += [_cell(c.get("temperature"))] + [
                    _cell(after.get(k)) for k in ("ece", "brier", "nll")
                ]
            lines.append(f"| {row.model} | {row.task} | {_setting(row)} | " + " | ".join(cells) + " |")
    conformal = [row for row in rows if row.extras.get("conformal")]
    if conformal:
        lines += [
            "",
            "**Conformal prediction sets**, fitted on the calibration patients: a set at coverage 0.9 holds the true "
            "class for at least 90 % of new patients from the same population (on average over calibration "
            "draws; not for each image, and not under a change of camera or clinic). LAC gives the smallest sets "
            "and may give an empty one (no class plausible: refer); APS (randomised) adapts the size to how hard "
            "the image is.",
            "",
            "| model | task | setting | method | target | coverage on test | mean set size | empty sets | "
            "coverage per class |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in conformal:
            for entry in row.extras["conformal"]:
                per_class = ", ".join(
                    f"{name} {value:.2f}"
                    for name, value in entry["coverage_per_class"].items()
                    if value == value
                )
                lines.append(
                    f"| {row.model} | {row.task} | {_setting(row)} | {entry['method'].upper()} | "
                    f"{entry['coverage']:g} | {_cell(entry['empirical_coverage'])} | "
                    f"{_cell(entry['mean_set_size'])} | {_cell(entry['empty_sets'])} | {per_class} |"
                )
    screened = [row for row in rows if row.extras.get("operating_points") and _headline(row)]
    if screened:
        lines += [
            "",
            "**Screening operating points** (zero-shot and 100 % label rows; every row's are in results.json): the "
            "threshold on the class probability chosen on the calibration patients for a target specificity or "
            "sensitivity (or Youden's J), and what it gives on the test patients. An image is called positive "
            "when its probability is at or above the threshold.",
            "",
            "| model | task | setting | class | target | threshold | sensitivity | specificity | PPV | NPV |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in screened:
            for entry in row.extras["operating_points"]:
                if "not_computed" in entry:
                    cells = ["n/a"] * 5
                else:
                    cells = [
                        _cell(entry[k]) for k in ("threshold", "sensitivity", "specificity", "ppv", "npv")
                    ]
                lines.append(
                    f"| {row.model} | {row.task} | {_setting(row)} | {entry['class']} | {entry['target']} | "
                    + " | ".join(cells)
                    + " |"
                )
    missing = {reason for row in rows for reason in (row.extras.get("not_computed") or {}).values()}
    for reason in sorted(missing):
        lines += ["", f"Not computed: {reason}."]
    return lines


def plot_reliability_diagram(
    targets: np.ndarray,
    probabilities: np.ndarray,
    temperature: float | None,
    title: str,
    path: Path,
    n_bins: int = 15,
) -> bool:
    """Top-label reliability of one run's test probabilities, and after temperature `temperature` when given."""
    from .calibration import apply_temperature, plot_reliability, reliability_curve

    if targets.ndim != 1:
        return False
    curves = {"as predicted": reliability_curve(targets, probabilities, n_bins)}
    if temperature is not None and math.isfinite(temperature):
        scaled = apply_temperature(probabilities, temperature, inputs="probabilities")
        curves[f"temperature {temperature:.2f}"] = reliability_curve(targets, scaled, n_bins)
    plot_reliability(curves, path, title=title)
    return True


def _evidence_section(output: Path) -> str:
    """Links to the evidence-map overlays under `output/evidence/` (`--maps`), per model, when there are any."""
    folders = sorted(d for d in (output / "evidence").glob("*") if d.is_dir() and any(d.glob("*.png")))
    if not folders:
        return ""
    lines = [
        "",
        "**Evidence maps** (zero-shot test images; where the model's evidence for the class it chose lies: "
        "MaskedCLIP: each patch through the image projection against the class's prompt embedding; KeepFIT: "
        "each position of the last ResNet stage, likewise). They show where the score comes from, not why, and "
        "a map on a correct answer can still rest on an artefact.",
        "",
    ]
    for folder in folders:
        images = sorted(folder.glob("*.png"))
        shown = " ".join(f"[{p.stem}](evidence/{folder.name}/{p.name})" for p in images[:12])
        more = f" … ({len(images)} in all)" if len(images) > 12 else ""
        lines.append(f"- {folder.name}: {shown}{more}")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(staging, path)


def _renormalized(probabilities: np.ndarray) -> np.ndarray:
    probabilities = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, None)
    return probabilities / probabilities.sum(axis=1, keepdims=True)


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
    _atomic_write(output / "results.md", markdown_table(document) + _evidence_section(output))
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
        # ROC and reliability plots for the headline settings only: zero-shot and the full-label runs.
        if task == "zero-shot" or (fraction == 1.0 and task in CURVE_TASKS):
            row = next(
                (r for r in document.rows if r.setting_key == (model, task, method, fraction, shots)), None
            )
            calibration = row.extras.get("calibration") if row is not None else None
            if calibration is not None:
                temperature = (calibration.get("temperature") or {}).get("values") or [None]
                path = output / f"reliability_{name}.png"
                if plot_reliability_diagram(
                    test_targets,
                    _renormalized(probabilities),
                    temperature[0],  # the first seed's, like the stored probabilities
                    f"{model}: {task} ({_setting_text(task, method, fraction, shots)})",
                    path,
                    calibration.get("n_bins", 15),
                ):
                    written[f"reliability_{name}"] = path
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
