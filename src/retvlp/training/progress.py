"""What a training loop shows while it runs: a tqdm bar on a terminal, plain log lines otherwise.

A bar redrawn with carriage returns is unreadable in a batch system's log file, and with `--no-progress`
nothing at all used to appear between start-up and the end (a 150-step real-data run printed nothing for 37
minutes). Without a bar, every log step and every evaluation is one `logger.info` line instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

logger = logging.getLogger("retvlp.training")

# Figures shown from a log entry, in this order, with their printed names: (key, name, format).
SHOWN_FIGURES = (
    ("loss", "loss", ".4f"),
    ("lr", "lr", ".2e"),
    ("grad_norm", "grad_norm", ".3f"),
    ("samples_per_s", "samples/s", ".1f"),
)
SHOWN_EVALUATION = (("eval/zero_shot_accuracy", "zs"), ("eval/linear_probe_accuracy", "lp"))


def phase(message: str, *args: Any, enabled: bool = True) -> None:
    """One line naming a start-up phase ("Validating and caching 6392 images ..."), on the main process."""
    if enabled:
        logger.info(message, *args)


class PhaseTimes:
    """Wall seconds per named phase of a run ("synthetic data", "image cache", "training steps", ...), in the
    order first seen: what `training/pretrain.py` prints at the end, so a slow run says where its time went.

    A phase measured inside another is counted once, in the inner one: the outer phase keeps only its own time
    (the image cache inside data preparation is not also data preparation), so the figures add up to the time
    spent inside `measure`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._inner: list[float] = []  # per open phase: seconds spent in phases opened inside it

    @contextmanager
    def measure(self, name: str, count: int | None = None) -> Iterator[None]:
        """Time the block as phase `name`; `count` (e.g. optimizer steps) is summed and printed per unit."""
        self.seconds.setdefault(name, 0.0)  # ordered by first start: data before the image cache inside it
        start = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            inner = self._inner.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - inner
            if count is not None:
                self.counts[name] = self.counts.get(name, 0) + count
            if self._inner:
                self._inner[-1] += elapsed

    def add_count(self, name: str, count: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + count

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def summary(self, wall: float | None = None) -> str:
        """One line: "synthetic data 7.9 s · image cache 11.2 s · training steps 141.0 s (400, 0.353 s each) ·
        ... · total 182.4 s" (phases under 0.05 s left out); with `wall` (the process's seconds so far), the rest
        is shown as start-up."""
        parts = []
        for name, seconds in self.seconds.items():
            if seconds < 0.05:  # e.g. no periodic evaluation ran: a row of zeros says nothing
                continue
            count = self.counts.get(name)
            per = f" ({count}, {seconds / count:.3f} s each)" if count else ""
            parts.append(f"{name} {seconds:.1f} s{per}")
        if wall is not None and wall > self.total:
            parts.insert(0, f"start-up (imports, config) {wall - self.total:.1f} s")
        shown_total = wall if wall is not None else self.total
        return " · ".join([*parts, f"total {shown_total:.1f} s"])


_RUN_TIMES: ContextVar[PhaseTimes | None] = ContextVar("retvlp_run_times", default=None)


@contextmanager
def recording(times: PhaseTimes) -> Iterator[PhaseTimes]:
    """Make `times` the run's record for `timed` phases inside the block (e.g. a stage of a recipe gets its
    own, so its training steps are not added to the main run's)."""
    token = _RUN_TIMES.set(times)
    try:
        yield times
    finally:
        _RUN_TIMES.reset(token)


@contextmanager
def timed(name: str, count: int | None = None) -> Iterator[None]:
    """`PhaseTimes.measure` on the run's record when one is open (`recording`), else nothing: code deep in the
    data layer can name its phase without being handed the timer."""
    times = _RUN_TIMES.get()
    if times is None:
        yield
        return
    with times.measure(name, count):
        yield


def timed_count(name: str, count: int) -> None:
    """Add `count` units (e.g. optimizer steps) to phase `name` of the open record, if any."""
    times = _RUN_TIMES.get()
    if times is not None:
        times.add_count(name, count)


class StepProgress:
    """Progress of `total` optimizer steps from `initial`: a tqdm bar when `show_bar`, else log lines.

    `enabled` is False on every process but the main one: nothing is shown there."""

    def __init__(self, total: int, initial: int, desc: str, *, show_bar: bool, enabled: bool):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.bar = None
        if show_bar and enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step")

    @property
    def disable(self) -> bool:
        """tqdm's attribute: True where no bar is drawn."""
        return self.bar is None

    def update(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def log_step(self, entry: dict[str, Any]) -> None:
        """A log step's figures: the bar's postfix, or one line "pretrain step 40/400 (10%) loss ... lr ..."."""
        shown = {name: f"{entry[key]:{fmt}}" for key, name, fmt in SHOWN_FIGURES if key in entry}
        if self.bar is not None:
            self.bar.set_postfix({k: v for k, v in shown.items() if k in ("loss", "lr")})
        elif self.enabled:
            step = entry["step"]
            epochs = " ".join(f"{k}={entry[k]:.2f}" for k in sorted(entry) if k.startswith("epoch"))
            figures = " ".join(f"{name} {value}" for name, value in shown.items())
            logger.info(
                "%s step %d/%d (%.0f%%) %s %s",
                self.desc,
                step,
                self.total,
                100 * step / self.total,
                figures,
                epochs,
            )

    def log_evaluation(self, entry: dict[str, Any]) -> None:
        """An evaluation's headline figures: the bar's description (the postfix is rewritten every log step),
        or one line."""
        shown = " ".join(f"{short}={entry[key]:.3f}" for key, short in SHOWN_EVALUATION if key in entry)
        if self.bar is not None:
            self.bar.set_description(f"{self.desc} {shown}")
        elif self.enabled:
            logger.info("%s step %d evaluation: %s", self.desc, entry["step"], shown or entry)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = ["PhaseTimes", "StepProgress", "phase", "recording", "timed", "timed_count"]
