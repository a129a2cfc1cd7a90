"""Accuracy as a self-contained Hugging Face `evaluate` metric script (loaded from its local path)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy: the fraction of predictions equal to the reference.

- Single-label: `predictions` and `references` are integer class ids; accuracy = mean(prediction == reference).
- Multi-label: `predictions` and `references` are per-sample 0/1 sequences of equal length C; the result is the
  MEAN PER-LABEL ACCURACY (the fraction of the N x C decisions that are correct, i.e. 1 - Hamming loss), not the
  subset (exact-match) accuracy that `sklearn.metrics.accuracy_score` returns for indicator matrices.
"""

_CITATION = """\
@book{manning2008introduction,
  title     = {Introduction to Information Retrieval},
  author    = {Manning, Christopher D. and Raghavan, Prabhakar and Sch{\\"u}tze, Hinrich},
  publisher = {Cambridge University Press},
  year      = {2008}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`, or `list` of `list` of `int`): predicted class ids (single-label), or one 0/1
        sequence per sample (multi-label).
    references (`list` of `int`, or `list` of `list` of `int`): reference class ids / 0/1 sequences, same layout.
Returns:
    accuracy (`float`): in [0, 1].
Examples:
    >>> accuracy = evaluate.load("path/to/accuracy")
    >>> accuracy.compute(predictions=[0, 2, 1, 1], references=[0, 1, 1, 1])
    {'accuracy': 0.75}
    >>> accuracy.compute(predictions=[[1, 0], [1, 1]], references=[[1, 1], [1, 1]])
    {'accuracy': 0.75}
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


class Accuracy(evaluate.Metric):
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
        return {"accuracy": float(np.mean(preds == refs))}
