"""The benchmark's leaderboard: one table per suite, datasets × models, the suite's headline metric per
protocol, with the recipes' published figures as reference rows marked "published" and their sources listed
under the table (`leaderboard.md`), the same numbers as JSON (`leaderboard.json`) and as bars (`leaderboard.png`).

A cell is the mean over the protocol's seeds (± the sample std when there are several) read from the pair's
`results.json`; "skipped" when the harness could not run that task for the model (e.g. zero-shot for an
image-only model: the reason is listed under the table), "failed" when the pair failed, "—" where the column
does not apply (κ on nominal classes) or nothing was computed. Published values are the papers' own, never
recomputed; they are read next to ours, not as the same experiment (different splits, resolutions, seeds).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

METRIC_LABELS = {
    "accuracy": "ACC",
    "balanced_accuracy": "ACA",
    "roc_auc": "AUROC",
    "pr_auc": "AUPR",
    "quadratic_kappa": "κ",
    "f1_macro": "macro F1",
}


@dataclass(frozen=True)
class Column:
    protocol: (
        str  # as ReferenceFigure.protocol spells it: "finetune", "linear-probe", "zero-shot", "few-shot-5"
    )
    metric: str
    task: str | None  # the harness's task; None: a column only published figures fill
    method: str | None = None
    fraction: float | None = None
    shots: int | None = None
    ordinal_only: bool = False

    @property
    def key(self) -> str:
        return f"{self.protocol}:{self.metric}"

    @property
    def header(self) -> str:
        label = METRIC_LABELS.get(self.metric, self.metric)
        protocol = self.protocol
        if self.task == "few-shot":
            protocol = f"{self.shots}-shot {self.method}"
        return f"{protocol} {label}"

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "protocol": self.protocol,
            "metric": self.metric,
            "task": self.task,
            "method": self.method,
            "fraction": self.fraction,
            "shots": self.shots,
            "header": self.header,
        }


def suite_columns(protocol, settings, *, any_ordinal: bool) -> list[Column]:
    """The leaderboard columns of a suite run with `settings`: per task (and label fraction / shots), the
    suite's metrics, κ for graded datasets."""
    metrics = [(m, False) for m in protocol.metrics]
    if any_ordinal:
        metrics += [(m, True) for m in protocol.ordinal_metrics]
    columns = []
    for task in settings.tasks:
        if task == "zero-shot":
            settings_of = [dict(protocol="zero-shot")]
        elif task == "few-shot":
            methods = settings.few_shot_methods
            method = protocol.leaderboard_method if protocol.leaderboard_method in methods else methods[0]
            settings_of = [
                dict(protocol=f"few-shot-{k}", method=method, shots=int(k)) for k in settings.shots
            ]
        else:
            settings_of = [
                dict(protocol=task if f >= 1 else f"{task}-{f * 100:g}%", fraction=float(f))
                for f in settings.fractions
            ]
        for setting in settings_of:
            for metric, ordinal_only in metrics:
                columns.append(Column(metric=metric, task=task, ordinal_only=ordinal_only, **setting))
    return columns


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _find_row(results: dict, model: str, column: Column) -> dict | None:
    for row in results.get("results", []):
        if row.get("model") != model or row.get("task") != column.task:
            continue
        if column.task == "few-shot" and (
            row.get("method") != column.method or row.get("shots") != column.shots
        ):
            continue
        if column.fraction is not None and (
            row.get("fraction") is None or abs(float(row["fraction"]) - column.fraction) > 1e-9
        ):
            continue
        return row
    return None


def _cell(results: dict | None, model: str, column: Column, status: str, ordinal: bool) -> dict:
    """`{"mean", "std", "n"}` of a cell, or `{"status": ...}`."""
    if column.ordinal_only and not ordinal:
        return {"status": "n/a"}
    if status == "failed":
        return {"status": "failed"}
    if results is None or column.task is None:
        return {"status": "—"}
    row = _find_row(results, model, column)
    if row is None:
        skipped = (results.get("models", {}).get(model) or {}).get("skipped_tasks") or []
        if any(s.get("task") == column.task for s in skipped):
            return {"status": "skipped"}
        return {"status": "—"}
    entry = row.get("metrics", {}).get(column.metric)
    if entry is None:
        return {"status": "—"}
    mean = entry.get("mean") if isinstance(entry, dict) else entry
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return {"status": "n/a"}
    values = entry.get("values") if isinstance(entry, dict) else None
    return {"mean": float(mean), "std": entry.get("std") if isinstance(entry, dict) else None,
            "n": len(values) if values else 1}  # fmt: skip


