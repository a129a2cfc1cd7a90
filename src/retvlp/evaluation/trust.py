"""What a clinical reader asks of a result row besides its mean: how sure the number is, how honest the
probabilities are, what a prediction set promises, and where a screening threshold lands (issue 27).

For one result row (a model × protocol × setting over its seeds) `row_figures` takes each seed's probabilities on
the test images and, where the evaluation holds out calibration patients, on those too (`RunScores`), and
returns:

- `intervals`: a 95 % percentile interval per metric from a bootstrap over test PATIENTS (`bootstrap.py`: all
  images of a drawn patient come together). With several seeds the resampled statistic is the mean over seeds of
  the metric on the same resampled images, so the interval is the test-set uncertainty of the reported mean;
  the seed-to-seed spread stays in ± std.
- `calibration` (single-label): top-label ECE (equal-mass bins), class-wise ECE, Brier score and negative
  log-likelihood on the test images; then, with a calibration split, the temperature fitted on it and the same
  figures after scaling the test probabilities by it.
- `conformal` (single-label, with a calibration split large enough for the coverage): split-conformal sets (LAC,
  APS) fitted on the calibration patients at each coverage, with their empirical coverage, mean set size, share
  of empty sets and coverage per class on the test images. The sets use the probabilities as the protocol gives
  them (not temperature-scaled: fitting T on the same patients would couple the two).
- `operating_points` (single-label, with a calibration split): for the positive class of a binary task, or each
  class one-vs-rest, the threshold chosen on the calibration patients for each target specificity / sensitivity
  and Youden's J, and the sensitivity, specificity, PPV and NPV it gives on the test images.

Every figure is a `MetricSummary`-shaped dict (mean, std and values over seeds; `ci` where bootstrapped);
what cannot be computed is left out with the reason under `not_computed`, never silently.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bootstrap import grouped_resample_indices
from .calibration import apply_temperature, calibration_report, fit_temperature
from .conformal import ConformalPredictor, min_calibration_size
from .fast_metrics import mean_metric_values
from .operating_points import (
    threshold_at_sensitivity,
    threshold_at_specificity,
    youden_threshold,
)
from .results import MetricSummary

DEFAULT_OPERATING_POINTS = {"spec": (0.9, 0.95), "sens": (0.9,)}


@dataclass(frozen=True)
class TrustSettings:
    """`bootstrap`: resamples of the test patients (0: no intervals); `confidence` of the intervals; `seed` of
    the resampling; `n_bins`: ECE bins (equal mass); `coverage`: conformal target levels; `conformal_methods`:
    "lac" and / or "aps"; `operating_points`: {"spec": levels, "sens": levels}."""

    bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    n_bins: int = 15
    coverage: tuple[float, ...] = (0.9,)
    conformal_methods: tuple[str, ...] = ("lac", "aps")
    operating_points: Mapping[str, Sequence[float]] = field(
        default_factory=lambda: dict(DEFAULT_OPERATING_POINTS)
    )


@dataclass
class RunScores:
    """One seed's probabilities: `test` (N_test, C), `calibration` (N_cal, C) or None (no calibration split)."""

    test: np.ndarray
    calibration: np.ndarray | None = None


@dataclass
class RowFigures:
    intervals: dict[str, tuple[float, float]]
    extras: dict[str, Any]


def nll(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at 1e-12)."""
    picked = probabilities[np.arange(len(targets)), targets]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, None))))


def top_label_ece(targets: np.ndarray, probabilities: np.ndarray, n_bins: int) -> float:
    """Top-label ECE (equal-mass bins) without input checks, for the bootstrap's resamples (the bins of
    `calibration.expected_calibration_error`)."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == targets).astype(np.float64)
    # np.quantile's linear interpolation, written out (np.quantile's overhead dominates on a few hundred images)
    ordered = np.sort(confidence)
    position = np.linspace(0.0, len(ordered) - 1, n_bins + 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, len(ordered) - 1)
    edges = np.unique(ordered[below] + (position - below) * (ordered[above] - ordered[below]))
    bins = np.searchsorted(edges[1:-1], confidence, side="left")
    gap = np.bincount(bins, weights=correct - confidence, minlength=len(edges))
    return float(np.abs(gap).sum() / len(targets))


def top_label_ece_and_brier(targets: np.ndarray, probabilities: np.ndarray, n_bins: int) -> dict[str, float]:
    """Top-label ECE (equal-mass bins) and Brier score without input checks, for the bootstrap's resamples:
    `calibration.expected_calibration_error`'s bins ((e_b, e_b+1], the first also its lower edge, coinciding
    quantile edges merged) and `calibration.brier_score`'s sum over classes (test_eval_trust.py checks both)."""
    one_hot = np.zeros_like(probabilities)
    one_hot[np.arange(len(targets)), targets] = 1.0
    return {
        "ece": top_label_ece(targets, probabilities, n_bins),
        "brier": float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1))),
    }


