"""Classification metrics (`retvlp.evaluation.metrics`, shipped `evaluate` modules) against scikit-learn."""

import math
import os
import socket
import warnings

import evaluate
import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    hamming_loss,
    roc_auc_score,
)

from retvlp.evaluation.metrics import METRIC_NAMES, classification_metrics, load_metric, metric_script_path

EXACT = dict(rel=1e-12, abs=1e-12)


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def one_hot(labels, num_classes):
    return (np.asarray(labels)[:, None] == np.arange(num_classes)).astype(int)


def single_label_data(seed, num_samples, num_classes, classes=None, signal=1.0):
    """Seeded targets drawn from `classes` and informative (but imperfect) softmax probabilities."""
    rng = np.random.default_rng(seed)
    targets = rng.choice(np.arange(num_classes) if classes is None else np.asarray(classes), num_samples)
    logits = rng.normal(size=(num_samples, num_classes))
    logits[np.arange(num_samples), targets] += signal
    return targets, softmax(logits)


def quiet(function, *args, **kwargs):
    """Call a scikit-learn metric without its ill-defined-metric warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def test_multiclass_matches_sklearn():
    targets, probabilities = single_label_data(seed=0, num_samples=300, num_classes=4)
    predictions = probabilities.argmax(axis=1)
    assert set(targets) == set(predictions) == {0, 1, 2, 3}

    result = classification_metrics(targets, probabilities)

    assert tuple(result) == METRIC_NAMES
    assert all(type(value) is float for value in result.values())
    assert result["accuracy"] == pytest.approx(accuracy_score(targets, predictions), **EXACT)
    assert result["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(targets, predictions), **EXACT
    )
    assert result["roc_auc"] == pytest.approx(
        roc_auc_score(targets, probabilities, multi_class="ovr", average="macro"), **EXACT
    )
    assert result["pr_auc"] == pytest.approx(
        average_precision_score(one_hot(targets, 4), probabilities, average="macro"), **EXACT
    )
    assert result["quadratic_kappa"] == pytest.approx(
        cohen_kappa_score(targets, predictions, weights="quadratic"), **EXACT
    )
    assert result["f1_macro"] == pytest.approx(f1_score(targets, predictions, average="macro"), **EXACT)


def test_multiclass_tied_scores_match_sklearn():
    targets, probabilities = single_label_data(seed=1, num_samples=200, num_classes=4)
    scores = np.round(probabilities, 1)  # many ties within each column (rows no longer sum to 1 exactly)

    result = classification_metrics(targets, scores, names=("roc_auc", "pr_auc"))

    columns = range(4)
    assert result["roc_auc"] == pytest.approx(
        np.mean([roc_auc_score(targets == c, scores[:, c]) for c in columns]), **EXACT
    )
    assert result["pr_auc"] == pytest.approx(
        np.mean([average_precision_score(targets == c, scores[:, c]) for c in columns]), **EXACT
    )


def test_binary_hand_worked():
    # targets:          0     0     1     1
    # p(class 1):      0.1   0.4   0.35  0.8
    # (positive, negative) pairs: (0.35, 0.1) concordant, (0.35, 0.4) discordant, (0.8, 0.1) and (0.8, 0.4)
    # concordant -> AUC = 3 / 4 = 0.75.
    # AP, by descending score: 0.8 (pos) -> precision 1 at recall 1/2; 0.4 (neg); 0.35 (pos) -> precision 2/3 at
    # recall 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    targets = [0, 0, 1, 1]
    positive = np.array([0.1, 0.4, 0.35, 0.8])
    result = classification_metrics(targets, np.column_stack([1 - positive, positive]))
    assert result["roc_auc"] == pytest.approx(0.75, **EXACT)
    assert result["pr_auc"] == pytest.approx(5 / 6, **EXACT)
    assert result["roc_auc"] == pytest.approx(roc_auc_score(targets, positive), **EXACT)

    # A tie between a positive and a negative counts 1/2:
    # targets 0, 1, 0, 1 with scores 0.2, 0.2, 0.5, 0.9: pairs (0.2, 0.2) tie = 1/2, (0.2, 0.5) = 0,
    # (0.9, 0.2) = 1, (0.9, 0.5) = 1 -> AUC = 2.5 / 4 = 0.625.
    tied = load_metric("roc_auc").compute(predictions=[0.2, 0.2, 0.5, 0.9], references=[0, 1, 0, 1])
    assert tied["roc_auc"] == pytest.approx(0.625, **EXACT)
    assert tied["roc_auc_classes_used"] == [1]


def test_binary_uses_positive_class_only():
    targets, probabilities = single_label_data(seed=2, num_samples=200, num_classes=2, signal=0.8)
    targets = np.where(np.random.default_rng(3).random(200) < 0.6, 0, targets)  # imbalanced: ~30 % positives
    predictions = probabilities.argmax(axis=1)

    result = classification_metrics(targets, probabilities)

    positive_ap = average_precision_score(targets, probabilities[:, 1])
    two_class_average = average_precision_score(
        one_hot(targets, 2), probabilities, average="macro"
    )  # RETFound
    assert result["pr_auc"] == pytest.approx(positive_ap, **EXACT)
    assert abs(result["pr_auc"] - two_class_average) > 0.05
    assert result["roc_auc"] == pytest.approx(roc_auc_score(targets, probabilities[:, 1]), **EXACT)
    assert result["accuracy"] == pytest.approx(accuracy_score(targets, predictions), **EXACT)
    assert result["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(targets, predictions), **EXACT
    )
    assert result["quadratic_kappa"] == pytest.approx(
        cohen_kappa_score(targets, predictions, weights="quadratic"), **EXACT
    )
    assert result["f1_macro"] == pytest.approx(f1_score(targets, predictions, average="macro"), **EXACT)


def multi_label_data(seed, num_samples=250, num_labels=5):
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.15, 0.6, num_labels)
    targets = (rng.random((num_samples, num_labels)) < prevalence).astype(int)
    probabilities = 1 / (1 + np.exp(-(rng.normal(size=targets.shape) + 1.5 * targets - 1.0)))
    return targets, probabilities


def test_multilabel_matches_sklearn():
    targets, probabilities = multi_label_data(seed=4)
    predictions = (probabilities >= 0.5).astype(int)
    labels = range(targets.shape[1])

    result = classification_metrics(targets, probabilities, multi_label=True)

    assert "quadratic_kappa" not in result
    assert set(result) == set(METRIC_NAMES) - {"quadratic_kappa"}
    assert all(type(value) is float for value in result.values())
    per_label_accuracy = np.mean([accuracy_score(targets[:, j], predictions[:, j]) for j in labels])
    assert result["accuracy"] == pytest.approx(per_label_accuracy, **EXACT)
    assert result["accuracy"] == pytest.approx(1 - hamming_loss(targets, predictions), **EXACT)
    assert result["accuracy"] != pytest.approx(accuracy_score(targets, predictions))  # not subset accuracy
    assert result["balanced_accuracy"] == pytest.approx(
        np.mean([balanced_accuracy_score(targets[:, j], predictions[:, j]) for j in labels]), **EXACT
    )
    assert result["roc_auc"] == pytest.approx(roc_auc_score(targets, probabilities, average="macro"), **EXACT)
    assert result["pr_auc"] == pytest.approx(
        average_precision_score(targets, probabilities, average="macro"), **EXACT
    )
    assert result["f1_macro"] == pytest.approx(f1_score(targets, predictions, average="macro"), **EXACT)


def test_multilabel_threshold():
    targets, probabilities = multi_label_data(seed=5)
    result = classification_metrics(targets, probabilities, multi_label=True, threshold=0.7)
    predictions = (probabilities >= 0.7).astype(int)
    assert result["f1_macro"] == pytest.approx(f1_score(targets, predictions, average="macro"), **EXACT)
    assert result["accuracy"] == pytest.approx(1 - hamming_loss(targets, predictions), **EXACT)
    # A probability equal to the threshold is a positive prediction.
    exact = classification_metrics(
        [[1], [0]], [[0.7], [0.2]], multi_label=True, threshold=0.7, names=["accuracy"]
    )
    assert exact == {"accuracy": 1.0}


def test_single_label_missing_class():
    targets, probabilities = single_label_data(seed=6, num_samples=200, num_classes=4, classes=[0, 1, 3])
    predictions = probabilities.argmax(axis=1)
    with pytest.raises(ValueError):  # scikit-learn's one-vs-rest AUC refuses a class absent from y_true
        roc_auc_score(targets, probabilities, multi_class="ovr", average="macro")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = classification_metrics(targets, probabilities)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert any(m.startswith("roc_auc: classes [2] left out") for m in messages)
    assert any(m.startswith("pr_auc: classes [2] left out") for m in messages)

    present = (0, 1, 3)
    assert result["roc_auc"] == pytest.approx(
        np.mean([roc_auc_score(targets == c, probabilities[:, c]) for c in present]), **EXACT
    )
    assert result["pr_auc"] == pytest.approx(
        np.mean([average_precision_score(targets == c, probabilities[:, c]) for c in present]), **EXACT
    )
    assert result["accuracy"] == pytest.approx(accuracy_score(targets, predictions), **EXACT)
    assert result["balanced_accuracy"] == pytest.approx(
        quiet(balanced_accuracy_score, targets, predictions), **EXACT
    )
    assert result["quadratic_kappa"] == pytest.approx(
        cohen_kappa_score(targets, predictions, weights="quadratic", labels=[0, 1, 2, 3]), **EXACT
    )
    assert result["f1_macro"] == pytest.approx(
        quiet(f1_score, targets, predictions, average="macro"), **EXACT
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        output = load_metric("roc_auc").compute(predictions=probabilities, references=targets)
    assert output["roc_auc_classes_used"] == [0, 1, 3]
    assert output["roc_auc_classes_left_out"] == [2]
    assert len(output["roc_auc_per_class"]) == 3


def test_multilabel_missing_label():
    targets, probabilities = multi_label_data(seed=7)
    targets[:, 3] = 0  # no positive reference: no AUC / AP; never predicted either: no F1
    probabilities[:, 3] = np.minimum(probabilities[:, 3], 0.4)
    targets[:, 1] = 1  # no negative reference: no AUC / AP
    predictions = (probabilities >= 0.5).astype(int)

    with pytest.warns(UserWarning, match=r"classes \[1, 3\] left out"):
        result = classification_metrics(targets, probabilities, multi_label=True)

    usable = (0, 2, 4)
    assert result["roc_auc"] == pytest.approx(
        np.mean([roc_auc_score(targets[:, j], probabilities[:, j]) for j in usable]), **EXACT
    )
    assert result["pr_auc"] == pytest.approx(
        np.mean([average_precision_score(targets[:, j], probabilities[:, j]) for j in usable]), **EXACT
    )
    assert result["f1_macro"] == pytest.approx(
        f1_score(targets, predictions, average="macro", labels=[0, 1, 2, 4]), **EXACT
    )
    assert result["balanced_accuracy"] == pytest.approx(
        np.mean([quiet(balanced_accuracy_score, targets[:, j], predictions[:, j]) for j in range(5)]), **EXACT
    )


def test_no_usable_class_gives_nan():
    probabilities = softmax(np.random.default_rng(8).normal(size=(6, 3)))
    with pytest.warns(UserWarning, match="left out"):
        result = classification_metrics([1] * 6, probabilities, names=("roc_auc", "pr_auc", "accuracy"))
    assert math.isnan(result["roc_auc"]) and math.isnan(result["pr_auc"])
    assert not math.isnan(result["accuracy"])
    with pytest.warns(UserWarning, match=r"classes \[1\] left out"):
        binary = classification_metrics([0, 0, 0], [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], names=["roc_auc"])
    assert math.isnan(binary["roc_auc"])


def test_quadratic_kappa_weighs_class_id_distance():
    # Grade 2 never occurs: the distances are between grades 0..3, not between the positions of the present ones.
    references, predictions = [0, 1, 3, 3], [0, 3, 3, 1]
    output = load_metric("quadratic_kappa").compute(
        predictions=predictions, references=references, num_classes=4
    )
    with_all_grades = cohen_kappa_score(references, predictions, weights="quadratic", labels=[0, 1, 2, 3])
    assert output["quadratic_kappa"] == pytest.approx(with_all_grades, **EXACT)
    assert output["quadratic_kappa"] != pytest.approx(
        cohen_kappa_score(references, predictions, weights="quadratic")
    )
    with pytest.raises(ValueError, match="outside"):
        load_metric("quadratic_kappa").compute(predictions=predictions, references=references, num_classes=3)


def test_modules_accept_lists_directly():
    assert load_metric("accuracy").compute(predictions=[0, 2, 1, 1], references=[0, 1, 1, 1]) == {
        "accuracy": 0.75
    }
    multi = load_metric("accuracy").compute(predictions=[[1, 0], [1, 1]], references=[[1, 1], [1, 1]])
    assert multi == {"accuracy": 0.75}
    output = load_metric("pr_auc").compute(predictions=[[0.9, 0.2], [0.1, 0.7]], references=[[1, 0], [0, 1]])
    assert output["pr_auc"] == 1.0 and output["pr_auc_classes_used"] == [0, 1]
    f1 = load_metric("f1_macro").compute(predictions=[0, 1, 1], references=[0, 1, 2])
    assert f1["f1_macro"] == pytest.approx(f1_score([0, 1, 2], [0, 1, 1], average="macro", zero_division=0))
    assert f1["f1_macro_classes_used"] == [0, 1, 2]


@pytest.mark.parametrize(
    ("targets", "probabilities", "kwargs", "match"),
    [
        ([0, 1, 2, 0, 1], np.full((4, 3), 1 / 3), {}, r"\(5,\).*\(4, 3\)"),
        (np.zeros((4, 2)), np.full((4, 3), 0.5), {"multi_label": True}, r"\(4, 2\).*\(4, 3\)"),
        (np.zeros((4, 3)), np.full((4, 3), 1 / 3), {}, "multi_label=True"),
        ([0, 1, 3, 0], np.full((4, 3), 1 / 3), {}, r"\[0, 3\).*\[3\]"),
        ([0, -1, 2, 0], np.full((4, 3), 1 / 3), {}, r"\[0, 3\).*\[-1\]"),
        ([0.5, 1, 2, 0], np.full((4, 3), 1 / 3), {}, "integer class ids"),
        ([0, 1, 2, 0], [[0.5, 0.5, 0.0], [np.nan, 0.5, 0.5], [0, 0, 1], [1, 0, 0]], {}, "NaN"),
        ([], np.empty((0, 3)), {}, "Empty input"),
        ([[0, 2], [1, 1]], np.full((2, 2), 0.5), {"multi_label": True}, "only 0 and 1"),
        ([0, 1], np.full((2, 2), 0.5), {"names": ["accuracy", "auc"]}, "known metrics: accuracy, "),
    ],
)
def test_invalid_inputs(targets, probabilities, kwargs, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(targets, probabilities, **kwargs)


def test_load_metric_is_local_and_cached():
    with pytest.raises(ValueError, match="known metrics: accuracy, balanced_accuracy, roc_auc"):
        load_metric("auc")
    for name in METRIC_NAMES:
        assert metric_script_path(name).is_file()
        module = load_metric(name)
        assert isinstance(module, evaluate.EvaluationModule)
        assert module is load_metric(name)
        assert module.info.description.strip()


def test_loading_needs_no_network(monkeypatch):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    load_metric.cache_clear()
    try:
        result = classification_metrics([0, 1, 2, 1], softmax(np.eye(4, 3) * 3))
    finally:
        load_metric.cache_clear()
    assert set(result) == set(METRIC_NAMES)
