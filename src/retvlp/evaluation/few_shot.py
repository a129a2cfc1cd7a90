"""Few-shot adaptation of a CLIP-style dual encoder on cached embeddings (METHODS.md §3: 1, 5, 10 shots per
class): CLIP-Adapter, Tip-Adapter (training-free) and Tip-Adapter-F.

Every function works on features extracted once elsewhere: `(N, D)` image embeddings of the shots with their
integer labels, `(M, D)` image embeddings of the test images and `(C, D)` text class prototypes (row c is the
prototype of class c). Inputs may be numpy arrays or torch tensors. They are L2-normalised here, row by row,
because the protocol scores by cosine similarity; rows of norm zero, non-finite values and malformed shapes or
labels raise `ValueError`. The methods return a `FewShotPrediction` of float32 numpy arrays.

Formulas (s = `logit_scale`):

- zero-shot: `logits = s * x @ P.T`.
- Tip-Adapter: cache keys K = the shot embeddings `(N, D)`, cache values V = their one-hot labels `(N, C)`;
  `logits = s * x @ P.T + alpha * exp(-beta * (1 - x @ K.T)) @ V`.
- Tip-Adapter-F: the same with K a trainable parameter initialised from the shot embeddings (V and P fixed),
  trained with cross-entropy on the shots. The keys are not re-normalised during or after training.
- CLIP-Adapter: `A(x) = ReLU(W2 ReLU(W1 x))` with `W1: D -> D // reduction`, `W2: D // reduction -> D`
  (512 -> 128 -> 512 for D = 512; the hidden width is rounded down when D is not a multiple), no biases;
  `x' = r * A(x) + (1 - r) * x` with residual ratio r; `logits = s * normalize(x') @ P.T`. Only W1 and W2
  are trained (cross-entropy on the shots); the prototypes are fixed.

Defaults (s = 100, alpha = 1, beta = 5, reduction = 4, r = 0.2 are the protocol's; the training settings below
are our choices):

- optimiser AdamW, lr 1e-3, eps 1e-4, weight decay 0.01 (torch's AdamW default), cosine decay of the learning
  rate to zero over all optimiser steps (`CosineAnnealingLR`, stepped once per batch), no warm-up;
- 20 epochs for Tip-Adapter-F, 50 for CLIP-Adapter;
- mini-batches of `min(batch_size, N)` shots with `batch_size = 256`, reshuffled every epoch by a
  `torch.Generator` seeded with `seed`; the last, smaller batch of an epoch is kept. That makes
  `epochs * ceil(N / batch)` optimiser steps: with at most 256 shots (1-10 shots of a few classes) one
  full-batch step per epoch, i.e. 20 (Tip-Adapter-F) and 50 (CLIP-Adapter) steps. With 512-dimensional
  embeddings that already moves the keys / the adapter far (AdamW steps are ~lr per coordinate); embeddings
  of much lower dimension learn more slowly per step and may want more epochs or a larger lr.
  CLIP-Adapter's initial weights (PyTorch's default `nn.Linear` initialisation) are drawn from the same seed,
  without touching the global random state;
- float32 throughout, on CPU unless `device` says otherwise. On CPU the same inputs and seed give identical
  outputs; on a GPU that also depends on deterministic kernels.

Unlike the original papers, which build the cache from (and train on) randomly augmented views of the shot
images, the inputs here are one cached embedding per image with no augmentation, so an epoch sees each shot
exactly once in one view. Alpha and beta are used as given: no search over them on a validation split
(a caller who wants one can run these functions on its own validation data).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FEW_SHOT_METHODS",
    "CLIPAdapter",
    "FewShotPrediction",
    "clip_adapter",
    "tip_adapter",
    "tip_adapter_f",
    "tip_adapter_logits",
    "zero_shot_logits",
]

ADAMW_EPS = 1e-4
DEFAULT_WEIGHT_DECAY = 0.01
_INFERENCE_CHUNK = 4096  # test rows scored at a time


@dataclass
class FewShotPrediction:
    """Scores of the `M` test images for the `C` classes.

    `extras` holds what the method fitted and how training went: for Tip-Adapter and Tip-Adapter-F the
    `cache_keys` `(N, D)` and `cache_values` `(N, C)` used for the test logits, for CLIP-Adapter the adapter
    weights `down_weight` `(D // reduction, D)` and `up_weight` `(D, D // reduction)`, and for the trained
    methods `train_loss`, the cross-entropy of every optimiser step's batch (before that step)."""

    logits: np.ndarray
    probabilities: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def predictions(self) -> np.ndarray:
        """`(M,)` index of the highest-scoring class of each test image."""
        return self.logits.argmax(axis=1)


