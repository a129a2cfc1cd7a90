"""Split conformal prediction sets for single-label classifiers.

Fit on a held-out CALIBRATION split (never the training or test split), then for each test image output the SET
of classes that contains the true class with probability at least `coverage` (= 1 - alpha), averaged over
exchangeable calibration + test draws. The guarantee is marginal (over images), not per class or per image.

    predictor = ConformalPredictor.fit(cal_probabilities, cal_targets, coverage=0.9, method="lac")
    sets = predictor.predict_sets(test_probabilities)          # (N, K) bool: class k is in image i's set
    conformal_report(predictor, test_probabilities, test_targets)

Shapes: probabilities (N, K) rows summing to 1 (or (N,) positive-class probabilities of a binary task), targets
(N,) class ids in [0, K).

Scores (higher = the class fits the image worse); q_hat = the ceil((n + 1) * coverage)-th smallest of the n
calibration scores (the finite-sample correction); fitting refuses a calibration set too small for that
(`min_calibration_size`).

- "lac" (least ambiguous set-valued classifier): score 1 - p_y; set {k : 1 - p_k <= q_hat}. Smallest sets on
  average. A set may be EMPTY: no class reaches probability 1 - q_hat, i.e. the model finds the image unlike
  the calibration images it is confident on; an empty set counts as a miss in coverage and is a natural
  "refer to a clinician" flag. Coverage lies in [1 - alpha, 1 - alpha + 1/(n + 1)] when scores have no ties.
- "aps" (adaptive prediction sets): score = the total probability of the classes ranked at least as high as the
  true class (p_j >= p_y, the true class included). Set: classes in descending probability until the cumulative
  sum reaches q_hat, the class that crosses q_hat included. Ties: classes of equal probability are one rank, they
  enter the set together (so the result never depends on class order). Non-randomized (default) this
  OVER-covers (coverage >= 1 - alpha, often far above: the crossing class is one more than the guarantee needs;
  on a noisy 4-class synthetic task at 0.9, coverage 0.994 with 3.8 classes per set) and sets are never empty;
  use LAC or randomized APS when informative (small) sets matter. `randomized=True` subtracts
  U * p_y from the score, U ~ Uniform(0, 1) drawn per image (seeded): coverage then lies in
  [1 - alpha, 1 - alpha + 1/(n + 1)] like LAC, and a set can be empty.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import check_single_label

__all__ = ["METHODS", "ConformalPredictor", "conformal_report", "min_calibration_size"]

METHODS = ("lac", "aps")
FORMAT = "retvlp-conformal/1"


def _check_coverage(coverage: Any) -> float:
    if (
        isinstance(coverage, bool)
        or not isinstance(coverage, (int, float, np.floating))
        or not 0.0 < coverage < 1.0
    ):
        raise ValueError(f"coverage: expected a level strictly between 0 and 1 (e.g. 0.9); got {coverage!r}.")
    return float(coverage)


def _rank(n: int, coverage: float) -> int:
    """ceil((n + 1) * coverage), rounded first so that float noise (100 * 0.9 = 90.00000000000001) does not add 1."""
    return math.ceil(round((n + 1) * coverage, 9))


def min_calibration_size(coverage: float) -> int:
    """The smallest n with ceil((n + 1) * coverage) <= n: fewer calibration samples cannot give that coverage
    (e.g. 9 for 0.9, 19 for 0.95, 99 for 0.99)."""
    coverage = _check_coverage(coverage)
    n = max(1, int(coverage / (1.0 - coverage)) - 2)
    while _rank(n, coverage) > n:
        n += 1
    return n


def _aps_totals(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every (image, class k): `total` = sum of p_j over classes with p_j >= p_k (k's tie group included) and
    `before` = sum over p_j > p_k. Both (N, K), by one sort per row."""
    n, k = probabilities.shape
    order = np.argsort(-probabilities, axis=1, kind="stable")
    ranked = np.take_along_axis(probabilities, order, axis=1)
    # cumulative[:, r + 1] = sum of the r + 1 highest probabilities; cumulative[:, 0] = 0.
    cumulative = np.concatenate([np.zeros((n, 1)), np.cumsum(ranked, axis=1)], axis=1)
    positions = np.broadcast_to(np.arange(k), (n, k))
    # Tie groups of the descending row: the first and last rank of the group each rank belongs to.
    starts = np.ones((n, k), dtype=bool)
    starts[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    ends = np.ones((n, k), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    group_start = np.maximum.accumulate(np.where(starts, positions, 0), axis=1)
    group_end = np.minimum.accumulate(np.where(ends, positions, k - 1)[:, ::-1], axis=1)[:, ::-1]
    total_ranked = np.take_along_axis(cumulative, group_end + 1, axis=1)
    before_ranked = np.take_along_axis(cumulative, group_start, axis=1)
    total = np.empty_like(probabilities)
    before = np.empty_like(probabilities)
    np.put_along_axis(total, order, total_ranked, axis=1)
    np.put_along_axis(before, order, before_ranked, axis=1)
    return total, before


def _class_scores(method: str, probabilities: np.ndarray, uniforms: np.ndarray | None) -> np.ndarray:
    """Nonconformity score of every class of every image, (N, K)."""
    if method == "lac":
        return 1.0 - probabilities
    total, _ = _aps_totals(probabilities)
    if uniforms is not None:
        return total - uniforms[:, None] * probabilities
    return total


@dataclass
class ConformalPredictor:
    """A fitted split-conformal predictor. `threshold` is q_hat (module docstring), `coverage` the target level
    1 - alpha, `n_calibration` the calibration set size it was fitted on, `num_classes` K."""

    method: str
    coverage: float
    threshold: float
    n_calibration: int
    num_classes: int
    randomized: bool = False
    class_names: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}; got {self.method!r}.")
        _check_coverage(self.coverage)
        if self.randomized and self.method != "aps":
            raise ValueError("randomized: only the 'aps' method has a randomized variant.")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names: {len(self.class_names)} names for {self.num_classes} probability columns."
            )

    @classmethod
    def fit(
        cls,
        cal_probabilities: Any,
        cal_targets: Any,
        coverage: float,
        method: str = "lac",
        *,
        randomized: bool = False,
        seed: int = 0,
        class_names: list[str] | None = None,
    ) -> ConformalPredictor:
        """Fit q_hat on the calibration split. Raises ValueError if it has fewer than
        `min_calibration_size(coverage)` samples. `seed` draws the U of randomized APS."""
        coverage = _check_coverage(coverage)
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}; got {method!r}.")
        if randomized and method != "aps":
            raise ValueError("randomized: only the 'aps' method has a randomized variant.")
        targets, probabilities = check_single_label(cal_targets, cal_probabilities, name="cal_probabilities")
        n = len(targets)
        rank = _rank(n, coverage)
        if rank > n:
            raise ValueError(
                f"cal_probabilities: split conformal at coverage {coverage:g} needs at least "
                f"{min_calibration_size(coverage)} calibration samples (ceil((n + 1) * coverage) <= n); got {n}. "
                "Use a larger calibration split or a lower coverage."
            )
        uniforms = np.random.default_rng(seed).uniform(size=n) if randomized else None
        scores = _class_scores(method, probabilities, uniforms)[np.arange(n), targets]
        threshold = float(np.sort(scores)[rank - 1])
        return cls(
            method=method,
            coverage=coverage,
            threshold=threshold,
            n_calibration=n,
            num_classes=probabilities.shape[1],
            randomized=bool(randomized),
            class_names=None if class_names is None else [str(name) for name in class_names],
        )

    def predict_sets(self, probabilities: Any, *, seed: int = 0) -> np.ndarray:
        """(N, K) boolean membership of each class in each image's prediction set. `seed` draws the per-image U
        of randomized APS (ignored otherwise)."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        dummy_targets = np.zeros(len(probabilities) if probabilities.ndim else 0, dtype=np.int64)
        _, probabilities = check_single_label(dummy_targets, probabilities)
        if probabilities.shape[1] != self.num_classes:
            raise ValueError(
                f"probabilities: {probabilities.shape[1]} columns, but the predictor was fitted on "
                f"{self.num_classes} classes."
            )
        if self.method == "lac":
            return 1.0 - probabilities <= self.threshold
        if self.randomized:
            uniforms = np.random.default_rng(seed).uniform(size=len(probabilities))
            return _class_scores("aps", probabilities, uniforms) <= self.threshold
        total, before = _aps_totals(probabilities)
        # Include a class while the mass ranked above it has not yet reached q_hat (so the crossing class is in);
        # `total <= q_hat` also admits zero-probability classes whose own score is within q_hat.
        return (before < self.threshold) | (total <= self.threshold)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": self.method,
            "coverage": self.coverage,
            "threshold": self.threshold,
            "n_calibration": self.n_calibration,
            "num_classes": self.num_classes,
            "randomized": self.randomized,
            "class_names": self.class_names,
        }

    @classmethod
    def from_json(cls, data: Any) -> ConformalPredictor:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"ConformalPredictor JSON: expected an object with format {FORMAT!r}.")
        missing = {"method", "coverage", "threshold", "n_calibration", "num_classes"} - set(data)
        if missing:
            raise ValueError(f"ConformalPredictor JSON: missing key(s) {sorted(missing)}.")
        return cls(
            method=data["method"],
            coverage=float(data["coverage"]),
            threshold=float(data["threshold"]),
            n_calibration=int(data["n_calibration"]),
            num_classes=int(data["num_classes"]),
            randomized=bool(data.get("randomized", False)),
            class_names=data.get("class_names"),
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ConformalPredictor:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def conformal_report(
    predictor: ConformalPredictor, test_probabilities: Any, test_targets: Any, *, seed: int = 0
) -> dict[str, Any]:
    """What the sets do on a test split (JSON-ready):

    coverage (fraction of images whose set holds the true class; compare with target_coverage), mean_set_size,
    empty_fraction, set_size_counts / set_size_distribution (lists indexed by set size 0..K),
    coverage_per_class {class name: coverage among images of that class}, NaN for a class absent from the test
    split with the reason in `undefined` {class name: reason}; method, threshold, n_calibration, n_test."""
    targets, probabilities = check_single_label(test_targets, test_probabilities, name="test_probabilities")
    sets = predictor.predict_sets(probabilities, seed=seed)
    covered = sets[np.arange(len(targets)), targets]
    sizes = sets.sum(axis=1)
    counts = np.bincount(sizes, minlength=predictor.num_classes + 1)
    names = predictor.class_names or [str(k) for k in range(predictor.num_classes)]
    per_class: dict[str, float] = {}
    undefined: dict[str, str] = {}
    for k, name in enumerate(names):
        members = targets == k
        if members.any():
            per_class[name] = float(covered[members].mean())
        else:
            per_class[name] = float("nan")
            undefined[name] = f"class {name!r} has no test samples: its coverage is undefined"
    return {
        "method": predictor.method,
        "randomized": predictor.randomized,
        "target_coverage": predictor.coverage,
        "threshold": predictor.threshold,
        "n_calibration": predictor.n_calibration,
        "n_test": len(targets),
        "coverage": float(covered.mean()),
        "mean_set_size": float(sizes.mean()),
        "empty_fraction": float(np.mean(sizes == 0)),
        "set_size_counts": counts.tolist(),
        "set_size_distribution": (counts / len(targets)).tolist(),
        "coverage_per_class": per_class,
        "undefined": undefined,
    }
