"""Calibration figures (`retvlp.evaluation.calibration`) against hand-worked cases, loops and scikit-learn."""

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from retvlp.evaluation.calibration import (
    apply_temperature,
    binary_ece,
    brier_score,
    calibration_report,
    classwise_ece,
    expected_calibration_error,
    fit_temperature,
    plot_reliability,
    reliability_curve,
)

# Four binary samples: (p0, p1), target.
#   [0.1, 0.9] y=1: confidence 0.9, correct      [0.2, 0.8] y=0: confidence 0.8, wrong
#   [0.4, 0.6] y=1: confidence 0.6, correct      [0.7, 0.3] y=0: confidence 0.7, correct
HAND_P = np.array([[0.1, 0.9], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
HAND_Y = np.array([1, 0, 1, 0])


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def random_data(seed=0, n=2000, k=3):
    """Over-confident softmax outputs, labels drawn from a softer softmax of the same logits."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, size=(n, k))
    true = softmax(logits / 1.7)
    targets = (rng.random(n)[:, None] > np.cumsum(true, axis=1)).sum(axis=1)
    return targets, softmax(logits)


def loop_ece(outcomes, scores, edges):
    """ECE written out: bin b holds scores in (edges[b], edges[b+1]] (the first bin also edges[0])."""
    total, n = 0.0, len(scores)
    for b in range(len(edges) - 1):
        members = [
            i
            for i in range(n)
            if (edges[b] < scores[i] or (b == 0 and scores[i] >= edges[0])) and scores[i] <= edges[b + 1]
        ]
        if members:
            confidence = sum(scores[i] for i in members) / len(members)
            accuracy = sum(outcomes[i] for i in members) / len(members)
            total += len(members) / n * abs(accuracy - confidence)
    return total


def test_hand_worked_ece_brier_and_classwise():
    # Equal-mass, 2 bins: the median edge 0.75 splits {0.6, 0.7} (accuracy 1, confidence 0.65, gap 0.35) from
    # {0.8, 0.9} (accuracy 0.5, confidence 0.85, gap 0.35): ECE = 0.5 * 0.35 + 0.5 * 0.35 = 0.35.
    assert expected_calibration_error(HAND_Y, HAND_P, n_bins=2) == pytest.approx(0.35, abs=1e-12)
    # Equal-width, 2 bins: everything lies in (0.5, 1]: accuracy 3/4, confidence (0.9+0.8+0.6+0.7)/4 = 0.75.
    assert expected_calibration_error(HAND_Y, HAND_P, n_bins=2, strategy="equal-width") == pytest.approx(
        0.0, abs=1e-12
    )
    # Class 1: p1 = [0.9, 0.8, 0.6, 0.3], y = [1, 0, 1, 0]; median 0.7 splits {0.3, 0.6} (mean 0.45, frequency
    # 0.5, gap 0.05) from {0.8, 0.9} (mean 0.85, frequency 0.5, gap 0.35): 0.2. Class 0 mirrors it: 0.2.
    assert classwise_ece(HAND_Y, HAND_P, n_bins=2) == pytest.approx(0.2, abs=1e-12)
    # Brier: 0.01 + 0.01, 0.64 + 0.64, 0.16 + 0.16, 0.09 + 0.09 -> 1.8 / 4 = 0.45 (twice sklearn's 0.225).
    assert brier_score(HAND_Y, HAND_P) == pytest.approx(0.45, abs=1e-12)
    assert brier_score(HAND_Y, HAND_P[:, 1]) == pytest.approx(0.45, abs=1e-12)  # (N,) positive-class form
    curve = reliability_curve(HAND_Y, HAND_P, n_bins=2)
    assert curve.confidence.tolist() == pytest.approx([0.65, 0.85])
    assert curve.accuracy.tolist() == pytest.approx([1.0, 0.5])
    assert curve.count.tolist() == [2, 2]


@pytest.mark.parametrize(
    ("strategy", "sklearn_strategy"), [("equal-width", "uniform"), ("equal-mass", "quantile")]
)
def test_reliability_curve_matches_sklearn_and_loop_ece(strategy, sklearn_strategy):
    targets, probabilities = random_data()
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == targets).astype(int)
    curve = reliability_curve(targets, probabilities, n_bins=10, strategy=strategy)
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=10, strategy=sklearn_strategy)
    np.testing.assert_allclose(curve.accuracy, accuracy, atol=1e-12)
    np.testing.assert_allclose(curve.confidence, mean_confidence, atol=1e-12)
    edges = (
        np.linspace(0, 1, 11) if strategy == "equal-width" else np.quantile(confidence, np.linspace(0, 1, 11))
    )
    expected = loop_ece(correct.tolist(), confidence.tolist(), edges.tolist())
    assert expected_calibration_error(targets, probabilities, n_bins=10, strategy=strategy) == pytest.approx(
        expected, abs=1e-12
    )
    assert expected > 0.02  # over-confident data: the figure has something to measure


def test_equal_mass_keeps_ties_in_one_bin():
    # 12 samples at confidence 1.0 and 8 distinct lower ones: quantile edges coincide at 1.0 and are merged.
    p1 = np.concatenate([np.full(12, 1.0), np.linspace(0.55, 0.9, 8)])
    targets = np.array([1] * 10 + [0] * 2 + [1, 0] * 4)
    curve = reliability_curve(targets, p1, n_bins=5)
    assert curve.count.sum() == 20 and len(curve.count) < 5
    assert (
        curve.count[-1] == 12 and curve.confidence[-1] == 1.0 and curve.accuracy[-1] == pytest.approx(10 / 12)
    )
    accuracy, confidence = calibration_curve(
        (np.stack([1 - p1, p1], 1).argmax(1) == targets).astype(int),
        np.maximum(p1, 1 - p1),
        n_bins=5,
        strategy="quantile",
    )
    np.testing.assert_allclose(curve.accuracy, accuracy, atol=1e-12)
    np.testing.assert_allclose(curve.confidence, confidence, atol=1e-12)


def test_classwise_ece_is_the_mean_of_one_vs_rest_loops():
    targets, probabilities = random_data(seed=1, n=600, k=4)
    per_class = []
    for k in range(4):
        scores = probabilities[:, k]
        edges = np.quantile(scores, np.linspace(0, 1, 16))
        per_class.append(loop_ece((targets == k).astype(int).tolist(), scores.tolist(), edges.tolist()))
    assert classwise_ece(targets, probabilities) == pytest.approx(np.mean(per_class), abs=1e-12)
    assert binary_ece(targets == 2, probabilities[:, 2]) == pytest.approx(per_class[2], abs=1e-12)
    report = calibration_report(targets, probabilities)
    assert report["classwise_ece_per_class"] == pytest.approx(per_class, abs=1e-12)
    assert set(report) >= {"ece", "classwise_ece", "brier", "n_bins", "strategy"}
    assert (report["n_bins"], report["strategy"], report["n_samples"]) == (15, "equal-mass", 600)


def test_brier_against_sklearn_and_a_loop():
    targets, probabilities = random_data(seed=2, n=500, k=2)
    assert brier_score(targets, probabilities) == pytest.approx(
        2 * brier_score_loss(targets, probabilities[:, 1])
    )
    targets, probabilities = random_data(seed=3, n=300, k=5)
    loop = (
        sum(
            sum((probabilities[i, k] - (1.0 if targets[i] == k else 0.0)) ** 2 for k in range(5))
            for i in range(300)
        )
        / 300
    )
    assert brier_score(targets, probabilities) == pytest.approx(loop, abs=1e-12)
    assert calibration_report(targets, probabilities)["brier"] == pytest.approx(loop, abs=1e-12)


def literal_nll(logits, targets, temperature):
    total = 0.0
    for row, y in zip(logits.tolist(), targets.tolist(), strict=True):
        scaled = [z / temperature for z in row]
        top = max(scaled)
        total += top + math.log(sum(math.exp(z - top) for z in scaled)) - scaled[y]
    return total / len(targets)


@pytest.mark.parametrize("true_temperature", [2.5, 0.5])
def test_temperature_recovers_the_generating_temperature(true_temperature):
    # Labels follow softmax(true_logits); the model reports true_logits * T0, so softmax(z / T0) is calibrated.
    rng = np.random.default_rng(7)
    n, k = 20_000, 5
    true_logits = rng.normal(0, 1.5, size=(n, k))
    targets = (rng.random(n)[:, None] > np.cumsum(softmax(true_logits), axis=1)).sum(axis=1)
    logits = true_logits * true_temperature
    fitted = fit_temperature(logits, targets)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    at_fit = literal_nll(logits, targets, fitted)
    assert at_fit <= literal_nll(logits, targets, fitted - 0.05)
    assert at_fit <= literal_nll(logits, targets, fitted + 0.05)
    # Probabilities are turned into logits by taking logs: softmax is shift-invariant, so the fit is the same.
    assert fit_temperature(softmax(logits), targets) == pytest.approx(fitted, rel=1e-4)
    # After scaling, the ECE is small and smaller than before.
    scaled = apply_temperature(logits, fitted)
    assert expected_calibration_error(targets, scaled) < expected_calibration_error(targets, softmax(logits))


def test_apply_temperature_literal_softmax_and_binary_logits():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    scaled = apply_temperature(logits, 2.0)
    for row, out in zip(logits, scaled, strict=True):
        exps = [math.exp(z / 2.0) for z in row]
        assert out.tolist() == pytest.approx([e / sum(exps) for e in exps], abs=1e-12)
    z = np.array([-2.0, 0.3, 4.0])
    assert apply_temperature(z, 2.0, inputs="logits").tolist() == pytest.approx(
        [1 / (1 + math.exp(-v / 2.0)) for v in z], abs=1e-12
    )
    p = np.array([0.2, 0.9])
    # (N,) probabilities: [1 - p, p] ** (1 / T), renormalised; T = 1 leaves them as they are.
    assert apply_temperature(p, 1.0).tolist() == pytest.approx(p.tolist(), abs=1e-12)
    expected = [q**0.5 / (q**0.5 + (1 - q) ** 0.5) for q in p]
    assert apply_temperature(p, 2.0).tolist() == pytest.approx(expected, abs=1e-12)


def test_plot_reliability_writes_a_png(tmp_path):
    targets, probabilities = random_data(seed=4, n=400)
    curves = {
        "raw": reliability_curve(targets, probabilities, n_bins=10),
        "scaled": reliability_curve(targets, apply_temperature(probabilities, 1.7), n_bins=10),
    }
    path = plot_reliability(curves, tmp_path / "plots" / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert curves["raw"].to_json()["count"] == curves["raw"].count.tolist()


@pytest.mark.parametrize(
    ("targets", "probabilities", "kwargs", "message"),
    [
        (HAND_Y, HAND_P * 1.5, {}, "probabilities: values must be probabilities in \\[0, 1\\]"),
        (HAND_Y, HAND_P - 0.05, {}, "probabilities: each row must sum to 1"),
        (HAND_Y[:3], HAND_P, {}, "targets / probabilities: shapes disagree"),
        (np.eye(2)[HAND_Y], HAND_P, {}, "targets: .*multi-label.*single-label"),
        (np.array([0, 1, 2, 0]), HAND_P, {}, "targets: class ids must lie in"),
        (np.array([0.5, 1, 0, 0]), HAND_P, {}, "targets: expected integer"),
        (HAND_Y, HAND_P[:, :1], {}, "probabilities: expected \\(N, K\\)"),
        (HAND_Y, HAND_P, {"n_bins": 0}, "n_bins"),
        (HAND_Y, HAND_P, {"strategy": "quantile"}, "strategy"),
    ],
)
def test_input_errors_name_the_argument(targets, probabilities, kwargs, message):
    for function in (expected_calibration_error, classwise_ece, calibration_report):
        with pytest.raises(ValueError, match=message):
            function(targets, probabilities, **kwargs)


def test_temperature_errors():
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(HAND_P, 0.0)
    with pytest.raises(ValueError, match="targets"):
        fit_temperature(HAND_P, HAND_Y[:3])
    with pytest.raises(ValueError, match="inputs"):
        fit_temperature(HAND_P, HAND_Y, inputs="softmax")
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        fit_temperature(HAND_P * 3, HAND_Y, inputs="probabilities")
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(HAND_P, HAND_Y, bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match="curves"):
        plot_reliability({}, "unused.png")
    # Boolean targets are class ids 0/1.
    assert brier_score(HAND_Y.astype(bool), HAND_P) == pytest.approx(0.45)
