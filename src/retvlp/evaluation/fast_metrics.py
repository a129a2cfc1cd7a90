"""The six classification metrics in plain numpy, for the thousands of recomputations of a bootstrap.

`classification_metrics` (the shipped `evaluate` modules) is the reference and costs about 0.2 s a call (each
module round-trips its inputs through Arrow); a patient bootstrap recomputes every metric 1,000 times per result
row. `metric_values` computes the same numbers with the same conventions (`metrics/__init__.py`) in well under a
millisecond for a test set of a few hundred images: argmax predictions (single-label) or `>= threshold`
(multi-label); balanced accuracy over the classes present in the targets; ROC-AUC and PR-AUC one-vs-rest over
the classes with both positive and negative targets (the positive class only for two classes), ties at average
rank; quadratic κ over all C classes; macro F1 over the classes that occur in targets or predictions. Undefined
values are NaN, silently (a resample without a class is common; the bootstrap counts them).

It does not validate: callers pass arrays `classification_metrics` has accepted. `test_eval_fast_metrics.py`
checks it equal to the `evaluate` modules and to scikit-learn.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .metrics import METRIC_NAMES


def _mean_recall(predictions: np.ndarray, targets: np.ndarray, num_classes: int) -> float:
    """Mean over the classes present in `targets` of the fraction of their samples predicted as that class."""
    counts = np.bincount(targets, minlength=num_classes)
    hits = np.bincount(targets[predictions == targets], minlength=num_classes)
    present = counts > 0
    return float(np.mean(hits[present] / counts[present]))


def _aucs_and_average_precisions(positives: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision of every column of `(N, K)` scores against `(N, K)` bool positives, from
    one descending sort per column (NaN where a column lacks positives or negatives).

    Ties: a tied positive-negative pair counts 1/2 in the AUC (average ranks); AP takes one operating point per
    distinct score, so every positive of a tie group gets the precision at the group's end."""
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    ranked = np.take_along_axis(scores, order, axis=0)
    hits = np.take_along_axis(positives, order, axis=0).astype(np.float64)
    index = np.arange(n)[:, None]
    group_end = np.r_[ranked[:-1] != ranked[1:], np.ones((1, ranked.shape[1]), bool)]
    group_start = np.r_[np.ones((1, ranked.shape[1]), bool), ranked[1:] != ranked[:-1]]
    # the last / first position of each element's tie group
    end = np.minimum.accumulate(np.where(group_end, index, n)[::-1], axis=0)[::-1]
    start = np.maximum.accumulate(np.where(group_start, index, 0), axis=0)
    true_positives = np.cumsum(hits, axis=0)
    negatives_seen = np.cumsum(1.0 - hits, axis=0)
    num_positive = true_positives[-1]
    num_negative = n - num_positive
    negatives_to_end = np.take_along_axis(negatives_seen, end, axis=0)
    negatives_before = np.take_along_axis(negatives_seen, start, axis=0) - np.take_along_axis(
        1.0 - hits, start, axis=0
    )
    wins = (num_negative - negatives_to_end) + 0.5 * (negatives_to_end - negatives_before)
    precision_at_end = np.take_along_axis(true_positives, end, axis=0) / (end + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        aucs = (hits * wins).sum(axis=0) / (num_positive * num_negative)
        precisions = (hits * precision_at_end).sum(axis=0) / num_positive
    usable = (num_positive > 0) & (num_negative > 0)
    return np.where(usable, aucs, np.nan), np.where(usable, precisions, np.nan)


def _one_vs_rest(targets: np.ndarray, scores: np.ndarray, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    if multi_label:
        return targets.astype(bool), scores
    if scores.shape[1] == 2:
        return (targets == 1)[:, None], scores[:, 1:]
    return targets[:, None] == np.arange(scores.shape[1]), scores


def _kappa(predictions: np.ndarray, targets: np.ndarray, num_classes: int) -> float:
    observed = np.bincount(targets * num_classes + predictions, minlength=num_classes**2)
    observed = observed.reshape(num_classes, num_classes).astype(np.float64)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    grades = np.arange(num_classes, dtype=np.float64)
    weights = (grades[:, None] - grades[None, :]) ** 2
    chance = float((weights * expected).sum())
    return 1.0 - float((weights * observed).sum()) / chance if chance > 0 else float("nan")


def _f1_macro(predictions: np.ndarray, targets: np.ndarray, multi_label: bool, num_classes: int) -> float:
    if multi_label:
        true_positives = (targets & predictions).sum(axis=0)
        true_count, predicted_count = targets.sum(axis=0), predictions.sum(axis=0)
    else:
        true_positives = np.bincount(targets[targets == predictions], minlength=num_classes)
        true_count = np.bincount(targets, minlength=num_classes)
        predicted_count = np.bincount(predictions, minlength=num_classes)
    denominator = true_count + predicted_count
    used = denominator > 0
    return float(np.mean(2 * true_positives[used] / denominator[used])) if used.any() else float("nan")


def metric_values(
    targets: np.ndarray,
    probabilities: np.ndarray,
    *,
    multi_label: bool = False,
    threshold: float = 0.5,
    names: Iterable[str] = METRIC_NAMES,
) -> dict[str, float]:
    """`classification_metrics(targets, probabilities, ...)`'s numbers, computed in numpy.

    Args:
        targets: `(N,)` int class ids (single-label) or `(N, C)` 0/1 indicators (multi-label).
        probabilities: `(N, C)` float.
    Returns `{name: value}` in the order of `names` (`quadratic_kappa` omitted for multi-label); NaN where a
    metric is undefined on these rows.
    """
    targets = np.asarray(targets).astype(np.int64)
    scores = np.asarray(probabilities, dtype=np.float64)
    num_classes = scores.shape[1]
    predictions = (scores >= threshold).astype(np.int64) if multi_label else scores.argmax(axis=1)
    values: dict[str, float] = {}
    ranked = None
    for name in names:
        if name == "accuracy":
            values[name] = float(np.mean(predictions == targets))
        elif name == "balanced_accuracy":
            if multi_label:
                per_label = [_mean_recall(predictions[:, j], targets[:, j], 2) for j in range(num_classes)]
                values[name] = float(np.mean(per_label))
            else:
                values[name] = _mean_recall(predictions, targets, num_classes)
        elif name in ("roc_auc", "pr_auc"):
            if ranked is None:
                aucs, precisions = _aucs_and_average_precisions(*_one_vs_rest(targets, scores, multi_label))
                ranked = {"roc_auc": aucs, "pr_auc": precisions}
            column = ranked[name]
            values[name] = float(np.nanmean(column)) if np.isfinite(column).any() else float("nan")
        elif name == "quadratic_kappa":
            if not multi_label:
                values[name] = _kappa(predictions, targets, num_classes)
        elif name == "f1_macro":
            values[name] = _f1_macro(predictions, targets, multi_label, num_classes)
        else:
            raise ValueError(f"Unknown metric {name!r}; known metrics: {', '.join(METRIC_NAMES)}.")
    return values


def mean_metric_values(
    targets: np.ndarray,
    probabilities: np.ndarray,
    *,
    multi_label: bool = False,
    threshold: float = 0.5,
    names: Iterable[str] = METRIC_NAMES,
) -> dict[str, float]:
    """The mean over R runs of `metric_values(targets, probabilities[r])`, for `(R, N, C)` probabilities of the
    same N images: the statistic a bootstrap of a several-seed row resamples. Single-label runs are computed
    together (one sort for every run's AUC columns, one bincount per count), several times faster than R calls."""
    names = tuple(names)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if multi_label or probabilities.shape[0] == 1:
        per_run = [
            metric_values(targets, p, multi_label=multi_label, threshold=threshold, names=names)
            for p in probabilities
        ]
        return {name: float(np.mean([values[name] for values in per_run])) for name in per_run[0]}
    targets = np.asarray(targets).astype(np.int64)
    runs, n, k = probabilities.shape
    predictions = probabilities.argmax(axis=2)  # (R, N)
    offsets = (np.arange(runs) * k)[:, None]
    true_count = np.bincount(targets, minlength=k).astype(np.float64)  # (K,)
    hit = predictions == targets
    true_positives = np.bincount((offsets + targets)[hit], minlength=runs * k).reshape(runs, k)
    predicted_count = np.bincount((offsets + predictions).ravel(), minlength=runs * k).reshape(runs, k)
    values: dict[str, float] = {}
    ranked = None
    for name in names:
        if name == "accuracy":
            values[name] = float(hit.mean())
        elif name == "balanced_accuracy":
            present = true_count > 0
            values[name] = float((true_positives[:, present] / true_count[present]).mean())
        elif name in ("roc_auc", "pr_auc"):
            if ranked is None:
                if k == 2:  # the positive class only
                    positives, columns = (
                        np.repeat((targets == 1)[:, None], runs, axis=1),
                        probabilities[:, :, 1].T,
                    )
                else:
                    positives = np.tile(targets[:, None] == np.arange(k), (1, runs))
                    columns = probabilities.transpose(1, 0, 2).reshape(n, runs * k)
                aucs, precisions = _aucs_and_average_precisions(positives, columns)
                ranked = {"roc_auc": aucs.reshape(runs, -1), "pr_auc": precisions.reshape(runs, -1)}
            per_run = ranked[name]
            usable = np.isfinite(per_run[0])
            values[name] = float(per_run[:, usable].mean()) if usable.any() else float("nan")
        elif name == "quadratic_kappa":
            observed = (
                np.bincount(
                    ((np.arange(runs) * k * k)[:, None] + targets * k + predictions).ravel(),
                    minlength=runs * k * k,
                )
                .reshape(runs, k, k)
                .astype(np.float64)
            )
            expected = observed.sum(axis=2, keepdims=True) * observed.sum(axis=1, keepdims=True) / n
            grades = np.arange(k, dtype=np.float64)
            weights = (grades[:, None] - grades[None, :]) ** 2
            chance = (weights * expected).sum(axis=(1, 2))
            with np.errstate(divide="ignore", invalid="ignore"):
                kappa = np.where(chance > 0, 1.0 - (weights * observed).sum(axis=(1, 2)) / chance, np.nan)
            values[name] = float(kappa.mean())
        elif name == "f1_macro":
            denominator = true_count + predicted_count  # (R, K)
            used = denominator > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                f1 = np.where(used, 2 * true_positives / denominator, 0.0)
            values[name] = float((f1.sum(axis=1) / used.sum(axis=1)).mean())
        else:
            raise ValueError(f"Unknown metric {name!r}; known metrics: {', '.join(METRIC_NAMES)}.")
    return values


__all__ = ["mean_metric_values", "metric_values"]
