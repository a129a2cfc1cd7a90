"""Why MaskedCLIP's contrastive term collapses to ln B on real fundus photographs: the ablation grid of
docs/real_data.md, one command (~25 min on 2 CPU cores).

    python benchmarks/collapse_diagnosis.py                      # every variant
    python benchmarks/collapse_diagnosis.py --only A_cls B_text_mean

Each variant is the embedded demo config (`training/configs/maskedclip_tiny_cpu.yaml`: tiny MaskedCLIP, lr 1e-3,
32 paired + 32 unpaired per step) moved onto the real TVHL images (patient split of
`benchmarks/tvhl_manifests.py`, DME classes, 96 px, 150 steps, 15 warm-up) with ONE knob changed. Printed per
variant: how many steps the contrastive term sat at ln B (|L − ln B| ≤ 0.01: a constant embedding), the
largest mean pairwise cosine of the image embeddings, the final term against ln B and against its label-guided
floor, and the end-of-run zero-shot / linear-probe balanced accuracy on held-out patients. Curves:
`<out>/curves.png`; figures: `<out>/diagnosis.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from tvhl_manifests import CLASSES, DEFAULT_ROOT, write_manifests  # noqa: E402

# name → (what changes, overrides of the run config)
VARIANTS = {
    "A_cls": ("the demo as shipped before the fix ([CLS] text pooling)", {}),
    "B_text_mean": ("text_pooling: mean", {"model.config.text_pooling": "mean"}),
    "C_lr3e-4": ("lr 3e-4", {"optim.lr": 3e-4}),
    "D_lr1e-4": ("lr 1e-4", {"optim.lr": 1e-4}),
    "E_warmup60": ("60 warm-up steps", {"optim.warmup_steps": 60}),
    "F_betas0.98": ("betas (0.9, 0.98)", {"optim.betas": [0.9, 0.98]}),
    "G_lambda0.01": ("λ_clip 0.01 (the paper's)", {"model.config.lambda_clip": 0.01}),
    "H_scale10": ("logit scale init 10 (not 1/0.07)", {"model.config.logit_scale_init_value": 2.302585}),
    "I_fov": ("field-of-view crop", {"data.crop_to_fov": True}),
    "J_image_mean": ("clip_image_pooling: mean", {"model.config.clip_image_pooling": "mean"}),
    "K_no_labels": ("plain CLIP targets (labels not passed)", {"model.config_overrides": None}),
    "L_text_mean_lr1e-4": (
        "text_pooling: mean, lr 1e-4",
        {"model.config.text_pooling": "mean", "optim.lr": 1e-4},
    ),
}


def variant_config(name: str, overrides: dict, manifests: dict, out: Path, steps: int, image_size: int):

    raw = yaml.safe_load((REPO / "training/configs/maskedclip_tiny_cpu.yaml").read_text())
    raw["data"].pop("synthetic")
    raw["model"]["config"]["text_pooling"] = "cls"  # the state the issue was filed against
    plain = {k: v for k, v in overrides.items() if k != "model.config_overrides"}
    return _on_tvhl(raw, name, ("categorical", "elite", "unpaired"), manifests, out, steps, image_size, plain)


def _on_tvhl(raw, name, train_keys, manifests, out: Path, steps: int, image_size: int, overrides: dict):
    """A run description `raw` moved onto the TVHL manifests, with the diagnosis budget and `overrides`."""
    from retvlp.training import PretrainConfig

    raw["data"].update(
        train=[manifests[k] for k in train_keys if manifests.get(k)],
        classes=CLASSES,
        image_size=image_size,
        cache_dir=str(out / "cache"),
    )
    raw["optim"].update(max_steps=steps, warmup_steps=max(1, steps // 10))
    raw["run"].update(
        output_dir=str(out / name),
        save_every=steps,
        log_every=5,
        eval_every=None,
        tensorboard=False,
        evaluation={
            "probe_train": [manifests["probe_train"]],
            "test": [manifests["test"]],
            "classes": CLASSES,
        },
    )
    config = PretrainConfig.from_dict(raw, source=f"collapse_diagnosis:{name}")
    config.apply_overrides([f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    return config


def summarize(logs: list[dict], evaluation: dict | None, term: str = "loss_clip") -> dict:
    rows = [r for r in logs if f"{term}/ln_batch" in r]
    ln_b = rows[0][f"{term}/ln_batch"]
    tail = rows[-6:]
    final = float(np.mean([r[term] for r in tail]))
    floor = float(np.mean([r[f"{term}/floor"] for r in tail]))
    at_ln_b = [r["step"] for r in rows if abs(r[term] - ln_b) <= 0.01]
    step_gap = rows[1]["step"] - rows[0]["step"] if len(rows) > 1 else 1
    out = {
        "steps_at_ln_batch": len(at_ln_b) * step_gap,
        "max_image_mean_cosine": max(r[f"{term}/image_mean_cosine"] for r in rows),
        "text_mean_cosine_first": rows[0][f"{term}/text_mean_cosine"],
        "text_mean_cosine_last": float(np.mean([r[f"{term}/text_mean_cosine"] for r in tail])),
        "final": final,
        "final_over_ln_batch": final / ln_b,
        "floor_over_ln_batch": floor / ln_b,
        "progress_to_floor": (ln_b - final) / (ln_b - floor),
    }
    if evaluation:
        pre = evaluation["pretrained"]
        out["zero_shot_balanced_accuracy"] = pre.get("zero_shot", {}).get("balanced_accuracy")
        out["linear_probe_balanced_accuracy"] = pre["linear_probe"]["balanced_accuracy"]
    return out


def plot(results: dict, out: Path, suffix: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for name, entry in results.items():
        term = entry["term"]
        rows = [r for r in entry["logs"] if f"{term}/ln_batch" in r]
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r[term] / r[f"{term}/ln_batch"] for r in rows], label=name)
        axes[1].plot(steps, [r[f"{term}/image_mean_cosine"] for r in rows], label=name)
        axes[2].plot(steps, [r[f"{term}/text_mean_cosine"] for r in rows], label=name)
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set(
        title="contrastive term / ln B (1 = constant embedding)", xlabel="optimizer step", ylim=(0.75, 1.1)
    )
    axes[1].set(title="image embeddings: mean pairwise cosine", xlabel="optimizer step")
    axes[2].set(title="text embeddings: mean pairwise cosine", xlabel="optimizer step")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / f"curves{suffix}.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(DEFAULT_ROOT))
    parser.add_argument("--out", default="outputs/collapse_diagnosis")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--only", nargs="*", default=None, help="variant names (default: all)")
    parser.add_argument(
        "--keepfit-from",
        default=None,
        help="a real_data_learning.py output folder: also run the KeepFIT variants over its codebook and MLM tower",
    )
    args = parser.parse_args(argv)

    from retvlp.run import pretrain_and_evaluate

    out = Path(args.out).resolve()
    manifests = write_manifests(out / "manifests", args.data_root)["files"]
    # the manifests (in the output folder) name images under the data root: an allowed data root of every spec
    manifests = {
        name: {"path": path, "allowed_roots": [str(args.data_root)]}
        for name, path in manifests.items()
        if path
    }
    no_labels = out / "manifests" / "paired_without_labels.csv"
    results, keepfit_results = {}, {}

    def run(name, what, config, term, into):
        start = time.perf_counter()
        result = pretrain_and_evaluate(config, show_progress=False)
        logs = [json.loads(line) for line in (result.output_dir / "logs.jsonl").read_text().splitlines()]
        summary = summarize(logs, result.evaluation, term)
        summary["seconds"] = round(time.perf_counter() - start, 1)
        into[name] = {"what": what, "summary": summary, "logs": logs, "term": term}
        shown = {k: round(v, 4) for k, v in summary.items() if v is not None}
        print(f"{name:22s} {json.dumps(shown)}", flush=True)

    for name, (what, overrides) in VARIANTS.items():
        if args.only is not None and name not in args.only:
            continue
        files = dict(manifests)
        if "model.config_overrides" in overrides:  # K: the same rows, labels dropped after prompting
            files = _without_labels(manifests, no_labels)
        run(
            name,
            what,
            variant_config(name, overrides, files, out, args.steps, args.image_size),
            "loss_clip",
            results,
        )

    if args.keepfit_from:
        base = Path(args.keepfit_from).resolve()
        for name, (what, overrides) in KEEPFIT_VARIANTS.items():
            if args.only is not None and name not in args.only:
                continue
            config = keepfit_config(name, overrides, manifests, out, base, args.steps, args.image_size)
            run(name, what, config, "loss_itc_categorical", keepfit_results)

    tables = []
    for title, group, suffix in (("MaskedCLIP", results, ""), ("KeepFIT", keepfit_results, "_keepfit")):
        if not group:
            continue
        tables.append(f"{title} ({args.steps} steps)\n\n" + table_of(group, args.steps))
        plot(group, out, suffix)
    text = "\n\n".join(tables)
    print("\n" + text)
    (out / "diagnosis.md").write_text(text + "\n")
    everything = {**results, **keepfit_results}
    (out / "diagnosis.json").write_text(
        json.dumps({k: {"what": v["what"], **v["summary"]} for k, v in everything.items()}, indent=2)
    )
    return 0


def table_of(results: dict, steps: int) -> str:
    header = (
        "| variant | change | steps at ln B | max image cos | text cos first → last | final L / ln B "
        "| floor / ln B | progress to floor | zero-shot bal. acc | linear-probe bal. acc |"
    )
    lines = [header, "|" + "---|" * 10]
    for name, entry in results.items():
        s = entry["summary"]
        lines.append(
            f"| {name} | {entry['what']} | {s['steps_at_ln_batch']} / {steps} | {s['max_image_mean_cosine']:.4f} | "
            f"{s['text_mean_cosine_first']:.4f} → {s['text_mean_cosine_last']:.4f} | "
            f"{s['final_over_ln_batch']:.3f} | {s['floor_over_ln_batch']:.3f} | {s['progress_to_floor']:.2f} | "
            f"{_num(s.get('zero_shot_balanced_accuracy'))} | {_num(s.get('linear_probe_balanced_accuracy'))} |"
        )
    return "\n".join(lines)


KEEPFIT_VARIANTS = {
    "KA_recipe": ("keepfit_small_cpu.yaml as shipped (λ1 = 1, λ2 = 10, MLM text init, lr 1e-3)", {}),
    "KB_paper_lambdas": (
        "the paper's λ1 = 100, λ2 = 1e4",
        {"model.config.lambda_semantic": 100.0, "model.config.lambda_appearance": 10000.0},
    ),
    "KC_no_text_pretraining": ("BERT from scratch (no MLM init)", {"model.text_pretrained": None}),
    "KD_lr1e-4": ("lr 1e-4 (the paper's)", {"optim.lr": 1e-4}),
    "KE_no_knowledge": (
        "no knowledge injection (plain CLIP on p and m)",
        {"model.config.use_semantic_injection": False, "model.config.use_appearance_injection": False},
    ),
}


def keepfit_config(name, overrides, manifests, out: Path, base: Path, steps: int, image_size: int):
    """The KeepFIT recipe on TVHL, over the codebook and MLM text tower of a `real_data_learning.py` run."""

    raw = yaml.safe_load((REPO / "training/configs/keepfit_small_cpu.yaml").read_text())
    raw["model"].update(
        tokenizer=str(base / "text_mlm" / "final"), text_pretrained=str(base / "text_mlm" / "final")
    )
    raw["model"]["config"]["ibq_tokenizer_path"] = str(base / "ibq_tokenizer" / "final")
    return _on_tvhl(raw, name, ("categorical", "elite"), manifests, out, steps, image_size, overrides)


def _num(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _without_labels(manifests: dict, path: Path) -> dict:
    """K: every fundus row as a paired row whose text is its prompt and which carries no label, so that the
    contrastive targets are CLIP's identity even between identical prompts."""
    import csv

    rows = []
    for key in ("categorical", "elite"):
        with open(manifests[key]["path"], newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                text = row.get("text") or f"a fundus photograph of {row['label']}"
                rows.append({"image": row["image"], "text": text, "patient_id": row["patient_id"]})
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "text", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    roots = manifests["categorical"]["allowed_roots"]
    return {**manifests, "categorical": {"path": str(path), "allowed_roots": roots}, "elite": None}


if __name__ == "__main__":
    raise SystemExit(main())