# ----------------------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------------------


def _matrix(name: str, values) -> torch.Tensor:
    """`values` as a 2-D, finite float32 CPU tensor (no normalisation yet)."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach().to("cpu")
    else:
        array = np.asarray(values)
        if array.dtype == object or not (
            np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
        ):
            raise ValueError(f"{name} must be a numeric array, got dtype {array.dtype}.")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must be a real-valued array, got dtype {tensor.dtype}.")
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(tensor.shape)}.")
    tensor = tensor.to(torch.float32)
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return tensor


def _normalized(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Row-wise L2 normalisation (cosine similarity is the protocol); zero rows cannot be normalised."""
    norms = tensor.norm(dim=1)
    bad = torch.nonzero(norms <= 1e-12).flatten()
    if len(bad):
        raise ValueError(
            f"{name} has rows of zero norm (first: row {int(bad[0])}); cannot L2-normalise them."
        )
    return tensor / norms[:, None]


def _check_dims(name: str, embeds: torch.Tensor, prototypes: torch.Tensor) -> None:
    if embeds.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"Embedding dimension mismatch: {name} has shape {tuple(embeds.shape)} but prototypes have shape "
            f"{tuple(prototypes.shape)}; both need the same number of columns."
        )


def _labels(train_labels, num_train: int, num_classes: int) -> torch.Tensor:
    if isinstance(train_labels, torch.Tensor):
        array = train_labels.detach().cpu().numpy()
    else:
        array = np.asarray(train_labels)
    if array.ndim != 1:
        raise ValueError(f"train_labels must be 1-D (one class index per shot), got shape {array.shape}.")
    if len(array) and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"train_labels must be integer class indices, got dtype {array.dtype}.")
    if len(array) != num_train:
        raise ValueError(
            f"train_labels has {len(array)} entries but train_embeds has {num_train} rows; they must match."
        )
    outside = (array < 0) | (array >= num_classes)
    if outside.any():
        raise ValueError(
            f"train_labels must lie in [0, {num_classes}) for {num_classes} prototypes; got "
            f"{sorted(set(array[outside].tolist()))[:10]}."
        )
    return torch.from_numpy(array.astype(np.int64))


def _prepare_eval(test_embeds, prototypes) -> tuple[torch.Tensor, torch.Tensor]:
    prototypes = _matrix("prototypes", prototypes)
    if prototypes.shape[0] == 0:
        raise ValueError("prototypes is empty: at least one class prototype is needed.")
    test = _matrix("test_embeds", test_embeds)
    _check_dims("test_embeds", test, prototypes)
    return _normalized("test_embeds", test), _normalized("prototypes", prototypes)


def _prepare(train_embeds, train_labels, test_embeds, prototypes):
    """Validated, L2-normalised float32 CPU tensors (train, labels, test, prototypes)."""
    test, prototypes = _prepare_eval(test_embeds, prototypes)
    train = _matrix("train_embeds", train_embeds)
    _check_dims("train_embeds", train, prototypes)
    if train.shape[0] == 0:
        raise ValueError("train_embeds is empty: few-shot adaptation needs at least one labelled shot.")
    labels = _labels(train_labels, train.shape[0], prototypes.shape[0])
    return _normalized("train_embeds", train), labels, test, prototypes


def _check_positive(**values) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite positive number, got {value!r}.")


def _check_training(epochs: int, lr: float, batch_size: int) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int | np.integer) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    _check_positive(lr=lr)


def _check_cache_parameters(alpha: float, beta: float, logit_scale: float) -> None:
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha!r}.")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite non-negative number, got {beta!r}.")
    _check_positive(logit_scale=logit_scale)


# ----------------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _predict(score: Callable[[torch.Tensor], torch.Tensor], test: torch.Tensor, device) -> torch.Tensor:
    """`score` applied to the test rows chunk by chunk, gathered as a float32 CPU tensor."""
    chunks = [
        score(test[start : start + _INFERENCE_CHUNK].to(device)).float().cpu()
        for start in range(0, len(test), _INFERENCE_CHUNK)
    ]
    if not chunks:  # no test rows: score an empty batch to learn the number of classes
        return score(test.to(device)).float().cpu()
    return torch.cat(chunks)


