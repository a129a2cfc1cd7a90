"""Numeric drawing primitives of the synthetic fundus renderer: Gaussian blur, smooth random fields,
anti-aliased ellipse stamps and alpha compositing (numpy only, float32 images in [0, 1])."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def gauss_matrix(size: int, sigma: float, conserve_mass: bool) -> np.ndarray:
    """Dense 1-D Gaussian blur operator ``out = K @ x`` (rows sum to 1, or columns when conserving mass)."""
    idx = np.arange(size, dtype=np.float64)
    kernel = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / sigma) ** 2)
    kernel /= kernel.sum(axis=0 if conserve_mass else 1, keepdims=True)
    kernel = kernel.astype(np.float32)
    kernel.flags.writeable = False
    return kernel


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W) or (H, W, C) float image with edge-renormalised kernels."""
    if sigma <= 0.05:
        return image
    k = gauss_matrix(image.shape[0], float(sigma), False)
    if image.ndim == 2:
        return k @ image @ k.T
    out = np.empty_like(image)
    for c in range(image.shape[2]):
        out[..., c] = k @ image[..., c] @ k.T
    return out


def bspline_matrix(coords: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    """Cubic B-spline interpolation weights (len(coords), n) for a control grid spanning [lo, hi]."""
    t = np.clip((coords - lo) / (hi - lo) * (n - 1), 0.0, n - 1 - 1e-6)
    i = np.floor(t).astype(np.int64)
    f = t - i
    weights = np.stack(
        [(1 - f) ** 3 / 6, (3 * f**3 - 6 * f**2 + 4) / 6, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6, f**3 / 6],
        axis=1,
    )
    rows = np.arange(coords.size)[:, None]
    cols = np.clip(i[:, None] + np.arange(-1, 3)[None, :], 0, n - 1)  # clipped taps accumulate at the edges
    out = np.bincount((rows * n + cols).ravel(), weights=weights.ravel(), minlength=coords.size * n)
    return out.reshape(coords.size, n).astype(np.float32)


def smooth_field(grid: np.ndarray, u: np.ndarray, v: np.ndarray, extent: float = 1.35) -> np.ndarray:
    """Sample a smooth random field (control grid over [-extent, extent]^2) at separable coordinates."""
    n = grid.shape[0]
    return bspline_matrix(v, -extent, extent, n) @ grid @ bspline_matrix(u, -extent, extent, n).T


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def stamp(
    layer: np.ndarray, px, py, rx, ry, angle, amp, *, soft: float = 0.6, dome: float = 0.0, mode: str = "max"
) -> None:
    """Draw anti-aliased ellipses (pixel units, vectorised over blobs) into a 2-D alpha/absorption layer.

    ``dome`` > 0 fades the blob towards its rim (rounded deposits); ``mode`` "max" keeps the strongest
    blob where they overlap, "add" accumulates (absorbing lesions darken where they overlap).
    """
    px, py, rx, ry, angle, amp = (
        np.atleast_1d(np.asarray(a, dtype=np.float32)) for a in (px, py, rx, ry, angle, amp)
    )
    if px.size == 0:
        return
    size_y, size_x = layer.shape
    half = int(math.ceil(float(max(rx.max(), ry.max())) + 2.0 * soft + 1.0))
    offsets = np.arange(-half, half + 1)
    ix = np.rint(px).astype(np.int64)[:, None, None] + offsets[None, None, :]
    iy = np.rint(py).astype(np.int64)[:, None, None] + offsets[None, :, None]
    dx = ix - px[:, None, None]
    dy = iy - py[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    a = (dx * cos + dy * sin) / rx[:, None, None]
    b = (-dx * sin + dy * cos) / ry[:, None, None]
    dist = np.sqrt(a * a + b * b)  # 1 on the rim
    radius = np.sqrt(rx * ry)[:, None, None]
    coverage = np.clip(0.5 - (dist - 1.0) * radius / (2.0 * soft), 0.0, 1.0)
    alpha = amp[:, None, None] * coverage
    if dome > 0:
        alpha = alpha * (1.0 - dome * np.clip(dist, 0.0, 1.0) ** 2)
    ix, iy = np.broadcast_arrays(ix, iy)
    keep = (ix >= 0) & (ix < size_x) & (iy >= 0) & (iy < size_y) & (alpha > 1e-4)
    target = (iy[keep], ix[keep])
    if mode == "add":
        np.add.at(layer, target, alpha[keep])
    else:
        np.maximum.at(layer, target, alpha[keep])


def over(image: np.ndarray, alpha: np.ndarray, colour) -> None:
    """Alpha-composite a flat colour over the image in place."""
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    image *= 1.0 - a
    image += a * np.asarray(colour, dtype=np.float32)
