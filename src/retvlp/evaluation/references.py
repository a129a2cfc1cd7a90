"""Reference levels every result is read against: the majority-class predictor and chance.

- **majority class**: every test image gets the training pool's class frequencies as its scores (multi-label:
  each label's frequency). The prediction is then the pool's most frequent class for every image (ties: the
  first in class order; multi-label: each label's majority value at threshold 0.5) and the ranking metrics see
  constant scores. It is scored by the same metric modules as the models, so it reads: accuracy = that class's
  share of the test set, balanced accuracy 1/C, ROC-AUC 0.5, PR-AUC the positives' share, κ 0. A model whose
  accuracy does not beat it has learned nothing the class balance does not give (an all-`no_DR` zero-shot).
- **chance**: the expected level of a uniformly random guess, in closed form: accuracy and balanced accuracy
  1/C (multi-label: 0.5 per label), ROC-AUC 0.5, PR-AUC the positives' share of the test set (the expected
  average precision of a random ranking, up to a small-sample excess; macro mean over the classes that have
  positives and negatives), κ 0. Macro F1 has no closed form here and is left out.

Both are `results.Reference` documents (`{"metrics": {name: value}}`, plus `"predicts"`, the majority
predictor's class name(s)), keyed like the result rows' metrics, in `results["references"]`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .metrics import METRIC_NAMES, classification_metrics
from .results import Reference

CHANCE_FREE_METRICS = ("f1_macro",)  # no closed-form chance level


def _one_hot(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """`(N,)` class ids or `(N, C)` multi-hot → `(N, C)` float 0/1."""
    if targets.ndim == 2:
        return targets.astype(np.float64)
    return np.eye(num_classes)[targets]


def majority_reference(
    train_targets: np.ndarray,
    test_targets: np.ndarray,
    class_names: Sequence[str],
    *,
    multi_label: bool,
    names: Iterable[str] = METRIC_NAMES,
) -> dict:
    """The training pool's majority predictor scored on the test targets (see the module docstring)."""
    prior = _one_hot(np.asarray(train_targets), len(class_names)).mean(axis=0)
    scores = np.tile(prior, (len(test_targets), 1))
    metrics = classification_metrics(test_targets, scores, multi_label=multi_label, names=names)
    if multi_label:
        predicts = [str(c) for c, p in zip(class_names, prior, strict=True) if p >= 0.5]
    else:
        predicts = str(class_names[int(prior.argmax())])
    return Reference(metrics, predicts).to_json()


def _chance_pr_auc(test_targets: np.ndarray, num_classes: int) -> float:
    """Positive share of the test set: binary → class 1's, otherwise the macro mean over usable classes."""
    onehot = _one_hot(test_targets, num_classes)
    if test_targets.ndim == 1 and num_classes == 2:
        onehot = onehot[:, 1:]
    share = onehot.mean(axis=0)
    usable = (share > 0) & (share < 1)
    return float(share[usable].mean()) if usable.any() else float("nan")


def chance_reference(
    test_targets: np.ndarray,
    num_classes: int,
    *,
    multi_label: bool,
    names: Iterable[str] = METRIC_NAMES,
) -> dict:
    """Closed-form expected metrics of a uniformly random guess (see the module docstring)."""
    guess = 0.5 if multi_label else 1.0 / num_classes
    levels = {
        "accuracy": guess,
        "balanced_accuracy": guess,
        "roc_auc": 0.5,
        "pr_auc": _chance_pr_auc(np.asarray(test_targets), num_classes),
        "quadratic_kappa": 0.0,
    }
    metrics = {name: levels[name] for name in names if name in levels}
    if multi_label:
        metrics.pop("quadratic_kappa", None)
    return Reference(metrics).to_json()


def reference_levels(
    train_targets: np.ndarray,
    test_targets: np.ndarray,
    class_names: Sequence[str],
    *,
    multi_label: bool,
    names: Iterable[str] = METRIC_NAMES,
) -> dict:
    """`{"majority": ..., "chance": ...}` for one fixed split."""
    names = tuple(names)
    return {
        "majority": majority_reference(
            train_targets, test_targets, class_names, multi_label=multi_label, names=names
        ),
        "chance": chance_reference(test_targets, len(class_names), multi_label=multi_label, names=names),
    }
