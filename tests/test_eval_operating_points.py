"""Operating points (`retvlp.evaluation.operating_points`) against scikit-learn's roc_curve and literal loops."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from retvlp.evaluation.operating_points import (
    one_vs_rest_operating_points,
    operating_point_report,
    parse_operating_points,
    threshold_at_sensitivity,
    threshold_at_specificity,
    youden_threshold,
)


def scored(seed, n=400, ties=False):
    rng = np.random.default_rng(seed)
    positives = rng.random(n) < 0.3
    scores = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.2 * positives)))
    if ties:
        scores = np.round(scores, 2)  # many equal scores
    return scores, positives


def roc(scores, positives):
    fpr, tpr, thresholds = roc_curve(positives, scores, drop_intermediate=False)
    return thresholds, tpr, 1 - fpr


def loop_rates(scores, positives, threshold):
    tp = sum(1 for s, p in zip(scores, positives, strict=True) if s >= threshold and p)
    fp = sum(1 for s, p in zip(scores, positives, strict=True) if s >= threshold and not p)
    tn = sum(1 for s, p in zip(scores, positives, strict=True) if s < threshold and not p)
    fn = sum(1 for s, p in zip(scores, positives, strict=True) if s < threshold and p)

    def ratio(a, b):
        return a / b if b else float("nan")

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
    }


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_thresholds_match_roc_curve(target, ties):
    scores, positives = scored(0, ties=ties)
    thresholds, sensitivity, specificity = roc(scores, positives)  # thresholds descending, +inf first
    # Specificity: the reachable points with specificity >= target; the best sensitivity, then the lowest
    # threshold giving it (the lowest threshold meeting the target).
    ok = np.flatnonzero(specificity >= target)
    best = ok[sensitivity[ok] == sensitivity[ok].max()]
    assert threshold_at_specificity(scores, positives, target) == thresholds[best].min()
    # Sensitivity: among sensitivity >= target, the best specificity, then the highest threshold.
    ok = np.flatnonzero(sensitivity >= target)
    best = ok[specificity[ok] == specificity[ok].max()]
    assert threshold_at_sensitivity(scores, positives, target) == thresholds[best].max()


@pytest.mark.parametrize("ties", [False, True])
def test_youden_matches_roc_curve(ties):
    scores, positives = scored(1, ties=ties)
    thresholds, sensitivity, specificity = roc(scores, positives)
    youden = sensitivity + specificity - 1
    best = np.flatnonzero(np.isclose(youden, youden.max(), rtol=0, atol=1e-12))
    assert youden_threshold(scores, positives) == thresholds[best].max()


def test_hand_worked_ties_and_infinity():
    scores = np.array([0.1, 0.4, 0.4, 0.8])
    positives = np.array([0, 0, 1, 1])
    # >= 0.4 calls the negative at 0.4 positive too: specificity 1/2, sensitivity 1.
    assert threshold_at_specificity(scores, positives, 0.5) == 0.4
    # 0.75 is not reachable at 0.4 (the tie moves together); the next candidate 0.8 gives specificity 1.
    assert threshold_at_specificity(scores, positives, 0.75) == 0.8
    assert threshold_at_sensitivity(scores, positives, 1.0) == 0.4
    assert threshold_at_sensitivity(scores, positives, 0.5) == 0.8
    assert youden_threshold(scores, positives) == 0.8  # J = 0.5 at 0.4 and at 0.8: the higher
    # The top score is a negative: only +inf (calling nothing positive) has specificity 1.
    assert threshold_at_specificity([0.9, 0.5], [0, 1], 1.0) == math.inf


def test_report_against_loops():
    cal_scores, cal_positives = scored(2)
    test_scores, test_positives = scored(3, n=300)
    report = operating_point_report(
        cal_scores, cal_positives, test_scores, test_positives, {"spec": [0.9, 0.95], "sens": [0.9]}
    )
    assert list(report) == ["spec=0.9", "spec=0.95", "sens=0.9"]
    thresholds, sensitivity, specificity = roc(cal_scores, cal_positives)
    for key, entry in report.items():
        criterion, target = key.split("=")
        assert entry["criterion"] == {"spec": "specificity", "sens": "sensitivity"}[criterion]
        assert entry["target"] == float(target)
        threshold = entry["threshold"]
        at = np.flatnonzero(thresholds == threshold)[0]
        assert entry["calibration"]["sensitivity"] == pytest.approx(sensitivity[at], abs=1e-12)
        assert entry["calibration"]["specificity"] == pytest.approx(specificity[at], abs=1e-12)
        assert entry["calibration"][{"spec": "specificity", "sens": "sensitivity"}[criterion]] >= float(
            target
        )
        for split, (s, p) in (
            ("calibration", (cal_scores, cal_positives)),
            ("test", (test_scores, test_positives)),
        ):
            expected = loop_rates(s.tolist(), p.tolist(), threshold)
            for name, value in expected.items():
                assert entry[split][name] == pytest.approx(value, abs=1e-12)
        assert entry["test"]["tp"] + entry["test"]["fn"] == int(test_positives.sum())
        assert entry["undefined"] == {}
    assert set(operating_point_report(cal_scores, cal_positives, test_scores, test_positives)) == {
        "spec=0.9",
        "spec=0.95",
        "sens=0.9",
    }


def test_undefined_figures_are_nan_with_reasons():
    cal_scores, cal_positives = scored(4)
    # A test split without positives: test sensitivity undefined; and one where nothing reaches the threshold.
    report = operating_point_report(cal_scores, cal_positives, [0.01, 0.02], [0, 0], {"sens": [0.9]})
    entry = report["sens=0.9"]
    assert math.isnan(entry["test"]["sensitivity"]) and math.isnan(entry["test"]["ppv"])
    assert entry["undefined"] == {
        "test.sensitivity": "no positive samples",
        "test.ppv": "no sample scored at or above the threshold",
    }
    assert entry["test"]["specificity"] == 1.0
    # A calibration split without negatives cannot choose a specificity threshold.
    report = operating_point_report([0.2, 0.7], [1, 1], cal_scores, cal_positives, {"spec": 0.9, "sens": 0.5})
    assert math.isnan(report["spec=0.9"]["threshold"]) and report["spec=0.9"]["test"] is None
    assert "no negative samples" in report["spec=0.9"]["undefined"]["threshold"]
    assert report["sens=0.5"]["threshold"] == 0.7


def test_one_vs_rest_is_the_binary_report_per_class():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(200, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    targets = rng.integers(0, 3, size=200)
    result = one_vs_rest_operating_points(
        probabilities[:100],
        targets[:100],
        probabilities[100:],
        targets[100:],
        {"spec": [0.9]},
        ["a", "b", "c"],
    )
    assert list(result) == ["a", "b", "c"]
    for k, name in enumerate("abc"):
        expected = threshold_at_specificity(probabilities[:100, k], targets[:100] == k, 0.9)
        assert result[name]["spec=0.9"]["threshold"] == expected
        rates = loop_rates(probabilities[100:, k].tolist(), (targets[100:] == k).tolist(), expected)
        assert result[name]["spec=0.9"]["test"]["sensitivity"] == pytest.approx(rates["sensitivity"])
    with pytest.raises(ValueError, match="class_names"):
        one_vs_rest_operating_points(probabilities, targets, probabilities, targets, class_names=["a"])
    with pytest.raises(ValueError, match="cal_probabilities / test_probabilities"):
        one_vs_rest_operating_points(probabilities, targets, probabilities[:, :2], targets)


def test_parse_operating_points():
    assert parse_operating_points("spec=0.9,0.95 sens=0.9") == {"spec": [0.9, 0.95], "sens": [0.9]}
    assert parse_operating_points("  Sensitivity=0.8  specificity=1 ") == {"sens": [0.8], "spec": [1.0]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("spec", 'no "="'),
        ("ppv=0.9", "unknown criterion 'ppv'"),
        ("spec=abc", "'abc' .* is not a number"),
        ("spec=0.9,", "'' .* is not a number"),
        ("spec=90", "outside \\(0, 1\\]"),
        ("sens=0", "outside \\(0, 1\\]"),
        ("spec=nan", "outside \\(0, 1\\]"),
        ("spec=0.9 specificity=0.95", "given twice"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(ValueError, match=f"operating points: .*{message}"):
        parse_operating_points(text)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: threshold_at_specificity([0.1, 0.2], [1, 1], 0.9), "positives: no negative samples"),
        (lambda: threshold_at_sensitivity([0.1, 0.2], [0, 0], 0.9), "positives: no positive samples"),
        (lambda: youden_threshold([0.1, 0.2], [0, 0]), "positives: Youden"),
        (lambda: threshold_at_specificity([0.1, 0.2], [0, 1], 0.0), "specificity: expected a target rate"),
        (lambda: threshold_at_sensitivity([0.1, 0.2], [0, 1], 1.5), "sensitivity: expected a target rate"),
        (lambda: threshold_at_sensitivity([0.1, 0.2, 0.3], [0, 1], 0.5), "scores / positives"),
        (lambda: threshold_at_sensitivity([0.1, np.nan], [0, 1], 0.5), "scores: contains non-finite"),
        (lambda: threshold_at_sensitivity([0.1, 0.2], [0, 2], 0.5), "positives: expected booleans"),
        (
            lambda: operating_point_report([0.1], [1], [0.1, 0.2], [1], {"sens": [0.9]}),
            "test_scores / test_positives",
        ),
        (
            lambda: operating_point_report([0.1], [1], [0.1], [1], {"npv": [0.9]}),
            "targets: unknown criterion",
        ),
        (lambda: operating_point_report([0.1], [1], [0.1], [1], {"sens": [95]}), "targets\\['sens'\\]"),
    ],
)
def test_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
