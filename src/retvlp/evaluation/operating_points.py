"""Clinical operating points of a binary score: choose a threshold on a CALIBRATION split for a target
specificity or sensitivity, then report what it achieves on the TEST split.

Conventions (every function):

- `scores` (N,) finite real numbers, higher = more likely positive (the positive-class probability, or one class's
  probability one-vs-rest); `positives` (N,) booleans or 0/1, True = the condition is present.
- An image is called POSITIVE when score >= threshold (sklearn's `roc_curve` convention). Ties: all images of
  equal score fall on the same side, so a target may be exceeded rather than met exactly.
- Candidate thresholds are the observed calibration scores plus +inf (+inf calls nothing positive:
  specificity 1, sensitivity 0). A chosen threshold is therefore always an observed score or +inf.
- sensitivity = TP / (TP + FN), specificity = TN / (TN + FP), PPV = TP / (TP + FP), NPV = TN / (TN + FN).

    threshold_at_specificity(scores, positives, 0.95)  the smallest threshold whose specificity is >= 0.95: among
                                                       those, the one with the highest sensitivity
    threshold_at_sensitivity(scores, positives, 0.9)   the largest threshold whose sensitivity is >= 0.9 (the
                                                       highest specificity among them)
    youden_threshold(scores, positives)                maximises sensitivity + specificity - 1 (ties: the
                                                       highest threshold)
    operating_point_report(cal_scores, cal_positives, test_scores, test_positives, targets)
    one_vs_rest_operating_points(cal_probabilities, cal_targets, test_probabilities, test_targets, targets)
    parse_operating_points("spec=0.9,0.95 sens=0.9") -> {"spec": [0.9, 0.95], "sens": [0.9]}

A figure that a split cannot define (sensitivity without positives, PPV with nothing called positive, ...) is
NaN in the reports, with the reason under "undefined"; the threshold functions themselves raise a ValueError
when the split lacks the class their criterion needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "CRITERIA",
    "one_vs_rest_operating_points",
    "operating_point_report",
    "parse_operating_points",
    "threshold_at_sensitivity",
    "threshold_at_specificity",
    "youden_threshold",
]

CRITERIA = {"spec": "specificity", "sens": "sensitivity"}
_ALIASES = {"spec": "spec", "specificity": "spec", "sens": "sens", "sensitivity": "sens"}
DEFAULT_TARGETS = {"spec": [0.9, 0.95], "sens": [0.9]}
# Rates are ratios of counts: compare them with a target allowing for the float rounding of k / n.
_EPS = 1e-12


def _check_binary(scores: Any, positives: Any, prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives)
    if scores.ndim != 1 or positives.ndim != 1 or len(scores) != len(positives):
        raise ValueError(
            f"{prefix}scores / {prefix}positives: expected two (N,) arrays of equal length; got shapes "
            f"{scores.shape} and {positives.shape}."
        )
    if len(scores) == 0:
        raise ValueError(f"{prefix}scores: no samples.")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{prefix}scores: contains non-finite values.")
    if not np.all((positives == 0) | (positives == 1)):
        raise ValueError(f"{prefix}positives: expected booleans or 0/1 (True = condition present).")
    return scores, positives.astype(bool)


def _check_target(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name}: expected a target rate in (0, 1], e.g. 0.9; got {value!r}.")
    return float(value)


def _curve(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (ascending unique scores, then +inf) with TP and TN at each (score >= t positive)."""
    thresholds, inverse = np.unique(scores, return_inverse=True)
    m = len(thresholds)
    pos_at = np.bincount(inverse, weights=positives, minlength=m)
    neg_at = np.bincount(inverse, weights=~positives, minlength=m)
    # TP(t_j) = positives scoring >= t_j: a reversed cumulative sum, 0 at +inf.
    tp = np.concatenate([np.cumsum(pos_at[::-1])[::-1], [0.0]])
    # TN(t_j) = negatives scoring < t_j: the cumulative sum of the values below, all of them at +inf.
    tn = np.concatenate([[0.0], np.cumsum(neg_at)])
    return np.concatenate([thresholds, [np.inf]]), tp, tn


