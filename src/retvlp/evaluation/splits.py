"""Sampling layer of the evaluation suite: stratified, group-aware train/test splits, nested label-fraction
subsets and few-shot draws. Pure numpy.

Conventions shared by every function:

* ``targets`` is either ``(N,)`` non-negative integer class ids (single-label) or an ``(N, C)`` 0/1 array
  (multi-label).
* ``groups`` is ``(N,)`` hashable ids (patient ids). All samples of one group always land on the same side of
  a split and are taken or left out of a subset together.
* Returned indices are sorted ``int64`` positions into the ``N`` samples that were passed in.
* Every random function is deterministic given ``seed`` (a non-negative int). Each function draws from its
  own stream, ``np.random.SeedSequence([seed, <per-function constant>])``, so two functions called with the
  same seed do not share draws.

Stratification works on *group strata*: every sample gets a stratum (:func:`stratum_of`: its class, or for
multi-label data its rarest positive label), every group gets the most frequent stratum among its samples
(:func:`group_strata`), and sampling is done per group-stratum on whole groups.

Class ids are positions in a class list, so the strata (and with them every draw) would change when the same
classes are listed in another order. Callers that know the class names pass the targets through
:func:`order_free_targets` first: the draws then depend only on the rows, their labels, groups and the seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SubsetSummary",
    "describe_subsets",
    "few_shot_indices",
    "group_strata",
    "group_stratified_split",
    "nested_label_fractions",
    "order_free_targets",
    "stratum_of",
]

# Per-function stream constants: mixed into the seed so that functions never share random draws.
_SPLIT_STREAM = 0x5EED_0001
_FRACTIONS_STREAM = 0x5EED_0002
_FEW_SHOT_STREAM = 0x5EED_0003

# ceil(f * n) must not jump up because of binary floating point (0.1 * 30 == 3.0000000000000004).
_CEIL_SLACK = 1e-9


# --------------------------------------------------------------------------------------------------------------
# validation helpers


def _as_targets(targets) -> np.ndarray:
    """Validated targets: ``(N,)`` int64 class ids or ``(N, C)`` bool."""
    array = np.asarray(targets)
    if array.ndim == 1:
        if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"Single-label targets must be integer class ids, got dtype {array.dtype}; "
                "pass multi-label targets as an (N, C) 0/1 array."
            )
        if array.size and array.min() < 0:
            raise ValueError(f"Class ids must be non-negative, got {int(array.min())}.")
        return array.astype(np.int64, copy=False)
    if array.ndim == 2:
        if array.shape[1] == 0:
            raise ValueError("Multi-label targets need at least one label column, got shape (N, 0).")
        if array.dtype != bool:
            if not (np.issubdtype(array.dtype, np.number)) or not np.isin(array, (0, 1)).all():
                raise ValueError("Multi-label targets must be a 0/1 array of shape (N, C).")
        return array.astype(bool, copy=False)
    raise ValueError(
        f"targets must be (N,) class ids or an (N, C) 0/1 array, got an array of shape {array.shape}."
    )


def _as_groups(groups, n: int) -> np.ndarray:
    array = np.asarray(groups)
    if array.ndim != 1:
        raise ValueError(f"groups must be a 1-D array of ids, got shape {array.shape}.")
    if len(array) != n:
        raise ValueError(
            f"targets and groups have different lengths: len(targets)={n}, len(groups)={len(array)}."
        )
    return array


def _group_codes(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique group ids, code of each sample's group into them). Sorted when the ids are orderable,
    otherwise in order of first appearance (e.g. a mix of strings and ints)."""
    try:
        unique, codes = np.unique(groups, return_inverse=True)
        return unique, codes.reshape(-1).astype(np.int64)
    except TypeError:
        index: dict = {}
        codes = np.fromiter((index.setdefault(g, len(index)) for g in groups.tolist()), np.int64, len(groups))
        unique = np.empty(len(index), dtype=object)
        unique[:] = list(index)
        return unique, codes


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    return int(seed)


def _rng(seed, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_check_seed(seed), stream]))


# --------------------------------------------------------------------------------------------------------------
# strata


