"""What a person looks at after an evaluation: `results.json`, `results.md` (mean ± std tables), PNG plots
(label-efficiency curves: metric vs label fraction, one line per model and protocol, as in MaskedCLIP's Fig. 2;
one-vs-rest ROC curves per class) and the test-set probabilities of each run (`predictions/*.npz`)."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np

METRIC_LABELS = {
    "accuracy": "ACC",
    "balanced_accuracy": "bal. ACC",
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "quadratic_kappa": "κ (quadratic)",
    "f1_macro": "macro F1",
}
CURVE_TASKS = ("linear-probe", "finetune", "lora")


def _setting(row: dict) -> str:
    if row["task"] == "few-shot":
        return f"{row['method']}, {row['shots']} shot{'s' if row['shots'] != 1 else ''}"
    if row["fraction"] is not None:
        return f"{row['fraction'] * 100:g} % labels"
    return "—"


def _cell(entry: dict | None) -> str:
    if entry is None or entry["mean"] is None or math.isnan(entry["mean"]):
        return "n/a"
    if len(entry["values"]) > 1:
        return f"{entry['mean']:.3f} ± {entry['std']:.3f}"
    return f"{entry['mean']:.3f}"


def markdown_table(results: dict) -> str:
    """One Markdown table of every result row, metrics as mean ± std over seeds."""
    rows = results["results"]
    metrics = [m for m in METRIC_LABELS if any(m in r["metrics"] for r in rows)]
    data = results["dataset"]
    lines = [
        f"**{data['name']}**: {len(data['classes'])} classes ({', '.join(data['classes'])}), "
        f"{'multi-label' if data['multi_label'] else 'single-label'}; {data['num_train']} training-pool / "
        f"{data['num_test']} test images (test split: {data['test_split']}).",
        "",
        "| model | task | setting | train images | seeds | "
        + " | ".join(METRIC_LABELS[m] for m in metrics)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(metrics),
    ]
    for r in rows:
        cells = [_cell(r["metrics"].get(m)) for m in metrics]
        lines.append(
            f"| {r['model']} | {r['task']} | {_setting(r)} | {r['num_train']:.0f} | {len(r['seeds'])} | "
            + " | ".join(cells)
            + " |"
        )
    for name, info in (results.get("models") or {}).items():
        for problem in info.get("skipped_tasks") or []:
            lines += ["", f"Not run for {name}: {problem['task']} ({problem['reason']})."]
    excluded = data.get("excluded") or {}
    if excluded:
        lines += [
            "",
            f"Left out of the data: {excluded} (listed in results.json, `dataset.excluded_examples`).",
        ]
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(staging, path)


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(str(p) for p in parts if p is not None)).strip("-")


def plot_label_efficiency(results: dict, metric: str, path: Path) -> bool:
    """Metric vs label fraction (log axis), one line (± std band) per (model, protocol). False: nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[tuple[str, str], list] = {}
    for r in results["results"]:
        if r["task"] in CURVE_TASKS and r["fraction"] is not None and metric in r["metrics"]:
            curves.setdefault((r["model"], r["task"]), []).append((r["fraction"], r["metrics"][metric]))
    if not curves:
        return False
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for (model, task), points in sorted(curves.items()):
        points.sort()
        x = np.array([p[0] * 100 for p in points])
        mean = np.array([p[1]["mean"] for p in points])
        std = np.array([p[1]["std"] for p in points])
        (line,) = axis.plot(x, mean, marker="o", label=f"{model} ({task})")
        axis.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    axis.set_xscale("log")
    axis.set_xlabel("training labels used (%)")
    axis.set_ylabel(METRIC_LABELS.get(metric, metric))
    axis.set_title(f"Label efficiency on {results['dataset']['name']}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


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
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def write_report(results: dict, predictions: dict, test_targets: np.ndarray, output_dir: str | Path) -> dict:
    """Write results.json, results.md, the plots and predictions/*.npz; returns `{what: path}`."""
    output = Path(output_dir)
    (output / "predictions").mkdir(parents=True, exist_ok=True)
    written = {}
    serialisable = {k: v for k, v in results.items() if k not in ("predictions", "test_targets")}
    _atomic_write(output / "results.json", json.dumps(serialisable, indent=2, default=str) + "\n")
    _atomic_write(output / "results.md", markdown_table(serialisable))
    written.update(json=output / "results.json", markdown=output / "results.md")
    for metric in ("roc_auc", "accuracy", "pr_auc"):
        path = output / f"label_efficiency_{metric}.png"
        if plot_label_efficiency(serialisable, metric, path):
            written[f"label_efficiency_{metric}"] = path
    classes = results["dataset"]["classes"]
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
                f"{model}: {task} ({_setting({'task': task, 'method': method, 'fraction': fraction, 'shots': shots})})",
                path,
            ):
                written[f"roc_{name}"] = path
    return written
