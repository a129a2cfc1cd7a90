"""Patient-grouped (cluster) percentile bootstrap confidence intervals for any metric.

Images of one patient (both eyes, several visits) are not independent: resampling images would treat them as if
they were and give intervals that are too narrow. Here the unit of resampling is the GROUP (the patient): each
resample draws the G unique groups with replacement, and a group drawn m times contributes all its rows m times.

    bootstrap_cis({"roc_auc": fn, ...}, targets, probabilities, groups)  -> {"roc_auc": Interval, ...}
    bootstrap_ci(fn, targets, probabilities, groups)                      -> Interval
    grouped_resample_indices(groups, n_resamples, seed)                   -> the row indices of each resample

Shapes: `targets` and `probabilities` are arrays whose FIRST axis is the N rows (e.g. targets (N,) class ids or
(N, C) multi-label indicators, probabilities (N, C) or (N,)); `groups` is (N,) of any sortable labels (patient
ids), or None for an ordinary row-level bootstrap (every row its own group). A metric is a callable
`metric_fn(targets[idx], probabilities[idx]) -> float`.

Draw order (so that a result can be reproduced by hand): `rng = np.random.default_rng(seed)`; the unique groups are
`np.unique(groups)` (sorted); resample b is `rng.integers(0, G, size=G)`, drawn for b = 0, 1, ... in turn; its
rows are those of the drawn groups, concatenated in draw order, each group's rows in their original order.

Undefined resamples: a resample on which a metric raises `ValueError` or returns a non-finite value (ROC-AUC with
one class present, ...) is skipped and counted in `Interval.skipped`; the percentiles are taken over the
remaining values. Warnings a metric emits on resamples are silenced (the count says how many were undefined);
those on the full-data estimate are not. When more than half of the resamples are undefined the interval is NaN
and `Interval.reason` says why.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Interval", "bootstrap_ci", "bootstrap_cis", "grouped_resample_indices"]

Metric = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval.

    `estimate` is the metric on the full data (not the mean of the resamples); `low` / `high` are the
    (1 - confidence)/2 and (1 + confidence)/2 percentiles of the defined resample values (numpy's default linear
    interpolation); `n_resamples` is the number drawn, `skipped` how many of them the metric was undefined on.
    `reason` is None, or why the estimate or the interval is NaN. Formats as `0.873 [0.851, 0.894]`; a format
    spec applies to the three numbers (`f"{interval:.2f}"`)."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    skipped: int = 0
    reason: str | None = None

    def __format__(self, spec: str) -> str:
        spec = spec or ".3f"

        def number(value: float) -> str:
            return "nan" if math.isnan(value) else format(value, spec)

        return f"{number(self.estimate)} [{number(self.low)}, {number(self.high)}]"

    def __str__(self) -> str:
        return format(self, "")

    def to_json(self) -> dict[str, Any]:
        """A plain dict (NaN stays a float NaN, as the rest of results.json writes it)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Interval:
        missing = {"estimate", "low", "high", "confidence", "n_resamples"} - set(data)
        if missing:
            raise ValueError(
                f"Interval JSON: missing key(s) {sorted(missing)}; expected the output of to_json()."
            )
        return cls(
            estimate=float(data["estimate"]),
            low=float(data["low"]),
            high=float(data["high"]),
            confidence=float(data["confidence"]),
            n_resamples=int(data["n_resamples"]),
            skipped=int(data.get("skipped", 0)),
            reason=data.get("reason"),
        )


