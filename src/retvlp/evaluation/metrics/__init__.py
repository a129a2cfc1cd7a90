"""Classification metrics for the evaluation suite, as Hugging Face `evaluate` modules shipped with the package.

Each metric is a self-contained `evaluate` metric script in a folder named like it (`roc_auc/roc_auc.py`, ...),
loaded with `evaluate.load(<absolute path of the script>)`: nothing is fetched from the Hub, so loading works
offline (`HF_HUB_OFFLINE=1`). `evaluate` copies each script into its dynamic-modules cache
(`$HF_MODULES_CACHE/evaluate_modules/metrics/<name>/<hash>/`, by default under `~/.cache/huggingface/modules`),
so that directory must be writable. Modules are built with `keep_in_memory=True`: predictions go through an
in-memory Arrow buffer, no cache files or file locks are written per computation.

`classification_metrics` is the convenience entry point used by the evaluation protocols:

>>> classification_metrics([0, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])  # doctest: +SKIP
{'accuracy': 0.666..., 'balanced_accuracy': 0.75, 'roc_auc': 1.0, 'pr_auc': 1.0, 'quadratic_kappa': 0.4,
 'f1_macro': 0.666...}

Conventions (see each script's description for the details):

- Single-label: predictions are the argmax of the probabilities. `roc_auc` / `pr_auc` are macro one-vs-rest over
  the C classes; for C = 2 they are the positive class's (column 1) AUC / average precision only (RETFound's code
  averages the AP of both classes instead). `quadratic_kappa` weighs disagreements by squared class-id distance
  over all C classes.
- Multi-label: predictions are `probabilities >= threshold`. `accuracy` is the MEAN PER-LABEL accuracy
  (1 - Hamming loss, not exact-match subset accuracy), `balanced_accuracy` the mean over labels of per-label
  balanced accuracy, `roc_auc` / `pr_auc` / `f1_macro` are macro over labels. There is no kappa: the key
  `quadratic_kappa` is omitted from the result.
- A class (label) without both positive and negative references has no AUC / AP: it is left out of the macro mean
  with a `UserWarning` naming it (the metric modules also return the classes used); with no usable class the
  value is NaN.

Calling a module's `compute` directly: `evaluate` casts the inputs to the declared features before the script
sees them, so float predictions given to an integer-feature metric are truncated (0.7 -> 0) without an error.

The loaded modules are shared per process (cached); like every `evaluate` module they hold per-computation
state, so do not call the same metric from several threads at once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import evaluate

__all__ = ["METRIC_NAMES", "classification_metrics", "load_metric", "metric_script_path"]

METRIC_NAMES = ("accuracy", "balanced_accuracy", "roc_auc", "pr_auc", "quadratic_kappa", "f1_macro")

_METRICS_DIR = Path(__file__).resolve().parent
_SINGLE_LABEL_ONLY = ("quadratic_kappa",)


def _check_name(name: str) -> None:
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; known metrics: {', '.join(METRIC_NAMES)}.")


def metric_script_path(name: str) -> Path:
    """Absolute path of the `evaluate` script shipped for metric `name`."""
    _check_name(name)
    return _METRICS_DIR / name / f"{name}.py"


@functools.lru_cache(maxsize=len(METRIC_NAMES))
def _load(name: str) -> evaluate.EvaluationModule:
    import evaluate

    return evaluate.load(str(metric_script_path(name)), keep_in_memory=True)


def load_metric(name: str) -> evaluate.EvaluationModule:
    """The `evaluate` module of metric `name` (one of `METRIC_NAMES`), loaded once per process from its local
    script (no network). Raises `ValueError` for an unknown name."""
    _check_name(name)
    return _load(name)


load_metric.cache_clear = _load.cache_clear  # type: ignore[attr-defined]


def _validated(targets, probabilities, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        scores = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"probabilities must be a numeric (N, C) array: {error}") from None
    try:
        labels = np.asarray(targets)
    except ValueError as error:
        raise ValueError(f"targets must be a rectangular array: {error}") from None
    if scores.ndim != 2:
        raise ValueError(f"probabilities must have shape (N, C); got shape {scores.shape}.")
    if scores.shape[0] == 0 or labels.size == 0:
        raise ValueError(
            f"Empty input: targets shape {labels.shape}, probabilities shape {scores.shape}; need N >= 1."
        )
    if not np.isfinite(scores).all():
        raise ValueError("probabilities contain NaN or infinite values.")
    if not (np.issubdtype(labels.dtype, np.number) or labels.dtype == np.bool_):
        raise ValueError(f"targets must be numeric; got dtype {labels.dtype}.")
    num_samples, num_classes = scores.shape
    if multi_label:
        if labels.shape != scores.shape:
            raise ValueError(
                f"Multi-label targets shape {labels.shape} does not match probabilities shape {scores.shape}; "
                "expected (N, C) 0/1 indicators."
            )
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("Multi-label targets must contain only 0 and 1.")
        return labels.astype(np.int64), scores
    if labels.shape != (num_samples,):
        hint = " (for (N, C) indicator targets pass multi_label=True)" if labels.ndim == 2 else ""
        raise ValueError(
            f"Single-label targets shape {labels.shape} does not match probabilities shape {scores.shape}; "
            f"expected ({num_samples},) class ids{hint}."
        )
    if num_classes < 2:
        raise ValueError(f"Single-label probabilities need C >= 2 columns; got shape {scores.shape}.")
    if not np.all(labels == np.round(labels)):
        raise ValueError("Single-label targets must be integer class ids.")
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.size:
        raise ValueError(
            f"Single-label targets must lie in [0, {num_classes}) for probabilities with {num_classes} columns; "
            f"found {sorted(set(outside.tolist()))[:10]}."
        )
    return labels.astype(np.int64), scores


def classification_metrics(
    targets,
    probabilities,
    *,
    multi_label: bool = False,
    threshold: float = 0.5,
    names: Iterable[str] = METRIC_NAMES,
) -> dict[str, float]:
    """Classification metrics of `probabilities` against `targets`, computed by the shipped `evaluate` modules.

    Args:
        targets: `(N,)` integer class ids in [0, C) (single-label) or `(N, C)` 0/1 indicators (`multi_label`).
        probabilities: `(N, C)` class probabilities (single-label: rows summing to 1, e.g. a softmax; the AUCs
            rank each column across samples, so pass probabilities rather than logits to get the conventional
            one-vs-rest AUC) or per-label probabilities (multi-label, e.g. sigmoids).
        multi_label: whether the task is multi-label.
        threshold: multi-label decision threshold; a label is predicted when its probability is >= `threshold`.
        names: the metrics to compute, a subset of `METRIC_NAMES`.

    Returns:
        `{name: value}` as plain Python floats, in the order of `names`. Single-label predictions are the argmax
        of `probabilities`. Multi-label: `accuracy` is the mean per-label accuracy, `balanced_accuracy` the mean
        over labels of per-label balanced accuracy, and `quadratic_kappa` is omitted (single-label only). Classes
        without both positive and negative targets are left out of `roc_auc` / `pr_auc` (with a warning); NaN
        when no class is usable.

    Raises:
        ValueError: for an unknown metric name, empty input, mismatched shapes, targets outside [0, C) (or not
            0/1 for multi-label), or NaN / infinite probabilities.
    """
    names = tuple(names)
    for name in names:
        _check_name(name)
    labels, scores = _validated(targets, probabilities, multi_label)
    if multi_label:
        predictions = (scores >= threshold).astype(np.int64)
    else:
        predictions = scores.argmax(axis=1)

    # Plain lists: `datasets` encodes them for the Arrow round trip several times faster than numpy rows.
    labels_list, predictions_list = labels.tolist(), predictions.tolist()
    scores_list = scores.tolist() if any(name in ("roc_auc", "pr_auc") for name in names) else None
    results: dict[str, float] = {}
    for name in names:
        if multi_label and name in _SINGLE_LABEL_ONLY:
            continue
        metric = load_metric(name)
        if name in ("roc_auc", "pr_auc"):
            output = metric.compute(predictions=scores_list, references=labels_list)
        elif name == "quadratic_kappa":
            output = metric.compute(
                predictions=predictions_list, references=labels_list, num_classes=scores.shape[1]
            )
        else:
            output = metric.compute(predictions=predictions_list, references=labels_list)
        results[name] = float(output[name])
    return results
