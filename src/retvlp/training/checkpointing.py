"""Atomic `checkpoint-{step}` directories and finding the one to resume from.

A checkpoint is written into a hidden staging directory (`.staging-checkpoint-{step}`) and renamed to
`checkpoint-{step}` only after every process has finished writing and `trainer_state.json` (the last file)
is on disk; a rename within one file system is atomic. A run killed during a save leaves at most a
staging directory, which `latest_checkpoint` never returns and the next save removes.

Contents: accelerate's `save_state` files (model weights as safetensors — including the momentum encoder
— optimizer state and RNG states, all read back with `torch.load(weights_only=True)`), plus
`trainer_state.json` (step counters, scheduler state, config) written by us as JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def checkpoint_steps(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in `output_dir`, sorted by step."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    steps = checkpoint_steps(output_dir)
    return steps[-1][1] if steps else None


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """`--resume latest` → newest complete checkpoint of `output_dir` (None when there is none yet);
    `--resume PATH` → that checkpoint, which must be complete."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"--resume {resume}: not a complete checkpoint directory (no {STATE_FILE}); "
            f"complete ones in {output_dir}: {[str(p) for _, p in checkpoint_steps(output_dir)]}"
        )
    return path


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike, step: int, state: dict[str, Any], keep: int
) -> Path:
    """Write `checkpoint-{step}` atomically (collective: every process must call it)."""
    root = Path(output_dir)
    staging = root / f".staging-checkpoint-{step}"
    final = root / f"checkpoint-{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".staging-checkpoint-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(staging / STATE_FILE, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(staging)
        if final.exists():  # a re-run of the same step after a resume: replace it whole
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(root)
        for _, old in checkpoint_steps(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def check_model_layout(model, path: str | os.PathLike) -> None:
    """Refuse a training checkpoint written with the single-class model layout of retvlp before the
    released-model / pretraining-model split: its weights would map (the pretraining classes read them), but
    its optimizer state is ordered by the old parameter order and would be applied to the wrong tensors."""
    prefix = getattr(model, "base_model_prefix", "")
    weights = Path(path) / "model.safetensors"
    if not prefix or getattr(model, "released_model", model) is model or not weights.is_file():
        return
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        keys = list(handle.keys())
    if keys and not any(key.startswith(prefix + ".") for key in keys):
        raise ValueError(
            f"{path} was written before the released / pretraining model split (no '{prefix}.' keys in "
            f"{weights.name}): its optimizer state cannot be matched to this model's parameters, so the run "
            f"cannot resume exactly. Finish it with the retvlp version that wrote it, or start a new run from its "
            f"weights: model.pretrained: <that run's final/ directory> (pre-split checkpoints load)."
        )


def load_checkpoint(accelerator, path: str | os.PathLike) -> dict[str, Any]:
    """Restore model, optimizer and RNG states saved by `save_checkpoint`; return the trainer state."""
    path = Path(path)
    for model in accelerator._models:
        check_model_layout(accelerator.unwrap_model(model), path)
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


__all__ = [
    "check_model_layout",
    "checkpoint_steps",
    "latest_checkpoint",
    "load_checkpoint",
    "resolve_resume",
    "save_checkpoint",
]