def threshold_at_specificity(scores: Any, positives: Any, specificity: float) -> float:
    """The smallest candidate threshold whose calibration specificity is >= `specificity`; since sensitivity
    only falls as the threshold rises, it has the highest sensitivity among those. May be +inf (when only
    calling nothing positive reaches the target). Needs negatives."""
    target = _check_target(specificity, "specificity")
    scores, positives = _check_binary(scores, positives)
    n_negative = int((~positives).sum())
    if n_negative == 0:
        raise ValueError(
            "positives: no negative samples, so specificity (and a threshold for it) is undefined."
        )
    thresholds, _, tn = _curve(scores, positives)
    ok = tn / n_negative >= target - _EPS
    return float(thresholds[np.argmax(ok)])  # ok[-1] (+inf, specificity 1) is always True


def threshold_at_sensitivity(scores: Any, positives: Any, sensitivity: float) -> float:
    """The largest candidate threshold whose calibration sensitivity is >= `sensitivity`: the highest
    specificity among those. Always an observed score. Needs positives."""
    target = _check_target(sensitivity, "sensitivity")
    scores, positives = _check_binary(scores, positives)
    n_positive = int(positives.sum())
    if n_positive == 0:
        raise ValueError(
            "positives: no positive samples, so sensitivity (and a threshold for it) is undefined."
        )
    thresholds, tp, _ = _curve(scores, positives)
    ok = tp / n_positive >= target - _EPS
    return float(thresholds[len(ok) - 1 - np.argmax(ok[::-1])])  # ok[0] (lowest score, sensitivity 1) is True


def youden_threshold(scores: Any, positives: Any) -> float:
    """The candidate threshold maximising Youden's J = sensitivity + specificity - 1; among ties the highest
    threshold (fewest images called positive). Needs both classes."""
    scores, positives = _check_binary(scores, positives)
    n_positive, n_negative = int(positives.sum()), int((~positives).sum())
    if n_positive == 0 or n_negative == 0:
        raise ValueError("positives: Youden's J needs both positive and negative samples.")
    thresholds, tp, tn = _curve(scores, positives)
    youden = tp / n_positive + tn / n_negative - 1.0
    best = youden >= youden.max() - _EPS
    return float(thresholds[len(best) - 1 - np.argmax(best[::-1])])


def _ratio(
    numerator: int, denominator: int, name: str, why: str, undefined: dict[str, str], prefix: str
) -> float:
    if denominator == 0:
        undefined[f"{prefix}.{name}"] = why
        return float("nan")
    return numerator / denominator


def _at_threshold(
    scores: np.ndarray, positives: np.ndarray, threshold: float, prefix: str, undefined: dict[str, str]
) -> dict[str, Any]:
    called = scores >= threshold
    tp = int(np.sum(called & positives))
    fp = int(np.sum(called & ~positives))
    tn = int(np.sum(~called & ~positives))
    fn = int(np.sum(~called & positives))
    return {
        "sensitivity": _ratio(tp, tp + fn, "sensitivity", "no positive samples", undefined, prefix),
        "specificity": _ratio(tn, tn + fp, "specificity", "no negative samples", undefined, prefix),
        "ppv": _ratio(tp, tp + fp, "ppv", "no sample scored at or above the threshold", undefined, prefix),
        "npv": _ratio(tn, tn + fn, "npv", "no sample scored below the threshold", undefined, prefix),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n_positive": tp + fn,
        "n_negative": tn + fp,
    }


