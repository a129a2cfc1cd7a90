"""Balanced accuracy as a self-contained Hugging Face `evaluate` metric script (loaded from its local path)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Balanced accuracy: the mean per-class recall, over the classes present in the references (as
`sklearn.metrics.balanced_accuracy_score`; a predicted class that never occurs in the references adds no term).

- Single-label: integer class ids.
- Multi-label: per-sample 0/1 sequences; the result is the mean over labels of each label's balanced accuracy
  ((sensitivity + specificity) / 2, or the recall of the only value present when a label is all 0 or all 1).
"""

_CITATION = """\
@inproceedings{brodersen2010balanced,
  title     = {The Balanced Accuracy and Its Posterior Distribution},
  author    = {Brodersen, Kay Henning and Ong, Cheng Soon and Stephan, Klaas Enno and Buhmann, Joachim M.},
  booktitle = {20th International Conference on Pattern Recognition},
  pages     = {3121--3124},
  year      = {2010}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`, or `list` of `list` of `int`): predicted class ids (single-label), or one 0/1
        sequence per sample (multi-label).
    references (`list` of `int`, or `list` of `list` of `int`): reference class ids / 0/1 sequences, same layout.
Returns:
    balanced_accuracy (`float`): in [0, 1].
Examples:
    >>> balanced_accuracy = evaluate.load("path/to/balanced_accuracy")
    >>> balanced_accuracy.compute(predictions=[0, 0, 0, 1], references=[0, 0, 1, 1])
    {'balanced_accuracy': 0.75}
"""


def _paired_arrays(predictions, references):
    """Integer arrays of equal shape, (N,) or (N, C); ValueError otherwise."""
    try:
        preds = np.asarray(predictions, dtype=np.int64)
        refs = np.asarray(references, dtype=np.int64)
    except ValueError as error:  # ragged multi-label rows
        raise ValueError(f"predictions/references must be rectangular: {error}") from None
    if preds.shape != refs.shape or preds.ndim not in (1, 2) or preds.shape[0] == 0:
        raise ValueError(
            f"predictions {preds.shape} and references {refs.shape} must have the same non-empty shape (N,) or (N, C)."
        )
    return preds, refs


def _mean_recall(preds, refs):
    """Mean over the classes present in `refs` of the fraction of their samples predicted as that class."""
    return float(np.mean([np.mean(preds[refs == c] == c) for c in np.unique(refs)]))


class BalancedAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("int64")),
                        "references": datasets.Sequence(datasets.Value("int64")),
                    }
                ),
            ],
        )

    def _compute(self, predictions, references):
        preds, refs = _paired_arrays(predictions, references)
        if refs.ndim == 1:
            return {"balanced_accuracy": _mean_recall(preds, refs)}
        per_label = [_mean_recall(preds[:, j], refs[:, j]) for j in range(refs.shape[1])]
        return {"balanced_accuracy": float(np.mean(per_label))}
