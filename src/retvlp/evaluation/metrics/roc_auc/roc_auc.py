"""ROC-AUC (macro one-vs-rest) as a self-contained Hugging Face `evaluate` metric script."""

import warnings

import datasets
import evaluate
import numpy as np
from scipy.stats import rankdata

_DESCRIPTION = """
Area under the ROC curve, from per-class scores (probabilities), as the Mann-Whitney statistic: the probability
that a random positive scores above a random negative, ties counting 1/2 (equal to the trapezoidal area under
the empirical ROC curve, i.e. `sklearn.metrics.roc_auc_score`).

- Single-label, C > 2 classes: `references` are class ids, `predictions` one row of C scores per sample; the
  result is the macro mean of the one-vs-rest AUCs (class c against the rest, scored by column c), as
  `roc_auc_score(..., multi_class="ovr", average="macro")`.
- Single-label binary (C = 2): the AUC of the positive class's score (column 1) only. A bare score per sample
  (`predictions` a list of floats, `references` 0/1) is also accepted.
- Multi-label: `references` are per-sample 0/1 sequences, `predictions` per-sample score sequences; the macro
  mean of the per-label AUCs.

A class (label) whose one-vs-rest problem lacks positives or negatives in the references has no AUC: the mean
runs over the usable classes only, the others are returned in `roc_auc_classes_left_out` and a warning is
issued; with no usable class the result is NaN. (scikit-learn raises in these cases.)
"""

_CITATION = """\
@article{hanley1982meaning,
  title   = {The meaning and use of the area under a receiver operating characteristic (ROC) curve},
  author  = {Hanley, James A. and McNeil, Barbara J.},
  journal = {Radiology},
  volume  = {143},
  number  = {1},
  pages   = {29--36},
  year    = {1982}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, or `list` of `float`): per-class scores, one row per sample (or one
        positive-class score per sample for binary problems).
    references (`list` of `int`, or `list` of `list` of `int`): class ids in [0, C) (single-label) or one 0/1
        sequence of length C per sample (multi-label).
Returns:
    roc_auc (`float`): the macro one-vs-rest AUC over the usable classes (binary: the positive class's AUC);
        NaN when no class is usable.
    roc_auc_classes_used (`list` of `int`): the classes (labels) averaged over; binary: `[1]`.
    roc_auc_classes_left_out (`list` of `int`): classes without both positives and negatives.
    roc_auc_per_class (`list` of `float`): the AUC of each class in `roc_auc_classes_used`.
Examples:
    >>> roc_auc = evaluate.load("path/to/roc_auc")
    >>> roc_auc.compute(predictions=[[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]], references=[0, 0, 1, 1])
    {'roc_auc': 0.75, 'roc_auc_classes_used': [1], 'roc_auc_classes_left_out': [], 'roc_auc_per_class': [0.75]}
"""


def one_vs_rest(predictions, references):
    """(targets (N, K) bool, scores (N, K) float, class ids (K,)) of the K binary problems to average over."""
    try:
        scores = np.asarray(predictions, dtype=np.float64)
        refs = np.asarray(references, dtype=np.float64)
    except ValueError as error:  # ragged rows
        raise ValueError(f"predictions/references must be rectangular: {error}") from None
    if scores.shape[:1] != refs.shape[:1] or scores.shape[0] == 0:
        raise ValueError(
            f"predictions {scores.shape} and references {refs.shape} need the same number (> 0) of rows."
        )
    if not np.isfinite(scores).all():
        raise ValueError("predictions contain NaN or infinite scores.")
    if scores.ndim == 1 and refs.ndim == 1:  # binary, one positive-class score per sample
        if not np.isin(refs, (0, 1)).all():
            raise ValueError("With one score per sample, references must be 0/1.")
        return refs[:, None] == 1, scores[:, None], np.array([1])
    if scores.ndim != 2:
        raise ValueError(f"predictions must have shape (N, C); got {scores.shape}.")
    num_classes = scores.shape[1]
    if refs.ndim == 2:  # multi-label
        if refs.shape != scores.shape:
            raise ValueError(
                f"Multi-label references {refs.shape} and predictions {scores.shape} differ in shape."
            )
        if not np.isin(refs, (0, 1)).all():
            raise ValueError("Multi-label references must contain only 0 and 1.")
        return refs == 1, scores, np.arange(num_classes)
    if refs.ndim != 1 or (refs != np.round(refs)).any() or refs.min() < 0 or refs.max() >= num_classes:
        raise ValueError(f"Single-label references must be integer class ids in [0, {num_classes}).")
    if num_classes == 2:  # binary: the positive class only
        return refs[:, None] == 1, scores[:, 1:], np.array([1])
    return refs[:, None] == np.arange(num_classes), scores, np.arange(num_classes)


def column_aucs(targets, scores):
    """The ROC-AUC of every column (each must hold both positives and negatives), from average ranks."""
    ranks = rankdata(scores, axis=0)  # ties share their average rank: a tied pair counts 1/2
    positives = targets.sum(axis=0)
    negatives = targets.shape[0] - positives
    positive_rank_sums = np.where(targets, ranks, 0.0).sum(axis=0)
    return (positive_rank_sums - positives * (positives + 1) / 2) / (positives * negatives)


class RocAuc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("float64")),
                        "references": datasets.Value("int64"),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("float64")),
                        "references": datasets.Sequence(datasets.Value("int64")),
                    }
                ),
                datasets.Features(
                    {"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}
                ),
            ],
        )

    def _compute(self, predictions, references):
        targets, scores, classes = one_vs_rest(predictions, references)
        positives = targets.sum(axis=0)
        usable = (positives > 0) & (positives < targets.shape[0])
        left_out = classes[~usable].tolist()
        if left_out:
            warnings.warn(
                f"roc_auc: classes {left_out} left out of the macro mean (no positive or no negative reference).",
                stacklevel=3,  # the caller of `compute`
            )
        per_class = column_aucs(targets[:, usable], scores[:, usable]) if usable.any() else np.empty(0)
        return {
            "roc_auc": float(per_class.mean()) if per_class.size else float("nan"),
            "roc_auc_classes_used": classes[usable].tolist(),
            "roc_auc_classes_left_out": left_out,
            "roc_auc_per_class": per_class.tolist(),
        }
