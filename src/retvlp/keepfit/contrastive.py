# Generated from src/retvlp/common/contrastive.py by utils/check_copies.py — do not edit;
# edit the source and run `python utils/check_copies.py --fix`.
"""Label-guided image-text contrastive losses over the global batch, shared by both model families.

MaskedCLIP's L_lg_clip (Eqs. 2–4) and KeepFIT V2's L_itc (Eqs. 2–4 of its paper) are the same loss: a
symmetric cross-entropy whose soft targets are row-normalised "same label" matrices — identity for
image–caption pairs. Under torch.distributed both score local rows against the global batch gathered WITH
gradients (the KeepFIT reference code contrasts per GPU only).

Beyond both papers, `label_guided_sigmoid_loss` is SigLIP's pairwise sigmoid loss (Zhai et al. 2023) with the
same positives; `contrastive_loss(kind, ...)` picks one of the two (`config.contrastive_loss`).

Pure torch, no ``retvlp`` imports: the single source in `retvlp/common/`; each family folder holds a generated
copy (`utils/check_copies.py`) that `save_pretrained` writes next to checkpoints for ``trust_remote_code``.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F


def distributed_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0, keeping the autograd graph.

    `accelerate.gather` and `dist.all_gather` return tensors without gradient; the functional all-gather
    back-propagates each process's share of the gradient to its owner, so a loss over the global batch
    trains every process's encoder. Requires equal per-process batch sizes.
    """
    world_size, _ = distributed_world()
    if world_size == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    world_size, _ = distributed_world()
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def label_positive_mask(
    labels: torch.Tensor | None,
    all_labels: torch.Tensor | None,
    local: int,
    total: int,
    offset: int = 0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Which (local row, global column) pairs count as positives in the label-guided loss.

    Row i and column j are positive when they are the same pair (j = offset + i) or when both carry a label
    (≥ 0) and the labels are equal; a 2-D `labels` (multi-hot) is compared row-wise. Label −1 (in a 2-D
    row: any −1 entry) means "no label": that pair is positive only with itself, so without labels the loss
    is CLIP's.

    Returns a bool tensor `(local, total)`.
    """
    rows = torch.arange(local, device=device)
    positives = torch.zeros(local, total, dtype=torch.bool, device=device)
    positives[rows, rows + offset] = True
    if labels is None:
        return positives
    if labels.dim() == 1:
        same = (labels[:, None] == all_labels[None, :]) & (labels[:, None] >= 0)
    else:
        same = (labels[:, None, :] == all_labels[None, :, :]).all(dim=-1) & (labels >= 0).all(dim=-1)[:, None]
    return positives | same


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Half-precision logits in float32 for the loss (float64 stays float64)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _check_pairs(image_embeds: torch.Tensor, text_embeds: torch.Tensor, labels: torch.Tensor | None) -> None:
    if image_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(
            f"The contrastive loss needs one text per image: got {image_embeds.shape[0]} images and "
            f"{text_embeds.shape[0]} texts."
        )
    if labels is not None and labels.shape[0] != image_embeds.shape[0]:
        raise ValueError(
            f"labels has {labels.shape[0]} entries for {image_embeds.shape[0]} image-text pairs."
        )


def label_guided_contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor | None = None,
    gather_distributed: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_lg_clip, Eqs. 2–4: UniCL-style CLIP loss where pairs sharing a label are positives.

    With s_ij = scale·⟨img_i, txt_j⟩ and P(i) = {j : y_j = y_i},
    L_i2t = −mean_i (1/|P(i)|) Σ_{j∈P(i)} log softmax_j(s_i·), L_t2i likewise over columns, and
    L = ½ L_i2t + ½ L_t2i: cross-entropy against row-normalised soft targets. Under torch.distributed (and
    `gather_distributed`), each process scores its local rows against the GLOBAL batch gathered with
    gradients; the mean of the per-process losses equals the single-process loss on the global batch.

    Args:
        image_embeds, text_embeds: `(batch, dim)` L2-normalised embeddings of the paired samples.
        logit_scale: scalar, already exponentiated and clamped.
        labels: optional `(batch,)` integer class ids (−1: none) or `(batch, num_classes)` multi-hot.
    Returns:
        `(loss, logits_per_image, logits_per_text)`, logits of shape `(batch, global_batch)`.
    """
    _check_pairs(image_embeds, text_embeds, labels)
    world_size, rank = distributed_world() if gather_distributed else (1, 0)
    if world_size > 1:
        all_images, all_texts = gather_with_grad(image_embeds), gather_with_grad(text_embeds)
        all_labels = gather_no_grad(labels) if labels is not None else None
    else:
        all_images, all_texts, all_labels = image_embeds, text_embeds, labels

    local = image_embeds.shape[0]
    positives = label_positive_mask(
        labels, all_labels, local, all_images.shape[0], offset=rank * local, device=image_embeds.device
    )
    targets = positives.to(torch.float32)
    targets = targets / targets.sum(dim=1, keepdim=True)

    logits_per_image = logit_scale * image_embeds @ all_texts.t()
    logits_per_text = logit_scale * text_embeds @ all_images.t()
    loss_i2t = -(targets * F.log_softmax(_at_least_float32(logits_per_image), dim=1)).sum(dim=1).mean()
    loss_t2i = -(targets * F.log_softmax(_at_least_float32(logits_per_text), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i2t + loss_t2i), logits_per_image, logits_per_text


# `config.contrastive_loss` values: the papers' softmax cross-entropy, SigLIP's pairwise sigmoid.
CONTRASTIVE_LOSSES = ("softmax", "sigmoid")


def label_guided_sigmoid_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    labels: torch.Tensor | None = None,
    gather_distributed: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023) with label-guided positives; beyond both papers.

    With z_ij = scale·⟨img_i, txt_j⟩ + bias and s_ij = +1 when (i, j) is a positive (the same pair, or the same
    label: `label_positive_mask`), −1 otherwise, L = −(1/|B|) Σ_i Σ_j log σ(s_ij·z_ij), |B| the number of
    images. Every (image, text) pair of the batch is one binary "do they match" decision, so there is no
    normalisation over a row and no second (text → image) direction. Under torch.distributed (and
    `gather_distributed`), each process scores its local images against the GLOBAL texts gathered with
    gradients (each pair counted once over all processes) and divides by its local image count: the mean of
    the per-process losses equals the single-process loss on the global batch.

    Args:
        image_embeds, text_embeds: `(batch, dim)` L2-normalised embeddings of the paired samples.
        logit_scale: scalar, already exponentiated and clamped.
        logit_bias: scalar, the learnable bias b.
        labels: optional `(batch,)` integer class ids (−1: none) or `(batch, num_classes)` multi-hot.
    Returns:
        `(loss, logits_per_image, logits_per_text)`, logits z (float32 or wider) of shape `(batch, global_batch)`.
    """
    _check_pairs(image_embeds, text_embeds, labels)
    world_size, rank = distributed_world() if gather_distributed else (1, 0)
    if world_size > 1:
        all_texts = gather_with_grad(text_embeds)
        all_labels = gather_no_grad(labels) if labels is not None else None
    else:
        all_texts, all_labels = text_embeds, labels

    local = image_embeds.shape[0]
    positives = label_positive_mask(
        labels, all_labels, local, all_texts.shape[0], offset=rank * local, device=image_embeds.device
    )
    # The bias is added in float32 (at least): at SigLIP's b = −10, half precision would round z to steps of 1/16.
    logits_per_image = _at_least_float32(logit_scale * image_embeds @ all_texts.t())
    bias = logit_bias.to(logits_per_image.dtype)
    logits_per_image = logits_per_image + bias
    signs = positives.to(logits_per_image.dtype) * 2.0 - 1.0
    loss = -F.logsigmoid(signs * logits_per_image).sum() / local
    if world_size > 1:  # the texts' rows against the global images, as the softmax loss returns them
        logits_per_text = (
            _at_least_float32(logit_scale * text_embeds @ gather_with_grad(image_embeds).t()) + bias
        )
    else:
        logits_per_text = logits_per_image.t()
    return loss, logits_per_image, logits_per_text


def contrastive_loss(
    kind: str,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    gather_distributed: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The image-text contrastive term of `kind` (`config.contrastive_loss`): `"softmax"`, the papers'
    `label_guided_contrastive_loss` (takes no bias: a softmax is blind to it), or `"sigmoid"`,
    `label_guided_sigmoid_loss` (needs `logit_bias`). Returns `(loss, logits_per_image, logits_per_text)`."""
    if kind == "softmax":
        if logit_bias is not None:
            raise ValueError(
                "The softmax contrastive loss has no logit bias; logit_bias is for contrastive_loss='sigmoid'."
            )
        return label_guided_contrastive_loss(
            image_embeds, text_embeds, logit_scale, labels=labels, gather_distributed=gather_distributed
        )
    if kind == "sigmoid":
        if logit_bias is None:
            raise ValueError("The sigmoid contrastive loss needs logit_bias (a scalar tensor).")
        return label_guided_sigmoid_loss(
            image_embeds,
            text_embeds,
            logit_scale,
            logit_bias,
            labels=labels,
            gather_distributed=gather_distributed,
        )
    raise ValueError(f"contrastive_loss must be one of {CONTRASTIVE_LOSSES}, got {kind!r}.")


__all__ = [
    "CONTRASTIVE_LOSSES",
    "contrastive_loss",
    "distributed_world",
    "gather_no_grad",
    "gather_with_grad",
    "label_guided_contrastive_loss",
    "label_guided_sigmoid_loss",
    "label_positive_mask",
]
