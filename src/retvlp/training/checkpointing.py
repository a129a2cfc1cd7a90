"""Atomic `checkpoint-{step}` directories and finding the one to resume from.

A checkpoint is written into a hidden staging directory (`.staging-checkpoint-{step}`) and renamed to
`checkpoint-{step}` only after every process has finished writing and `trainer_state.json` (the last file)
is on disk; a rename within one file system is atomic. A run killed during a save leaves at most a
staging directory, which `latest_checkpoint` never returns and the next save removes.

Integrity: `checkpoint_manifest.json`, written last before the rename, records the size and SHA-256 of every
other file. `--resume` checks it: a checkpoint with a missing, truncated or altered file is named with the file
and the reason, and `--resume latest` falls back, loudly, to the newest checkpoint that passes.

Contents: accelerate's `save_state` files (model weights as safetensors — including the momentum encoder
— optimizer state and RNG states, all read back with `torch.load(weights_only=True)`), plus
`trainer_state.json` (step counters, scheduler state, config) written by us as JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "checkpoint_manifest.json"

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from, with the files and reasons."""


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(directory: Path) -> None:
    """Record the size and SHA-256 of every file of a checkpoint directory (the manifest excluded)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        files[path.relative_to(directory).as_posix()] = {
            "bytes": path.stat().st_size,
            "sha256": _sha256(path),
        }
    with open(directory / MANIFEST_FILE, "w", encoding="utf-8") as handle:
        json.dump({"files": files}, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def checkpoint_problems(directory: str | os.PathLike) -> list[str]:
    """Why `directory` cannot be resumed from (empty when it passes): every file of its manifest present with
    its size and checksum, and its trainer state readable. A checkpoint written before manifests existed is
    only checked for a readable state."""
    directory = Path(directory)
    problems = []
    manifest_path = directory / MANIFEST_FILE
    if manifest_path.is_file():
        try:
            files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
        except (ValueError, KeyError) as error:
            return [f"{MANIFEST_FILE} is unreadable ({error})"]
        for name, expected in files.items():
            path = directory / name
            if not path.is_file():
                problems.append(f"{name} is missing")
            elif path.stat().st_size != expected["bytes"]:
                problems.append(f"{name} has {path.stat().st_size} bytes, {expected['bytes']} were written")
            elif _sha256(path) != expected["sha256"]:
                problems.append(f"{name} does not match its checksum (altered or corrupt)")
    state_path = directory / STATE_FILE
    if not state_path.is_file():
        problems.append(f"{STATE_FILE} is missing")
    elif not any(STATE_FILE in problem for problem in problems):
        try:
            json.loads(state_path.read_text(encoding="utf-8"))
        except ValueError as error:
            problems.append(f"{STATE_FILE} is not valid JSON ({error})")
    return problems


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
    """`--resume latest` → the newest checkpoint of `output_dir` that passes its integrity check (a newer one
    that fails is named with its problems, and skipped); None, said in the log, when there is none yet.
    `--resume PATH` → that checkpoint, which must be complete and pass the check."""
    if resume is None:
        return None
    if resume == "latest":
        candidates = checkpoint_steps(output_dir)
        if not candidates:
            logger.warning("--resume latest: no checkpoint in %s yet; starting from step 0.", output_dir)
            return None
        failed = []
        for _, path in reversed(candidates):
            problems = checkpoint_problems(path)
            if not problems:
                if failed:
                    logger.warning(
                        "--resume latest: %s; resuming from %s instead.", "; ".join(failed), path.name
                    )
                return path
            failed.append(f"{path.name} fails its integrity check: {', '.join(problems)}")
        raise CheckpointError(
            f"--resume latest: no checkpoint in {output_dir} passes its integrity check: " + "; ".join(failed)
        )
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"--resume {resume}: not a complete checkpoint directory (no {STATE_FILE}); "
            f"complete ones in {output_dir}: {[str(p) for _, p in checkpoint_steps(output_dir)]}"
        )
    problems = checkpoint_problems(path)
    if problems:
        raise CheckpointError(
            f"--resume {resume}: the checkpoint fails its integrity check: {', '.join(problems)}. "
            "Resume from an earlier checkpoint (--resume latest picks the newest that passes)."
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
        write_manifest(staging)  # last: a checkpoint is checked against it on resume
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
        raise CheckpointError(
            f"{path} was written before the released / pretraining model split (no '{prefix}.' keys in "
            f"{weights.name}): its optimizer state cannot be matched to this model's parameters, so the run "
            f"cannot resume exactly. Finish it with the retvlp version that wrote it, or start a new run from its "
            f"weights: model.pretrained: <that run's final/ directory> (pre-split checkpoints load)."
        )


def load_checkpoint(accelerator, path: str | os.PathLike) -> dict[str, Any]:
    """Restore model, optimizer and RNG states saved by `save_checkpoint`; return the trainer state."""
    path = Path(path)
    try:
        for model in accelerator._models:
            check_model_layout(accelerator.unwrap_model(model), path)
        accelerator.load_state(str(path))
    except CheckpointError:
        raise
    except (OSError, RuntimeError, EOFError, KeyError, SafetensorError, json.JSONDecodeError) as error:
        # A checkpoint from before manifests, or damaged in a way its sizes and checksums do not show.
        raise CheckpointError(
            f"{path} cannot be read ({type(error).__name__}: {error}). Resume from an earlier checkpoint "
            "(--resume latest picks the newest that passes its integrity check)."
        ) from error
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


__all__ = [
    "CheckpointError",
    "check_model_layout",
    "checkpoint_problems",
    "checkpoint_steps",
    "latest_checkpoint",
    "load_checkpoint",
    "resolve_resume",
    "save_checkpoint",
    "write_manifest",
]