def _summary(values: Sequence[float]) -> dict[str, Any]:
    """A figure over seeds, written as the metrics are (`MetricSummary`: mean, sample std, every value)."""
    return MetricSummary.of_runs(values).to_json()


def _normalized(probabilities: np.ndarray) -> np.ndarray:
    """Rows renormalised (float32 softmax outputs can miss 1 by more than the calibration checks allow)."""
    probabilities = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, None)
    return probabilities / probabilities.sum(axis=1, keepdims=True)


class _Resampled:
    """Statistics of the test images as functions of a resample's row indices (a patient bootstrap draws the
    indices); `intervals()` evaluates all of them on the same resamples. A function registered with `add_many`
    returns several named values from one pass (every metric from one `metric_values` call per seed)."""

    def __init__(self) -> None:
        self.functions: list[tuple[str | None, Any]] = []
        # ratio statistics: name → ((R, N) numerators, (R, N) denominators); per resample the mean over the R
        # runs of sum(numerator[rows]) / sum(denominator[rows]), all of them in one matrix operation
        self.ratios: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._stacked = None

    def add_ratio(self, name: str, numerators, denominators) -> None:
        self.ratios[name] = (
            np.atleast_2d(np.asarray(numerators, dtype=np.float64)),
            np.atleast_2d(np.asarray(denominators, dtype=np.float64)),
        )
        self._stacked = None

    def _ratio_values(self, rows: np.ndarray) -> dict[str, float]:
        if not self.ratios:
            return {}
        if self._stacked is None:
            names = list(self.ratios)
            owner = np.concatenate([np.full(len(self.ratios[n][0]), i) for i, n in enumerate(names)])
            self._stacked = (
                names,
                owner,
                np.concatenate([self.ratios[n][0] for n in names]),
                np.concatenate([self.ratios[n][1] for n in names]),
            )
        names, owner, numerators, denominators = self._stacked
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = numerators[:, rows].sum(axis=1) / denominators[:, rows].sum(axis=1)
        finite = np.isfinite(ratio)
        totals = np.bincount(owner, weights=np.where(finite, ratio, 0.0), minlength=len(names))
        counts = np.bincount(owner, weights=finite.astype(np.float64), minlength=len(names))
        with np.errstate(divide="ignore", invalid="ignore"):
            means = totals / counts
        return dict(zip(names, means.tolist(), strict=True))

    def add(self, name: str, function) -> None:
        self.functions.append((name, function))

    def add_many(self, function) -> None:
        self.functions.append((None, function))

    def _values(self, rows: np.ndarray) -> dict[str, float]:
        values: dict[str, float] = self._ratio_values(rows)
        for name, function in self.functions:
            if name is None:
                values.update(function(rows))
            else:
                values[name] = function(rows)
        return values

    def intervals(self, groups: np.ndarray, settings: TrustSettings) -> dict[str, tuple[float, float]]:
        if settings.bootstrap <= 0 or not (self.functions or self.ratios):
            return {}
        drawn: dict[str, list[float]] = {}
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            for rows in grouped_resample_indices(groups, settings.bootstrap, settings.seed):
                for name, value in self._values(rows).items():
                    drawn.setdefault(name, []).append(value)
        tail = 100 * (1 - settings.confidence) / 2
        out = {}
        for name, values in drawn.items():
            array = np.asarray(values, dtype=np.float64)
            defined = array[np.isfinite(array)]
            if defined.size * 2 < settings.bootstrap:  # undefined on most resamples: no honest interval
                continue
            low, high = np.percentile(defined, [tail, 100 - tail])
            out[name] = (float(low), float(high))
        return out


