"""Atomic `checkpoint-{step}` directories and finding the one to resume from.

A checkpoint is written into a hidden staging directory (`.staging-checkpoint-{step}`) and renamed to
`checkpoint-{step}` only after every process has finished writing and `trainer_state.json` (the last file)
is on disk; a rename within one file system is atomic. A run killed during a save leaves at most a
staging directory, which `latest_checkpoint` never returns and the next save removes.

Integrity: `checkpoint_manifest.json`, written last before the rename, records the size and SHA-256 of every
other file. `--resume` checks it: a checkpoint with a missing, truncated or altered file is named with the file
and the reason, and `--resume latest` falls back, loudly, to the newest checkpoint that passes.

Disk space: before each save the free space of the output directory's file system is compared with the size of
the newest checkpoint (or, before the first, an estimate from the model and optimizer sizes) plus a margin; a
save that would not fit stops the run with the device, the space needed and the space free, before anything is
written. A save that runs out of space anyway (another writer filled the disk) is reported as "no space left on
<device> while writing <file>" instead of the serialisers' stream errors, and its staging directory is removed.

Contents: accelerate's `save_state` files (model weights as safetensors — including the momentum encoder
— optimizer state and RNG states, all read back with `torch.load(weights_only=True)`), plus
`trainer_state.json` (step counters, scheduler state, config) written by us as JSON.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
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


class DiskSpaceError(OSError):
    """A checkpoint does not fit (or did not fit) on the output directory's file system (errno ENOSPC)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


# Free space kept beyond the estimated checkpoint size: the estimate is the previous checkpoint's size, and
# optimizer state files grow slightly as AdamW fills its moments; logs and TensorBoard files also write there.
DISK_MARGIN_FRACTION = 0.10
DISK_MARGIN_BYTES = 64 * 2**20


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


