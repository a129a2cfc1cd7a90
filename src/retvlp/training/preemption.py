"""Preemption: a cluster's warning signal ends a run with a checkpoint instead of a lost partial step.

Schedulers signal a job before they kill it: SLURM sends SIGTERM at the time limit or on preemption (and, with
`--signal=USR1@90`, SIGUSR1 ninety seconds before), Kubernetes sends SIGTERM and waits its grace period. While
the training loop runs, either signal only sets a flag; the loop finishes the optimizer step in progress, every
process agrees on it (the flag travels with the per-step finiteness check, one collective), writes a
checkpoint, leaves `preempted.json` in `run.output_dir`, releases the run lock and raises `PreemptedError`.
`training/pretrain.py` and `retvlp pretrain` then exit with `PREEMPTED_EXIT_CODE`; `--resume latest`
continues bit for bit.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

# sysexits' EX_TEMPFAIL, "try again later": a wrapper script can requeue on it (e.g. `scontrol requeue`).
PREEMPTED_EXIT_CODE = 75
PREEMPTION_SIGNALS = ("SIGTERM", "SIGUSR1")
MARKER = "preempted.json"


class PreemptedError(RuntimeError):
    """The run stopped on a preemption signal after writing `checkpoint`; `--resume latest` continues it."""

    def __init__(self, step: int, checkpoint: Path, signal_name: str):
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name
        super().__init__(
            f"stopped by {signal_name} after optimizer step {step}; checkpoint {checkpoint} written. Continue "
            f"with the same command and --resume latest (exit code {PREEMPTED_EXIT_CODE} marks a preempted run)."
        )


class PreemptionWatch:
    """While open, SIGTERM and SIGUSR1 set `signal_name` instead of ending the process; the previous handlers
    come back on exit. Outside the main thread (where Python cannot install handlers) it watches nothing."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():
            for name in PREEMPTION_SIGNALS:
                number = getattr(signal, name, None)  # Windows has no SIGUSR1
                if number is not None:
                    self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


def write_marker(output_dir: Path, step: int, checkpoint: Path, signal_name: str) -> None:
    """`preempted.json`: what stopped the run and where it continues (for requeue scripts and readers)."""
    marker = {"signal": signal_name, "step": step, "checkpoint": str(checkpoint)}
    (Path(output_dir) / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def clear_marker(output_dir: Path) -> None:
    """A resumed (or new) run is no longer a preempted one."""
    (Path(output_dir) / MARKER).unlink(missing_ok=True)


__all__ = [
    "MARKER",
    "PREEMPTED_EXIT_CODE",
    "PREEMPTION_SIGNALS",
    "PreemptedError",
    "PreemptionWatch",
    "clear_marker",
    "write_marker",
]
