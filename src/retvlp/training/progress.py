"""What a training loop shows while it runs: a tqdm bar on a terminal, plain log lines otherwise.

A bar redrawn with carriage returns is unreadable in a batch system's log file, and with `--no-progress`
nothing at all used to appear between start-up and the end (a 150-step real-data run printed nothing for 37
minutes). Without a bar, every log step and every evaluation is one `logger.info` line instead.
"""

from __future__ import annotations

import logging
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


__all__ = ["StepProgress", "phase"]