def stratum_of(targets) -> np.ndarray:
    """Stratification key of each sample, ``(N,)`` int64.

    Single-label: the class id. Multi-label ``(N, C)``: the sample's rarest positive label, rarity measured by
    the label's number of positive samples in ``targets`` (ties go to the smaller label index); rows with no
    positive label share the dedicated stratum ``C``.
    """
    targets = _as_targets(targets)
    if targets.ndim == 1:
        return targets.copy()
    n_labels = targets.shape[1]
    frequency = targets.sum(axis=0).astype(np.float64)
    masked = np.where(targets, frequency[None, :], np.inf)
    strata = masked.argmin(axis=1).astype(np.int64)  # argmin picks the first (smallest) label on ties
    strata[~targets.any(axis=1)] = n_labels
    return strata


def order_free_targets(targets, class_names) -> np.ndarray:
    """``targets`` recoded so that class ids follow the class NAMES sorted as strings, not the order of
    ``class_names``: ``(N,)`` ids are renumbered, ``(N, C)`` multi-hot columns are permuted.

    Feed the result (only) to the sampling functions: two class orders of the same rows then give the same
    strata and hence identical splits, label fractions and few-shot draws. Keep the original targets for
    training and scoring.
    """
    names = [str(name) for name in class_names]
    targets = _as_targets(targets)
    width = targets.shape[1] if targets.ndim == 2 else (int(targets.max()) + 1 if len(targets) else 0)
    if width > len(names) or (targets.ndim == 2 and width != len(names)):
        raise ValueError(f"targets need {width} classes but {len(names)} class names were given ({names}).")
    order = sorted(range(len(names)), key=names.__getitem__)  # canonical position -> original class id
    if targets.ndim == 2:
        return targets[:, order]
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    return rank[targets]


def _group_strata_codes(targets, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    strata = stratum_of(targets)
    groups = _as_groups(groups, len(strata))
    unique, codes = _group_codes(groups)
    if len(strata) == 0:
        return unique, np.zeros(0, np.int64), codes
    # Count (group, stratum) pairs, then per group keep the largest count, smallest stratum on ties.
    pairs, counts = np.unique(np.stack([codes, strata], axis=1), axis=0, return_counts=True)
    order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))
    pairs = pairs[order]
    first = np.ones(len(pairs), dtype=bool)
    first[1:] = pairs[1:, 0] != pairs[:-1, 0]
    group_stratum = np.empty(len(unique), dtype=np.int64)
    group_stratum[pairs[first, 0]] = pairs[first, 1]
    return unique, group_stratum, codes


def group_strata(targets, groups) -> tuple[np.ndarray, np.ndarray]:
    """``(unique_groups, group_stratum)``: one stratum per group, the most frequent :func:`stratum_of` value
    among the group's samples (ties go to the smallest stratum id). ``unique_groups`` is sorted when the ids
    are orderable, otherwise in order of first appearance."""
    unique, group_stratum, _ = _group_strata_codes(targets, groups)
    return unique, group_stratum