def _prediction(logits: torch.Tensor, extras: dict[str, np.ndarray]) -> FewShotPrediction:
    return FewShotPrediction(
        logits=logits.numpy(),
        probabilities=torch.softmax(logits, dim=1).numpy(),
        extras=extras,
    )


def _train(
    parameters: list[torch.Tensor],
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> np.ndarray:
    """Cross-entropy training of `parameters` (AdamW + per-step cosine decay, seeded shuffling); returns the
    loss of every step. `features` and `labels` already live on the training device."""
    num = len(labels)
    batch = min(batch_size, num)
    total_steps = epochs * math.ceil(num / batch)
    if total_steps == 0:
        return np.zeros(0, dtype=np.float32)
    optimizer = torch.optim.AdamW(parameters, lr=lr, eps=ADAMW_EPS, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(num, generator=generator).to(features.device)
        for start in range(0, num, batch):
            index = order[start : start + batch]
            loss = F.cross_entropy(logits_of(features[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.detach())
    return torch.stack(losses).float().cpu().numpy()


# ----------------------------------------------------------------------------------------------------------
# Zero-shot and Tip-Adapter
# ----------------------------------------------------------------------------------------------------------


def zero_shot_logits(test_embeds, prototypes, logit_scale: float = 100.0) -> np.ndarray:
    """`(M, C)` float32 zero-shot logits `logit_scale * x @ P.T` of the L2-normalised inputs."""
    _check_positive(logit_scale=logit_scale)
    test, prototypes = _prepare_eval(test_embeds, prototypes)
    return _predict(lambda x: logit_scale * x @ prototypes.T, test, "cpu").numpy()


def tip_adapter_logits(
    test_embeds,
    cache_keys,
    cache_values,
    prototypes,
    *,
    alpha: float = 1.0,
    beta: float = 5.0,
    logit_scale: float = 100.0,
) -> torch.Tensor:
    """`(M, C)` Tip-Adapter logits `s * x @ P.T + alpha * exp(-beta * (1 - x @ K.T)) @ V`.

    The formula only: no validation and no normalisation (callers pass L2-normalised rows). Arrays become
    tensors on `test_embeds`' device in their common floating dtype; tensors keep their autograd graph, so the
    result can be differentiated with respect to, e.g., trainable cache keys."""
    x = torch.as_tensor(test_embeds)
    keys = torch.as_tensor(cache_keys, device=x.device)
    protos = torch.as_tensor(prototypes, device=x.device)
    dtype = torch.promote_types(torch.promote_types(x.dtype, keys.dtype), protos.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    x, keys, protos = x.to(dtype), keys.to(dtype), protos.to(dtype)
    values = torch.as_tensor(cache_values, device=x.device).to(dtype)
    affinity = x @ keys.T
    cache_logits = torch.exp(-beta * (1.0 - affinity)) @ values
    return logit_scale * x @ protos.T + alpha * cache_logits


def tip_adapter(
    train_embeds,
    train_labels,
    test_embeds,
    prototypes,
    *,
    alpha: float = 1.0,
    beta: float = 5.0,
    logit_scale: float = 100.0,
    device: str | torch.device = "cpu",
) -> FewShotPrediction:
    """Training-free Tip-Adapter: the cache is the normalised shots (keys) and their one-hot labels
    (values)."""
    _check_cache_parameters(alpha, beta, logit_scale)
    train, labels, test, prototypes = _prepare(train_embeds, train_labels, test_embeds, prototypes)
    values = F.one_hot(labels, prototypes.shape[0]).float()
    keys_d, values_d, protos_d = train.to(device), values.to(device), prototypes.to(device)
    logits = _predict(
        lambda x: tip_adapter_logits(
            x, keys_d, values_d, protos_d, alpha=alpha, beta=beta, logit_scale=logit_scale
        ),
        test,
        device,
    )
    return _prediction(logits, {"cache_keys": train.numpy(), "cache_values": values.numpy()})


def tip_adapter_f(
    train_embeds,
    train_labels,
    test_embeds,
    prototypes,
    *,
    alpha: float = 1.0,
    beta: float = 5.0,
    logit_scale: float = 100.0,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
) -> FewShotPrediction:
    """Tip-Adapter-F: Tip-Adapter whose cache keys are fine-tuned by cross-entropy on the shots (values and
    prototypes fixed). With `epochs=0` it equals `tip_adapter`."""
    _check_cache_parameters(alpha, beta, logit_scale)
    _check_training(epochs, lr, batch_size)
    train, labels, test, prototypes = _prepare(train_embeds, train_labels, test_embeds, prototypes)
    values = F.one_hot(labels, prototypes.shape[0]).float().to(device)
    protos = prototypes.to(device)
    keys = nn.Parameter(train.clone().to(device))

    def logits_of(x):
        return tip_adapter_logits(x, keys, values, protos, alpha=alpha, beta=beta, logit_scale=logit_scale)

    losses = _train(
        [keys],
        logits_of,
        train.to(device),
        labels.to(device),
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        seed=seed,
    )
    logits = _predict(logits_of, test, device)
    extras = {
        "cache_keys": keys.detach().float().cpu().numpy(),
        "cache_values": values.cpu().numpy(),
        "train_loss": losses,
    }
    return _prediction(logits, extras)


# ----------------------------------------------------------------------------------------------------------
# CLIP-Adapter
# ----------------------------------------------------------------------------------------------------------


class CLIPAdapter(nn.Module):
    """Residual bottleneck on an image embedding: `forward(x) = r * A(x) + (1 - r) * x` with
    `A = Linear(D, D // reduction, bias=False) - ReLU - Linear(D // reduction, D, bias=False) - ReLU`
    (`self.fc`). The output is not normalised; `logits` normalises it and scores it against prototypes."""

    def __init__(self, dim: int, reduction: int = 4, residual_ratio: float = 0.2):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}.")
        if isinstance(reduction, bool) or not isinstance(reduction, int | np.integer) or reduction < 1:
            raise ValueError(f"reduction must be a positive integer, got {reduction!r}.")
        if dim // reduction < 1:
            raise ValueError(f"reduction {reduction} leaves no hidden units for dim {dim}.")
        if not (0.0 <= residual_ratio <= 1.0):
            raise ValueError(f"residual_ratio must lie in [0, 1], got {residual_ratio!r}.")
        hidden = int(dim) // int(reduction)
        self.dim, self.hidden_dim, self.residual_ratio = int(dim), hidden, float(residual_ratio)
        self.fc = nn.Sequential(
            nn.Linear(self.dim, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, self.dim, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.residual_ratio
        return r * self.fc(x) + (1.0 - r) * x

    def logits(self, x: torch.Tensor, prototypes: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
        """`logit_scale * normalize(forward(x)) @ prototypes.T`."""
        return logit_scale * F.normalize(self(x), dim=-1) @ prototypes.T


def clip_adapter(
    train_embeds,
    train_labels,
    test_embeds,
    prototypes,
    *,
    reduction: int = 4,
    residual_ratio: float = 0.2,
    logit_scale: float = 100.0,
    epochs: int = 50,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
) -> FewShotPrediction:
    """CLIP-Adapter: a `CLIPAdapter` (initialised from `seed`) trained by cross-entropy on the shots against
    the fixed prototypes, then used to score the test embeddings."""
    _check_positive(logit_scale=logit_scale)
    _check_training(epochs, lr, batch_size)
    train, labels, test, prototypes = _prepare(train_embeds, train_labels, test_embeds, prototypes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = CLIPAdapter(train.shape[1], reduction=reduction, residual_ratio=residual_ratio)
    adapter = adapter.to(device).train()
    protos = prototypes.to(device)

    def logits_of(x):
        return adapter.logits(x, protos, logit_scale)

    losses = _train(
        list(adapter.parameters()),
        logits_of,
        train.to(device),
        labels.to(device),
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        seed=seed,
    )
    adapter.eval()
    logits = _predict(logits_of, test, device)
    extras = {
        "down_weight": adapter.fc[0].weight.detach().float().cpu().numpy(),
        "up_weight": adapter.fc[2].weight.detach().float().cpu().numpy(),
        "train_loss": losses,
    }
    return _prediction(logits, extras)


FEW_SHOT_METHODS: dict[str, Callable[..., FewShotPrediction]] = {
    "clip-adapter": clip_adapter,
    "tip-adapter": tip_adapter,
    "tip-adapter-f": tip_adapter_f,
}
