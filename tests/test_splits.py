"""Sampling layer of the evaluation suite: group-aware stratified splits, nested label fractions, few-shot."""

import math

import numpy as np
import pytest

from retvlp.evaluation.splits import (
    describe_subsets,
    few_shot_indices,
    group_strata,
    group_stratified_split,
    nested_label_fractions,
    stratum_of,
)

SEEDS = range(20)
FRACTIONS = (0.01, 0.1, 0.5, 1.0)
PATIENT_CLASSES = [0] * 24 + [1] * 15 + [2] * 10 + [3] * 7 + [4] * 4  # 60 patients, 5 imbalanced classes


def make_single_label(seed=0, sizes=None, noise=0.15):
    """~270 images of 60 patients with 1-8 images each; each image carries its patient's class, except a
    `noise` share relabelled at random. Sample order is shuffled so groups are not contiguous."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, len(PATIENT_CLASSES)) if sizes is None else np.asarray(sizes)
    groups = np.repeat([f"P{p:03d}" for p in range(len(PATIENT_CLASSES))], sizes)
    targets = np.repeat(PATIENT_CLASSES, sizes).astype(np.int64)
    flip = rng.random(len(targets)) < noise
    targets[flip] = rng.integers(0, 5, flip.sum())
    order = rng.permutation(len(targets))
    return targets[order], groups[order]


def make_multi_label(seed=0):
    """Same patients as above as a (N, 5) 0/1 array: the patient's label is positive with probability 0.9,
    every other label with 0.1; the last 6 patients are mostly unlabelled (all-zero rows)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, len(PATIENT_CLASSES))
    groups = np.repeat(np.arange(len(PATIENT_CLASSES)), sizes)
    main = np.repeat(PATIENT_CLASSES, sizes)
    targets = (rng.random((len(main), 5)) < 0.1).astype(np.int64)
    targets[np.arange(len(main)), main] = rng.random(len(main)) < 0.9
    targets[groups >= 54] = rng.random((int((groups >= 54).sum()), 5)) < 0.03
    return targets, groups


def expected_test_groups(n, test_fraction):
    """Documented per-stratum rule: round half up, at least 1 and at most n - 1 when n >= 2, else 0."""
    return 0 if n < 2 else min(max(math.floor(test_fraction * n + 0.5), 1), n - 1)


def groups_of(indices, groups):
    return set(np.asarray(groups)[indices].tolist())


# ------------------------------------------------------------------------------------------------------------
# strata


def test_stratum_of_single_label_is_class_id():
    targets = np.array([3, 0, 2, 2])
    assert stratum_of(targets).tolist() == [3, 0, 2, 2]
    assert stratum_of(targets).dtype == np.int64


def test_stratum_of_multi_label_is_rarest_positive_or_no_label():
    targets = np.array(
        [
            [1, 1, 0],  # label 0 appears 4x, label 1 2x -> 1
            [1, 0, 0],  # -> 0
            [1, 1, 1],  # label 2 (1x) is rarest -> 2
            [0, 0, 0],  # no label -> C = 3
            [1, 0, 0],
        ]
    )
    assert stratum_of(targets).tolist() == [1, 0, 2, 3, 0]
    # ties between equally frequent labels go to the smaller label index
    assert stratum_of(np.array([[1, 1], [1, 1]])).tolist() == [0, 0]