def _text(cell: dict) -> str:
    if "mean" not in cell:
        return cell["status"]
    text = f"{cell['mean']:.3f}"
    if cell.get("n", 1) > 1 and cell.get("std") is not None:
        text += f" ± {cell['std']:.3f}"
    return text


def _protocol_json(protocol) -> dict:
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(protocol).items()}


def write_leaderboard(
    output: Path, present, models: list[str], pairs, missing, *, data_root: str, settings: Mapping
) -> dict[str, Path]:
    """Write leaderboard.{md,json,png} under `output` from the pairs' results (`present`: the planned datasets
    found, `settings`: {suite name: its EvaluationSettings}); returns `{kind: path}`."""
    status = {(p.dataset, p.model): p for p in pairs}
    suites: dict[str, dict] = {}
    for entry in present:
        suites.setdefault(entry.suite.name, {"protocol": entry.suite, "datasets": []})["datasets"].append(
            entry
        )
    citations: list[str] = []
    rows: list[dict] = []
    tables: dict[str, list[Column]] = {}
    notes: list[str] = []
    for name, group in suites.items():
        protocol = group["protocol"]
        any_ordinal = any(e.recipe.ordinal for e in group["datasets"])
        columns = suite_columns(protocol, settings[name], any_ordinal=any_ordinal)
        known = {c.key for c in columns}
        for entry in group["datasets"]:
            for ref in entry.recipe.references:
                key = f"{ref.protocol}:{ref.metric}"
                if key not in known:
                    known.add(key)
                    columns.append(Column(protocol=ref.protocol, metric=ref.metric, task=None))
        tables[name] = columns
        for entry in group["datasets"]:
            recipe = entry.recipe
            for model in models:
                pair = status.get((recipe.name, model))
                state = pair.status if pair is not None else "not run"
                results = _read(Path(pair.folder) / "results.json") if pair and pair.folder else None
                cells = {c.key: _cell(results, model, c, state, recipe.ordinal) for c in columns}
                rows.append({"suite": name, "dataset": recipe.name, "model": model, "published": False,
                             "status": state, "cells": cells})  # fmt: skip
                for skipped in ((results or {}).get("models", {}).get(model) or {}).get(
                    "skipped_tasks"
                ) or []:
                    notes.append(
                        f"{recipe.name} / {model}: {skipped.get('task')} not run: {skipped.get('reason')}"
                    )
                leak = (results or {}).get("leakage")
                if isinstance(leak, dict):  # the harness's leakage check ran (--pretrain-manifests)
                    notes.append(
                        f"{recipe.name} / {model}: leakage against the pretraining data: "
                        f"{json.dumps(leak.get('counts'), sort_keys=True)}"
                        + (
                            "; the leaked images were left out"
                            if leak.get("excluded_from_evaluation")
                            else ""
                        )
                        + f" ({Path(pair.folder) / 'leakage'})"
                    )
                if pair is not None and pair.error:
                    notes.append(f"{recipe.name} / {model}: failed: {pair.error}")
            published: dict[str, dict] = {}
            for ref in recipe.references:
                if ref.source not in citations:
                    citations.append(ref.source)
                row = published.setdefault(
                    ref.model,
                    {"suite": name, "dataset": recipe.name, "model": ref.model, "published": True,
                     "sources": [], "cells": {c.key: {"status": ""} for c in columns}},
                )  # fmt: skip
                row["cells"][f"{ref.protocol}:{ref.metric}"] = {"mean": float(ref.value), "n": 1}
                if ref.source not in row["sources"]:
                    row["sources"].append(ref.source)
            for row in published.values():
                row["citations"] = [citations.index(s) + 1 for s in row["sources"]]
                rows.append(row)
    document = {
        "data_root": data_root,
        "models": models,
        "suites": {
            n: {
                "protocol": _protocol_json(g["protocol"]),
                "columns": [c.to_json() for c in tables[n]],
                "datasets": [e.recipe.name for e in g["datasets"]],
            }
            for n, g in suites.items()
        },  # fmt: skip
        "rows": rows,
        "citations": citations,
        "datasets": {
            e.recipe.name: {
                "title": e.recipe.title,
                "suite": e.suite.name,
                "citation": e.recipe.citation,
                "source": e.recipe.source,
                "licence": e.recipe.licence,
            }
            for e in present
        },  # fmt: skip
        "skipped_datasets": [{"name": m.name, "root": m.root, "missing": m.missing} for m in missing],
        "pairs": [
            {
                "dataset": p.dataset,
                "model": p.model,
                "status": p.status,
                "seconds": round(p.seconds, 1),
                "error": p.error,
            }
            for p in pairs
        ],  # fmt: skip
        "notes": notes,
    }
    written = {
        "json": output / "leaderboard.json",
        "markdown": output / "leaderboard.md",
        "png": output / "leaderboard.png",
    }
    _atomic_write(written["json"], json.dumps(document, indent=2) + "\n")
    _atomic_write(written["markdown"], markdown(document, suites, tables))
    if not plot(document, tables, written["png"]):
        written.pop("png")
    return written


