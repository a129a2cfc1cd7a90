"""PR-AUC (average precision, macro one-vs-rest) as a self-contained Hugging Face `evaluate` metric script."""

import warnings

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Area under the precision-recall curve as average precision (AP): sum over score thresholds of
(R_k - R_{k-1}) * P_k, with P_k and R_k the precision and recall when predicting positive every sample scoring
at least the k-th highest distinct score (no interpolation; `sklearn.metrics.average_precision_score`).

- Single-label, C > 2 classes: `references` are class ids, `predictions` one row of C scores per sample; the
  macro mean of the one-vs-rest APs (class c against the rest, scored by column c).
- Single-label binary (C = 2): the AP of the POSITIVE class (column 1) only. Note: RETFound's evaluation code
  calls `average_precision_score(one_hot, probabilities, average="macro")` for binary tasks too, i.e. it
  averages the APs of both classes (the negative class's AP included); its binary "AUPR" is therefore not
  this number. A bare score per sample (`predictions` a list of floats, `references` 0/1) is also accepted.
- Multi-label: per-sample 0/1 `references` and score `predictions`; the macro mean of the per-label APs.

A class (label) whose one-vs-rest problem lacks positives or negatives in the references is left out of the
mean (returned in `pr_auc_classes_left_out`, with a warning); with no usable class the result is NaN.
"""

_CITATION = """\
@inproceedings{davis2006relationship,
  title     = {The Relationship Between Precision-Recall and ROC Curves},
  author    = {Davis, Jesse and Goadrich, Mark},
  booktitle = {Proceedings of the 23rd International Conference on Machine Learning},
  pages     = {233--240},
  year      = {2006}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, or `list` of `float`): per-class scores, one row per sample (or one
        positive-class score per sample for binary problems).
    references (`list` of `int`, or `list` of `list` of `int`): class ids in [0, C) (single-label) or one 0/1
        sequence of length C per sample (multi-label).
Returns:
    pr_auc (`float`): the macro one-vs-rest average precision over the usable classes (binary: the positive
        class's AP); NaN when no class is usable.
    pr_auc_classes_used (`list` of `int`): the classes (labels) averaged over; binary: `[1]`.
    pr_auc_classes_left_out (`list` of `int`): classes without both positives and negatives.
    pr_auc_per_class (`list` of `float`): the AP of each class in `pr_auc_classes_used`.
Examples:
    >>> pr_auc = evaluate.load("path/to/pr_auc")
    >>> pr_auc.compute(predictions=[0.1, 0.4, 0.35, 0.8], references=[0, 0, 1, 1])["pr_auc"]
    0.8333333333333333
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


def average_precision(target, score):
    """AP of one binary problem (`target` bool with at least one positive)."""
    order = np.argsort(-score, kind="stable")
    score, target = score[order], target[order]
    # One operating point per distinct score: its last position in the descending order.
    last = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    true_positives = np.cumsum(target)[last]
    precision = true_positives / (last + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


class PrAuc(evaluate.Metric):
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
                f"pr_auc: classes {left_out} left out of the macro mean (no positive or no negative reference).",
                stacklevel=3,  # the caller of `compute`
            )
        per_class = [average_precision(targets[:, k], scores[:, k]) for k in np.flatnonzero(usable)]
        return {
            "pr_auc": float(np.mean(per_class)) if per_class else float("nan"),
            "pr_auc_classes_used": classes[usable].tolist(),
            "pr_auc_classes_left_out": left_out,
            "pr_auc_per_class": per_class,
        }
