"""Calibration of single-label class probabilities: ECE, class-wise ECE, Brier score, reliability curves and
temperature scaling.

Inputs (every function): `targets` (N,) integer class ids in [0, K); `probabilities` (N, K) with rows in [0, 1]
summing to 1 (within 1e-4), or (N,) the probability of the positive class of a binary task (read as
[1 - p, p], K = 2). Multi-label tasks are refused with a ValueError: these figures are defined here for
single-label tasks only (2-D targets are taken as multi-label indicators and refused).

Figures:

- Top-label ECE (`expected_calibration_error`): confidence c_i = max_k p_ik, correct_i = 1[argmax_k p_ik = y_i]
  (argmax ties go to the lowest class id, as numpy's argmax). The confidences are binned; ECE = sum over bins of
  (n_b / N) * |accuracy_b - mean confidence_b|. 0 is perfectly calibrated; it is a gap in probability units.
- Class-wise ECE (`classwise_ece`): for each class k the one-vs-rest ECE of p_k against 1[y = k] (the same
  binning applied to p_k), averaged over the K classes. A class absent from the targets still has one (its
  probabilities should be near 0); it is not NaN.
- Brier score (`brier_score`): mean over samples of sum_k (p_ik - 1[y_i = k])^2, in [0, 2]. Binary tasks report
  the same definition over both columns, which is TWICE scikit-learn's binary `brier_score_loss`.

Binning, `strategy`:

- "equal-mass" (default): edges are the quantiles np.quantile(c, linspace(0, 1, n_bins + 1)) (linear
  interpolation), coinciding edges merged. Ties: samples with the same confidence always share a bin, so with
  many ties there are fewer, unequal bins (e.g. a bin holding every c = 1.0).
- "equal-width": edges linspace(0, 1, n_bins + 1).

Either way bin b holds the values in (e_b, e_{b+1}] (the first bin also its lower edge): the convention of
`sklearn.calibration.calibration_curve`, whose "quantile" and "uniform" strategies give the same bins. Empty bins
are dropped (they add nothing to the ECE).

Temperature scaling: `fit_temperature` finds T minimising the NLL of softmax(z / T), `apply_temperature` applies
it. Given probabilities instead of logits they are turned into logits by taking logs (log p, clipped at 1e-12):
softmax(log p / T) is p_k^(1/T) renormalised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ReliabilityCurve",
    "apply_temperature",
    "binary_ece",
    "brier_score",
    "calibration_report",
    "check_single_label",
    "classwise_ece",
    "expected_calibration_error",
    "fit_temperature",
    "plot_reliability",
    "reliability_curve",
]

STRATEGIES = ("equal-mass", "equal-width")
ROW_SUM_TOLERANCE = 1e-4
# Temperature search interval: below 0.05 or above 20 the model is broken, not miscalibrated.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def check_single_label(
    targets: Any, probabilities: Any, name: str = "probabilities"
) -> tuple[np.ndarray, np.ndarray]:
    """Validate single-label inputs; return targets (N,) int64 and probabilities (N, K) float64.

    (N,) probabilities are a binary task's positive-class probability and come back as (N, 2) [1 - p, p]."""
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if targets.ndim == 2:
        raise ValueError(
            f"targets: got 2-D targets {targets.shape}, i.e. a multi-label task; calibration and conformal "
            "figures are computed for single-label tasks only (pass (N,) class ids)."
        )
    if targets.ndim != 1:
        raise ValueError(f"targets: expected (N,) class ids; got shape {targets.shape}.")
    if probabilities.ndim == 1:
        probabilities = np.stack([1.0 - probabilities, probabilities], axis=1)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(
            f"{name}: expected (N, K) class probabilities with K >= 2, or (N,) positive-class probabilities; "
            f"got shape {probabilities.shape}."
        )
    if len(targets) != len(probabilities):
        raise ValueError(
            f"targets / {name}: shapes disagree, {len(targets)} targets for {len(probabilities)} probability rows."
        )
    if len(targets) == 0:
        raise ValueError("targets: no samples.")
    if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0.0 or probabilities.max() > 1.0:
        raise ValueError(
            f"{name}: values must be probabilities in [0, 1]; got min {np.nanmin(probabilities):.4g}, max "
            f"{np.nanmax(probabilities):.4g}{' and non-finite values' if not np.all(np.isfinite(probabilities)) else ''}. "
            "Apply a softmax to logits first."
        )
    sums = probabilities.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > ROW_SUM_TOLERANCE:
        raise ValueError(
            f"{name}: each row must sum to 1 (within {ROW_SUM_TOLERANCE:g}) for a single-label task; row {worst} "
            f"sums to {sums[worst]:.6g}. Multi-label (independent sigmoid) outputs are not supported here."
        )
    if targets.dtype == np.bool_:
        targets = targets.astype(np.int64)
    if not np.issubdtype(targets.dtype, np.integer):
        if not np.issubdtype(targets.dtype, np.floating) or not np.all(targets == np.round(targets)):
            raise ValueError(f"targets: expected integer class ids; got dtype {targets.dtype}.")
        targets = targets.astype(np.int64)
    if targets.min() < 0 or targets.max() >= probabilities.shape[1]:
        raise ValueError(
            f"targets: class ids must lie in [0, {probabilities.shape[1]}) (one per probability column); got "
            f"min {targets.min()}, max {targets.max()}."
        )
    return targets.astype(np.int64), probabilities


