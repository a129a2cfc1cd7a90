"""Split conformal prediction (`retvlp.evaluation.conformal`): hand-worked sets, literal loops, and the coverage
guarantee checked statistically over many independent calibration + test draws."""

import math

import numpy as np
import pytest

from retvlp.evaluation.conformal import ConformalPredictor, conformal_report, min_calibration_size


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def loop_aps_score(row, y):
    """Total probability of the classes ranked at least as high as the true class (ties included)."""
    return sum(p for p in row if p >= row[y])


def loop_aps_set(row, threshold):
    """Walk the distinct probabilities from the top, adding each tie group while the running sum is below q_hat."""
    chosen, running = set(), 0.0
    for value in sorted(set(row), reverse=True):
        if running >= threshold:
            break
        group = [k for k, p in enumerate(row) if p == value]
        chosen.update(group)
        running += value * len(group)
    return chosen


def test_min_calibration_size_and_the_refusal():
    # ceil((n + 1) * c) <= n first holds at n = 4 for 0.8 (5 * 0.8 = 4), 9 for 0.9, 19 for 0.95, 99 for 0.99.
    assert [min_calibration_size(c) for c in (0.8, 0.9, 0.95, 0.99)] == [4, 9, 19, 99]
    probabilities = softmax(np.random.default_rng(0).normal(size=(18, 3)))
    with pytest.raises(
        ValueError, match="cal_probabilities: .*needs at least 19 calibration samples.*got 18"
    ):
        ConformalPredictor.fit(probabilities, np.zeros(18, dtype=int), coverage=0.95)
    ConformalPredictor.fit(probabilities, np.zeros(18, dtype=int), coverage=0.9)  # 18 >= 9


def test_lac_threshold_and_sets_by_hand():
    rng = np.random.default_rng(1)
    probabilities = softmax(rng.normal(size=(19, 3)))
    targets = rng.integers(0, 3, size=19)
    predictor = ConformalPredictor.fit(probabilities, targets, coverage=0.9, method="lac")
    # ceil(20 * 0.9) = 18: the 18th smallest of the 19 scores 1 - p_y.
    scores = sorted(1.0 - probabilities[i][targets[i]] for i in range(19))
    assert predictor.threshold == scores[17]
    assert (predictor.n_calibration, predictor.num_classes, predictor.method) == (19, 3, "lac")
    # Sets {k : 1 - p_k <= q_hat}; a flat row can have no class above 1 - q_hat: an empty set.
    threshold = predictor.threshold
    test = np.array([[1.0 - threshold + 1e-9, threshold - 1e-9, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    sets = predictor.predict_sets(test)
    for row, chosen in zip(test, sets, strict=True):
        assert chosen.tolist() == [1.0 - p <= threshold for p in row]
    if threshold < 2 / 3:
        assert not sets[1].any()


def test_aps_scores_sets_and_ties_by_hand():
    # q_hat from three hand-scored rows at coverage 0.5 (rank ceil(4 * 0.5) = 2: the second smallest score).
    probabilities = np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [0.6, 0.3, 0.1]])
    targets = np.array([1, 0, 2])
    # Scores: 0.5 + 0.3 = 0.8; tied 0.4 + 0.4 = 0.8 (the tie counts as one rank); all three = 1.0.
    predictor = ConformalPredictor.fit(probabilities, targets, coverage=0.5, method="aps")
    assert predictor.threshold == pytest.approx(0.8)
    sets = predictor.predict_sets(
        np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [0.85, 0.1, 0.05], [0.3, 0.3, 0.4]])
    ).tolist()
    assert sets[0] == [True, True, False]  # 0.5 < 0.8, add 0.3: 0.8 reaches q_hat, stop
    assert sets[1] == [True, True, False]  # the tie enters together
    assert sets[2] == [True, False, False]  # 0.85 already crosses 0.8: the crossing class only
    assert sets[3] == [True, True, True]  # 0.4 < 0.8: the tied pair crosses, both in
    for method in ("lac", "aps"):
        chosen = ConformalPredictor(method, 0.9, 0.5, 10, 3).predict_sets(np.array([[1 / 3, 1 / 3, 1 / 3]]))
        assert chosen.sum() == (0 if method == "lac" else 3)  # LAC: empty; APS: never empty


def test_aps_matches_literal_loops_with_ties():
    rng = np.random.default_rng(2)
    # Rounded Dirichlet rows (then renormalised) so that ties are common.
    raw = np.round(rng.dirichlet(np.ones(5), size=300), 1) + 0.02
    probabilities = raw / raw.sum(axis=1, keepdims=True)
    targets = rng.integers(0, 5, size=300)
    predictor = ConformalPredictor.fit(probabilities[:200], targets[:200], coverage=0.8, method="aps")
    scores = sorted(loop_aps_score(probabilities[i].tolist(), targets[i]) for i in range(200))
    assert predictor.threshold == pytest.approx(scores[math.ceil(201 * 0.8) - 1], abs=1e-12)
    sets = predictor.predict_sets(probabilities[200:])
    for row, chosen in zip(probabilities[200:], sets, strict=True):
        assert set(np.flatnonzero(chosen).tolist()) == loop_aps_set(row.tolist(), predictor.threshold)


def draws(rng, n_draws, n, num_classes=4):
    """Independent synthetic (probabilities, labels): softmax scores, labels from a softer softmax (a model that is
    informative but miscalibrated); continuous scores, so no ties."""
    logits = rng.normal(0, 1.5, size=(n_draws, n, num_classes))
    labels_from = np.cumsum(softmax(logits / 1.5), axis=-1)
    labels = (rng.random((n_draws, n, 1)) > labels_from).sum(axis=-1)
    return softmax(logits), labels