def row_figures(
    runs: Sequence[RunScores],
    test_targets: np.ndarray,
    test_groups: np.ndarray,
    calibration_targets: np.ndarray | None,
    class_names: Sequence[str],
    *,
    metrics: Sequence[str],
    multi_label: bool,
    threshold: float = 0.5,
    binary_positive: int | None = None,
    settings: TrustSettings = TrustSettings(),
) -> RowFigures:
    """The figures of one result row (module docstring). `test_groups` (N_test,) patient ids for the bootstrap;
    `binary_positive`: the positive class index of a binary task (operating points for it alone)."""
    resampled = _Resampled()
    test_targets = np.asarray(test_targets)
    tests = [np.asarray(run.test, dtype=np.float64) for run in runs]

    stacked = np.stack(tests)  # (R, N, C): every run's probabilities on the same test images

    def seed_mean_metrics(rows) -> dict[str, float]:
        means = mean_metric_values(
            test_targets[rows], stacked[:, rows], multi_label=multi_label, threshold=threshold, names=metrics
        )
        return {f"metric.{name}": value for name, value in means.items()}

    resampled.add_many(seed_mean_metrics)

    extras: dict[str, Any] = {"not_computed": {}}
    if multi_label:
        extras["not_computed"]["calibration"] = (
            "calibration, conformal sets and operating points are computed for single-label tasks"
        )
    else:
        calibrations = [None if run.calibration is None else _normalized(run.calibration) for run in runs]
        tests = [_normalized(p) for p in tests]
        extras["calibration"] = _calibration(
            tests, calibrations, test_targets, calibration_targets, settings, resampled, extras
        )
        if calibrations[0] is None or calibration_targets is None or len(calibration_targets) == 0:
            reason = "no calibration split (calibration_fraction 0)"
            extras["not_computed"]["conformal"] = extras["not_computed"]["operating_points"] = reason
        else:
            extras["conformal"] = _conformal(
                tests,
                calibrations,
                test_targets,
                calibration_targets,
                class_names,
                settings,
                resampled,
                extras,
            )
            extras["operating_points"] = _operating_points(
                tests,
                calibrations,
                test_targets,
                calibration_targets,
                class_names,
                binary_positive,
                settings,
                resampled,
            )
    intervals = resampled.intervals(np.asarray(test_groups), settings)
    _attach_intervals(extras, intervals)
    metric_intervals = {k.split(".", 1)[1]: v for k, v in intervals.items() if k.startswith("metric.")}
    if settings.bootstrap > 0:
        extras["bootstrap"] = {
            "resamples": int(settings.bootstrap),
            "confidence": float(settings.confidence),
            "unit": "patient",
            "seed": int(settings.seed),
        }
    if not extras["not_computed"]:
        del extras["not_computed"]
    return RowFigures(metric_intervals, extras)


def _attach_intervals(extras: dict, intervals: dict[str, tuple[float, float]]) -> None:
    """Put each bootstrapped interval next to the figure it belongs to (`extras` paths joined by '.')."""
    for key, interval in intervals.items():
        if key.startswith("metric."):
            continue
        *path, leaf = key.split(".")
        node = extras
        for part in path:
            node = node[part] if isinstance(node, dict) else node[int(part)]
        node[leaf]["ci"] = [interval[0], interval[1]]


def _calibration(tests, calibrations, targets, calibration_targets, settings, resampled, extras) -> dict:
    n_bins = settings.n_bins
    before = [calibration_report(targets, p, n_bins=n_bins) for p in tests]
    out: dict[str, Any] = {
        "n_bins": n_bins,
        "strategy": "equal-mass",
        "ece": _summary([r["ece"] for r in before]),
        "classwise_ece": _summary([r["classwise_ece"] for r in before]),
        "brier": _summary([r["brier"] for r in before]),
        "nll": _summary([nll(targets, p) for p in tests]),
    }

    def ece(scored):
        def statistic(rows):
            return float(np.mean([top_label_ece(targets[rows], p[rows], n_bins) for p in scored]))

        return statistic

    def row_brier(scored):  # (R, N): each image's sum over classes, so a resample's Brier score is a mean
        one_hot = np.eye(scored[0].shape[1])[targets]
        return np.stack([np.sum((p - one_hot) ** 2, axis=1) for p in scored])

    resampled.add("calibration.ece", ece(tests))
    resampled.add_ratio("calibration.brier", row_brier(tests), np.ones((len(tests), len(targets))))
    if calibrations[0] is None or calibration_targets is None or len(calibration_targets) == 0:
        extras["not_computed"]["temperature_scaling"] = "no calibration split (calibration_fraction 0)"
        return out
    temperatures = [fit_temperature(c, calibration_targets, inputs="probabilities") for c in calibrations]
    scaled = [
        _normalized(apply_temperature(p, t, inputs="probabilities"))
        for p, t in zip(tests, temperatures, strict=True)
    ]
    after = [calibration_report(targets, p, n_bins=n_bins) for p in scaled]
    out["temperature"] = _summary(temperatures)
    out["scaled"] = {
        "ece": _summary([r["ece"] for r in after]),
        "classwise_ece": _summary([r["classwise_ece"] for r in after]),
        "brier": _summary([r["brier"] for r in after]),
        "nll": _summary([nll(targets, p) for p in scaled]),
    }
    out["n_calibration"] = int(len(calibration_targets))
    resampled.add("calibration.scaled.ece", ece(scaled))
    resampled.add_ratio("calibration.scaled.brier", row_brier(scaled), np.ones((len(scaled), len(targets))))
    return out


