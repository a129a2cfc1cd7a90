"""Blood vessels of the synthetic fundus: the patient's retinal vessel tree (arcades leaving the optic disc),
the large choroidal vessels seen in pathologic myopia, and their Gaussian-profile line drawing.

Trees are grown from the patient's own seeds and cached per patient (all their images share them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .anatomy import PatientAnatomy
from .canvas import Canvas
from .raster import gauss_matrix, smoothstep

VESSEL_STEP = 0.004  # sampling step of the vessel centre lines, in FOV radii
_SIGMA_MIN = 0.55  # narrowest Gaussian vessel profile drawn, in pixels
_SIGMA_RATIO = 1.5  # ratio between consecutive vessel-width levels
_SIGMA_LEVELS = 9


@dataclass(frozen=True)
class VesselTree:
    """Densely sampled vessel centre lines (cached and shared, hence read-only arrays)."""

    x: np.ndarray
    y: np.ndarray
    width: np.ndarray  # full width at half maximum, FOV radii
    vein: np.ndarray  # bool

    def __post_init__(self):
        for array in (self.x, self.y, self.width, self.vein):
            array.flags.writeable = False


def grow_vessel(rng, out, start, heading, width, length, curvature, depth, vein, fovea, wander=0.15) -> None:
    """Grow one vessel as a random walk of its heading, then recursively its side branches."""
    n = max(int(length / VESSEL_STEP), 4)
    s = np.arange(n, dtype=np.float64) * VESSEL_STEP
    k0, k1 = curvature
    drift = np.cumsum(rng.normal(0.0, wander * math.sqrt(VESSEL_STEP), n))
    wavelength = rng.uniform(0.12, 0.3)
    tortuosity = rng.uniform(0.05, 0.15) * np.sin(2 * np.pi * s / wavelength + rng.uniform(0, 2 * np.pi))
    # Curvature k0 relaxing over the length scale k1 (0: constant), plus random drift and tortuosity.
    bend = k0 * s if k1 <= 0 else k0 * k1 * (1.0 - np.exp(-s / k1))
    heading_s = heading + bend + drift + tortuosity - tortuosity[0]
    x = start[0] + np.concatenate([[0.0], np.cumsum(np.cos(heading_s[:-1]) * VESSEL_STEP)])
    y = start[1] + np.concatenate([[0.0], np.cumsum(np.sin(heading_s[:-1]) * VESSEL_STEP)])
    # Stop at the edge of the field of view and at the foveal avascular zone.
    stop = np.flatnonzero((x * x + y * y > 1.04**2) | ((x - fovea[0]) ** 2 + (y - fovea[1]) ** 2 < 0.1**2))
    if stop.size:
        n = int(stop[0])
        if n < 4:
            return
        x, y, s, heading_s = x[:n], y[:n], s[:n], heading_s[:n]
    w = width * (1.0 - 0.45 * s / length)
    out.append((x, y, w, np.full(n, vein)))
    if depth <= 0:
        return
    for _ in range(rng.poisson(2.0 * s[-1] + 0.3)):
        i = int(rng.integers(int(0.08 * n), max(int(0.92 * n), int(0.08 * n) + 1)))
        child_width = float(w[i] * rng.uniform(0.5, 0.78))
        if child_width < 0.0045:
            continue
        child_heading = heading_s[i] + (1.0 if rng.random() < 0.5 else -1.0) * rng.uniform(0.45, 1.05)
        child_len = float((s[-1] - s[i]) * rng.uniform(0.35, 0.8) + rng.uniform(0.08, 0.25))
        to_fovea = (fovea[0] - x[i]) * math.cos(child_heading) + (fovea[1] - y[i]) * math.sin(child_heading)
        if to_fovea > 0:  # macular branches stay short
            child_len *= 0.4
        grow_vessel(
            rng,
            out,
            (x[i], y[i]),
            child_heading,
            child_width,
            child_len,
            (rng.normal(0.0, 0.8), 0.0),
            depth - 1,
            vein,
            fovea,
            0.3,
        )


@lru_cache(maxsize=64)
def vessel_tree(anatomy: PatientAnatomy) -> VesselTree:
    """The patient's vessel centre lines in canonical coordinates (cached: shared by all their images)."""
    rng = np.random.default_rng(anatomy.vessel_seed)
    disc = (anatomy.disc_x, anatomy.disc_y)
    fovea = anatomy.fovea
    out: list = []
    vein_w, art_w = 0.03 * rng.uniform(0.9, 1.1), 0.022 * rng.uniform(0.9, 1.1)
    for flip in (-1.0, 1.0):  # -1: superior (up), +1: inferior
        # Temporal arcade: leaves the disc vertically and arches around the macula.
        for vein, width, dh in ((True, vein_w, 0.0), (False, art_w, rng.uniform(-0.15, 0.2))):
            heading = flip * (math.pi / 2 + 0.1 + dh + rng.normal(0, 0.06))
            relax = rng.uniform(0.55, 0.68)
            k0 = flip * rng.uniform(1.75, 2.0) / relax
            start = (disc[0] + rng.normal(0, 0.01), disc[1] + flip * 0.01)
            grow_vessel(rng, out, start, heading, width, rng.uniform(1.25, 1.5), (k0, relax), 3, vein, fovea)
        # Nasal vessels: shorter, straighter, towards the nasal periphery.
        for vein, width in ((True, vein_w * 0.75), (False, art_w * 0.75)):
            heading = flip * rng.uniform(0.5, 1.0)
            grow_vessel(
                rng,
                out,
                disc,
                heading,
                width,
                rng.uniform(0.6, 0.85),
                (flip * rng.normal(0.3, 0.3), 0.0),
                2,
                vein,
                fovea,
            )
    # Small vessels straight towards the macula and the nasal horizon.
    for heading, length in ((math.pi + rng.normal(0, 0.25), 0.3), (rng.normal(0, 0.2), 0.55)):
        grow_vessel(
            rng,
            out,
            disc,
            heading,
            art_w * 0.45,
            length,
            (rng.normal(0, 0.8), 0.0),
            1,
            bool(rng.random() < 0.5),
            fovea,
        )
    x, y, w, vein = (np.concatenate([part[i] for part in out]) for i in range(4))
    return VesselTree(x.astype(np.float32), y.astype(np.float32), w.astype(np.float32), vein.astype(bool))