def resolve_resume(
    resume: str | None, output_dir: str | os.PathLike, unreadable: dict[Path, str] | None = None
) -> Path | None:
    """`--resume latest` → the newest checkpoint of `output_dir` that passes its integrity check (a newer one
    that fails is named with its problems, and skipped); None, said in the log, when there is none yet.
    `--resume PATH` → that checkpoint, which must be complete and pass the check.

    `unreadable`: checkpoints that passed the check but failed to load (path → why; e.g. a file that matches
    its checksum but does not unpickle): `latest` skips them like failing ones."""
    if resume is None:
        return None
    if resume == "latest":
        unreadable = unreadable or {}
        candidates = checkpoint_steps(output_dir)
        if not candidates:
            logger.warning("--resume latest: no checkpoint in %s yet; starting from step 0.", output_dir)
            return None
        failed = []
        for _, path in reversed(candidates):
            if path in unreadable:
                failed.append(f"{path.name} cannot be read ({unreadable[path]})")
                continue
            problems = checkpoint_problems(path)
            if not problems:
                if failed:
                    logger.warning(
                        "--resume latest: %s; resuming from %s instead.", "; ".join(failed), path.name
                    )
                return path
            failed.append(f"{path.name} fails its integrity check: {', '.join(problems)}")
        raise CheckpointError(
            f"--resume latest: no checkpoint in {output_dir} passes its integrity check and loads: "
            + "; ".join(failed)
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


# ------------------------------------------------------------------------------------------- disk space
def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the file system holding `path` (an existing ancestor of it)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


def describe_device(path: str | os.PathLike) -> str:
    """`<mount point> (<device>)` for messages, e.g. "/data (/dev/nvme1n1)"; the device from /proc/mounts
    where it exists (Linux), else the mount point alone."""
    mount, device = mount_point(path), None
    try:
        with open("/proc/mounts", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 1 and fields[1] == str(mount):
                    device = fields[0]  # the last entry wins: it is the one mounted on top
    except OSError:
        pass
    return f"{mount} ({device})" if device else str(mount)


def _directory_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def estimate_checkpoint_bytes(output_dir: str | os.PathLike, models=(), optimizers=()) -> int:
    """Bytes the next checkpoint will take: the newest complete checkpoint's size, or before the first one the
    models' tensors (parameters and buffers) plus the optimizers' state tensors, and AdamW's two moments per
    parameter where the state is still empty (it is filled by the first step)."""
    steps = checkpoint_steps(output_dir)
    if steps:
        return _directory_bytes(steps[-1][1])
    total = 0
    for model in models:
        total += sum(t.numel() * t.element_size() for t in model.state_dict().values())
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                state = optimizer.state.get(parameter, {})
                tensors = [v for v in state.values() if hasattr(v, "numel")]
                if tensors:
                    total += sum(t.numel() * t.element_size() for t in tensors)
                else:
                    total += 2 * parameter.numel() * 4  # exp_avg + exp_avg_sq, fp32
    return total


def disk_space_problem(output_dir: str | os.PathLike, needed: int, step: int) -> str | None:
    """Why `checkpoint-{step}` (about `needed` bytes) would not fit in `output_dir`, or None when it fits."""
    required = int(needed * (1 + DISK_MARGIN_FRACTION)) + DISK_MARGIN_BYTES
    free = shutil.disk_usage(mount_point(output_dir)).free
    if free >= required:
        return None
    return (
        f"not enough free space on {describe_device(output_dir)} to save checkpoint-{step} in {output_dir}: "
        f"about {_gib(required)} needed (the last checkpoint's size + {DISK_MARGIN_FRACTION:.0%}), {_gib(free)} "
        "free. Free some space (older runs, caches), point run.output_dir at a larger disk, or lower "
        "run.keep_checkpoints; then resume with --resume latest."
    )


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**28 else f"{size / 2**20:.1f} MiB"


def _is_out_of_space(error: BaseException, directory: Path) -> bool:
    """Whether a failed write ran out of space. torch's serialiser reports it as a RuntimeError without an
    errno ("unexpected pos", "basic_ios::clear"), so a full file system after the failure counts too."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(mount_point(directory)).free < DISK_MARGIN_BYTES
    except OSError:
        return False


def _file_being_written(directory: Path, error: BaseException) -> str:
    """The file a failed save was writing: the error's own file name, else the newest file in the staging
    directory."""
    name = getattr(error, "filename", None)
    if name:
        return str(name)
    files = [p for p in directory.rglob("*") if p.is_file()] if directory.is_dir() else []
    return str(max(files, key=lambda p: p.stat().st_mtime_ns)) if files else str(directory)


def _any_process(accelerator, flag: bool) -> bool:
    """Collective: whether `flag` is true on any process."""
    if accelerator.num_processes == 1:
        return flag
    import torch

    value = torch.tensor(1.0 if flag else 0.0, device=accelerator.device)
    return accelerator.reduce(value, "sum").item() > 0


def _broadcast_text(accelerator, text: str | None) -> str | None:
    """Collective: the main process's `text` on every process."""
    if accelerator.num_processes == 1:
        return text
    from accelerate.utils import broadcast_object_list

    box = [text]
    broadcast_object_list(box, from_process=0)
    return box[0]


def check_resume_length(checkpoint: Path, state: dict[str, Any], total_steps: int, *, extend: bool) -> None:
    """Refuse to resume `checkpoint` (its trainer `state`) into a run of another length, unless `extend`
    lengthens it: a finished or unfinished run then continues to `total_steps`, with the learning-rate
    schedule of a `total_steps` run (the scheduler's lambdas are rebuilt from the new length; only its step
    counter comes from the checkpoint), so a decaying schedule's LR rises again at the resume step."""
    written, step = state.get("total_steps"), int(state["step"])
    if written == total_steps:
        return
    if not extend:
        raise CheckpointError(
            f"{checkpoint} was written by a run of {written} steps; this config gives {total_steps}. Resume "
            "with the same config, or pass --extend to continue the run to the new length (the learning-rate "
            "schedule is then that of a run of the new length; see docs/training.md, 'Extending a run')."
        )
    if total_steps <= step:
        raise CheckpointError(
            f"--extend: {checkpoint} is at step {step}, and this config gives {total_steps} steps in all; "
            f"raise optim.max_steps (or optim.epochs) above {step} to train further."
        )
    logger.warning(
        "--extend: the run of %s steps in %s continues from step %d to %d; the learning-rate schedule is now "
        "that of a %d-step run.",
        written,
        checkpoint.parent,
        step,
        total_steps,
        total_steps,
    )


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    step: int,
    state: dict[str, Any],
    keep: int,
    *,
    models=(),
    optimizers=(),
) -> Path:
    """Write `checkpoint-{step}` atomically (collective: every process must call it).

    The free space is checked first (`models` / `optimizers` size the first checkpoint); raises
    `DiskSpaceError` on every process, with nothing written, when it would not fit, and also when a write
    runs out of space midway (its staging directory removed)."""
    root = Path(output_dir)
    staging = root / f".staging-checkpoint-{step}"
    final = root / f"checkpoint-{step}"
    problem = None
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".staging-checkpoint-*"):
            shutil.rmtree(stale, ignore_errors=True)
        problem = disk_space_problem(root, estimate_checkpoint_bytes(root, models, optimizers), step)
    problem = _broadcast_text(accelerator, problem)
    if problem:
        raise DiskSpaceError(problem)
    accelerator.wait_for_everyone()
    error = None
    try:
        accelerator.save_state(str(staging), safe_serialization=True)
    except Exception as caught:  # noqa: BLE001 - re-raised below on every process, after the agreement
        error = caught
    if _any_process(accelerator, error is not None):
        _fail_save(accelerator, staging, error)
    if accelerator.is_main_process:
        try:
            _finish_checkpoint(staging, final, root, state, keep)
        except OSError as caught:
            error = caught
    if _any_process(accelerator, error is not None):
        _fail_save(accelerator, staging, error)
    accelerator.wait_for_everyone()
    return final


