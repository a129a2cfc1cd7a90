"""The three MaskedCLIP losses (Eqs. 1, 2–4 and 5 of the paper; METHODS.md §1) and their helpers; the
contrastive one (shared with KeepFIT) lives in `contrastive.py`.

Each function is pure tensor math so that tests can check it against a plain re-implementation. This file
is copied next to saved checkpoints for ``trust_remote_code`` loading: it imports nothing from ``retvlp``.
"""

import torch
import torch.nn.functional as F

from .contrastive import gather_with_grad, label_guided_contrastive_loss, label_positive_mask


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


__all__ = [
    "gather_with_grad",
    "label_guided_contrastive_loss",
    "label_positive_mask",
    "masked_feature_distillation_loss",
    "masked_image_modeling_loss",
    "patchify",
]
