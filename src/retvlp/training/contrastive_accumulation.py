"""Contrastive batches larger than memory: `optim.contrastive_accumulation` (GradCache, Gao et al. 2021;
open_clip's `--accum-freq`).

Plain gradient accumulation sums per-micro-batch losses, so each micro-batch's contrastive term sees only its
own negatives. With this option one optimizer step of K micro-batches runs in three passes:

1. every micro-batch is embedded without a graph (`torch.no_grad`) and the embeddings of each image–text term
   (the task's `contrastive_fields`) and its labels are cached;
2. each contrastive term is computed over the whole accumulated batch — and, under torch.distributed, over
   every process's accumulated batch, gathered with gradients inside the loss — with the cached embeddings as
   leaves; `torch.autograd.grad` gives d(term)/d(embedding) and d(term)/d(logit scale, bias);
3. every micro-batch is run again with a graph and back-propagates `Σ <embedding, cached gradient>` plus its
   per-sample terms (MIM, MFD, KeepFIT's knowledge injection) divided by K, which accumulate as before; the
   last micro-batch also carries the logit scale's (and bias's) gradient from pass 2, so that under DDP every
   gradient is in the one synchronised backward.

Both passes of a micro-batch see the same random draws: the batch (rows, crops, flips, prompts, MAE / CLIP /
teacher mask noise) is drawn once and reused, and the torch RNG (dropout, drop-path) is re-seeded from
`(seed, micro_step, rank)` before each pass. BatchNorm running statistics move in pass 3 only (pass 1 restores
them), as in a plain micro-step. The gradient of every parameter equals that of one backward through the K
micro-batch graphs of the accumulated loss `Σ_c w_c·L_c(all embeddings) + mean_k(per-sample terms_k)`
(tests/test_contrastive_accumulation.py, float64).

Cost: one extra forward per micro-batch without a graph (the whole pretraining forward: its per-sample terms
are recomputed too, which keeps the random streams of the two passes aligned without changing the models), the
K micro-batches' inputs held for the step (on the host until each pass moves them), and the cached embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from ..common.contrastive import label_guided_contrastive_loss
from .config import ConfigError
from .task import PretrainTask, released_model


@dataclass
class AccumulatedStep:
    """What one accumulated step leaves for the loop: per micro-batch the logged terms (detached; the
    contrastive ones are the full accumulated batch's value), and on request the collapse guard's terms over
    the full accumulated (gathered) batch."""

    micro_terms: list[dict[str, torch.Tensor]]
    contrastive: list


def contrastive_loss(model: torch.nn.Module, image_embeds, text_embeds, labels):
    """The released model's image–text term on L2-normalised embeddings `(loss, logits_per_image,
    logits_per_text)`: `model.contrastive_loss` (the configured loss kind, scale and bias) where the model has
    it, otherwise the label-guided softmax loss with the clamped logit scale."""
    method = getattr(model, "contrastive_loss", None)
    if method is not None:
        return method(image_embeds, text_embeds, labels=labels)
    return label_guided_contrastive_loss(
        image_embeds,
        text_embeds,
        model.clamped_logit_scale(),
        labels=labels,
        gather_distributed=model.config.gather_distributed,
    )


@contextmanager
def frozen_running_statistics(model: torch.nn.Module):
    """Leave BatchNorm running statistics (and batch counters) as they were: pass 1 normalises with the batch
    statistics like any training forward but must not move them (pass 3 does, once per micro-batch)."""
    norms = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training
    ]
    saved = [
        [b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
        for m in norms
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, buffers in zip(norms, saved, strict=True):
                current = [
                    b
                    for b in (norm.running_mean, norm.running_var, norm.num_batches_tracked)
                    if b is not None
                ]
                for target, value in zip(current, buffers, strict=True):
                    target.copy_(value)


def _leaf(tensor: torch.Tensor) -> torch.Tensor:
    """A cached embedding as a leaf of pass 2, in at least float32 (a bf16 / fp16 gradient of a term averaged
    over a large batch would lose its small entries)."""
    return tensor.detach().to(torch.promote_types(tensor.dtype, torch.float32)).requires_grad_(True)


def _dot(tensor: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient with respect to `tensor` is `grad`."""
    return (tensor.to(grad.dtype) * grad).sum()


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if any(p is None for p in parts) else torch.cat(parts)


def contrastive_accumulation_step(
    model: torch.nn.Module,
    task: PretrainTask,
    batches: list[dict],
    seeds: list[int],
    accelerator,
    *,
    check: Callable[[dict[str, torch.Tensor]], None] | None = None,
    guard: bool = False,
) -> AccumulatedStep:
    """One optimizer step's gradients over the micro-batches `batches` (pass 1, 2, 3 of the module docstring),
    accumulated into the parameters' `.grad` through `accelerator.backward`; `seeds[k]` seeds the torch RNG
    before both passes of micro-batch k. `check(terms)` sees each micro-batch's logged terms before its
    backward (the loop's NaN stop). With `guard`, the collapse guard's contrastive terms over the full batch
    are returned too (a collective: every process must pass the same `guard`)."""
    unwrapped = accelerator.unwrap_model(model)
    released = released_model(unwrapped)
    weights = task.loss_weights(unwrapped)
    unweighted = set(task.loss_terms) - {"loss"} - set(weights)
    if unweighted:
        raise ValueError(f"{type(task).__name__}.loss_weights gives no weight for {sorted(unweighted)}.")
    fields = task.contrastive_fields
    contrastive_names = {f[0] for f in fields}
    device, count = accelerator.device, len(batches)

    # Pass 1: embeddings (and labels) of every micro-batch, without a graph.
    cached: dict[str, dict[str, list]] = {f[0]: {"image": [], "text": [], "labels": []} for f in fields}
    with torch.no_grad(), frozen_running_statistics(unwrapped):
        for batch, seed in zip(batches, seeds, strict=True):
            torch.manual_seed(seed)
            _, outputs = task.training_forward(model, batch, device)
            for loss_name, image_name, text_name, label_key in fields:
                store = cached[loss_name]
                store["image"].append(getattr(outputs, image_name, None))
                store["text"].append(getattr(outputs, text_name, None))
                labels = batch.get(label_key) if label_key else None
                store["labels"].append(None if labels is None else labels.to(device))
            del outputs

    # Pass 2: each term over the accumulated (gathered) batch; gradients of the embeddings and of the
    # parameters the term reads itself (the logit scale, the sigmoid loss's bias).
    parameters = [p for p in released.parameters() if p.requires_grad]
    full: dict[str, torch.Tensor] = {}
    leaves: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    total = None
    for loss_name, *_ in fields:
        store = cached[loss_name]
        images, texts = _cat(store["image"]), _cat(store["text"])
        if images is None or texts is None:
            continue  # the term is off (e.g. use_clip=False)
        leaves[loss_name] = (_leaf(images), _leaf(texts))
        labels = None if store["labels"][0] is None else torch.cat(store["labels"])
        value, _, _ = contrastive_loss(released, *leaves[loss_name], labels)
        full[loss_name] = value.detach()
        total = weights[loss_name] * value if total is None else total + weights[loss_name] * value
    # per term: the embedding gradients of each micro-batch (image, text); the parameters' gradients
    embedding_grads: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    parameter_grads: list[tuple[torch.Tensor, torch.Tensor]] = []
    contrastive_total = None
    if total is not None:
        inputs = [leaf for pair in leaves.values() for leaf in pair]
        grads = torch.autograd.grad(total, inputs + parameters, allow_unused=True)
        for i, (name, pair) in enumerate(leaves.items()):
            image_grad, text_grad = (
                torch.zeros_like(leaf) if grad is None else grad
                for leaf, grad in zip(pair, grads[2 * i : 2 * i + 2], strict=True)
            )
            sizes = [image.shape[0] for image in cached[name]["image"]]
            embedding_grads[name] = list(zip(image_grad.split(sizes), text_grad.split(sizes), strict=True))
        parameter_grads = [
            (p, g) for p, g in zip(parameters, grads[len(inputs) :], strict=True) if g is not None
        ]
        contrastive_total = total.detach()
    del total, leaves

    # Pass 3: each micro-batch again, with a graph: its per-sample terms / K and the cached embedding gradients.
    micro_terms = []
    for k, (batch, seed) in enumerate(zip(batches, seeds, strict=True)):
        torch.manual_seed(seed)
        last = k == count - 1
        with nullcontext() if last else accelerator.no_sync(model):
            terms, outputs = task.training_forward(model, batch, device)
            per_sample = [
                weights[name] * value
                for name, value in terms.items()
                if name != "loss" and name not in contrastive_names
            ]
            surrogate = [sum(per_sample) / count] if per_sample else []
            for loss_name, image_name, text_name, _ in fields:
                if loss_name in embedding_grads:
                    image_grad, text_grad = embedding_grads[loss_name][k]
                    surrogate.append(_dot(getattr(outputs, image_name), image_grad))
                    surrogate.append(_dot(getattr(outputs, text_name), text_grad))
            if last:  # in the synchronised backward, so that DDP averages them with the rest
                surrogate += [_dot(parameter, grad) for parameter, grad in parameter_grads]
            logged = {name: value.detach() for name, value in terms.items()}
            if contrastive_total is not None:
                logged.update(full)
                logged["loss"] = sum(v.detach() for v in per_sample) + contrastive_total
            if check is not None:
                check(logged)
            if surrogate:
                accelerator.backward(sum(surrogate))
        micro_terms.append(logged)
        del terms, outputs, surrogate, per_sample

    contrastive = []
    if guard:
        outputs, batch = SimpleNamespace(), {}
        for loss_name, image_name, text_name, label_key in fields:
            if loss_name not in full:
                continue
            store = cached[loss_name]
            setattr(outputs, loss_name, full[loss_name])
            setattr(outputs, image_name, torch.cat(store["image"]))
            setattr(outputs, text_name, torch.cat(store["text"]))
            if label_key and store["labels"][0] is not None:
                batch[label_key] = torch.cat(store["labels"])
        contrastive = task.contrastive_terms(outputs, batch, accelerator)
    return AccumulatedStep(micro_terms, contrastive)


def check_supported(task: PretrainTask, accelerator, config: Any) -> None:
    """Refuse `optim.contrastive_accumulation` where it cannot apply: a family without an image–text term, or
    FSDP / DeepSpeed (the pass-2 gradients of the logit scale are taken on the unsharded parameter, and
    DeepSpeed owns its backward)."""
    if not task.contrastive_fields:
        raise ConfigError(
            f"{config.source}: optim.contrastive_accumulation: the {task.family} family has no image–text "
            "contrastive term (its terms accumulate per micro-batch already); remove the setting."
        )
    kind = str(getattr(accelerator, "distributed_type", "")).rsplit(".", 1)[-1]
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise ConfigError(
            f"{config.source}: optim.contrastive_accumulation is supported on one process and under DDP "
            f"(accelerate launch --multi_gpu), not with {kind}."
        )


__all__ = [
    "AccumulatedStep",
    "check_supported",
    "contrastive_accumulation_step",
    "contrastive_loss",
    "frozen_running_statistics",
]