def splat_lines(canvas: Canvas, x, y, width, contrast, group, groups: int) -> np.ndarray:
    """Draw densely sampled centre lines as Gaussian-profile lines, one map per group: (groups, H, W).

    Every sample is splatted bilinearly onto the grid of its width level and each level is blurred once
    with a Gaussian of that width, so a line of full width at half maximum ``width`` (FOV radii) peaks at
    ``contrast`` (lower when the line is narrower than the finest level: thin vessels fade, they don't alias).
    """
    size = canvas.size
    px, py = canvas.to_px(x, y)
    sigma = np.asarray(width, dtype=np.float32) * canvas.radius / 2.355
    level = np.log(np.maximum(sigma, _SIGMA_MIN) / _SIGMA_MIN) / math.log(_SIGMA_RATIO)
    level = np.clip(np.rint(level), 0, _SIGMA_LEVELS - 1).astype(np.int64)
    weight = contrast * math.sqrt(2 * math.pi) * sigma * (VESSEL_STEP * canvas.radius)
    inside = (px >= 0) & (px < size - 1) & (py >= 0) & (py < size - 1)
    px, py, weight, level, group = px[inside], py[inside], weight[inside], level[inside], group[inside]
    x0 = np.floor(px).astype(np.int64)
    y0 = np.floor(py).astype(np.int64)
    fx, fy = px - x0, py - y0
    # One grid per (group, width level) actually used; the four bilinear taps go in with a single bincount.
    planes, plane = np.unique(group.astype(np.int64) * _SIGMA_LEVELS + level, return_inverse=True)
    base = plane.reshape(-1) * size * size + y0 * size + x0
    taps = np.concatenate([base, base + 1, base + size, base + size + 1])
    shares = np.concatenate([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy]) * np.tile(weight, 4)
    grids = np.bincount(taps, weights=shares, minlength=planes.size * size * size)
    grids = grids.reshape(planes.size, size, size).astype(np.float32)
    maps = np.zeros((groups, size, size), dtype=np.float32)
    for grid, key in zip(grids, planes, strict=True):
        g, lev = divmod(int(key), _SIGMA_LEVELS)
        k = gauss_matrix(size, _SIGMA_MIN * _SIGMA_RATIO**lev, True)
        maps[g] += k @ grid @ k.T
    return maps


def vessel_absorption(
    canvas: Canvas, anatomy: PatientAnatomy, cup_radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Absorption maps (veins, arteries) of the patient's retinal vessel tree."""
    tree = vessel_tree(anatomy)
    fx, fy = anatomy.fovea
    d_fovea2 = (tree.x - fx) ** 2 + (tree.y - fy) ** 2
    d_disc = np.sqrt((tree.x - anatomy.disc_x) ** 2 + (tree.y - anatomy.disc_y) ** 2)
    contrast = np.where(tree.vein, 1.0, 0.8).astype(np.float32)
    contrast *= 1.0 - np.exp(-d_fovea2 / 0.09**2)  # foveal avascular zone
    # Vessels fade into the cup and are fainter over the bright disc.
    contrast *= 0.25 + 0.75 * smoothstep(0.2 * cup_radius, 1.1 * cup_radius + 0.01, d_disc)
    contrast *= 0.45 + 0.55 * smoothstep(0.5 * anatomy.disc_radius, 1.1 * anatomy.disc_radius, d_disc)
    maps = splat_lines(canvas, tree.x, tree.y, tree.width, contrast, tree.vein.astype(np.int64), 2)
    return maps[1], maps[0]


@lru_cache(maxsize=32)
def choroid_tree(anatomy: PatientAnatomy) -> VesselTree:
    """Large choroidal vessels (seen through a thinned retina in pathologic myopia), cached per patient."""
    rng = np.random.default_rng(anatomy.texture_seed + 1)
    out: list = []
    cx, cy = anatomy.disc_x - 0.3, anatomy.disc_y + 0.02  # choroidal vessels radiate from the posterior pole
    for angle in np.linspace(0, 2 * np.pi, 30, endpoint=False) + rng.uniform(0, 0.2):
        a = angle + rng.normal(0, 0.06)
        r0 = rng.uniform(0.08, 0.35)
        start = (cx + r0 * math.cos(a), cy + r0 * math.sin(a))
        grow_vessel(
            rng,
            out,
            start,
            a + rng.normal(0, 0.25),
            rng.uniform(0.04, 0.065),
            rng.uniform(0.7, 1.4),
            (rng.normal(0, 0.9), 0.0),
            1,
            False,
            (9.0, 9.0),
            0.8,
        )
    x, y, w, _ = (np.concatenate([part[i] for part in out]) for i in range(4))
    return VesselTree(
        x.astype(np.float32), y.astype(np.float32), w.astype(np.float32), np.zeros(x.size, bool)
    )
