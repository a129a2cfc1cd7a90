"""Macro F1 as a self-contained Hugging Face `evaluate` metric script (loaded from its local path)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Macro F1: the unweighted mean over classes (labels) of F1 = 2 TP / (2 TP + FP + FN).

- Single-label: integer class ids; the mean runs over the classes that occur in the references or the
  predictions (as `sklearn.metrics.f1_score(average="macro")` without `labels`).
- Multi-label: per-sample 0/1 sequences; the mean runs over the labels with at least one positive reference or
  positive prediction. A label with neither has an undefined F1 (0/0) and is left out, whereas scikit-learn
  counts it as 0 (`zero_division`); the labels used are returned as `f1_macro_classes_used`.
A class/label that is present but never predicted correctly counts as 0.
"""

_CITATION = """\
@book{vanrijsbergen1979information,
  title     = {Information Retrieval},
  author    = {van Rijsbergen, C. J.},
  edition   = {2},
  publisher = {Butterworth-Heinemann},
  year      = {1979}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`, or `list` of `list` of `int`): predicted class ids (single-label, >= 0), or one
        0/1 sequence per sample (multi-label).
    references (`list` of `int`, or `list` of `list` of `int`): reference class ids / 0/1 sequences, same layout.
Returns:
    f1_macro (`float`): in [0, 1]; NaN when no class/label is usable (multi-label with no positive anywhere).
    f1_macro_classes_used (`list` of `int`): the class ids / label indices averaged over.
Examples:
    >>> f1 = evaluate.load("path/to/f1_macro")
    >>> f1.compute(predictions=[0, 1, 1], references=[0, 1, 2])["f1_macro"]
    0.5555555555555555
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


class F1Macro(evaluate.Metric):
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
            if min(preds.min(), refs.min()) < 0:
                raise ValueError("Single-label class ids must be >= 0.")
            size = int(max(preds.max(), refs.max())) + 1
            true_positives = np.bincount(refs[refs == preds], minlength=size)
            true_count = np.bincount(refs, minlength=size)
            predicted_count = np.bincount(preds, minlength=size)
        else:
            if not (np.isin(refs, (0, 1)).all() and np.isin(preds, (0, 1)).all()):
                raise ValueError("Multi-label predictions and references must contain only 0 and 1.")
            true_positives = (refs & preds).sum(axis=0)
            true_count, predicted_count = refs.sum(axis=0), preds.sum(axis=0)
        denominator = true_count + predicted_count  # = 2 TP + FP + FN
        used = np.flatnonzero(denominator > 0)
        score = float(np.mean(2 * true_positives[used] / denominator[used])) if used.size else float("nan")
        return {"f1_macro": score, "f1_macro_classes_used": used.tolist()}
