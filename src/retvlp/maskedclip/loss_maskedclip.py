"""The three MaskedCLIP losses (Eqs. 1, 2–4 and 5 of the paper; METHODS.md §1) and their helpers.

Each function is pure tensor math so that tests can check it against a plain re-implementation. This file
is copied next to saved checkpoints for ``trust_remote_code`` loading: it imports nothing from ``retvlp``.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into flattened patches in ViT-MAE's order.

    Args:
        pixel_values: `(batch, channels, height, width)`, height and width divisible by `patch_size`.
    Returns:
        `(batch, num_patches, patch_size * patch_size * channels)`, patches row-major over the grid, each
        patch flattened as (row, column, channel) — the layout of transformers' ViT-MAE pixel decoder.
    """
    batch, channels, height, width = pixel_values.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"Image size {height}x{width} is not divisible by the patch size {patch_size}.")
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = pixel_values.reshape(batch, channels, grid_h, patch_size, grid_w, patch_size)
    patches = patches.permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(batch, grid_h * grid_w, patch_size * patch_size * channels)


def masked_image_modeling_loss(
    predictions: torch.Tensor,
    target_patches: torch.Tensor,
    mask: torch.Tensor,
    norm_pix_loss: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """L_mim, Eq. 1: squared error on the masked patches only, averaged per image, then over the batch.

    Per patch the error is the MEAN over its pixel values (MAE's convention; Eq. 1's squared norm is the same
    up to the constant factor patch_size²·channels, which λ-weighting absorbs).

    Args:
        predictions: `(batch, num_patches, patch_dim)` pixel-decoder output, in the original patch order.
        target_patches: `(batch, num_patches, patch_dim)` from [`patchify`].
        mask: `(batch, num_patches)`, 1 for masked (to reconstruct), 0 for visible patches.
        norm_pix_loss: normalise each target patch by its own mean and variance (MAE, RETFound).
    """
    target = target_patches.float()
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    per_patch = (predictions.float() - target).pow(2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    per_image = (per_patch * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    return per_image.mean()


def masked_feature_distillation_loss(
    predicted_features: torch.Tensor, target_features: torch.Tensor
) -> torch.Tensor:
    """L_mfd, Eq. 5: mean over images and ALL patches of −cos(prediction, momentum target).

    Args:
        predicted_features: `(batch, num_patches, dim)` feature-decoder output for every patch.
        target_features: `(batch, num_patches, dim)` momentum encoder (+ bridge) patch tokens; no gradient is
            taken through them.
    Returns a scalar in [−1, 1]; −1 for a perfect prediction.
    """
    prediction = F.normalize(predicted_features.float(), dim=-1)
    target = F.normalize(target_features.detach().float(), dim=-1)
    return -(prediction * target).sum(dim=-1).mean()


def _distributed_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0, keeping the autograd graph.

    `accelerate.gather` and `dist.all_gather` return tensors without gradient; the functional all-gather
    back-propagates each process's share of the gradient to its owner, so a loss over the global batch
    trains every process's encoder. Requires equal per-process batch sizes.
    """
    world_size, _ = _distributed_world()
    if world_size == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def _gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    world_size, _ = _distributed_world()
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
    if image_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(
            f"The contrastive loss needs one text per image: got {image_embeds.shape[0]} images and "
            f"{text_embeds.shape[0]} texts."
        )
    if labels is not None and labels.shape[0] != image_embeds.shape[0]:
        raise ValueError(
            f"labels has {labels.shape[0]} entries for {image_embeds.shape[0]} image-text pairs."
        )
    world_size, rank = _distributed_world() if gather_distributed else (1, 0)
    if world_size > 1:
        all_images, all_texts = gather_with_grad(image_embeds), gather_with_grad(text_embeds)
        all_labels = _gather_no_grad(labels) if labels is not None else None
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
    loss_i2t = -(targets * F.log_softmax(logits_per_image.float(), dim=1)).sum(dim=1).mean()
    loss_t2i = -(targets * F.log_softmax(logits_per_text.float(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i2t + loss_t2i), logits_per_image, logits_per_text


__all__ = [
    "gather_with_grad",
    "label_guided_contrastive_loss",
    "label_positive_mask",
    "masked_feature_distillation_loss",
    "masked_image_modeling_loss",
    "patchify",
]
