"""Linear probe (METHODS §3): L2-regularised, class-balanced logistic regression (C = 0.316) on frozen image
features, fitted with scikit-learn. Features are standardised first (mean 0, variance 1 per dimension, from the
training rows), which keeps lbfgs well conditioned on raw pooled tokens; `standardize=False` fits on the raw
features. Multi-label data: one such regression per label."""

from __future__ import annotations

import numpy as np

DEFAULT_C = 0.316


def make_probe(
    *,
    C: float = DEFAULT_C,
    standardize: bool = True,
    seed: int = 0,
    max_iter: int = 1000,
):
    """The unfitted scikit-learn estimator."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    regression = LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter, random_state=seed)
    return make_pipeline(StandardScaler(), regression) if standardize else regression


def linear_probe_probabilities(
    train_features: np.ndarray,
    train_targets: np.ndarray,
    test_features: np.ndarray,
    num_classes: int,
    *,
    multi_label: bool = False,
    C: float = DEFAULT_C,
    standardize: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Fit on the training rows, return `(M, num_classes)` probabilities for the test rows (a class absent from
    the training rows gets probability 0; multi-label: per-label probabilities)."""
    if len(train_features) != len(train_targets):
        raise ValueError(f"{len(train_features)} training feature rows but {len(train_targets)} targets.")
    if multi_label:
        out = np.empty((len(test_features), num_classes))
        for label in range(num_classes):
            column = train_targets[:, label].astype(int)
            if column.min() == column.max():  # a label that never varies in training is predicted as it is
                out[:, label] = column[0]
                continue
            probe = make_probe(C=C, standardize=standardize, seed=seed)
            out[:, label] = probe.fit(train_features, column).predict_proba(test_features)[:, 1]
        return out
    classes = np.unique(train_targets)
    if len(classes) < 2:
        raise ValueError(f"The linear probe needs at least 2 classes in its training rows, got {classes}.")
    probe = make_probe(C=C, standardize=standardize, seed=seed)
    probe.fit(train_features, train_targets)
    out = np.zeros((len(test_features), num_classes))
    out[:, classes] = probe.predict_proba(test_features)
    return out