def _group_layout(groups: Any, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by group (stable: original order inside a group), each group's start in that order and its
    size. Groups are numbered as `np.unique(groups)` orders them."""
    if groups is None:
        return np.arange(n_rows), np.arange(n_rows), np.ones(n_rows, dtype=np.int64)
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != n_rows:
        raise ValueError(
            f"groups: expected one group label per row, shape ({n_rows},); got shape {groups.shape}. "
            "Pass the patient id of every row (or None for a row-level bootstrap)."
        )
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.argsort(inverse.reshape(-1), kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, starts, counts


def grouped_resample_indices(
    groups: Any, n_resamples: int, seed: int = 0, n_rows: int | None = None
) -> Iterator[np.ndarray]:
    """Yield the row indices (int64, length varies with the groups drawn) of each of `n_resamples` grouped
    bootstrap resamples, in the draw order the module docstring states. `groups` (N,) or None with `n_rows`."""
    if groups is None and n_rows is None:
        raise ValueError("n_rows: needed when groups is None (one group per row).")
    n_rows = len(groups) if n_rows is None else n_rows
    order, starts, counts = _group_layout(groups, n_rows)
    n_groups = len(counts)
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        drawn = rng.integers(0, n_groups, size=n_groups)
        # Vectorised concatenation of the drawn groups' row ranges: position j of the output is row
        # order[start of its group + its offset inside the group].
        lengths = counts[drawn]
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        offsets = np.arange(int(lengths.sum())) - first
        yield order[np.repeat(starts[drawn], lengths) + offsets]


def _evaluate(metric_fn: Metric, targets: np.ndarray, probabilities: np.ndarray) -> tuple[float, str | None]:
    """The metric's value, or NaN and why it is undefined (a ValueError or a non-finite value)."""
    try:
        value = float(metric_fn(targets, probabilities))
    except ValueError as error:
        return float("nan"), f"ValueError: {error}"
    if not math.isfinite(value):
        return float("nan"), f"the metric returned {value}"
    return value, None


def bootstrap_cis(
    metrics: Mapping[str, Metric],
    targets: Any,
    probabilities: Any,
    groups: Any,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval] | None:
    """One grouped percentile bootstrap interval per metric, all metrics evaluated on the SAME resamples (each
    resample's indices are drawn once): cheaper, and the intervals of different metrics are consistent.

    Returns {name: Interval}, or None when `n_resamples` is 0 (bootstrap off)."""
    if not isinstance(n_resamples, (int, np.integer)) or isinstance(n_resamples, bool) or n_resamples < 0:
        raise ValueError(
            f"n_resamples: expected an integer >= 0 (0 turns the bootstrap off); got {n_resamples!r}."
        )
    if n_resamples == 0:
        return None
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence: expected a level in (0, 1), e.g. 0.95; got {confidence!r}.")
    if not metrics:
        raise ValueError("metrics: expected at least one {name: metric_fn} entry.")
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities)
    if targets.ndim == 0 or probabilities.ndim == 0 or len(targets) != len(probabilities):
        raise ValueError(
            f"targets / probabilities: expected the same number of rows on the first axis; got shapes "
            f"{targets.shape} and {probabilities.shape}."
        )
    if len(targets) == 0:
        raise ValueError("targets: no rows to bootstrap.")

    estimates = {name: _evaluate(fn, targets, probabilities) for name, fn in metrics.items()}
    values = {name: np.empty(n_resamples) for name in metrics}
    first_reason: dict[str, str | None] = dict.fromkeys(metrics)
    with warnings.catch_warnings():
        # A metric warning on every undefined resample would be noise: `skipped` counts them.
        warnings.simplefilter("ignore")
        resamples = grouped_resample_indices(groups, n_resamples, seed, n_rows=len(targets))
        for b, idx in enumerate(resamples):
            resampled_targets, resampled_probabilities = targets[idx], probabilities[idx]
            for name, fn in metrics.items():
                value, reason = _evaluate(fn, resampled_targets, resampled_probabilities)
                values[name][b] = value
                if reason is not None and first_reason[name] is None:
                    first_reason[name] = reason

    tail = 100.0 * (1.0 - float(confidence)) / 2.0
    intervals = {}
    for name in metrics:
        estimate, estimate_reason = estimates[name]
        defined = values[name][np.isfinite(values[name])]
        skipped = n_resamples - len(defined)
        reasons = []
        if estimate_reason is not None:
            reasons.append(f"undefined on the full data ({estimate_reason})")
        if skipped * 2 > n_resamples:
            # Too few defined resamples to trust their percentiles (and those left are a biased subset).
            low = high = float("nan")
            reasons.append(
                f"{skipped} of {n_resamples} resamples undefined (more than half), e.g. {first_reason[name]}"
            )
        else:
            low, high = (float(v) for v in np.percentile(defined, [tail, 100.0 - tail]))
        intervals[name] = Interval(
            estimate=estimate,
            low=low,
            high=high,
            confidence=float(confidence),
            n_resamples=n_resamples,
            skipped=skipped,
            reason="; ".join(reasons) or None,
        )
    return intervals


def bootstrap_ci(
    metric_fn: Metric,
    targets: Any,
    probabilities: Any,
    groups: Any,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval | None:
    """The grouped percentile bootstrap interval of one metric (see `bootstrap_cis`); None when n_resamples=0."""
    intervals = bootstrap_cis(
        {"metric": metric_fn},
        targets,
        probabilities,
        groups,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )
    return None if intervals is None else intervals["metric"]