def test_stratum_of_rejects_bad_targets():
    with pytest.raises(ValueError, match="integer"):
        stratum_of(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        stratum_of(np.array([0, -1]))
    with pytest.raises(ValueError, match="0/1"):
        stratum_of(np.array([[0, 2], [1, 0]]))
    with pytest.raises(ValueError, match="shape"):
        stratum_of(np.zeros((2, 2, 2), dtype=int))


def test_group_strata_majority_with_ties_to_smallest():
    targets = np.array([2, 2, 1, 4, 3, 3, 4, 0])
    groups = np.array(["b", "b", "b", "a", "a", "a", "a", "c"])
    unique, group_stratum = group_strata(targets, groups)
    assert unique.tolist() == ["a", "b", "c"]
    assert group_stratum.tolist() == [3, 2, 0]  # "a": 3 and 4 tie twice -> 3


def test_group_strata_accepts_unorderable_ids():
    unique, group_stratum = group_strata(np.array([0, 1, 1]), np.array(["x", 7, 7], dtype=object))
    assert unique.tolist() == ["x", 7]
    assert group_stratum.tolist() == [0, 1]


# ------------------------------------------------------------------------------------------------------------
# train/test split


@pytest.mark.parametrize("make", [make_single_label, make_multi_label])
def test_split_never_puts_a_group_on_both_sides(make):
    targets, groups = make(0)
    for seed in SEEDS:
        train, test = group_stratified_split(targets, groups, 0.2, seed=seed)
        assert train.dtype == np.int64 and test.dtype == np.int64
        assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
        assert len(train) + len(test) == len(targets)
        assert np.union1d(train, test).tolist() == list(range(len(targets)))
        assert not groups_of(train, groups) & groups_of(test, groups)


@pytest.mark.parametrize("make", [make_single_label, make_multi_label])
@pytest.mark.parametrize("test_fraction", [0.2, 0.5])
def test_split_is_stratified_exactly_in_groups(make, test_fraction):
    """Per group-stratum, the number of test groups follows the documented rounding rule exactly."""
    targets, groups = make(1)
    unique, group_stratum = group_strata(targets, groups)
    for seed in range(5):
        _, test = group_stratified_split(targets, groups, test_fraction, seed=seed)
        in_test = np.isin(unique, list(groups_of(test, groups)))
        for s in np.unique(group_stratum):
            n = int((group_stratum == s).sum())
            assert int(in_test[group_stratum == s].sum()) == expected_test_groups(n, test_fraction)


def test_split_per_class_image_share_with_equal_group_sizes():
    """With 3 images per patient and no label noise the image share of each class equals its group share,
    which differs from test_fraction only by rounding: |round(f n) / n - f| <= 0.5 / n (the at-least-1
    clamp does not bind for n >= 3 at f = 0.2)."""
    targets, groups = make_single_label(0, sizes=np.full(len(PATIENT_CLASSES), 3), noise=0.0)
    for seed in SEEDS:
        _, test = group_stratified_split(targets, groups, 0.2, seed=seed)
        for c in range(5):
            n_groups = PATIENT_CLASSES.count(c)
            share = np.isin(np.flatnonzero(targets == c), test).mean()
            assert abs(share - 0.2) <= 0.5 / n_groups + 1e-12


def test_split_per_class_image_share_on_average_with_unequal_groups():
    """With unequal group sizes a single split's per-class image share is noisy, but every group of a
    stratum is equally likely to be drawn, so its expectation is the group share k / n. The per-split spread
    is 0.04-0.18 (largest for class 4, 4 patients), so the mean over 200 seeds has a standard error of at
    most ~0.013; 0.05 is ~4 standard errors. (The seeds are fixed, so the test is deterministic.)"""
    targets, groups = make_single_label(2, noise=0.0)
    shares = {c: [] for c in range(5)}
    for seed in range(200):
        _, test = group_stratified_split(targets, groups, 0.2, seed=seed)
        for c in range(5):
            shares[c].append(np.isin(np.flatnonzero(targets == c), test).mean())
    for c in range(5):
        n = PATIENT_CLASSES.count(c)
        assert abs(np.mean(shares[c]) - expected_test_groups(n, 0.2) / n) < 0.05


def test_split_is_deterministic_and_seed_dependent():
    targets, groups = make_single_label(0)
    a = group_stratified_split(targets, groups, seed=3)
    b = group_stratified_split(targets, groups, seed=3)
    c = group_stratified_split(targets, groups, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_split_keeps_single_group_strata_in_train():
    targets = np.array([0, 0, 0, 0, 1, 1])
    groups = np.array([1, 2, 3, 4, 5, 5])  # class 1 has one patient
    for seed in range(5):
        train, test = group_stratified_split(targets, groups, 0.5, seed=seed)
        assert {4, 5} <= set(train.tolist())
        assert len(test) == 2


def test_split_errors():
    targets, groups = make_single_label(0)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="test_fraction"):
            group_stratified_split(targets, groups, bad)
    with pytest.raises(ValueError, match=rf"{len(targets)}.*{len(targets) - 1}"):
        group_stratified_split(targets, groups[:-1])
    with pytest.raises(ValueError, match="test side would be empty"):
        group_stratified_split(np.array([0, 0, 1]), np.array(["a", "a", "b"]))
    with pytest.raises(ValueError, match="seed"):
        group_stratified_split(targets, groups, seed=-1)


# ------------------------------------------------------------------------------------------------------------
# nested label fractions


@pytest.mark.parametrize("make", [make_single_label, make_multi_label])
def test_fractions_nested_stratified_group_aware_subsets_of_the_pool(make):
    targets, groups = make(0)
    train, _ = group_stratified_split(targets, groups, 0.2, seed=0)
    pool_targets, pool_groups = targets[train], groups[train]
    unique, group_stratum = group_strata(pool_targets, pool_groups)
    strata = np.unique(group_stratum)
    for seed in SEEDS:
        subsets = nested_label_fractions(pool_targets, pool_groups, FRACTIONS, seed=seed)
        assert list(subsets) == list(FRACTIONS)
        assert np.array_equal(subsets[1.0], np.arange(len(train)))
        for small, large in zip(FRACTIONS[:-1], FRACTIONS[1:], strict=True):
            assert np.isin(subsets[small], subsets[large]).all()
        for f, subset in subsets.items():
            assert subset.dtype == np.int64 and np.all(np.diff(subset) > 0)
            assert set(train[subset].tolist()) <= set(train.tolist())  # inside the given pool
            chosen = groups_of(subset, pool_groups)
            whole = np.isin(pool_groups, list(chosen))
            assert np.array_equal(np.flatnonzero(whole), subset)  # whole groups only
            in_subset = np.isin(unique, list(chosen))
            for s in strata:
                n = int((group_stratum == s).sum())
                k = min(n, max(1, math.ceil(f * n - 1e-9)))
                assert int(in_subset[group_stratum == s].sum()) == k
        # every stratum (every class of a single-label pool) is present in the smallest fraction
        assert set(stratum_of(pool_targets)[subsets[0.01]].tolist()) >= set(strata.tolist())


def test_every_class_present_in_smallest_fraction():
    targets, groups = make_single_label(0)
    assert set(group_strata(targets, groups)[1].tolist()) == set(range(5))  # fixture precondition
    for seed in SEEDS:
        subsets = nested_label_fractions(targets, groups, (0.01,), seed=seed)
        assert set(targets[subsets[0.01]].tolist()) == set(range(5))


def test_fractions_are_counted_in_groups_not_images():
    targets, groups = make_single_label(0, sizes=np.full(len(PATIENT_CLASSES), 2), noise=0.0)
    subset = nested_label_fractions(targets, groups, (0.5,), seed=0, min_per_class=0)[0.5]
    # ceil(0.5 n) groups per class: 12 + 8 + 5 + 4 + 2 = 31 patients of 2 images
    assert len(subset) == 62


def test_fractions_any_order_and_determinism():
    targets, groups = make_single_label(0)
    forward = nested_label_fractions(targets, groups, (0.1, 0.5, 1.0), seed=7)
    backward = nested_label_fractions(targets, groups, [1.0, 0.5, 0.1, 0.5], seed=7)
    assert list(forward) == list(backward) == [0.1, 0.5, 1.0]
    assert all(np.array_equal(forward[f], backward[f]) for f in forward)
    other = nested_label_fractions(targets, groups, (0.1, 0.5, 1.0), seed=8)
    assert not np.array_equal(forward[0.5], other[0.5])


def test_min_per_class_raises_the_floor():
    targets, groups = make_single_label(0)
    unique, group_stratum = group_strata(targets, groups)
    subset = nested_label_fractions(targets, groups, (0.01,), seed=0, min_per_class=3)[0.01]
    chosen = np.isin(unique, list(groups_of(subset, groups)))
    for s in np.unique(group_stratum):
        n = int((group_stratum == s).sum())
        assert int(chosen[group_stratum == s].sum()) == min(n, 3)


def test_fraction_errors():
    targets, groups = make_single_label(0)
    for bad in [(0.0,), (1.5,), (float("nan"),), (), ("half",), 0.5]:
        with pytest.raises(ValueError, match="fraction"):
            nested_label_fractions(targets, groups, bad)
    with pytest.raises(ValueError, match="min_per_class"):
        nested_label_fractions(targets, groups, min_per_class=-1)
    with pytest.raises(ValueError, match="lengths"):
        nested_label_fractions(targets[:-2], groups)


def test_describe_subsets_reports_achieved_counts():
    targets, groups = make_single_label(0)
    subsets = nested_label_fractions(targets, groups, (0.1, 1.0), seed=0)
    summary = describe_subsets(subsets, targets, groups)
    assert summary[1.0].n_images == len(targets) and summary[1.0].image_fraction == 1.0
    assert summary[1.0].n_groups == 60
    assert summary[1.0].per_class == {c: int((targets == c).sum()) for c in range(5)}
    small = summary[0.1]
    assert small.n_images == len(subsets[0.1]) == sum(small.per_class.values())
    assert 0 < small.image_fraction < 1
    multi, multi_groups = make_multi_label(0)
    multi_summary = describe_subsets(nested_label_fractions(multi, multi_groups, (1.0,)), multi)
    assert multi_summary[1.0].per_class == {c: int(multi[:, c].sum()) for c in range(5)}
    assert multi_summary[1.0].n_groups is None


# ------------------------------------------------------------------------------------------------------------
# few-shot


@pytest.mark.parametrize("shots", [1, 4, 10])
def test_few_shot_exact_counts_and_distinct_groups(shots):
    targets, groups = make_single_label(0)
    for seed in SEEDS:
        chosen = few_shot_indices(targets, shots, seed=seed, groups=groups)
        assert chosen.dtype == np.int64 and np.all(np.diff(chosen) > 0)
        for c in range(5):
            picked = chosen[targets[chosen] == c]
            assert len(picked) == shots
            available = set(groups[targets == c].tolist())
            picked_groups = groups[picked].tolist()
            if shots <= len(available):
                assert len(set(picked_groups)) == shots  # one image per group
            else:
                assert set(picked_groups) == available  # every group used before any repeats


def test_few_shot_round_robin_over_groups_when_shots_exceed_groups():
    # class 0: groups a (5 images) and b (1 image); class 1: three groups of 3 images
    targets = np.array([0] * 6 + [1] * 9)
    groups = np.array(list("aaaaab") + list("cccdddeee"))
    for seed in SEEDS:
        three = few_shot_indices(targets, 3, seed=seed, groups=groups)
        assert groups[three[targets[three] == 0]].tolist().count("b") == 1
        five = few_shot_indices(targets, 5, seed=seed, groups=groups)
        assert len(five) == 10
        _, per_group = np.unique(groups[five[targets[five] == 1]], return_counts=True)
        # a second image of a group only after every group of the class gave one
        assert sorted(per_group.tolist()) == [1, 2, 2]


def test_few_shot_without_groups_and_determinism():
    targets, groups = make_single_label(0)
    a = few_shot_indices(targets, 5, seed=1)
    assert np.bincount(targets[a]).tolist() == [5] * 5
    assert np.array_equal(a, few_shot_indices(targets, 5, seed=1))
    assert not np.array_equal(a, few_shot_indices(targets, 5, seed=2))
    b = few_shot_indices(targets, 5, seed=1, groups=groups)
    assert np.array_equal(b, few_shot_indices(targets, 5, seed=1, groups=groups))
    assert not np.array_equal(b, few_shot_indices(targets, 5, seed=2, groups=groups))


def test_few_shot_errors():
    targets, groups = make_single_label(0)
    multi, _ = make_multi_label(0)
    with pytest.raises(ValueError, match="single-label"):
        few_shot_indices(multi, 1)
    n4 = int((targets == 4).sum())
    with pytest.raises(ValueError, match=rf"class 4 has {n4}.*need {n4 + 1}"):
        few_shot_indices(targets, n4 + 1)
    with pytest.raises(ValueError, match="shots"):
        few_shot_indices(targets, 0)
    with pytest.raises(ValueError, match="lengths"):
        few_shot_indices(targets, 1, groups=groups[:5])


# ------------------------------------------------------------------------------------------------------------
# property-style: random datasets, every invariant at once


@pytest.mark.parametrize("seed", SEEDS)
def test_invariants_on_random_datasets(seed):
    rng = np.random.default_rng(1000 + seed)
    n_groups, n_classes = int(rng.integers(10, 80)), int(rng.integers(2, 7))
    sizes = rng.integers(1, 9, n_groups)
    group_class = rng.choice(n_classes, n_groups, p=rng.dirichlet(np.ones(n_classes)))
    group_class[:n_classes] = np.arange(n_classes)  # every class has a patient
    targets = np.repeat(group_class, sizes)
    groups = np.repeat(rng.permutation(10 * n_groups)[:n_groups], sizes)
    order = rng.permutation(len(targets))
    targets, groups = targets[order], groups[order]
    test_fraction = float(rng.uniform(0.1, 0.5))

    _, group_stratum = group_strata(targets, groups)
    if np.bincount(group_stratum).max() < 2:
        with pytest.raises(ValueError, match="empty"):
            group_stratified_split(targets, groups, test_fraction, seed=seed)
        return
    train, test = group_stratified_split(targets, groups, test_fraction, seed=seed)
    assert not groups_of(train, groups) & groups_of(test, groups)
    assert len(train) + len(test) == len(targets)

    pool_t, pool_g = targets[train], groups[train]
    subsets = nested_label_fractions(pool_t, pool_g, (1.0, 0.05, 0.3), seed=seed)
    assert np.array_equal(subsets[1.0], np.arange(len(train)))
    assert np.isin(subsets[0.05], subsets[0.3]).all() and np.isin(subsets[0.3], subsets[1.0]).all()
    assert set(pool_t[subsets[0.05]].tolist()) >= set(group_strata(pool_t, pool_g)[1].tolist())

    shots = int(np.bincount(pool_t, minlength=n_classes)[np.unique(pool_t)].min())
    chosen = few_shot_indices(pool_t, shots, seed=seed, groups=pool_g)
    assert (np.bincount(pool_t[chosen])[np.unique(pool_t)] == shots).all()
    assert len(np.unique(chosen)) == len(chosen)