@pytest.mark.parametrize(("method", "randomized"), [("lac", False), ("aps", False), ("aps", True)])
def test_coverage_guarantee_over_many_draws(method, randomized):
    coverage, n_cal, n_test, n_draws = 0.9, 100, 100, 2000
    rng = np.random.default_rng(3)
    probabilities, labels = draws(rng, n_draws, n_cal + n_test)
    observed = np.empty(n_draws)
    for d in range(n_draws):
        predictor = ConformalPredictor.fit(
            probabilities[d, :n_cal], labels[d, :n_cal], coverage, method, randomized=randomized, seed=d
        )
        sets = predictor.predict_sets(probabilities[d, n_cal:], seed=n_draws + d)
        observed[d] = sets[np.arange(n_test), labels[d, n_cal:]].mean()
    mean = observed.mean()
    # Per-draw sd ~0.04 -> the mean's standard error ~0.001; 0.004 is four of them. Using ceil(n(1-alpha))
    # instead of ceil((n+1)(1-alpha)) would shift the mean by 1/(n+1) ~ 0.01 and fail.
    tolerance = 0.004
    assert mean >= coverage - tolerance
    if method == "lac" or randomized:
        assert mean <= coverage + 1 / (n_cal + 1) + tolerance
    else:
        assert mean > coverage + 1 / (n_cal + 1)  # non-randomized APS over-covers on these draws


def test_report_against_loops_and_an_absent_class():
    rng = np.random.default_rng(4)
    probabilities = softmax(rng.normal(0, 2, size=(300, 3)))
    targets = rng.integers(0, 3, size=300)
    predictor = ConformalPredictor.fit(
        probabilities[:150], targets[:150], 0.8, class_names=["no DR", "mild", "severe"]
    )
    test_p, test_y = probabilities[150:], targets[150:].copy()
    test_y[test_y == 2] = 0  # "severe" absent from the test split
    report = conformal_report(predictor, test_p, test_y)
    sets = [[k for k in range(3) if 1 - row[k] <= predictor.threshold] for row in test_p.tolist()]
    hits = [y in s for y, s in zip(test_y.tolist(), sets, strict=True)]
    assert report["coverage"] == pytest.approx(sum(hits) / 150)
    assert report["mean_set_size"] == pytest.approx(sum(len(s) for s in sets) / 150)
    assert report["empty_fraction"] == pytest.approx(sum(len(s) == 0 for s in sets) / 150)
    assert report["set_size_counts"] == [sum(len(s) == size for s in sets) for size in range(4)]
    assert report["set_size_distribution"] == pytest.approx([c / 150 for c in report["set_size_counts"]])
    mild = [h for h, y in zip(hits, test_y.tolist(), strict=True) if y == 1]
    assert report["coverage_per_class"]["mild"] == pytest.approx(sum(mild) / len(mild))
    assert math.isnan(report["coverage_per_class"]["severe"])
    assert "no test samples" in report["undefined"]["severe"]
    assert set(report["undefined"]) == {"severe"}
    assert (report["target_coverage"], report["n_test"], report["n_calibration"]) == (0.8, 150, 150)


def test_json_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    probabilities = softmax(rng.normal(size=(50, 4)))
    targets = rng.integers(0, 4, size=50)
    predictor = ConformalPredictor.fit(probabilities, targets, 0.9, "aps", randomized=True, seed=3)
    path = predictor.save(tmp_path / "conformal.json")
    loaded = ConformalPredictor.load(path)
    assert loaded == predictor
    assert ConformalPredictor.from_json(predictor.to_json()) == predictor
    np.testing.assert_array_equal(
        loaded.predict_sets(probabilities, seed=1), predictor.predict_sets(probabilities, seed=1)
    )
    with pytest.raises(ValueError, match="format"):
        ConformalPredictor.from_json({"method": "lac"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(coverage=0.0), "coverage"),
        (dict(coverage=1.0), "coverage"),
        (dict(coverage=90), "coverage"),
        (dict(method="raps"), "method"),
        (dict(method="lac", randomized=True), "randomized"),
        (dict(cal_probabilities=np.full((30, 3), 0.5)), "cal_probabilities: each row must sum to 1"),
        (
            dict(cal_probabilities=np.full((30, 3), 1 / 3)[:29]),
            "targets / cal_probabilities: shapes disagree",
        ),
        (dict(cal_targets=np.eye(3)[np.zeros(30, dtype=int)]), "single-label"),
    ],
)
def test_fit_errors_name_the_argument(kwargs, message):
    arguments = dict(
        cal_probabilities=np.full((30, 3), 1 / 3), cal_targets=np.zeros(30, dtype=int), coverage=0.9
    )
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ConformalPredictor.fit(**arguments)


def test_predict_errors():
    predictor = ConformalPredictor("lac", 0.9, 0.5, 10, 3)
    with pytest.raises(ValueError, match="probabilities: 4 columns"):
        predictor.predict_sets(np.full((2, 4), 0.25))
    with pytest.raises(ValueError, match="probabilities: values must be probabilities"):
        predictor.predict_sets(np.array([[2.0, -0.5, -0.5]]))
    with pytest.raises(ValueError, match="class_names"):
        ConformalPredictor("lac", 0.9, 0.5, 10, 3, class_names=["a", "b"])