def _finish_checkpoint(staging: Path, final: Path, root: Path, state: dict[str, Any], keep: int) -> None:
    """Main process: the trainer state, the manifest (last), the atomic rename, the rotation."""
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


def _fail_save(accelerator, staging: Path, error: BaseException | None) -> None:
    """Every process: remove the partial staging directory and raise the save's error, named. A process whose
    own part succeeded raises too, so no process waits at a barrier the others never reach."""
    out_of_space = error is not None and _is_out_of_space(error, staging)
    where = _file_being_written(staging, error) if error is not None else None
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    if error is None:
        raise RuntimeError(f"another process failed while saving {staging.name}; see its error")
    if out_of_space:
        raise DiskSpaceError(
            f"no space left on {describe_device(staging.parent)} while writing {where} "
            f"({type(error).__name__}: {error}). The partial {staging.name} was removed; the last complete "
            "checkpoint is unchanged. Free some space or lower run.keep_checkpoints, then resume with "
            "--resume latest.",
        ) from error
    raise error


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


def describe_load_error(error: BaseException) -> str:
    """One line for why a checkpoint file did not load. torch's refusal of a non-tensor pickle is a page that
    suggests `weights_only=False`; a file we refuse for safety is never to be loaded so: keep only what it
    held ("Unsupported global: GLOBAL argparse.Namespace")."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError):
        found = re.search(r"Unsupported global: [^\n.]*(?:\.[A-Za-z_][\w]*)*", text)
        held = found.group(0) if found else text.splitlines()[0] if text else ""
        return (
            "UnpicklingError: it holds more than tensors and plain containers, refused by "
            f"torch.load(weights_only=True): {held}"
        )
    return f"{type(error).__name__}: {' '.join(text.split())}"


def load_checkpoint(accelerator, path: str | os.PathLike) -> dict[str, Any]:
    """Restore model, optimizer and RNG states saved by `save_checkpoint`; return the trainer state."""
    path = Path(path)
    try:
        for model in accelerator._models:
            check_model_layout(accelerator.unwrap_model(model), path)
        accelerator.load_state(str(path))
    except CheckpointError:
        raise
    except (
        OSError,
        RuntimeError,
        EOFError,
        KeyError,
        SafetensorError,
        json.JSONDecodeError,
        pickle.UnpicklingError,  # e.g. a forged optimizer.bin whose manifest entry was forged too
    ) as error:
        # A checkpoint from before manifests, or damaged in a way its sizes and checksums do not show.
        raise CheckpointError(
            f"{path} cannot be read ({describe_load_error(error)}). Resume from an earlier checkpoint "
            "(--resume latest picks the newest that passes its integrity check and loads)."
        ) from error
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


__all__ = [
    "CheckpointError",
    "DiskSpaceError",
    "check_model_layout",
    "check_resume_length",
    "checkpoint_problems",
    "checkpoint_steps",
    "describe_load_error",
    "disk_space_problem",
    "estimate_checkpoint_bytes",
    "latest_checkpoint",
    "load_checkpoint",
    "resolve_resume",
    "save_checkpoint",
    "write_manifest",
]