def _check_bins(n_bins: Any, strategy: str) -> None:
    if not isinstance(n_bins, (int, np.integer)) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins: expected an integer >= 1; got {n_bins!r}.")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}; got {strategy!r}.")


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per non-empty bin: `confidence` (mean predicted probability), `accuracy` (observed frequency), `count`
    (samples), each (B,) with B <= n_bins; `edges` (B_all + 1,) the bin edges used (after merging coinciding
    equal-mass edges). `ece` = sum count/N * |accuracy - confidence|."""

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    edges: np.ndarray
    strategy: str

    @property
    def ece(self) -> float:
        return float(np.sum(self.count * np.abs(self.accuracy - self.confidence)) / np.sum(self.count))

    def to_json(self) -> dict[str, Any]:
        return {
            "confidence": self.confidence.tolist(),
            "accuracy": self.accuracy.tolist(),
            "count": self.count.tolist(),
            "edges": self.edges.tolist(),
            "strategy": self.strategy,
        }


def _binned(scores: np.ndarray, outcomes: np.ndarray, n_bins: int, strategy: str) -> ReliabilityCurve:
    """Bin `scores` (N,) in [0, 1] and compare each bin's mean score with its mean outcome (N,) in {0, 1}."""
    if strategy == "equal-mass":
        edges = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, n_bins + 1)))
    else:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" on the inner edges: a value equal to an edge goes to the bin below, (e_b, e_{b+1}].
    bins = np.searchsorted(edges[1:-1], scores, side="left")
    n_all = max(len(edges) - 1, 1)
    count = np.bincount(bins, minlength=n_all)
    score_sum = np.bincount(bins, weights=scores, minlength=n_all)
    outcome_sum = np.bincount(bins, weights=outcomes, minlength=n_all)
    used = count > 0
    return ReliabilityCurve(
        confidence=score_sum[used] / count[used],
        accuracy=outcome_sum[used] / count[used],
        count=count[used],
        edges=edges,
        strategy=strategy,
    )


def reliability_curve(
    targets: Any, probabilities: Any, n_bins: int = 15, strategy: str = "equal-mass"
) -> ReliabilityCurve:
    """The top-label reliability curve: per bin of confidence (max probability), the mean confidence, the
    accuracy of the argmax prediction and the sample count."""
    _check_bins(n_bins, strategy)
    targets, probabilities = check_single_label(targets, probabilities)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == targets).astype(np.float64)
    return _binned(confidence, correct, n_bins, strategy)


def expected_calibration_error(
    targets: Any, probabilities: Any, n_bins: int = 15, strategy: str = "equal-mass"
) -> float:
    """Top-label ECE in [0, 1] (module docstring): the sample-weighted mean |accuracy - confidence| over bins."""
    return reliability_curve(targets, probabilities, n_bins, strategy).ece


