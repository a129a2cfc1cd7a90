"""Does pretraining learn on real retinal images? On TVHL, two tasks.

    python benchmarks/real_data_learning.py --quick        # multi-class: shipped recipe vs random init, 1 seed
    python benchmarks/real_data_learning.py                # multi-class: every row, 3 seeds (hours; resumes per row)
    python benchmarks/real_data_learning.py --task dme     # the binary DME table of docs/real_data.md §3
    python benchmarks/real_data_learning.py --task dme --skip-keepfit --no-finetune --variants maskedclip maskedclip_flip

**The multi-class task** (`--task multiclass`, the default; issue 23): four classes from the DME and DR labels
(no DR / NPDR / PDR / DME, the clinic's imbalance 326 : 59 : 35 : 827 photographs on the training side), clinic-style
captions (a long shared prefix, one or several findings under synonyms and abbreviations), a patient split, the
OCT B-scans as unpaired images (`tvhl_manifests.write_multiclass_manifests`). Each row pretrains one variant
(`real_data_multiclass.ROWS`) per seed and evaluates it on the held-out patients: the contrastive term against ln B and its
label-guided floor, whether the collapse guard warned, zero-shot balanced accuracy and macro ROC-AUC, linear probe
macro ROC-AUC at 10 % / 100 % labels and a short full fine-tune at 10 %. Every (row, seed) is written to
`<out>/rows/` as it finishes and skipped when present, so a killed run resumes at the next row. Each row
pretrains for its recipe's own `optim.max_steps` (the shipped budget) unless `--steps` sets one for all.

**The binary DME task** (`--task dme`, issue 11):
on a patient split of the real TVHL fundus photographs + OCT B-scans, it pretrains, at one budget and from the real-data recipes (`training/configs/maskedclip_small_cpu.yaml`,
`keepfit_small_cpu.yaml`): MaskedCLIP, its MAE-only and CLIP-only ablations, and KeepFIT V2 (after a short IBQ
codebook run and a text-MLM run on the same training patients). It then evaluates on held-out patients (DME:
diabetic macular edema vs none), against the same architectures at random init:

- the contrastive term at the first and last log step, against ln B (a constant embedding) and against its
  label-guided floor mean_i ln|P(i)| (what perfect class-level alignment reaches: with two classes the floor
  is close to ln B, so the printed "progress" = (ln B − L) / (ln B − floor) is the fair figure);
- zero-shot accuracy, balanced accuracy, ROC-AUC (prompt ensembles with expert descriptions);
- linear-probe macro ROC-AUC at 10 % / 100 % of the training labels, and a short full fine-tune at 10 % / 100 %
  (the MaskedCLIP paper's protocol), seeds as mean ± std.

The targets of issue 11 are printed with a verdict; nothing here is asserted. Real images never enter the
test suite. Outputs: `<out>/results.json`, `<out>/results.md`, each run's `logs.jsonl` and curves
(`<out>/curves.png`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from tvhl_manifests import CLASSES, DEFAULT_ROOT, DR_CLASSES, write_manifests, write_text_corpus  # noqa: E402

MASKEDCLIP_VARIANTS = {
    "maskedclip": {},
    "mae_only": {"use_clip": False, "use_mfd": False},
    "clip_only": {"use_mim": False, "use_mfd": False},
    # beyond the paper (docs/benchmarks.md, "FLIP-style contrastive pass"): run only when named in --variants
    "maskedclip_flip": {"clip_mask_ratio": 0.5},
    "maskedclip_flip_teacher": {"clip_mask_ratio": 0.5, "mfd_teacher_mask_ratio": 0.5},
}
DEFAULT_VARIANTS = ("maskedclip", "mae_only", "clip_only")
CONTRASTIVE_TERMS = {
    "maskedclip": "loss_clip",
    "clip_only": "loss_clip",
    "maskedclip_flip": "loss_clip",
    "maskedclip_flip_teacher": "loss_clip",
    "keepfit": "loss_itc_categorical",
}


def _config(path: Path, updates: dict):
    from retvlp.training import PretrainConfig

    raw = yaml.safe_load(path.read_text())
    for section, values in updates.items():
        raw.setdefault(section, {})
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(raw[section].get(key), dict):
                raw[section][key] = {**raw[section][key], **value}
            else:
                raw[section][key] = value
    return PretrainConfig.from_dict(raw, source=str(path))


def _run(config, label: str) -> dict:
    from retvlp.run import pretrain_and_evaluate

    start = time.perf_counter()
    result = pretrain_and_evaluate(config, show_progress=False)
    seconds = time.perf_counter() - start
    print(f"  {label}: {result.steps} steps in {seconds:.0f} s → {result.final_dir}", flush=True)
    return {
        "final_dir": str(result.final_dir),
        "logs": str(result.output_dir / "logs.jsonl"),
        "seconds": seconds,
    }


def _logs(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def contrastive_summary(logs: list[dict], term: str) -> dict | None:
    rows = [entry for entry in logs if term in entry and f"{term}/ln_batch" in entry]
    if not rows:
        return None
    first, last = rows[0], rows[-1]
    tail = rows[-max(1, len(rows) // 5) :]  # the last fifth of the run: less noisy than one batch
    ln_b = last[f"{term}/ln_batch"]
    floor = float(np.mean([r[f"{term}/floor"] for r in tail]))
    final = float(np.mean([r[term] for r in tail]))
    collapsed_steps = [r["step"] for r in rows if abs(r[term] - r[f"{term}/ln_batch"]) <= 0.01]
    return {
        "first": first[term],
        "first_step": first["step"],
        "last": final,
        "ln_batch": ln_b,
        "floor": floor,
        "last_over_ln_batch": final / ln_b,
        "progress_to_floor": (ln_b - final) / (ln_b - floor) if ln_b > floor else float("nan"),
        "log_steps_at_ln_batch": len(collapsed_steps),
        "image_mean_cosine": float(np.mean([r[f"{term}/image_mean_cosine"] for r in tail])),
        "text_mean_cosine": float(np.mean([r[f"{term}/text_mean_cosine"] for r in tail])),
    }


def _metric(results: dict, model: str, task: str, name: str, fraction=None):
    for row in results["results"]:
        if row["model"] == model and row["task"] == task and row.get("fraction") == fraction:
            value = row["metrics"][name]
            return value["mean"], value["std"]
    return None


def _fmt(value) -> str:
    if value is None:
        return "—"
    mean, std = value
    return f"{mean:.3f} ± {std:.3f}" if std else f"{mean:.3f}"


def plot_curves(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, run in runs.items():
        term = CONTRASTIVE_TERMS.get(name)
        logs = _logs(run["logs"])
        if term:
            rows = [r for r in logs if term in r and f"{term}/ln_batch" in r]
            steps = [r["step"] for r in rows]
            axes[0].plot(steps, [r[term] / r[f"{term}/ln_batch"] for r in rows], label=f"{name} {term}")
            axes[1].plot(steps, [r[f"{term}/image_mean_cosine"] for r in rows], label=f"{name} image")
            axes[1].plot(steps, [r[f"{term}/text_mean_cosine"] for r in rows], "--", label=f"{name} text")
        evals = [
            r for r in logs if "eval/zero_shot_balanced_accuracy" in r or "eval/linear_probe_roc_auc" in r
        ]
        for key, style in (("eval/zero_shot_balanced_accuracy", "-"), ("eval/linear_probe_roc_auc", ":")):
            points = [(r["step"], r[key]) for r in evals if key in r]
            if points:
                axes[2].plot(*zip(*points, strict=True), style, marker="o", label=f"{name} {key[5:]}")
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set(title="contrastive term / ln B", xlabel="step")
    axes[1].set(title="mean pairwise cosine of the embeddings", xlabel="step")
    axes[2].set(title="held-out patients during pretraining", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(DEFAULT_ROOT), help="the TVHL folder (shared/data/tvhl)")
    parser.add_argument("--task", choices=("multiclass", "dme"), default="multiclass")
    parser.add_argument("--out", default=None, help="default: outputs/real_data_<task>")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="multiclass: the shipped recipe vs random init, one seed (≤ 20 min)",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        default=None,
        help="multiclass rows (default: all of real_data_multiclass.ROWS, in order)",
    )
    parser.add_argument(
        "--pretrain-seeds", type=int, nargs="+", default=[0, 1, 2], help="multiclass: run.seed"
    )
    parser.add_argument(
        "--one-acquisition",
        action="store_true",
        help="multiclass: the graded photographs only (no camera shortcut for DME; tvhl_manifests.py)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps of every pretraining run (default: multiclass, each row's recipe's own "
        "optim.max_steps — MaskedCLIP 300, KeepFIT 600; dme, 300)",
    )
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="evaluation seeds")
    parser.add_argument("--finetune-epochs", type=float, default=4)
    parser.add_argument("--no-finetune", action="store_true")
    parser.add_argument("--finetune-keepfit", action="store_true", help="fine-tune KeepFIT too (slower)")
    parser.add_argument("--skip-keepfit", action="store_true")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=list(DEFAULT_VARIANTS),
        choices=list(MASKEDCLIP_VARIANTS),
        help="MaskedCLIP runs (default: the paper's model and its MAE-only / CLIP-only ablations; "
        "maskedclip_flip and maskedclip_flip_teacher add the FLIP-style options; none: KeepFIT alone)",
    )
    parser.add_argument(
        "--ibq-steps", type=int, default=100, help="IBQ codebook steps (its 64 px run is slow)"
    )
    parser.add_argument("--ibq-image-size", type=int, default=64)
    args = parser.parse_args(argv)
    if args.task == "dme" and not args.variants and args.skip_keepfit:
        parser.error("--variants with no run and --skip-keepfit leave nothing to pretrain")
    args.out = args.out or f"outputs/real_data_{args.task}" + (
        "_one_acquisition" if args.one_acquisition else ""
    )

    import torch

    # OMP_NUM_THREADS, when set, wins (e.g. 1 per process when two invocations share the machine's cores)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    if args.task == "multiclass":
        import real_data_multiclass

        unknown = sorted(set(args.rows or ()) - set(real_data_multiclass.ROWS))
        if unknown:
            parser.error(f"unknown rows {unknown}; choose from {', '.join(real_data_multiclass.ROWS)}")
        args.rows = args.rows or list(real_data_multiclass.ROWS)
        return real_data_multiclass.run(args)

    from retvlp.evaluation.finetune import FinetuneSettings
    from retvlp.evaluation.runner import EvaluationSettings, evaluate_models

    # the binary task's tables (docs/real_data.md §2-4) ran every model 300 steps
    args.steps = args.steps or 300
    started = time.perf_counter()
    out = Path(args.out).resolve()
    manifests = write_manifests(out / "manifests", args.data_root)["files"]
    # the manifests (in the output folder) name images under the data root: an allowed data root of every spec
    manifests = {
        name: {"path": path, "allowed_roots": [str(args.data_root)]}
        for name, path in manifests.items()
        if path
    }
    cache = str(out / "cache")
    evaluation = {
        "probe_train": [manifests["probe_train"]],
        "test": [manifests["test"]],
        "classes": CLASSES,
    }
    common = {
        "data": {"classes": CLASSES, "image_size": args.image_size, "cache_dir": cache},
        "optim": {"max_steps": args.steps},
        "run": {
            "evaluate": False,
            "evaluation": evaluation,
            "eval_every": max(1, args.steps // 4),
            "tensorboard": False,
            "save_every": args.steps,
            "keep_checkpoints": 1,
        },
    }
    image_rows = [manifests[name] for name in ("categorical", "elite", "unpaired")]
    runs: dict[str, dict] = {}
    print(f"TVHL manifests in {out / 'manifests'}; pretraining {args.steps} steps at {args.image_size} px")
    for name in args.variants:
        switches = MASKEDCLIP_VARIANTS[name]
        config = _config(
            REPO / "training/configs/maskedclip_small_cpu.yaml",
            {
                **common,
                "model": {"config": switches},
                "data": {**common["data"], "train": image_rows},
                "run": {**common["run"], "output_dir": str(out / name)},
            },
        )
        runs[name] = _run(config, name)

    if not args.skip_keepfit:
        ibq = _config(
            REPO / "training/configs/ibq_tokenizer_tiny_cpu.yaml",
            {
                "data": {
                    "train": image_rows,
                    "synthetic": None,
                    "image_size": args.ibq_image_size,
                    "cache_dir": cache,
                },
                "optim": {"max_steps": args.ibq_steps, "warmup_steps": max(1, args.ibq_steps // 10)},
                "run": {
                    "output_dir": str(out / "ibq_tokenizer"),
                    "tensorboard": False,
                    "save_every": args.ibq_steps,
                },
            },
        )
        _run(ibq, "ibq_tokenizer")
        corpus = out / "manifests" / "text_corpus.jsonl"
        write_text_corpus(manifests["elite"]["path"], CLASSES, corpus)
        mlm = _config(
            REPO / "training/configs/text_mlm_tiny_cpu.yaml",
            {
                "data": {"train": [{"path": str(corpus), "text_column": "text"}]},
                "optim": {"max_steps": args.steps},
                "run": {"output_dir": str(out / "text_mlm"), "tensorboard": False, "save_every": args.steps},
            },
        )
        _run(mlm, "text_mlm")
        keepfit = _config(
            REPO / "training/configs/keepfit_small_cpu.yaml",
            {
                **common,
                "model": {
                    "tokenizer": str(out / "text_mlm" / "final"),
                    "text_pretrained": str(out / "text_mlm" / "final"),
                    "config": {"ibq_tokenizer_path": str(out / "ibq_tokenizer" / "final")},
                },
                "data": {
                    **common["data"],
                    "train": [manifests["categorical"], manifests["elite"]],
                },
                "run": {**common["run"], "output_dir": str(out / "keepfit")},
            },
        )
        runs["keepfit"] = _run(keepfit, "keepfit")

    tasks = ("zero-shot", "linear-probe") + (() if args.no_finetune else ("finetune",))
    common_settings = dict(
        fractions=(0.1, 1.0),
        save_models=False,
        calibration_fraction=0.0,  # the table's rows predate the calibration split: same pools
        bootstrap=0,
        cache_dir=str(out / "feature_cache"),
        show_progress=False,
    )
    frozen = EvaluationSettings(tasks=("zero-shot", "linear-probe"), seeds=(0, 1, 2), **common_settings)
    finetune = EvaluationSettings(
        tasks=("finetune",),
        seeds=tuple(args.seeds),
        finetune=FinetuneSettings(
            epochs=args.finetune_epochs, warmup_epochs=min(1.0, args.finetune_epochs / 4), batch_size=32
        ),
        **common_settings,
    )
    evaluations, dr_evaluations = {}, {}
    families = {"maskedclip": list(args.variants)} if args.variants else {}
    if "keepfit" in runs:
        families["keepfit"] = ["keepfit"]
    for family, names in families.items():
        models = {name: runs[name]["final_dir"] for name in names}
        print(f"evaluating {', '.join(names)} + random init", flush=True)
        dme = dict(
            test_data=manifests["test"],
            class_names=CLASSES,
            random_init=True,
            dataset_name="TVHL DME (held-out patients)",
        )
        result = evaluate_models(
            models, manifests["probe_train"], settings=frozen, output_dir=out / f"eval_{family}", **dme
        )
        if "finetune" in tasks and (family == "maskedclip" or args.finetune_keepfit):
            tuned = evaluate_models(
                models,
                manifests["probe_train"],
                settings=finetune,
                output_dir=out / f"finetune_{family}",
                **dme,
            )
            result["results"] += tuned["results"]
        evaluations[family] = result
        dr_evaluations[family] = evaluate_models(
            models,
            manifests["dr_probe_train"],
            test_data=manifests["dr_test"],
            class_names=DR_CLASSES,
            ordinal=True,  # DR grades, in clinical order: quadratic κ over it
            settings=frozen,
            random_init=True,
            output_dir=out / f"eval_dr_{family}",
            dataset_name="TVHL DR grade (held-out patients)",
        )

    table, summary = build_table(runs, evaluations, dr_evaluations, tasks)
    plot_curves(runs, out / "curves.png")
    minutes = (time.perf_counter() - started) / 60
    header = (
        f"TVHL, {args.steps} pretraining steps at {args.image_size} px; zero-shot / linear probe over seeds 0, 1, 2, "
        f"fine-tuning ({args.finetune_epochs:g} epochs) over seeds {args.seeds}; {minutes:.1f} min in all"
    )
    print("\n" + header + "\n\n" + table + "\n")
    verdicts = check_targets(summary)
    for line in verdicts:
        print(line)
    (out / "results.md").write_text(header + "\n\n" + table + "\n\n" + "\n".join(verdicts) + "\n")
    (out / "results.json").write_text(json.dumps({"summary": summary, "minutes": minutes}, indent=2))
    return 0


def build_table(runs: dict, evaluations: dict, dr_evaluations: dict, tasks) -> tuple[str, dict]:
    columns = [
        "model",
        "contrastive first → last (ln B, floor)",
        "progress to floor",
        "zero-shot acc",
        "zero-shot bal. acc",
        "zero-shot ROC-AUC",
        "LP ROC-AUC 10 %",
        "LP ROC-AUC 100 %",
    ]
    if "finetune" in tasks:
        columns += ["FT ROC-AUC 10 %", "FT ROC-AUC 100 %"]
    columns += ["DR zero-shot bal. acc", "DR LP ROC-AUC 100 %"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    summary = {}
    for family, results in evaluations.items():
        for model in results["models"]:
            run = runs.get(model)
            term = CONTRASTIVE_TERMS.get(model)
            clip = contrastive_summary(_logs(run["logs"]), term) if run and term else None
            row = {
                "contrastive": clip,
                "zero_shot": {
                    k: _metric(results, model, "zero-shot", k)
                    for k in ("accuracy", "balanced_accuracy", "roc_auc")
                },
                "linear_probe_roc_auc": {
                    f: _metric(results, model, "linear-probe", "roc_auc", f) for f in (0.1, 1.0)
                },
                "finetune_roc_auc": {
                    f: _metric(results, model, "finetune", "roc_auc", f) for f in (0.1, 1.0)
                },
                "pretrain_seconds": run["seconds"] if run else None,
                "dr_zero_shot_balanced_accuracy": _metric(
                    dr_evaluations[family], model, "zero-shot", "balanced_accuracy"
                ),
                "dr_linear_probe_roc_auc": _metric(
                    dr_evaluations[family], model, "linear-probe", "roc_auc", 1.0
                ),
            }
            key = model if model != "random_init" else f"random_init ({family})"
            summary[key] = row
            cells = [
                key,
                (
                    f"{clip['first']:.3f} → {clip['last']:.3f} ({clip['ln_batch']:.3f}, {clip['floor']:.3f})"
                    if clip
                    else "—"
                ),
                f"{clip['progress_to_floor']:.2f}" if clip else "—",
                *(_fmt(row["zero_shot"][k]) for k in ("accuracy", "balanced_accuracy", "roc_auc")),
                _fmt(row["linear_probe_roc_auc"][0.1]),
                _fmt(row["linear_probe_roc_auc"][1.0]),
            ]
            if "finetune" in tasks:
                cells += [_fmt(row["finetune_roc_auc"][0.1]), _fmt(row["finetune_roc_auc"][1.0])]
            cells += [_fmt(row["dr_zero_shot_balanced_accuracy"]), _fmt(row["dr_linear_probe_roc_auc"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), summary


def check_targets(summary: dict) -> list[str]:
    """Issue 11's targets, each with the measured figure and a verdict."""

    def mean(value):
        return value[0] if value else float("nan")

    lines = ["Targets (issue 11):"]
    for name in ("maskedclip", "clip_only", "keepfit"):
        clip = summary.get(name, {}).get("contrastive")
        if clip:
            ok = clip["last_over_ln_batch"] <= 0.8
            lines.append(
                f"- {name}: final contrastive term / ln B = {clip['last_over_ln_batch']:.3f} (target ≤ 0.8: "
                f"{'met' if ok else 'NOT met'}; its label-guided floor is {clip['floor'] / clip['ln_batch']:.3f} "
                f"· ln B, progress to the floor {clip['progress_to_floor']:.2f}; collapsed log steps "
                f"{clip['log_steps_at_ln_batch']})"
            )
    random_key = "random_init (maskedclip)"
    if "maskedclip" in summary and random_key in summary:
        lp = mean(summary["maskedclip"]["linear_probe_roc_auc"][1.0])
        base = mean(summary[random_key]["linear_probe_roc_auc"][1.0])
        verdict = "met" if lp >= base + 0.05 else "NOT met"
        lines.append(
            f"- MaskedCLIP LP ROC-AUC at 100 %: {lp:.3f} vs random init {base:.3f} + 0.05 ({verdict})"
        )
    for name in ("maskedclip", "keepfit"):
        if name in summary:
            bal = mean(summary[name]["zero_shot"]["balanced_accuracy"])
            lines.append(
                f"- {name} DME zero-shot balanced accuracy {bal:.3f} (target > 0.5: {'met' if bal > 0.5 else 'NOT met'})"
            )
    if all(k in summary for k in ("maskedclip", "mae_only", "clip_only")):
        ft = {k: mean(summary[k]["finetune_roc_auc"][0.1]) for k in ("maskedclip", "mae_only", "clip_only")}
        if not any(math.isnan(v) for v in ft.values()):
            ok = ft["maskedclip"] >= ft["mae_only"] and ft["maskedclip"] >= ft["clip_only"]
            lines.append(
                f"- fine-tuned ROC-AUC at 10 %: MaskedCLIP {ft['maskedclip']:.3f}, MAE-only {ft['mae_only']:.3f}, "
                f"CLIP-only {ft['clip_only']:.3f} (MaskedCLIP ≥ both: {'met' if ok else 'NOT met'})"
            )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
