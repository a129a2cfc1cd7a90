"""Patient-grouped percentile bootstrap (`retvlp.evaluation.bootstrap`) against a literal loop bootstrap."""

import math
import time
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from retvlp.evaluation.bootstrap import Interval, bootstrap_ci, bootstrap_cis, grouped_resample_indices


def auc(targets, probabilities):
    """ROC-AUC as the Mann-Whitney pair count (sklearn's roc_auc_score is ~2 ms a call; this is checked against
    it below). ValueError with one class present, as a metric undefined on a resample does."""
    scores = probabilities[:, 1]
    positive, negative = scores[targets == 1], scores[targets == 0]
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("only one class present")
    difference = positive[:, None] - negative[None, :]
    return float(np.mean((difference > 0) + 0.5 * (difference == 0)))


def accuracy(targets, probabilities):
    return float(np.mean(probabilities.argmax(axis=1) == targets))


def loop_bootstrap(metric_fn, targets, probabilities, groups, n_resamples, seed):
    """The textbook cluster bootstrap, written out: draw the sorted unique patients with replacement (one
    rng.integers call per resample), stack each drawn patient's rows, skip resamples the metric is undefined on."""
    rng = np.random.default_rng(seed)
    patients = sorted(set(groups.tolist()))
    rows_of = {patient: [i for i in range(len(groups)) if groups[i] == patient] for patient in patients}
    values, skipped = [], 0
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(patients), size=len(patients))
        idx = [row for d in drawn for row in rows_of[patients[d]]]
        try:
            value = float(metric_fn(targets[idx], probabilities[idx]))
        except ValueError:
            skipped += 1
            continue
        if math.isnan(value):
            skipped += 1
            continue
        values.append(value)
    return values, skipped