def binary_ece(labels: Any, scores: Any, n_bins: int = 15, strategy: str = "equal-mass") -> float:
    """ECE of one binary score: `scores` (N,) in [0, 1] binned, each bin's mean score against the observed
    frequency of `labels` (N,) in {0, 1}. The building block of `classwise_ece` (and of per-label ECE)."""
    _check_bins(n_bins, strategy)
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or scores.ndim != 1:
        raise ValueError(
            f"labels / scores: expected two (N,) arrays; got shapes {labels.shape} and {scores.shape}."
        )
    if len(scores) == 0:
        raise ValueError("scores: no samples.")
    if not np.all(np.isfinite(scores)) or scores.min() < 0.0 or scores.max() > 1.0:
        raise ValueError("scores: values must be probabilities in [0, 1].")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels: expected 0/1 (or boolean) outcomes.")
    return _binned(scores, labels.astype(np.float64), n_bins, strategy).ece


def _classwise(targets: np.ndarray, probabilities: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    return np.array(
        [
            _binned(probabilities[:, k], (targets == k).astype(np.float64), n_bins, strategy).ece
            for k in range(probabilities.shape[1])
        ]
    )


def classwise_ece(targets: Any, probabilities: Any, n_bins: int = 15, strategy: str = "equal-mass") -> float:
    """Mean over the K classes of the one-vs-rest ECE of p_k against 1[y = k] (module docstring)."""
    _check_bins(n_bins, strategy)
    targets, probabilities = check_single_label(targets, probabilities)
    return float(np.mean(_classwise(targets, probabilities, n_bins, strategy)))


def brier_score(targets: Any, probabilities: Any) -> float:
    """Multi-class Brier score in [0, 2]: mean over samples of sum_k (p_k - 1[y = k])^2. Lower is better. For a
    binary task this is 2x scikit-learn's `brier_score_loss` (which scores the positive column only)."""
    targets, probabilities = check_single_label(targets, probabilities)
    one_hot = np.zeros_like(probabilities)
    one_hot[np.arange(len(targets)), targets] = 1.0
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


def calibration_report(
    targets: Any, probabilities: Any, n_bins: int = 15, strategy: str = "equal-mass"
) -> dict[str, Any]:
    """ece (top-label), classwise_ece (mean) and classwise_ece_per_class (K,), brier, n_bins, strategy,
    n_samples: JSON-ready floats and lists."""
    _check_bins(n_bins, strategy)
    targets, probabilities = check_single_label(targets, probabilities)
    per_class = _classwise(targets, probabilities, n_bins, strategy)
    return {
        "ece": expected_calibration_error(targets, probabilities, n_bins, strategy),
        "classwise_ece": float(np.mean(per_class)),
        "classwise_ece_per_class": per_class.tolist(),
        "brier": brier_score(targets, probabilities),
        "n_bins": int(n_bins),
        "strategy": strategy,
        "n_samples": len(targets),
    }


# ---------------------------------------------------------------------------------------------- temperature


def _as_logits(values: Any, inputs: str) -> tuple[np.ndarray, bool]:
    """(N, K) logits and whether the input was 1-D (binary). `inputs`: "logits", "probabilities" or "auto"
    (probabilities when every value is in [0, 1] and, for (N, K), every row sums to 1 within 1e-4)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (1, 2) or values.shape[0] == 0:
        raise ValueError(
            f"logits_or_probabilities: expected (N, K) or (N,) values; got shape {values.shape}."
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("logits_or_probabilities: contains non-finite values.")
    if inputs not in ("auto", "logits", "probabilities"):
        raise ValueError(f"inputs: expected 'auto', 'logits' or 'probabilities'; got {inputs!r}.")
    binary = values.ndim == 1
    in_unit = values.min() >= 0.0 and values.max() <= 1.0
    if inputs == "auto":
        rows_sum_to_one = binary or bool(np.all(np.abs(values.sum(axis=1) - 1.0) <= ROW_SUM_TOLERANCE))
        inputs = "probabilities" if in_unit and rows_sum_to_one else "logits"
    if inputs == "probabilities":
        if not in_unit:
            raise ValueError("logits_or_probabilities: inputs='probabilities' but values lie outside [0, 1].")
        probabilities = np.stack([1.0 - values, values], axis=1) if binary else values
        return np.log(np.clip(probabilities, 1e-12, None)), binary
    # A binary logit z is the log-odds: the two-class logits [0, z] give softmax [1 - sigmoid(z), sigmoid(z)].
    logits = np.stack([np.zeros_like(values), values], axis=1) if binary else values
    return logits, binary


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


def fit_temperature(
    logits_or_probabilities: Any,
    targets: Any,
    *,
    inputs: str = "auto",
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    tolerance: float = 1e-6,
) -> float:
    """The temperature T > 0 minimising the mean negative log-likelihood of softmax(z / T) on (targets, z).

    z (N, K) logits, or (N,) binary log-odds; probabilities are accepted and turned into logits by taking logs
    (see `inputs` and the module docstring). T > 1 softens over-confident outputs, T < 1 sharpens.

    The search: golden-section on u = log T over [log bounds[0], log bounds[1]] to width `tolerance`, then the
    best of that point and the two bounds. Deterministic. The NLL is convex in 1/T, hence unimodal in log T, so
    golden-section finds the minimum; a result at a bound means the optimum lies outside the range."""
    logits, _ = _as_logits(logits_or_probabilities, inputs)
    targets = np.asarray(targets)
    if targets.ndim != 1 or len(targets) != len(logits):
        raise ValueError(
            f"targets: expected (N,) class ids matching the {len(logits)} rows of logits_or_probabilities; got "
            f"shape {targets.shape}."
        )
    if not np.issubdtype(targets.dtype, np.integer) or targets.min() < 0 or targets.max() >= logits.shape[1]:
        raise ValueError(f"targets: expected integer class ids in [0, {logits.shape[1]}).")
    low, high = (float(b) for b in bounds)
    if not 0.0 < low < high:
        raise ValueError(f"bounds: expected 0 < low < high; got {bounds!r}.")
    rows = np.arange(len(targets))

    def nll(log_temperature: float) -> float:
        return float(-np.mean(_log_softmax(logits / math.exp(log_temperature))[rows, targets]))

    inverse_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = math.log(low), math.log(high)
    c, d = b - inverse_phi * (b - a), a + inverse_phi * (b - a)
    f_c, f_d = nll(c), nll(d)
    while b - a > tolerance:
        if f_c <= f_d:  # the minimum lies in [a, d]
            b, d, f_d = d, c, f_c
            c = b - inverse_phi * (b - a)
            f_c = nll(c)
        else:  # in [c, b]
            a, c, f_c = c, d, f_d
            d = a + inverse_phi * (b - a)
            f_d = nll(d)
    candidates = [((a + b) / 2.0), math.log(low), math.log(high)]
    best = min(candidates, key=nll)
    return float(math.exp(best))


def apply_temperature(
    logits_or_probabilities: Any, temperature: float, *, inputs: str = "auto"
) -> np.ndarray:
    """softmax(z / T): (N, K) probabilities, or (N,) positive-class probabilities for (N,) input."""
    if not (
        isinstance(temperature, (int, float, np.floating)) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature: expected a finite number > 0; got {temperature!r}.")
    logits, binary = _as_logits(logits_or_probabilities, inputs)
    probabilities = np.exp(_log_softmax(logits / float(temperature)))
    return probabilities[:, 1] if binary else probabilities


# ------------------------------------------------------------------------------------------------- plotting


def plot_reliability(
    curves: dict[str, ReliabilityCurve], path: str | Path, title: str = "Reliability"
) -> Path:
    """Save a reliability diagram PNG: one line per curve (mean confidence vs accuracy, markers sized by bin
    count) over the diagonal of perfect calibration; the legend gives each curve's ECE. Returns the path."""
    if not curves:
        raise ValueError("curves: expected at least one {label: ReliabilityCurve} entry.")
    # Figure + Agg canvas, not pyplot: no global backend switch, nothing shown, no figure left open.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 5.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for label, curve in curves.items():
        sizes = 10.0 + 90.0 * curve.count / max(int(curve.count.max()), 1)
        (line,) = axes.plot(
            curve.confidence, curve.accuracy, linewidth=1.5, label=f"{label} (ECE {curve.ece:.3f})"
        )
        axes.scatter(curve.confidence, curve.accuracy, s=sizes, color=line.get_color(), zorder=3)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("mean predicted probability (confidence)")
    axes.set_ylabel("observed accuracy")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
