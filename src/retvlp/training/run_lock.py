"""One run per output directory: a lock file naming the process that owns the directory.

Two trainers writing into one `run.output_dir` interleave checkpoints, logs and `final/` (seen when a resumed
run started while the orphaned workers of a killed launcher were still training). The main process (rank 0)
creates `.retvlp-run.lock` exclusively at start and removes it at exit; a second run on the directory refuses to
start and names the owner. A lock whose process is gone (same host, pid not alive or a zombie) is stale and taken
over with a warning; a lock from another host is never taken over, since its process cannot be checked from here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".retvlp-run.lock"

logger = logging.getLogger(__name__)


class RunLockedError(ValueError):
    """Another live run owns the output directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    # A killed trainer stays a zombie until its parent or init reaps it: signal 0 still reaches it. A launcher
    # killed with its workers leaves them to init, which in containers reaps late or never, and a resume started
    # in that window refused the directory of a run that was gone (seen: ~1 s here).
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            state = handle.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):  # no procfs (macOS, ...) or gone meanwhile: trust the signal
        return True
    return state not in ("Z", "X")


def _owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_lock(output_dir: str | os.PathLike, *, is_main_process: bool | None = None):
    """Hold the output directory's lock for the duration of the block (rank 0 only; other ranks pass)."""
    if is_main_process is None:
        is_main_process = int(os.environ.get("RANK", "0")) == 0
    if not is_main_process:
        yield
        return
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(2):
        try:
            with open(path, "x", encoding="utf-8") as handle:
                json.dump(me, handle)
            break
        except FileExistsError:
            owner = _owner(path)
            pid, host = owner.get("pid"), owner.get("host")
            if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                logger.warning("%s: taking over the stale lock of process %d (no longer running).", root, pid)
                path.unlink(missing_ok=True)
                continue
            raise RunLockedError(
                f"{root} is in use by another run (pid {pid} on {host}, started {owner.get('started')}; "
                f"{path}). Stop that run first (see docs/training.md, 'Stopping a run'), or use another "
                f"run.output_dir; if that process is gone, delete {path}."
            ) from None
    try:
        yield
    finally:
        if _owner(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


__all__ = ["LOCK_FILE", "RunLockedError", "run_lock"]