def _normalise_targets(targets: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    if not isinstance(targets, Mapping) or not targets:
        raise ValueError(
            f'targets: expected a dict like {{"spec": [0.9, 0.95], "sens": [0.9]}}; got {targets!r}.'
        )
    normalised: dict[str, list[float]] = {}
    for key, values in targets.items():
        if key not in _ALIASES:
            raise ValueError(
                f"targets: unknown criterion {key!r}; use 'spec' (specificity) or 'sens' (sensitivity)."
            )
        if isinstance(values, (int, float)):
            values = [values]
        normalised.setdefault(_ALIASES[key], []).extend(
            _check_target(value, f"targets[{key!r}]") for value in values
        )
    return normalised


def operating_point_report(
    cal_scores: Any,
    cal_positives: Any,
    test_scores: Any,
    test_positives: Any,
    targets: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, dict[str, Any]]:
    """For each target ("spec=0.9", "sens=0.9", ...: the keys of the result) the threshold chosen on the
    calibration split and the rates it gives there and on the test split:

        {"spec=0.9": {"criterion": "specificity", "target": 0.9, "threshold": t,
                      "calibration": {"sensitivity", "specificity", "ppv", "npv", "tp", "fp", "tn", "fn",
                                      "n_positive", "n_negative"},
                      "test": {... the same ...},
                      "undefined": {"test.ppv": "no sample scored at or above the threshold", ...}}}

    A threshold the calibration split cannot define (no negatives for a specificity target) is NaN, and so are
    the rates at it, with the reason under "undefined" ("threshold")."""
    targets = _normalise_targets(DEFAULT_TARGETS if targets is None else targets)
    cal_scores, cal_positives = _check_binary(cal_scores, cal_positives, "cal_")
    test_scores, test_positives = _check_binary(test_scores, test_positives, "test_")
    chooser = {"spec": threshold_at_specificity, "sens": threshold_at_sensitivity}
    report = {}
    for key, values in targets.items():
        for value in values:
            undefined: dict[str, str] = {}
            entry: dict[str, Any] = {"criterion": CRITERIA[key], "target": value}
            try:
                threshold = chooser[key](cal_scores, cal_positives, value)
            except ValueError as error:
                undefined["threshold"] = f"calibration split: {error}"
                entry["threshold"] = float("nan")
                entry["calibration"] = entry["test"] = None
            else:
                entry["threshold"] = threshold
                entry["calibration"] = _at_threshold(
                    cal_scores, cal_positives, threshold, "calibration", undefined
                )
                entry["test"] = _at_threshold(test_scores, test_positives, threshold, "test", undefined)
            entry["undefined"] = undefined
            report[f"{key}={value:g}"] = entry
    return report


def one_vs_rest_operating_points(
    cal_probabilities: Any,
    cal_targets: Any,
    test_probabilities: Any,
    test_targets: Any,
    targets: Mapping[str, Sequence[float]] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """`operating_point_report` for every class k of a single-label task, scores p_k and positives y == k:
    {class name: report}. Probabilities (N, K), targets (N,) class ids."""
    cal_probabilities = np.asarray(cal_probabilities, dtype=np.float64)
    test_probabilities = np.asarray(test_probabilities, dtype=np.float64)
    if cal_probabilities.ndim != 2 or test_probabilities.ndim != 2:
        raise ValueError(
            f"cal_probabilities / test_probabilities: expected (N, K) arrays; got shapes {cal_probabilities.shape} "
            f"and {test_probabilities.shape}."
        )
    if cal_probabilities.shape[1] != test_probabilities.shape[1]:
        raise ValueError(
            f"cal_probabilities / test_probabilities: {cal_probabilities.shape[1]} and "
            f"{test_probabilities.shape[1]} classes; they must agree."
        )
    num_classes = cal_probabilities.shape[1]
    names = [str(k) for k in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"class_names: {len(names)} names for {num_classes} probability columns.")
    cal_targets, test_targets = np.asarray(cal_targets), np.asarray(test_targets)
    return {
        name: operating_point_report(
            cal_probabilities[:, k], cal_targets == k, test_probabilities[:, k], test_targets == k, targets
        )
        for k, name in enumerate(names)
    }


def parse_operating_points(text: str) -> dict[str, list[float]]:
    """Parse a command-line operating-point spec: whitespace-separated `criterion=value[,value...]` groups,
    criterion `spec`/`specificity` or `sens`/`sensitivity`, values in (0, 1].

    >>> parse_operating_points("spec=0.9,0.95 sens=0.9")
    {'spec': [0.9, 0.95], 'sens': [0.9]}"""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            'operating points: expected a spec like "spec=0.9,0.95 sens=0.9"; got an empty value.'
        )
    parsed: dict[str, list[float]] = {}
    for group in text.split():
        key, equals, values = group.partition("=")
        if not equals:
            raise ValueError(f'operating points: {group!r} has no "="; write e.g. "spec=0.9,0.95 sens=0.9".')
        key = key.strip().lower()
        if key not in _ALIASES:
            raise ValueError(
                f"operating points: unknown criterion {key!r} in {group!r}; use spec (specificity) or sens "
                "(sensitivity)."
            )
        criterion = _ALIASES[key]
        if criterion in parsed:
            raise ValueError(
                f"operating points: {criterion!r} given twice; list its values once, comma-separated."
            )
        numbers = []
        for item in values.split(","):
            try:
                number = float(item)
            except ValueError:
                raise ValueError(
                    f"operating points: {item!r} in {group!r} is not a number; write rates like 0.9."
                ) from None
            if not (math.isfinite(number) and 0.0 < number <= 1.0):
                raise ValueError(
                    f"operating points: {item!r} in {group!r} is outside (0, 1]; write rates as fractions (0.9, "
                    "not 90)."
                )
            numbers.append(number)
        parsed[criterion] = numbers
    return parsed
