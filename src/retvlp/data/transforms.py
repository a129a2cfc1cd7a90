"""Batch image transforms on cached pixels, shared by pretraining's step batches and fine-tuning."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def augment_and_normalize(
    pixels: np.ndarray,
    crops: np.ndarray | None,
    flips: np.ndarray | None,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> torch.Tensor:
    """`(B, S, S, 3)` uint8 → normalised `(B, 3, S, S)` float32, cropping and flipping on the fly.

    Args:
        crops: `(B, 3)` rows of (side fraction, centre x, centre y) in [-1, 1] coordinates, or None.
        flips: `(B,)` bool, or None.
    """
    images = (
        torch.from_numpy(pixels.astype(np.float32)).permute(0, 3, 1, 2).div_(255.0)
    )  # Arrow buffers are read-only
    if crops is not None or flips is not None:
        batch = images.shape[0]
        theta = torch.zeros(batch, 2, 3)
        side = torch.from_numpy(crops[:, 0]).float() if crops is not None else torch.ones(batch)
        theta[:, 0, 0] = side * (
            torch.from_numpy(np.where(flips, -1.0, 1.0)).float() if flips is not None else 1
        )
        theta[:, 1, 1] = side
        if crops is not None:
            theta[:, 0, 2] = torch.from_numpy(crops[:, 1]).float()
            theta[:, 1, 2] = torch.from_numpy(crops[:, 2]).float()
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


__all__ = ["augment_and_normalize"]
