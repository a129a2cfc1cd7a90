"""Quadratic weighted Cohen's kappa as a self-contained Hugging Face `evaluate` metric script."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Cohen's kappa with quadratic weights (single-label only): 1 - sum(W * O) / sum(W * E), where O is the confusion
matrix of (reference, prediction) counts, E = outer(row sums, column sums) / N the one expected by chance, and
W[i, j] = (i - j) ** 2 the squared distance between CLASS IDS (the ids are taken as ordinal grades).

The confusion matrix spans classes 0 .. K-1 with K = `num_classes` (or max id + 1 when not given), so a grade
absent from both inputs still counts in the distances. This equals
`sklearn.metrics.cohen_kappa_score(..., weights="quadratic", labels=range(K))`; without `labels` scikit-learn
measures distances between the positions of the PRESENT labels instead, which differs when a grade is missing.
Undefined (NaN) when chance disagreement is 0, e.g. when every reference and prediction is the same class.
"""

_CITATION = """\
@article{cohen1968weighted,
  title   = {Weighted kappa: Nominal scale agreement provision for scaled disagreement or partial credit},
  author  = {Cohen, Jacob},
  journal = {Psychological Bulletin},
  volume  = {70},
  number  = {4},
  pages   = {213--220},
  year    = {1968}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids (>= 0).
    references (`list` of `int`): reference class ids (>= 0).
    num_classes (`int`, *optional*): the number of classes K; every id must be < K.
Returns:
    quadratic_kappa (`float`): in [-1, 1]; NaN when undefined.
Examples:
    >>> kappa = evaluate.load("path/to/quadratic_kappa")
    >>> kappa.compute(predictions=[0, 1, 2, 2], references=[0, 1, 2, 1])["quadratic_kappa"]
    0.8
"""


class QuadraticKappa(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_classes=None):
        preds = np.asarray(predictions, dtype=np.int64)
        refs = np.asarray(references, dtype=np.int64)
        if preds.size == 0:
            raise ValueError("quadratic_kappa needs at least one sample.")
        if min(preds.min(), refs.min()) < 0:
            raise ValueError("Class ids must be >= 0.")
        largest = int(max(preds.max(), refs.max()))
        size = largest + 1 if num_classes is None else int(num_classes)
        if largest >= size:
            raise ValueError(f"Class id {largest} is outside [0, num_classes={size}).")
        observed = (
            np.bincount(refs * size + preds, minlength=size * size).reshape(size, size).astype(np.float64)
        )
        expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
        grades = np.arange(size, dtype=np.float64)
        weights = (grades[:, None] - grades[None, :]) ** 2
        chance = float((weights * expected).sum())
        kappa = 1.0 - float((weights * observed).sum()) / chance if chance > 0 else float("nan")
        return {"quadratic_kappa": kappa}
