"""`fast_metrics.metric_values` gives the shipped `evaluate` modules' numbers (and scikit-learn's), on random
cases with ties, classes missing from the targets, binary and multi-label tasks."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
)

from retvlp.evaluation.fast_metrics import mean_metric_values, metric_values
from retvlp.evaluation.metrics import classification_metrics


def _case(seed: int, n: int, k: int, *, ties: bool, drop_class: bool):
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(k), n)
    if ties:  # few distinct scores: ties inside every column and between rows
        probabilities = np.round(probabilities, 1) + 1e-9
        probabilities /= probabilities.sum(axis=1, keepdims=True)
    targets = rng.integers(0, k, n)
    if drop_class:
        targets[targets == k - 1] = 0
    return targets, probabilities


CASES = [
    (seed, n, k, ties, drop)
    for seed, (n, k) in enumerate([(40, 2), (60, 3), (200, 5), (15, 4)])
    for ties in (False, True)
    for drop in (False, True)
]


@pytest.mark.parametrize("seed,n,k,ties,drop", CASES)
def test_single_label_equals_the_evaluate_modules(seed, n, k, ties, drop):
    targets, probabilities = _case(seed, n, k, ties=ties, drop_class=drop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = classification_metrics(targets, probabilities)
    got = metric_values(targets, probabilities)
    assert list(got) == list(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("seed,n,k,ties,drop", CASES)
def test_single_label_equals_scikit_learn(seed, n, k, ties, drop):
    targets, probabilities = _case(seed, n, k, ties=ties, drop_class=drop)
    predictions = probabilities.argmax(axis=1)
    got = metric_values(targets, probabilities)
    assert got["accuracy"] == pytest.approx(accuracy_score(targets, predictions))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(targets, predictions))
    assert got["quadratic_kappa"] == pytest.approx(
        cohen_kappa_score(targets, predictions, weights="quadratic", labels=list(range(k)))
    )
    used = sorted(set(targets.tolist()) | set(predictions.tolist()))
    assert got["f1_macro"] == pytest.approx(f1_score(targets, predictions, average="macro", labels=used))
    if k == 2 and len(set(targets.tolist())) == 1:
        assert np.isnan(got["roc_auc"]) and np.isnan(got["pr_auc"])
    elif k == 2:
        assert got["roc_auc"] == pytest.approx(roc_auc_score(targets, probabilities[:, 1]))
        assert got["pr_auc"] == pytest.approx(average_precision_score(targets, probabilities[:, 1]))
    else:
        present = [c for c in range(k) if 0 < (targets == c).sum() < n]
        aucs = [roc_auc_score(targets == c, probabilities[:, c]) for c in present]
        aps = [average_precision_score(targets == c, probabilities[:, c]) for c in present]
        assert got["roc_auc"] == pytest.approx(np.mean(aucs))
        assert got["pr_auc"] == pytest.approx(np.mean(aps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_label_equals_the_evaluate_modules(seed):
    rng = np.random.default_rng(seed)
    probabilities = np.round(rng.random((50, 4)), 2)
    targets = (rng.random((50, 4)) < 0.3).astype(int)
    targets[:, 3] = 0  # a label without positives: left out of the AUCs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = classification_metrics(targets, probabilities, multi_label=True, threshold=0.4)
    got = metric_values(targets, probabilities, multi_label=True, threshold=0.4)
    assert "quadratic_kappa" not in got and list(got) == list(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_undefined_values_are_nan_without_warning():
    targets = np.zeros(6, dtype=int)
    probabilities = np.tile([0.7, 0.2, 0.1], (6, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = metric_values(targets, probabilities)
    assert np.isnan(got["roc_auc"]) and np.isnan(got["pr_auc"])
    assert got["accuracy"] == 1.0


def test_unknown_metric_is_named():
    with pytest.raises(ValueError, match="Unknown metric 'auc'"):
        metric_values(np.array([0, 1]), np.array([[0.6, 0.4], [0.3, 0.7]]), names=["auc"])


@pytest.mark.parametrize("seed", range(6))
def test_the_mean_over_runs_equals_one_call_per_run(seed):
    """`mean_metric_values` computes all runs together: the same numbers as averaging `metric_values`."""
    rng = np.random.default_rng(seed)
    runs, k = 1 + seed % 4, 2 + seed % 4
    targets = rng.integers(0, k, 60)
    if seed % 2:
        targets[targets == k - 1] = 0  # a class missing from the targets
    probabilities = rng.dirichlet(np.ones(k), (runs, 60))
    if seed % 3 == 0:  # ties
        probabilities = np.round(probabilities, 1) + 1e-9
        probabilities /= probabilities.sum(axis=2, keepdims=True)
    got = mean_metric_values(targets, probabilities)
    per_run = [metric_values(targets, p) for p in probabilities]
    for name, value in got.items():
        expected = sum(values[name] for values in per_run) / runs
        np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-12, err_msg=name)
