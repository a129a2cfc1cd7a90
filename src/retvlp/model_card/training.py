"""The training facts of a card: how a pretrained checkpoint (training summary, run config) or a fine-tuned
artifact (its training summary) was trained, as `(setting, value)` rows."""

from __future__ import annotations

from collections.abc import Mapping

from .architecture import fmt
from .metadata import _finite


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
                items.append((label, fmt(summary[key])))
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
                items.append((key.replace("_", " ").capitalize(), fmt(value)))
    if run_config:
        data = run_config.get("data") or {}
        optim = run_config.get("optim") or {}
        run = run_config.get("run") or {}
        if data.get("image_size"):
            items.append(("Training image size", f"{data['image_size']} px"))
        # The batch sizes sit in the family's own section (`maskedclip:`, `keepfit:`); runs written before the
        # per-family sections kept them under `data`.
        family = (run_config.get("model") or {}).get("family") or "maskedclip"
        sizes = {**data, **(run_config.get(family) or {})}
        batches = [
            f"{key.removesuffix('_batch_size')} {sizes[key]}"
            for key in ("paired_batch_size", "categorical_batch_size", "unpaired_batch_size")
            if sizes.get(key)
        ]
        if batches:
            items.append(("Batch per process", ", ".join(batches)))
        if optim:
            parts = [f"lr {fmt(optim.get('lr'))}"] if optim.get("lr") is not None else []
            if optim.get("weight_decay") is not None:
                parts.append(f"weight decay {fmt(optim['weight_decay'])}")
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
            items.append((label, fmt(summary[key])))
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
            items.append((label, fmt(settings[key])))
    return items