def clustered_data(seed=0, n_patients=12, positive_patients=(3, 7)):
    """Patients with 1-4 images; only `positive_patients` have positive images, so some resamples hold no
    positive and ROC-AUC is undefined there."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(100, 100 + n_patients), rng.integers(1, 5, size=n_patients))
    rng.shuffle(groups)  # a patient's rows are not contiguous
    targets = np.isin(groups, [100 + p for p in positive_patients]).astype(int)
    p1 = np.clip(0.3 + 0.4 * targets + rng.normal(0, 0.2, size=len(groups)), 0.01, 0.99)
    return targets, np.stack([1 - p1, p1], axis=1), groups


def test_matches_literal_loop_bootstrap_and_counts_undefined_resamples():
    targets, probabilities, groups = clustered_data()
    assert auc(targets, probabilities) == pytest.approx(
        roc_auc_score(targets, probabilities[:, 1]), abs=1e-12
    )
    interval = bootstrap_ci(auc, targets, probabilities, groups, n_resamples=300, confidence=0.9, seed=5)
    values, skipped = loop_bootstrap(auc, targets, probabilities, groups, 300, 5)
    assert 0 < skipped < 150  # the data were built to make some resamples undefined
    assert interval.skipped == skipped
    low, high = np.percentile(values, [5.0, 95.0])
    assert interval.low == pytest.approx(low, abs=1e-12)
    assert interval.high == pytest.approx(high, abs=1e-12)
    assert interval.estimate == pytest.approx(roc_auc_score(targets, probabilities[:, 1]), abs=1e-12)
    assert interval.low <= interval.estimate <= interval.high
    assert (interval.confidence, interval.n_resamples, interval.reason) == (0.9, 300, None)


def test_nan_returning_metric_is_skipped_like_an_error():
    targets, probabilities, groups = clustered_data(seed=1)

    def auc_or_nan(t, p):
        return float("nan") if t.min() == t.max() else auc(t, p)

    interval = bootstrap_ci(auc_or_nan, targets, probabilities, groups, n_resamples=200, seed=2)
    values, skipped = loop_bootstrap(auc_or_nan, targets, probabilities, groups, 200, 2)
    assert interval.skipped == skipped > 0
    assert (interval.low, interval.high) == pytest.approx(
        tuple(np.percentile(values, [2.5, 97.5])), abs=1e-12
    )


def test_sklearn_nan_with_warning_is_skipped_silently():
    # scikit-learn >= 1.8 returns NaN with an UndefinedMetricWarning (older versions raise ValueError).
    targets, probabilities, groups = clustered_data()

    def sklearn_auc(t, p):
        return roc_auc_score(t, p[:, 1])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        interval = bootstrap_ci(sklearn_auc, targets, probabilities, groups, n_resamples=40, seed=5)
    values, skipped = loop_bootstrap(auc, targets, probabilities, groups, 40, 5)
    assert not caught
    assert interval.skipped == skipped > 0
    assert interval.low == pytest.approx(np.percentile(values, 2.5), abs=1e-12)


def test_many_metrics_share_the_resamples():
    targets, probabilities, groups = clustered_data(seed=3)
    intervals = bootstrap_cis(
        {"auc": auc, "accuracy": accuracy}, targets, probabilities, groups, n_resamples=200, seed=11
    )
    for name, fn in (("auc", auc), ("accuracy", accuracy)):
        values, skipped = loop_bootstrap(fn, targets, probabilities, groups, 200, 11)
        assert intervals[name].skipped == skipped
        assert intervals[name].low == pytest.approx(np.percentile(values, 2.5), abs=1e-12)
        assert intervals[name].high == pytest.approx(np.percentile(values, 97.5), abs=1e-12)


def test_resample_indices_are_whole_patients():
    groups = np.array(["b", "a", "b", "c", "a", "b"])
    for idx in grouped_resample_indices(groups, 50, seed=0):
        drawn = groups[idx]
        for patient in set(drawn.tolist()):
            # A patient drawn m times contributes each of its rows exactly m times.
            own_rows = np.flatnonzero(groups == patient)
            multiplicity = {int(np.sum(idx == row)) for row in own_rows}
            assert len(multiplicity) == 1 and multiplicity.pop() >= 1
        assert len(set(drawn.tolist())) <= 3


def test_grouping_widens_the_interval_for_correlated_rows():
    # 60 patients x 10 near-identical images: the information is that of 60 rows, not 600.
    rng = np.random.default_rng(0)
    n_patients, per_patient = 60, 10
    groups = np.repeat(np.arange(n_patients), per_patient)
    patient_label = rng.integers(0, 2, size=n_patients)
    patient_correct = rng.random(n_patients) < 0.7
    targets = patient_label[groups]
    predicted = np.where(patient_correct, patient_label, 1 - patient_label)[groups]
    p1 = np.where(predicted == 1, 0.8, 0.2) + rng.normal(0, 0.01, size=len(groups))
    probabilities = np.stack([1 - p1, p1], axis=1)
    grouped = bootstrap_ci(accuracy, targets, probabilities, groups, n_resamples=400, seed=0)
    rows = bootstrap_ci(accuracy, targets, probabilities, None, n_resamples=400, seed=0)
    grouped_width, row_width = grouped.high - grouped.low, rows.high - rows.low
    assert grouped.estimate == rows.estimate
    # Expected ratio about sqrt(10) = 3.2.
    assert grouped_width > 2.0 * row_width


def test_more_than_half_undefined_gives_nan_with_reason():
    # The metric needs two particular patients' rows (ids 0 and 1), each drawn with probability ~0.64 per resample.
    targets = np.arange(40)  # the row ids, so that the metric can see which rows a resample holds
    probabilities = np.zeros((40, 2))
    groups = np.arange(40) // 2
    groups[1] = 39  # rows 0 and 1 in different patients (0 and 39)

    def needs_rows_0_and_1(t, p):
        if not (np.any(t == 0) and np.any(t == 1)):
            raise ValueError("a required row is missing")
        return 1.0

    interval = bootstrap_ci(needs_rows_0_and_1, targets, probabilities, groups, n_resamples=200, seed=0)
    _, skipped = loop_bootstrap(needs_rows_0_and_1, targets, probabilities, groups, 200, 0)
    assert interval.skipped == skipped > 100
    assert math.isnan(interval.low) and math.isnan(interval.high)
    assert interval.estimate == 1.0
    assert "more than half" in interval.reason and "a required row is missing" in interval.reason


def test_off_and_formatting_and_json():
    targets, probabilities, groups = clustered_data()
    assert bootstrap_ci(auc, targets, probabilities, groups, n_resamples=0) is None
    assert bootstrap_cis({"auc": auc}, targets, probabilities, groups, n_resamples=0) is None
    interval = Interval(
        estimate=0.8734, low=0.85123, high=0.8941, confidence=0.95, n_resamples=1000, skipped=3
    )
    assert str(interval) == "0.873 [0.851, 0.894]"
    assert f"{interval}" == "0.873 [0.851, 0.894]"
    assert f"{interval:.2f}" == "0.87 [0.85, 0.89]"
    assert Interval.from_json(interval.to_json()) == interval
    nan = Interval(float("nan"), float("nan"), float("nan"), 0.95, 10, 9, "why")
    assert str(nan) == "nan [nan, nan]"
    with pytest.raises(ValueError, match="missing key"):
        Interval.from_json({"estimate": 1.0})


def test_thousand_resamples_of_six_metrics_take_seconds():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, size=1000)
    p1 = rng.random(1000)
    probabilities = np.stack([1 - p1, p1], axis=1)
    groups = rng.integers(0, 400, size=1000)
    metrics = {f"m{i}": (lambda t, p, i=i: float(np.mean((p[:, 1] > 0.1 * i) == t))) for i in range(6)}
    start = time.perf_counter()
    intervals = bootstrap_cis(metrics, targets, probabilities, groups, n_resamples=1000)
    assert time.perf_counter() - start < 10.0  # ~0.5 s measured; generous for a loaded machine
    assert all(iv.skipped == 0 for iv in intervals.values())


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        (dict(groups=np.arange(5)), "groups"),
        (dict(probabilities=np.zeros((7, 2))), "targets / probabilities"),
        (dict(confidence=1.0), "confidence"),
        (dict(confidence=0.0), "confidence"),
        (dict(n_resamples=-1), "n_resamples"),
        (dict(n_resamples=2.5), "n_resamples"),
    ],
)
def test_errors_name_the_argument(kwargs, argument):
    arguments = dict(
        targets=np.zeros(6, dtype=int),
        probabilities=np.full((6, 2), 0.5),
        groups=np.arange(6),
        n_resamples=10,
    )
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        bootstrap_ci(
            accuracy,
            arguments.pop("targets"),
            arguments.pop("probabilities"),
            arguments.pop("groups"),
            **arguments,
        )


def test_empty_metric_dict_is_refused():
    with pytest.raises(ValueError, match="metrics"):
        bootstrap_cis({}, np.zeros(3), np.zeros((3, 2)), None, n_resamples=5)