def _conformal(
    tests, calibrations, targets, calibration_targets, class_names, settings, resampled, extras
) -> list:
    entries = []
    n = len(calibration_targets)
    for method in settings.conformal_methods:
        for coverage in settings.coverage:
            if n < min_calibration_size(coverage):
                extras["not_computed"][f"conformal.{method}@{coverage:g}"] = (
                    f"{n} calibration images; split conformal at coverage {coverage:g} needs at least "
                    f"{min_calibration_size(coverage)} (raise --calibration-fraction)"
                )
                continue
            covered, sizes, per_class, thresholds = [], [], [], []
            for test, calibration in zip(tests, calibrations, strict=True):
                # APS randomised: the plain variant adds the class that crosses the threshold and over-covers
                predictor = ConformalPredictor.fit(
                    calibration,
                    calibration_targets,
                    coverage,
                    method,
                    randomized=method == "aps",
                    seed=settings.seed,
                    class_names=list(class_names),
                )
                sets = predictor.predict_sets(test, seed=settings.seed + 1)
                covered.append(sets[np.arange(len(targets)), targets])
                sizes.append(sets.sum(axis=1))
                thresholds.append(predictor.threshold)
                per_class.append(
                    {
                        name: float(covered[-1][targets == k].mean()) if (targets == k).any() else math.nan
                        for k, name in enumerate(class_names)
                    }
                )
            index = len(entries)
            entries.append(
                {
                    "method": method,
                    "coverage": float(coverage),
                    "threshold": _summary(thresholds),
                    "empirical_coverage": _summary([c.mean() for c in covered]),
                    "mean_set_size": _summary([s.mean() for s in sizes]),
                    "empty_sets": _summary([np.mean(s == 0) for s in sizes]),
                    "coverage_per_class": {
                        name: _summary([run[name] for run in per_class])["mean"] for name in class_names
                    },
                }
            )
            ones = np.ones((len(covered), len(targets)))
            resampled.add_ratio(f"conformal.{index}.empirical_coverage", np.stack(covered), ones)
            resampled.add_ratio(f"conformal.{index}.mean_set_size", np.stack(sizes), ones)
    return entries


def _rate(called: np.ndarray, positives: np.ndarray, which: str) -> float:
    if which == "sensitivity":
        denominator = positives.sum()
        return float((called & positives).sum() / denominator) if denominator else math.nan
    denominator = (~positives).sum()
    return float((~called & ~positives).sum() / denominator) if denominator else math.nan


def _operating_points(
    tests, calibrations, targets, calibration_targets, class_names, binary_positive, settings, resampled
) -> list:
    classes = (
        [binary_positive]
        if binary_positive is not None and len(class_names) == 2
        else range(len(class_names))
    )

    def chooser(key: str, level: float):
        choose = threshold_at_specificity if key == "spec" else threshold_at_sensitivity
        return lambda scores, positives: choose(scores, positives, level)

    choosers = [
        (f"{key}={level:g}", chooser(key, level))
        for key, levels in settings.operating_points.items()
        for level in levels
    ]
    choosers.append(("youden", youden_threshold))
    entries = []
    for k in classes:
        test_positives = targets == k
        calibration_positives = calibration_targets == k
        for label, choose in choosers:
            thresholds, called = [], []
            problem = None
            for test, calibration in zip(tests, calibrations, strict=True):
                try:
                    threshold = choose(calibration[:, k], calibration_positives)
                except ValueError as error:
                    problem = f"calibration split: {error}"
                    break
                thresholds.append(threshold)
                called.append(test[:, k] >= threshold)  # `operating_points`' convention: score >= threshold
            if problem is not None:
                entries.append({"class": class_names[k], "target": label, "not_computed": problem})
                continue
            rates = {
                which: [_rate(c, test_positives, which) for c in called]
                for which in ("sensitivity", "specificity")
            }
            ppv = [float((c & test_positives).sum() / c.sum()) if c.sum() else math.nan for c in called]
            npv = [
                float((~c & ~test_positives).sum() / (~c).sum()) if (~c).sum() else math.nan for c in called
            ]
            index = len(entries)
            entries.append(
                {
                    "class": class_names[k],
                    "target": label,
                    "threshold": _summary(thresholds),
                    "sensitivity": _summary(rates["sensitivity"]),
                    "specificity": _summary(rates["specificity"]),
                    "ppv": _summary(ppv),
                    "npv": _summary(npv),
                    "n_positive": int(test_positives.sum()),
                    "n_negative": int((~test_positives).sum()),
                }
            )
            calls = np.stack(called)
            resampled.add_ratio(
                f"operating_points.{index}.sensitivity",
                calls & test_positives,
                np.tile(test_positives, (len(called), 1)),
            )
            resampled.add_ratio(
                f"operating_points.{index}.specificity",
                ~calls & ~test_positives,
                np.tile(~test_positives, (len(called), 1)),
            )
    return entries


__all__ = [
    "DEFAULT_OPERATING_POINTS",
    "RowFigures",
    "RunScores",
    "TrustSettings",
    "nll",
    "row_figures",
    "top_label_ece",
    "top_label_ece_and_brier",
]
