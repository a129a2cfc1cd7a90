"""Few-shot adaptation on cached embeddings: Tip-Adapter, Tip-Adapter-F, CLIP-Adapter (METHODS.md §3)."""

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retvlp.evaluation.few_shot import (
    FEW_SHOT_METHODS,
    CLIPAdapter,
    FewShotPrediction,
    clip_adapter,
    tip_adapter,
    tip_adapter_f,
    tip_adapter_logits,
    zero_shot_logits,
)


def unit_rows(array):
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def random_problem(num_train=12, num_test=7, dim=8, num_classes=3, seed=0):
    """L2-normalised float64 train / test embeddings, labels covering every class, and prototypes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_train) % num_classes
    return (
        unit_rows(rng.normal(size=(num_train, dim))),
        labels,
        unit_rows(rng.normal(size=(num_test, dim))),
        unit_rows(rng.normal(size=(num_classes, dim))),
    )


def cross_entropy(logits, labels):
    return float(F.cross_entropy(torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(labels)))


# ----------------------------------------------------------------------------------------------------------
# Tip-Adapter
# ----------------------------------------------------------------------------------------------------------


def test_tip_adapter_logits_hand_computed():
    # D = 2, C = 2 classes, N = 3 shots.
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)  # labels 0, 1, 1
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    x = torch.tensor([[0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)
    # Row 0, x = (0.8, 0.6): zero-shot = 100 * (0.8, 0.6) = (80, 60); affinities with the keys 0.8, 0.6, 0.96.
    #   class 0: 80 + exp(-5 * (1 - 0.8)) = 80 + exp(-1) = 80.367879...
    #   class 1: 60 + exp(-5 * 0.4) + exp(-5 * 0.04) = 60 + exp(-2) + exp(-0.2) = 60 + 0.135335 + 0.818731
    #          = 60.954066...
    # Row 1, x = (0, 1): zero-shot (0, 100); affinities 0, 1, 0.8.
    #   class 0: exp(-5) = 0.006738; class 1: 100 + exp(0) + exp(-1) = 101.367879
    expected = torch.tensor(
        [
            [80 + math.exp(-1), 60 + math.exp(-2) + math.exp(-0.2)],
            [math.exp(-5), 100 + 1 + math.exp(-1)],
        ],
        dtype=torch.float64,
    )
    logits = tip_adapter_logits(x, keys, values, prototypes)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 2)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-12)
    assert logits[0, 0].item() == pytest.approx(80.367879, abs=1e-6)
    assert logits[0, 1].item() == pytest.approx(60.954066, abs=1e-6)

    # Other alpha / beta / scale: 10 * 0.8 + 2 * exp(-3 * 0.2) for row 0, class 0.
    logits = tip_adapter_logits(x, keys, values, prototypes, alpha=2.0, beta=3.0, logit_scale=10.0)
    assert logits[0, 0].item() == pytest.approx(8 + 2 * math.exp(-0.6), abs=1e-12)

    # numpy inputs give the same numbers.
    from_numpy = tip_adapter_logits(x.numpy(), keys.numpy(), values.numpy(), prototypes.numpy())
    torch.testing.assert_close(from_numpy, expected, rtol=0, atol=1e-12)


def numpy_loop_tip_logits(x, keys, labels, prototypes, num_classes, alpha, beta, scale):
    out = np.zeros((len(x), num_classes))
    for i in range(len(x)):
        for c in range(num_classes):
            out[i, c] = scale * sum(x[i, d] * prototypes[c, d] for d in range(x.shape[1]))
        for j in range(len(keys)):
            affinity = sum(x[i, d] * keys[j, d] for d in range(x.shape[1]))
            out[i, labels[j]] += alpha * math.exp(-beta * (1 - affinity))
    return out


@pytest.mark.parametrize("alpha, beta, scale", [(1.0, 5.0, 100.0), (0.3, 1.5, 50.0), (4.0, 12.0, 20.0)])
def test_tip_adapter_matches_numpy_loop(alpha, beta, scale):
    train, labels, test, prototypes = random_problem(seed=1)
    expected = numpy_loop_tip_logits(test, train, labels, prototypes, 3, alpha, beta, scale)
    values = np.eye(3)[labels]
    logits = tip_adapter_logits(test, train, values, prototypes, alpha=alpha, beta=beta, logit_scale=scale)
    np.testing.assert_allclose(logits.numpy(), expected, rtol=0, atol=1e-10)

    prediction = tip_adapter(train, labels, test, prototypes, alpha=alpha, beta=beta, logit_scale=scale)
    assert isinstance(prediction, FewShotPrediction)
    assert prediction.logits.shape == prediction.probabilities.shape == (7, 3)
    np.testing.assert_allclose(prediction.logits, expected, rtol=1e-5, atol=1e-4)  # computed in float32
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        prediction.probabilities, torch.softmax(torch.as_tensor(expected), dim=1).numpy(), atol=1e-4
    )
    np.testing.assert_array_equal(prediction.predictions, expected.argmax(axis=1))


def test_inputs_are_l2_normalised_and_torch_accepted():
    train, labels, test, prototypes = random_problem(seed=2)
    reference = tip_adapter(train, labels, test, prototypes)
    rng = np.random.default_rng(0)
    scaled = tip_adapter(
        torch.as_tensor(train * rng.uniform(0.5, 3.0, size=(len(train), 1))),
        torch.as_tensor(labels),
        torch.as_tensor(test * 7.0, dtype=torch.float32),
        prototypes * 0.1,
    )
    np.testing.assert_allclose(scaled.logits, reference.logits, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        zero_shot_logits(test * 3, prototypes * 2), zero_shot_logits(test, prototypes), atol=1e-4
    )


def test_alpha_zero_is_zero_shot():
    train, labels, test, prototypes = random_problem(seed=3)
    zero_shot = zero_shot_logits(test, prototypes)
    assert zero_shot.shape == (7, 3)
    np.testing.assert_allclose(zero_shot, 100.0 * test @ prototypes.T, atol=1e-4)
    np.testing.assert_allclose(tip_adapter(train, labels, test, prototypes, alpha=0.0).logits, zero_shot)
    np.testing.assert_allclose(
        zero_shot_logits(test, prototypes, 10.0), 10.0 * test @ prototypes.T, atol=1e-5
    )


def test_large_beta_suppresses_dissimilar_cache_entries():
    train, labels, _, prototypes = random_problem(seed=4)
    # One test image equal to shot 0 and one unlike every shot.
    far = unit_rows(-train.sum(axis=0, keepdims=True))
    test = np.concatenate([train[:1], far])
    zero_shot = zero_shot_logits(test, prototypes)
    cache = {}
    for beta in (1.0, 5.0, 50.0, 500.0):
        cache[beta] = tip_adapter(train, labels, test, prototypes, beta=beta).logits - zero_shot
    for small, large in ((1.0, 5.0), (5.0, 50.0), (50.0, 500.0)):
        assert (np.abs(cache[large][1]) < np.abs(cache[small][1]) + 1e-6).all()
    assert np.abs(cache[500.0][1]).max() < 1e-4
    # The identical shot keeps its full weight exp(0) = 1 for its own class whatever beta is.
    assert cache[500.0][0, labels[0]] == pytest.approx(1.0, abs=1e-3)
    assert np.delete(cache[500.0][0], labels[0]).max() < 1e-4


# ----------------------------------------------------------------------------------------------------------
# Tip-Adapter-F
# ----------------------------------------------------------------------------------------------------------


def test_tip_adapter_f_without_training_is_tip_adapter():
    train, labels, test, prototypes = random_problem(seed=5)
    for kwargs in ({}, {"alpha": 2.0, "beta": 3.0, "logit_scale": 50.0}):
        plain = tip_adapter(train, labels, test, prototypes, **kwargs)
        untrained = tip_adapter_f(train, labels, test, prototypes, epochs=0, **kwargs)
        np.testing.assert_array_equal(untrained.logits, plain.logits)
        np.testing.assert_array_equal(untrained.probabilities, plain.probabilities)
        np.testing.assert_array_equal(untrained.extras["cache_keys"], plain.extras["cache_keys"])
        assert untrained.extras["train_loss"].shape == (0,)


def test_tip_adapter_f_training():
    # In 512 dimensions random prototypes give modest zero-shot logits (|cos| ~ 0.04), which the cache can
    # correct; with alpha = 1 it cannot outweigh the large zero-shot errors of a low-dimensional problem.
    train, labels, test, prototypes = random_problem(num_train=30, dim=512, seed=6)
    before = tip_adapter_f(train, labels, train, prototypes, epochs=0)
    after = tip_adapter_f(train, labels, train, prototypes, epochs=20)
    assert cross_entropy(after.logits, labels) < 0.85 * cross_entropy(before.logits, labels)
    losses = after.extras["train_loss"]
    assert losses.shape == (20,)  # 30 shots fit one batch: one step per epoch
    assert losses[-1] < losses[0]

    # Values are the fixed one-hot labels; the keys moved away from the normalised shots.
    np.testing.assert_array_equal(after.extras["cache_values"], np.eye(3)[labels])
    keys = after.extras["cache_keys"]
    assert keys.shape == train.shape
    assert np.abs(keys - train).max() > 1e-3
    np.testing.assert_allclose(before.extras["cache_keys"], train, atol=1e-6)

    # The test logits are the Tip-Adapter formula with the fine-tuned keys.
    shown = tip_adapter_f(train, labels, test, prototypes, epochs=20)
    np.testing.assert_array_equal(shown.extras["cache_keys"], keys)
    formula = tip_adapter_logits(
        torch.as_tensor(unit_rows(test), dtype=torch.float32),
        torch.as_tensor(keys),
        torch.as_tensor(np.eye(3)[labels], dtype=torch.float32),
        torch.as_tensor(prototypes, dtype=torch.float32),
    )
    np.testing.assert_allclose(shown.logits, formula.numpy(), rtol=1e-5, atol=1e-4)


def test_tip_adapter_f_seeded():
    train, labels, test, prototypes = random_problem(num_train=12, seed=7)
    kwargs = dict(epochs=5, batch_size=4, lr=1e-2)  # 3 shuffled batches per epoch
    first = tip_adapter_f(train, labels, test, prototypes, seed=11, **kwargs)
    again = tip_adapter_f(train, labels, test, prototypes, seed=11, **kwargs)
    other = tip_adapter_f(train, labels, test, prototypes, seed=12, **kwargs)
    assert first.extras["train_loss"].shape == (15,)
    np.testing.assert_array_equal(first.logits, again.logits)
    np.testing.assert_array_equal(first.extras["cache_keys"], again.extras["cache_keys"])
    np.testing.assert_array_equal(first.extras["train_loss"], again.extras["train_loss"])
    assert not np.array_equal(first.extras["cache_keys"], other.extras["cache_keys"])


# ----------------------------------------------------------------------------------------------------------
# CLIP-Adapter
# ----------------------------------------------------------------------------------------------------------


def test_clip_adapter_bottleneck_shape():
    adapter = CLIPAdapter(512)
    down, relu1, up, relu2 = adapter.fc
    assert isinstance(down, torch.nn.Linear) and isinstance(up, torch.nn.Linear)
    assert isinstance(relu1, torch.nn.ReLU) and isinstance(relu2, torch.nn.ReLU)
    assert (down.in_features, down.out_features) == (512, 128)
    assert (up.in_features, up.out_features) == (128, 512)
    assert down.bias is None and up.bias is None
    assert sum(p.numel() for p in adapter.parameters()) == 2 * 512 * 128
    assert adapter.residual_ratio == 0.2
    assert CLIPAdapter(64, reduction=8).fc[0].out_features == 8
    assert adapter(torch.randn(3, 512)).shape == (3, 512)


def test_clip_adapter_residual_ratio():
    # D = 4, hidden 2, weights set by hand.
    adapter = CLIPAdapter(4, reduction=2, residual_ratio=0.25)
    w1 = np.array([[1.0, -1.0, 0.5, 0.0], [0.0, 2.0, -1.0, 1.0]])
    w2 = np.array([[1.0, 0.0], [-1.0, 1.0], [0.5, 0.5], [0.0, -2.0]])
    with torch.no_grad():
        adapter.fc[0].weight.copy_(torch.as_tensor(w1))
        adapter.fc[2].weight.copy_(torch.as_tensor(w2))
    x = np.array([[1.0, 0.0, 2.0, 0.0], [0.5, 1.0, -1.0, 3.0]])
    hidden = np.maximum(x @ w1.T, 0)  # row 0: (2, 0); row 1: (0, 6)
    adapted = np.maximum(hidden @ w2.T, 0)  # row 0: (2, 0, 1, 0); row 1: (0, 6, 3, 0)
    np.testing.assert_allclose(adapted, [[2, 0, 1, 0], [0, 6, 3, 0]])
    expected = 0.25 * adapted + 0.75 * x  # row 0: (1.25, 0, 1.75, 0)
    out = adapter(torch.as_tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(out.detach().numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(out[0].detach().numpy(), [1.25, 0.0, 1.75, 0.0], atol=1e-6)

    prototypes = torch.eye(4)[:2]
    logits = adapter.logits(torch.as_tensor(x, dtype=torch.float32), prototypes, logit_scale=10.0)
    np.testing.assert_allclose(logits.detach().numpy(), 10 * unit_rows(expected)[:, :2], atol=1e-5)

    # r = 0: identity (the prediction is zero-shot); r = 1: the bottleneck alone.
    assert torch.equal(CLIPAdapter(4, residual_ratio=0.0)(torch.ones(1, 4)), torch.ones(1, 4))
    adapter.residual_ratio = 1.0
    np.testing.assert_allclose(adapter(torch.as_tensor(x, dtype=torch.float32)).detach().numpy(), adapted)


@functools.lru_cache
def dense_rotation(dim):
    """Orthogonal `(dim, dim)` matrix, every entry +-1/sqrt(dim) (Sylvester-Hadamard; dim a power of 2)."""
    hadamard = np.ones((1, 1))
    while len(hadamard) < dim:
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    return hadamard / math.sqrt(dim)


def rotated_toy(num_per_class, seed, dim=512, noise=0.02):
    """Two classes whose images lie at 50 and 80 degrees from prototype 0 in the plane of the two prototypes
    (prototype 1 at 90 degrees), so zero-shot calls almost everything class 1; a Hadamard rotation makes the
    features dense like real embeddings."""
    rng = np.random.default_rng(seed)
    rotation = dense_rotation(dim)
    labels = np.repeat([0, 1], num_per_class)
    angles = np.deg2rad(np.where(labels == 0, 50.0, 80.0))
    x = noise * rng.normal(size=(len(labels), dim))
    x[:, 0] += np.cos(angles)
    x[:, 1] += np.sin(angles)
    return x @ rotation, labels, np.eye(dim)[:2] @ rotation


def test_clip_adapter_learns_where_zero_shot_fails():
    train, train_labels, prototypes = rotated_toy(8, seed=0)
    test, test_labels, _ = rotated_toy(100, seed=1)
    zero_shot_accuracy = (zero_shot_logits(test, prototypes).argmax(axis=1) == test_labels).mean()
    assert zero_shot_accuracy <= 0.6

    untrained = clip_adapter(train, train_labels, test, prototypes, epochs=0)
    assert (untrained.predictions == test_labels).mean() <= 0.6
    trained = clip_adapter(train, train_labels, test, prototypes)  # defaults: 50 epochs, lr 1e-3
    assert (trained.predictions == test_labels).mean() >= 0.9
    losses = trained.extras["train_loss"]
    assert losses.shape == (50,) and losses[-1] < 0.5 * losses[0]
    assert trained.extras["down_weight"].shape == (128, 512)
    assert trained.extras["up_weight"].shape == (512, 128)


def test_clip_adapter_seeded():
    train, labels, test, prototypes = random_problem(num_train=12, dim=16, seed=8)
    kwargs = dict(epochs=3, batch_size=5)
    first = clip_adapter(train, labels, test, prototypes, seed=3, **kwargs)
    again = clip_adapter(train, labels, test, prototypes, seed=3, **kwargs)
    other = clip_adapter(train, labels, test, prototypes, seed=4, **kwargs)
    np.testing.assert_array_equal(first.logits, again.logits)
    np.testing.assert_array_equal(first.extras["down_weight"], again.extras["down_weight"])
    assert not np.array_equal(first.extras["down_weight"], other.extras["down_weight"])
    assert first.extras["train_loss"].shape == (9,)  # ceil(12 / 5) = 3 steps per epoch
    # The global random state is neither used nor disturbed.
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    clip_adapter(train, labels, test, prototypes, seed=3, **kwargs)
    assert torch.equal(torch.rand(1), expected_next)


# ----------------------------------------------------------------------------------------------------------
# Registry, outputs and validation
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FEW_SHOT_METHODS))
def test_registry_methods_share_a_call(name):
    assert set(FEW_SHOT_METHODS) == {"clip-adapter", "tip-adapter", "tip-adapter-f"}
    train, labels, test, prototypes = random_problem(seed=9)
    prediction = FEW_SHOT_METHODS[name](train, labels, test, prototypes, logit_scale=50.0)
    assert isinstance(prediction.logits, np.ndarray) and prediction.logits.dtype == np.float32
    assert prediction.logits.shape == prediction.probabilities.shape == (7, 3)
    assert np.isfinite(prediction.logits).all()
    # No test images: empty outputs with the right number of classes.
    empty = FEW_SHOT_METHODS[name](train, labels, np.zeros((0, 8)), prototypes)
    assert empty.logits.shape == (0, 3)


def validation_cases():
    train, labels, test, prototypes = random_problem(seed=10)
    bad_train = train.copy()
    bad_train[2] = 0.0
    with_nan = test.copy()
    with_nan[0, 0] = np.nan
    return [
        ((train[0], labels, test, prototypes), {}, "train_embeds must be 2-D"),
        ((train, labels, test[None], prototypes), {}, "test_embeds must be 2-D"),
        ((train, labels, test, prototypes[0]), {}, "prototypes must be 2-D"),
        ((train, labels, test[:, :5], prototypes), {}, r"test_embeds has shape \(7, 5\).*\(3, 8\)"),
        ((train[:, :6], labels, test, prototypes), {}, r"train_embeds has shape \(12, 6\).*\(3, 8\)"),
        ((train, np.where(labels == 2, 3, labels), test, prototypes), {}, r"\[0, 3\)"),
        ((train, labels - 1, test, prototypes), {}, r"\[0, 3\)"),
        ((train, labels[:-1], test, prototypes), {}, "11 entries but train_embeds has 12"),
        ((train, labels.astype(float) + 0.5, test, prototypes), {}, "integer class indices"),
        ((train, labels[:, None], test, prototypes), {}, "train_labels must be 1-D"),
        ((train[:0], labels[:0], test, prototypes), {}, "train_embeds is empty"),
        ((bad_train, labels, test, prototypes), {}, "zero norm"),
        ((train, labels, with_nan, prototypes), {}, "NaN"),
        ((train, labels, test, prototypes[:0]), {}, "prototypes is empty"),
        ((train, labels, test, prototypes), {"logit_scale": 0.0}, "logit_scale"),
    ]


@pytest.mark.parametrize("method", sorted(FEW_SHOT_METHODS))
@pytest.mark.parametrize("args, kwargs, message", validation_cases())
def test_validation_errors(method, args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        FEW_SHOT_METHODS[method](*args, **kwargs)


def test_validation_errors_specific():
    train, labels, test, prototypes = random_problem(seed=11)
    with pytest.raises(ValueError, match=r"test_embeds has shape \(7, 4\).*prototypes have shape \(3, 8\)"):
        zero_shot_logits(test[:, :4], prototypes)
    with pytest.raises(ValueError, match="beta"):
        tip_adapter(train, labels, test, prototypes, beta=-1.0)
    with pytest.raises(ValueError, match="epochs"):
        tip_adapter_f(train, labels, test, prototypes, epochs=-1)
    with pytest.raises(ValueError, match="batch_size"):
        clip_adapter(train, labels, test, prototypes, batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        clip_adapter(train, labels, test, prototypes, lr=0.0)
    with pytest.raises(ValueError, match="residual_ratio"):
        CLIPAdapter(8, residual_ratio=1.5)
    with pytest.raises(ValueError, match="no hidden units"):
        CLIPAdapter(3, reduction=4)