def _groups_by_stratum(group_stratum: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """[(stratum, group codes in that stratum, ascending)] in ascending stratum order."""
    return [(int(s), np.flatnonzero(group_stratum == s)) for s in np.unique(group_stratum)]


def _samples_of(selected_groups: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    chosen = np.zeros(n_groups, dtype=bool)
    chosen[selected_groups] = True
    return np.flatnonzero(chosen[codes]).astype(np.int64)


# --------------------------------------------------------------------------------------------------------------
# train/test split


def group_stratified_split(targets, groups, test_fraction: float = 0.2, seed: int = 0):
    """Group-aware, stratified ``(train_idx, test_idx)`` split.

    Within each group-stratum (:func:`group_strata`) the groups are shuffled and the first
    ``round(test_fraction * n_groups)`` (rounding half up) go to test, with two clamps: a stratum with a single
    group sends it to train, and a stratum with ``n >= 2`` groups sends at least 1 and at most ``n - 1`` of
    them to test, so every stratum with two or more groups appears on both sides. The fraction is therefore
    exact in groups (up to rounding) and approximate in images when groups differ in size.

    Raises ``ValueError`` for ``test_fraction`` outside (0, 1), mismatched lengths, or a split that would
    leave either side empty (e.g. when every stratum has a single group).
    """
    test_fraction = float(test_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}.")
    rng = _rng(seed, _SPLIT_STREAM)
    unique, group_stratum, codes = _group_strata_codes(targets, groups)
    if len(codes) == 0:
        raise ValueError("Cannot split an empty dataset.")

    test_groups = []
    for _, members in _groups_by_stratum(group_stratum):
        n = len(members)
        if n < 2:
            continue
        n_test = min(max(math.floor(test_fraction * n + 0.5), 1), n - 1)
        test_groups.append(rng.permutation(members)[:n_test])
    test_groups = np.concatenate(test_groups) if test_groups else np.zeros(0, np.int64)

    test_idx = _samples_of(test_groups, codes, len(unique))
    train_mask = np.ones(len(codes), dtype=bool)
    train_mask[test_idx] = False
    train_idx = np.flatnonzero(train_mask).astype(np.int64)
    if len(test_idx) == 0:
        raise ValueError(
            f"The test side would be empty: each of the {len(np.unique(group_stratum))} group-strata has a "
            f"single group ({len(unique)} groups in all); a stratified group split needs at least one "
            "stratum with two or more groups."
        )
    if len(train_idx) == 0:  # unreachable with the n - 1 clamp; kept as a guard
        raise ValueError("The train side would be empty.")
    return train_idx, test_idx


# --------------------------------------------------------------------------------------------------------------
# nested label fractions


def _check_fractions(fractions) -> list[float]:
    """The distinct fractions as floats, ascending."""
    if isinstance(fractions, (str, bytes, int, float, np.floating, np.integer)):
        raise ValueError(f"fractions must be a sequence of floats, e.g. (0.01, 0.1, 1.0), got {fractions!r}.")
    values = list(fractions)
    if not values:
        raise ValueError("fractions must not be empty.")
    checked = []
    for value in values:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"fractions must be numbers in (0, 1], got {value!r}.") from None
        if not 0.0 < f <= 1.0:  # also rejects NaN
            raise ValueError(f"Every fraction must lie in (0, 1], got {value!r}.")
        checked.append(f)
    return sorted(set(checked))


def nested_label_fractions(
    targets,
    groups,
    fractions: Iterable[float] = (0.01, 0.1, 1.0),
    seed: int = 0,
    min_per_class: int = 1,
) -> dict[float, np.ndarray]:
    """Nested, stratified, group-aware training subsets of the given pool, ``{fraction: sorted indices}``.

    Pass the training side only; the indices are positions in the arrays passed (map them back with
    ``train_idx[subset]``). For each group-stratum with ``n`` groups, one seeded permutation of its groups is
    drawn, and fraction ``f`` takes its first ``min(n, max(min_per_class, ceil(f * n)))`` groups. Because every
    fraction takes a prefix of the same permutations, the subsets are nested by construction: the subset of a
    smaller fraction is contained in that of any larger one. ``1.0`` returns every index.

    Fractions are counted in *groups per stratum*, so the achieved image fraction is approximate when groups
    hold different numbers of images, and larger than ``f`` for small ``f`` because of the per-stratum ceiling
    and ``min_per_class``; :func:`describe_subsets` reports what was achieved.

    ``fractions`` may come in any order; each must lie in (0, 1]. The dict is keyed by the fractions as
    Python floats, in ascending order (duplicates collapse into one key).
    """
    checked = _check_fractions(fractions)
    if (
        isinstance(min_per_class, bool)
        or not isinstance(min_per_class, (int, np.integer))
        or min_per_class < 0
    ):
        raise ValueError(f"min_per_class must be a non-negative int, got {min_per_class!r}.")
    rng = _rng(seed, _FRACTIONS_STREAM)
    unique, group_stratum, codes = _group_strata_codes(targets, groups)
    if len(codes) == 0:
        raise ValueError("Cannot draw label fractions from an empty pool.")

    permutations = [rng.permutation(members) for _, members in _groups_by_stratum(group_stratum)]
    subsets: dict[float, np.ndarray] = {}
    for f in checked:
        taken = []
        for order in permutations:
            n = len(order)
            k = min(n, max(int(min_per_class), math.ceil(f * n - _CEIL_SLACK)))
            taken.append(order[:k])
        subsets[f] = _samples_of(np.concatenate(taken), codes, len(unique))
    return subsets


@dataclass(frozen=True)
class SubsetSummary:
    """What a label-fraction subset achieved: image count and share of the pool, groups, per-class counts
    (single-label: images of each class present in the pool; multi-label: positives of each label)."""

    fraction: float
    n_images: int
    image_fraction: float
    n_groups: int | None
    per_class: dict[int, int]


def describe_subsets(subsets: Mapping[float, np.ndarray], targets, groups=None) -> dict[float, SubsetSummary]:
    """Per fraction of :func:`nested_label_fractions`'s output: images, achieved image fraction of the pool
    (``len(targets)``), number of groups (when ``groups`` is given) and images per class."""
    targets = _as_targets(targets)
    n = len(targets)
    codes = None
    if groups is not None:
        _, codes = _group_codes(_as_groups(groups, n))
    if targets.ndim == 1:
        classes = np.unique(targets)
    else:
        classes = np.arange(targets.shape[1])
    summaries = {}
    for fraction, indices in subsets.items():
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise ValueError(f"Subset for fraction {fraction} has indices outside [0, {n}).")
        chosen = targets[indices]
        if targets.ndim == 1:
            counts = {int(c): int((chosen == c).sum()) for c in classes}
        else:
            counts = {int(c): int(chosen[:, c].sum()) for c in classes}
        summaries[fraction] = SubsetSummary(
            fraction=float(fraction),
            n_images=int(indices.size),
            image_fraction=indices.size / n if n else 0.0,
            n_groups=None if codes is None else int(np.unique(codes[indices]).size),
            per_class=counts,
        )
    return summaries


# --------------------------------------------------------------------------------------------------------------
# few-shot


def few_shot_indices(targets, shots: int, seed: int = 0, groups=None) -> np.ndarray:
    """Exactly ``shots`` samples of every class, drawn without replacement; sorted int64 indices.

    Single-label targets only. With ``groups``, each class's draw spreads over distinct groups as far as
    possible: the class's groups are visited in a random order taking one random image from each, and only
    once every group of the class has given one image does a second round start (and so on), so a draw never
    takes two images of one group while the class has an unused group. Raises ``ValueError`` for multi-label
    targets, ``shots < 1``, or a class with fewer than ``shots`` samples.
    """
    array = np.asarray(targets)
    if array.ndim == 2:
        raise ValueError(
            "few-shot sampling needs single-label data ((N,) class ids); got multi-label targets "
            f"of shape {array.shape}."
        )
    targets = _as_targets(array)
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise ValueError(f"shots must be a positive int, got {shots!r}.")
    shots = int(shots)
    rng = _rng(seed, _FEW_SHOT_STREAM)
    codes = None
    if groups is not None:
        _, codes = _group_codes(_as_groups(groups, len(targets)))
    if len(targets) == 0:
        raise ValueError("Cannot draw few-shot samples from an empty dataset.")

    classes, counts = np.unique(targets, return_counts=True)
    short = [(int(c), int(k)) for c, k in zip(classes, counts, strict=True) if k < shots]
    if short:
        details = ", ".join(f"class {c} has {k}" for c, k in short)
        raise ValueError(f"Too few samples for {shots}-shot sampling: {details} (need {shots} per class).")

    chosen = []
    for c in classes:
        members = rng.permutation(np.flatnonzero(targets == c))
        if codes is None:
            chosen.append(members[:shots])
            continue
        member_groups = codes[members]
        local, local_codes = np.unique(member_groups, return_inverse=True)
        priority = rng.permutation(len(local))[local_codes]  # random order of the class's groups
        # Rank of each image within its group, in the (random) order of `members`.
        order = np.argsort(local_codes, kind="stable")
        rank = np.empty(len(members), dtype=np.int64)
        sorted_codes = local_codes[order]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        run_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
        rank[order] = np.arange(len(order)) - run_start
        # Round-robin: all rank-0 images (one per group, groups in random order), then rank 1, ...
        chosen.append(members[np.lexsort((priority, rank))[:shots]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)