def markdown(document: dict, suites: dict, tables: dict[str, list[Column]]) -> str:
    lines = ["# Benchmark leaderboard", ""]
    lines.append(
        f"Data root: `{document['data_root']}`. Models: {', '.join(document['models'])}. Cells: mean over the "
        "protocol's seeds (± sample std); rows marked *published* are the papers' figures (never recomputed), "
        "read next to ours, not as the same run."
    )
    lines.append("")
    for name, columns in tables.items():
        protocol = suites[name]["protocol"]
        lines += [f"## {protocol.title} (`{name}`)", "", f"Protocol: {protocol.citation}.", ""]
        lines.append("| Dataset | Model | " + " | ".join(c.header for c in columns) + " |")
        lines.append("|---|---|" + "---|" * len(columns))
        for row in document["rows"]:
            if row["suite"] != name:
                continue
            model = row["model"]
            if row["published"]:
                model = f"{model} — *published* [{', '.join(str(i) for i in row['citations'])}]"
            cells = " | ".join(_text(row["cells"][c.key]) for c in columns)
            lines.append(f"| {row['dataset']} | {model} | {cells} |")
        lines.append("")
    if document["citations"]:
        lines += ["Published figures:", ""]
        lines += [f"{i}. {source}" for i, source in enumerate(document["citations"], start=1)]
        lines.append("")
    lines += ["Datasets:", ""]
    for name, info in document["datasets"].items():
        lines.append(
            f"- `{name}` — {info['title']} ({info['suite']} suite); {info['citation'].rstrip('.')}; {info['source']}"
        )
    lines.append("")
    if document["skipped_datasets"]:
        lines += ["Skipped (not present under the data root):", ""]
        for m in document["skipped_datasets"]:
            lines.append(f"- `{m['name']}`: looked in `{m['root']}`, missing {', '.join(m['missing'])}")
        lines.append("")
    resumed = [p for p in document["pairs"] if p["status"] == "resumed"]
    if resumed:
        lines.append(
            "Resumed from an earlier run (resume marker matched): "
            + ", ".join(f"{p['dataset']} / {p['model']}" for p in resumed)
        )
        lines.append("")
    if document["notes"]:
        lines += ["Notes:", ""] + [f"- {note}" for note in document["notes"]] + [""]
    return "\n".join(lines)


def plot(document: dict, tables: dict[str, list[Column]], path: Path) -> bool:
    """Bars per (column, dataset, model), published figures as black markers; False: no number to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = []
    for name, columns in tables.items():
        for column in columns:
            rows = [r for r in document["rows"] if r["suite"] == name and "mean" in r["cells"][column.key]]
            if rows:
                panels.append((name, column, rows))
    if not panels:
        return False
    models = document["models"]
    width = 0.8 / max(len(models), 1)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    for axis, (name, column, rows) in zip(axes.flat, panels, strict=False):
        datasets = list(dict.fromkeys(r["dataset"] for r in rows))
        x = np.arange(len(datasets))
        for i, model in enumerate(models):
            values = [
                next((r["cells"][column.key]["mean"] for r in rows
                      if r["dataset"] == d and r["model"] == model and not r["published"]), np.nan)
                for d in datasets
            ]  # fmt: skip
            axis.bar(x - 0.4 + width * (i + 0.5), values, width, label=model)
        published = [
            (datasets.index(r["dataset"]), r["cells"][column.key]["mean"]) for r in rows if r["published"]
        ]
        if published:
            px, py = zip(*published, strict=True)
            axis.scatter(px, py, marker="*", color="black", s=60, zorder=3, label="published")
        axis.set_xticks(x, datasets, rotation=30, ha="right", fontsize=8)
        lowest = min(r["cells"][column.key]["mean"] for r in rows)
        axis.set_ylim(min(0.0, lowest - 0.05), 1)  # κ can be negative
        axis.set_title(f"{name}: {column.header}", fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _atomic_write(path: Path, text: str) -> None:
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(staging, path)
