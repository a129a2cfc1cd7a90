"""Procedural synthetic colour fundus photographs: the package's default, fully offline demo data.

Every image is drawn from a seeded :class:`numpy.random.Generator` with numpy only (Pillow writes the PNGs):
a circular field of view with vignetting, an orange-red textured background, a darker macula, a yellowish
optic disc with a cup on the nasal side and a branching vessel tree leaving the disc. Each class adds its
findings on top, scaled so that they stay visible at 64-96 px:

* ``diabetic retinopathy``: dot-blot haemorrhages, microaneurysms, hard exudates near the macula and, when
  severe, cotton wool spots;
* ``glaucoma``: a large cup (cup-to-disc ratio 0.6-0.9) with a pale, thin rim;
* ``age-related macular degeneration``: yellowish drusen clustered around the fovea;
* ``cataract``: blur, haze and reduced contrast over the whole picture;
* ``pathologic myopia``: choroidal tessellation, a peripapillary atrophy crescent and a small tilted disc;
* ``normal``: none of the above.

:func:`render_fundus` returns the picture and a :class:`FundusFindings` record of what was actually drawn,
:func:`write_caption` turns that record into a varied English report, and :func:`generate_synthetic_dataset`
writes a patient-level split dataset (paired image-text, categorical image-label, unpaired images and a
captioned test split) with manifests the rest of the package reads.

All retina geometry is computed in a canonical right-eye frame measured in field-of-view radii (x to the
right, y downwards, the disc at x > 0); a left eye is the mirror image. Anatomy shared by the images of one
patient lives in :class:`PatientAnatomy`; per-image jitter comes from the image's own generator.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "SYNTHETIC_CLASSES",
    "FundusFindings",
    "PatientAnatomy",
    "SyntheticDataset",
    "generate_synthetic_dataset",
    "render_fundus",
    "write_caption",
]

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "normal",
    "diabetic retinopathy",
    "glaucoma",
    "age-related macular degeneration",
    "cataract",
    "pathologic myopia",
)

_GENERATOR = "retvlp.data.synthetic"
# Bump whenever the pictures, captions or file layout change, so cached datasets are regenerated.
_GENERATOR_VERSION = 1
_MARKER = "synthetic.json"

_FOV_RADIUS = 0.46  # field-of-view radius as a fraction of the image side
_VESSEL_STEP = 0.004  # sampling step of the vessel centre lines, in FOV radii
_SIGMA_MIN = 0.55  # narrowest Gaussian vessel profile drawn, in pixels
_SIGMA_RATIO = 1.5  # ratio between consecutive vessel-width levels
_SIGMA_LEVELS = 9


# ============================================================================ records
@dataclass(frozen=True)
class PatientAnatomy:
    """Patient-level anatomy shared by every image of one patient (both eyes, mirrored).

    Positions and sizes are in field-of-view radii of the canonical right-eye frame.
    """

    disc_x: float
    disc_y: float
    disc_radius: float
    disc_aspect: float  # vertical / horizontal disc diameter
    fovea_distance: float  # fovea distance from the disc centre, in disc diameters
    fovea_drop: float  # fovea below the disc centre
    cup_ratio: float  # physiological cup-to-disc ratio
    pigment: tuple[float, float, float]  # background RGB before illumination
    macula_darkness: float
    vessel_seed: int
    texture_seed: int

    @classmethod
    def sample(cls, rng: np.random.Generator) -> PatientAnatomy:
        """Draw one patient's anatomy."""
        pigmentation = float(rng.uniform(0.0, 1.0))  # 0: light orange, 1: dark red-brown
        light = np.array([0.8, 0.39, 0.18])
        dark = np.array([0.6, 0.23, 0.11])
        pigment = light + (dark - light) * pigmentation + rng.normal(0.0, [0.025, 0.02, 0.012])
        return cls(
            disc_x=round(float(0.37 + rng.normal(0.0, 0.025)), 4),
            disc_y=round(float(-0.03 + rng.normal(0.0, 0.035)), 4),
            disc_radius=round(float(rng.uniform(0.135, 0.16)), 4),
            disc_aspect=round(float(rng.uniform(1.0, 1.12)), 4),
            fovea_distance=round(float(rng.uniform(2.3, 2.7)), 4),
            fovea_drop=round(float(rng.uniform(0.02, 0.09)), 4),
            cup_ratio=round(float(rng.uniform(0.2, 0.4)), 2),
            pigment=tuple(round(float(c), 4) for c in np.clip(pigment, 0.05, 0.95)),
            macula_darkness=round(float(rng.uniform(0.25, 0.4)), 4),
            vessel_seed=int(rng.integers(0, 2**31 - 1)),
            texture_seed=int(rng.integers(0, 2**31 - 1)),
        )

    @property
    def fovea(self) -> tuple[float, float]:
        return (self.disc_x - 2.0 * self.disc_radius * self.fovea_distance, self.disc_y + self.fovea_drop)


@dataclass(frozen=True)
class FundusFindings:
    """What was actually drawn in one image (JSON-serialisable through :func:`dataclasses.asdict`)."""

    label: str
    severity: float  # 0..1, 0 for normal
    eye: str  # "left" | "right"
    cup_to_disc_ratio: float
    haemorrhages: int
    microaneurysms: int
    hard_exudates: int
    drusen: int
    haze: float  # 0..1 (cataract)
    tessellation: float  # 0..1 (pathologic myopia)
    cotton_wool_spots: int = 0
    rim_pallor: float = 0.0  # 0..1 (glaucoma)
    peripapillary_atrophy: float = 0.0  # 0..1 crescent extent (pathologic myopia)
    disc_tilt: float = 0.0  # 0..1 (pathologic myopia)
    large_drusen: bool = False  # confluent/large drusen (advanced AMD)


@dataclass(frozen=True)
class SyntheticDataset:
    """Where :func:`generate_synthetic_dataset` put the dataset and its four manifests."""

    root: Path
    classes: tuple[str, ...]
    paired: Path
    categorical: Path
    unpaired: Path
    test: Path

    @property
    def findings(self) -> Path:
        return self.root / "findings.jsonl"

    @property
    def marker(self) -> Path:
        return self.root / _MARKER


# ============================================================================ numeric helpers
@lru_cache(maxsize=64)
def _gauss_matrix(size: int, sigma: float, conserve_mass: bool) -> np.ndarray:
    """Dense 1-D Gaussian blur operator ``out = K @ x`` (rows sum to 1, or columns when conserving mass)."""
    idx = np.arange(size, dtype=np.float64)
    kernel = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / sigma) ** 2)
    kernel /= kernel.sum(axis=0 if conserve_mass else 1, keepdims=True)
    kernel = kernel.astype(np.float32)
    kernel.flags.writeable = False
    return kernel


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W) or (H, W, C) float image with edge-renormalised kernels."""
    if sigma <= 0.05:
        return image
    k = _gauss_matrix(image.shape[0], float(sigma), False)
    if image.ndim == 2:
        return k @ image @ k.T
    out = np.empty_like(image)
    for c in range(image.shape[2]):
        out[..., c] = k @ image[..., c] @ k.T
    return out


def _bspline_matrix(coords: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
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


def _smooth_field(grid: np.ndarray, u: np.ndarray, v: np.ndarray, extent: float = 1.35) -> np.ndarray:
    """Sample a smooth random field (control grid over [-extent, extent]^2) at separable coordinates."""
    n = grid.shape[0]
    return _bspline_matrix(v, -extent, extent, n) @ grid @ _bspline_matrix(u, -extent, extent, n).T


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _stamp(
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


def _over(image: np.ndarray, alpha: np.ndarray, colour) -> None:
    """Alpha-composite a flat colour over the image in place."""
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    image *= 1.0 - a
    image += a * np.asarray(colour, dtype=np.float32)


# ============================================================================ geometry
class _Canvas:
    """The pixel grid of one image and its map to canonical retina coordinates (FOV radii, right eye)."""

    def __init__(self, size: int, centre: tuple[float, float], shift: tuple[float, float], sign: float):
        self.size = size
        self.radius = _FOV_RADIUS * size
        self.cx, self.cy = centre
        self.sx, self.sy = shift
        self.sign = sign
        idx = np.arange(size, dtype=np.float32)
        self.u = (sign * (idx - self.cx) / self.radius - self.sx).astype(np.float32)  # per column
        self.v = ((idx - self.cy) / self.radius - self.sy).astype(np.float32)  # per row
        self.U = self.u[None, :]
        self.V = self.v[:, None]

    def to_px(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.float32)
        return self.cx + self.sign * (x + self.sx) * self.radius, self.cy + (y + self.sy) * self.radius

    def px(self, length_fov: float | np.ndarray, minimum: float = 0.0) -> np.ndarray:
        """A length in FOV radii converted to pixels, never below ``minimum`` pixels."""
        return np.maximum(np.asarray(length_fov, dtype=np.float32) * self.radius, minimum)

    def ellipse_distance(self, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
        """Normalised elliptic distance (1 on the rim) of every pixel to an ellipse in canonical units."""
        dx = self.U - cx
        dy = self.V - cy
        if angle:
            c, s = math.cos(angle), math.sin(angle)
            dx, dy = dx * c + dy * s, -dx * s + dy * c
        return np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)

    def edge(self, dist: np.ndarray, radius: float, soft_px: float = 0.7) -> np.ndarray:
        """Anti-aliased inside-coverage of an ellipse given its normalised distance and mean radius."""
        return np.clip(0.5 - (dist - 1.0) * radius * self.radius / (2.0 * soft_px), 0.0, 1.0)


# ============================================================================ vessels
@dataclass(frozen=True)
class _VesselTree:
    """Densely sampled vessel centre lines (cached and shared, hence read-only arrays)."""

    x: np.ndarray
    y: np.ndarray
    width: np.ndarray  # full width at half maximum, FOV radii
    vein: np.ndarray  # bool

    def __post_init__(self):
        for array in (self.x, self.y, self.width, self.vein):
            array.flags.writeable = False


def _grow_vessel(rng, out, start, heading, width, length, curvature, depth, vein, fovea, wander=0.15) -> None:
    """Grow one vessel as a random walk of its heading, then recursively its side branches."""
    n = max(int(length / _VESSEL_STEP), 4)
    s = np.arange(n, dtype=np.float64) * _VESSEL_STEP
    k0, k1 = curvature
    drift = np.cumsum(rng.normal(0.0, wander * math.sqrt(_VESSEL_STEP), n))
    wavelength = rng.uniform(0.12, 0.3)
    tortuosity = rng.uniform(0.05, 0.15) * np.sin(2 * np.pi * s / wavelength + rng.uniform(0, 2 * np.pi))
    # Curvature k0 relaxing over the length scale k1 (0: constant), plus random drift and tortuosity.
    bend = k0 * s if k1 <= 0 else k0 * k1 * (1.0 - np.exp(-s / k1))
    heading_s = heading + bend + drift + tortuosity - tortuosity[0]
    x = start[0] + np.concatenate([[0.0], np.cumsum(np.cos(heading_s[:-1]) * _VESSEL_STEP)])
    y = start[1] + np.concatenate([[0.0], np.cumsum(np.sin(heading_s[:-1]) * _VESSEL_STEP)])
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
        _grow_vessel(
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
def _vessel_tree(anatomy: PatientAnatomy) -> _VesselTree:
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
            _grow_vessel(rng, out, start, heading, width, rng.uniform(1.25, 1.5), (k0, relax), 3, vein, fovea)
        # Nasal vessels: shorter, straighter, towards the nasal periphery.
        for vein, width in ((True, vein_w * 0.75), (False, art_w * 0.75)):
            heading = flip * rng.uniform(0.5, 1.0)
            _grow_vessel(
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
        _grow_vessel(
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
    return _VesselTree(x.astype(np.float32), y.astype(np.float32), w.astype(np.float32), vein.astype(bool))


def _splat_lines(canvas: _Canvas, x, y, width, contrast, group, groups: int) -> np.ndarray:
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
    weight = contrast * math.sqrt(2 * math.pi) * sigma * (_VESSEL_STEP * canvas.radius)
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
        k = _gauss_matrix(size, _SIGMA_MIN * _SIGMA_RATIO**lev, True)
        maps[g] += k @ grid @ k.T
    return maps


def _vessel_absorption(
    canvas: _Canvas, anatomy: PatientAnatomy, cup_radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Absorption maps (veins, arteries) of the patient's retinal vessel tree."""
    tree = _vessel_tree(anatomy)
    fx, fy = anatomy.fovea
    d_fovea2 = (tree.x - fx) ** 2 + (tree.y - fy) ** 2
    d_disc = np.sqrt((tree.x - anatomy.disc_x) ** 2 + (tree.y - anatomy.disc_y) ** 2)
    contrast = np.where(tree.vein, 1.0, 0.8).astype(np.float32)
    contrast *= 1.0 - np.exp(-d_fovea2 / 0.09**2)  # foveal avascular zone
    # Vessels fade into the cup and are fainter over the bright disc.
    contrast *= 0.25 + 0.75 * _smoothstep(0.2 * cup_radius, 1.1 * cup_radius + 0.01, d_disc)
    contrast *= 0.45 + 0.55 * _smoothstep(0.5 * anatomy.disc_radius, 1.1 * anatomy.disc_radius, d_disc)
    maps = _splat_lines(canvas, tree.x, tree.y, tree.width, contrast, tree.vein.astype(np.int64), 2)
    return maps[1], maps[0]


@lru_cache(maxsize=32)
def _choroid_tree(anatomy: PatientAnatomy) -> _VesselTree:
    """Large choroidal vessels (seen through a thinned retina in pathologic myopia), cached per patient."""
    rng = np.random.default_rng(anatomy.texture_seed + 1)
    out: list = []
    cx, cy = anatomy.disc_x - 0.3, anatomy.disc_y + 0.02  # choroidal vessels radiate from the posterior pole
    for angle in np.linspace(0, 2 * np.pi, 30, endpoint=False) + rng.uniform(0, 0.2):
        a = angle + rng.normal(0, 0.06)
        r0 = rng.uniform(0.08, 0.35)
        start = (cx + r0 * math.cos(a), cy + r0 * math.sin(a))
        _grow_vessel(
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
    return _VesselTree(
        x.astype(np.float32), y.astype(np.float32), w.astype(np.float32), np.zeros(x.size, bool)
    )


@lru_cache(maxsize=64)
def _patient_texture(anatomy: PatientAnatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Control grids of the patient's smooth background texture, choroidal warp and haze patchiness."""
    rng = np.random.default_rng(anatomy.texture_seed)
    return (
        rng.normal(0, 1, (12, 12)).astype(np.float32),
        rng.normal(0, 1, (11, 11)).astype(np.float32),
        rng.normal(0, 1, (5, 5)).astype(np.float32),
    )


# ============================================================================ lesions
def _posterior_pole_points(
    rng, n: int, anatomy: PatientAnatomy, disc_clear: float
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points spread over the posterior pole (around the macula, inside the arcades), off the disc."""
    fx, fy = anatomy.fovea
    xs, ys = np.empty(0), np.empty(0)
    while xs.size < n:
        x = rng.normal(fx + 0.25, 0.42, 4 * n + 8)
        y = rng.normal(fy, 0.36, 4 * n + 8)
        ok = (x * x + y * y < 0.88**2) & (
            (x - anatomy.disc_x) ** 2 + (y - anatomy.disc_y) ** 2 > disc_clear**2
        )
        xs, ys = np.concatenate([xs, x[ok]]), np.concatenate([ys, y[ok]])
    return xs[:n], ys[:n]


def _macular_cluster_points(
    rng, n: int, anatomy: PatientAnatomy, clusters: int, spread: float, ring: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points in ``clusters`` groups around centres at distance ``ring`` from the fovea."""
    fx, fy = anatomy.fovea
    angle = rng.uniform(0, 2 * np.pi, clusters)
    dist = rng.uniform(ring[0], ring[1], clusters)
    cx, cy = fx + dist * np.cos(angle), fy + dist * np.sin(angle)
    which = rng.integers(0, clusters, n)
    x = cx[which] + rng.normal(0, spread, n)
    y = cy[which] + rng.normal(0, spread, n)
    r = np.hypot(x, y)
    scale = np.minimum(1.0, 0.9 / np.maximum(r, 1e-6))
    return x * scale, y * scale


# ============================================================================ rendering
def _check_label(label: str) -> None:
    if label not in SYNTHETIC_CLASSES:
        raise ValueError(f"unknown synthetic fundus class {label!r}; expected one of {SYNTHETIC_CLASSES}")


def render_fundus(
    label: str,
    rng: np.random.Generator,
    *,
    size: int = 224,
    severity: float | None = None,
    eye: str | None = None,
    anatomy: PatientAnatomy | None = None,
) -> tuple[np.ndarray, FundusFindings]:
    """Draw one synthetic fundus photograph of class ``label``.

    ``severity`` in (0, 1] (drawn uniformly from 0.3..1 when None; always 0 for "normal"), ``eye`` "left"
    or "right" (random when None) and ``anatomy`` (a fresh patient when None) may be fixed. Returns a
    ``(size, size, 3)`` uint8 RGB array and the :class:`FundusFindings` actually drawn.
    """
    _check_label(label)
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if anatomy is None:
        anatomy = PatientAnatomy.sample(rng)
    if eye is None:
        eye = "right" if rng.random() < 0.5 else "left"
    if eye not in ("left", "right"):
        raise ValueError(f"eye must be 'left' or 'right', got {eye!r}")
    if label == "normal":
        severity = 0.0
    elif severity is None:
        severity = float(rng.uniform(0.3, 1.0))
    elif not 0.0 < severity <= 1.0:
        raise ValueError(f"severity must be in (0, 1] for {label!r}, got {severity}")
    s = round(float(severity), 3)

    # ---- per-image acquisition jitter
    centre = (
        (size - 1) / 2 + rng.uniform(-0.015, 0.015) * size,
        (size - 1) / 2 + rng.uniform(-0.015, 0.015) * size,
    )
    canvas = _Canvas(
        size,
        centre,
        (float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03))),
        1.0 if eye == "right" else -1.0,
    )
    brightness = rng.uniform(0.88, 1.06)
    gain = rng.normal(1.0, 0.03, 3)
    gamma = rng.uniform(0.9, 1.1)
    gradient = rng.normal(0.0, 0.07, 2)
    vignette = rng.uniform(0.3, 0.5)
    noise_sigma = rng.uniform(0.006, 0.018)
    U, V = canvas.U, canvas.V
    texture, warp_grid, haze_grid = _patient_texture(anatomy)

    # ---- background: pigment, smooth texture, fine grain
    pigment = np.asarray(anatomy.pigment, dtype=np.float32)
    smooth = _smooth_field(texture, canvas.u, canvas.v)
    grain = _smooth_field(rng.normal(0, 1, (40, 40)).astype(np.float32), canvas.u, canvas.v)
    image = pigment * (1.0 + 0.06 * smooth + 0.03 * grain)[..., None]
    image = image.astype(np.float32)

    fx, fy = anatomy.fovea
    dx_disc, dy_disc = anatomy.disc_x, anatomy.disc_y
    disc_r = anatomy.disc_radius

    # ---- pathologic myopia: choroidal tessellation (under everything else)
    tessellation = 0.0
    if label == "pathologic myopia":
        tessellation = round(0.35 + 0.6 * s, 3)
        choroid = _choroid_tree(anatomy)
        vessels = np.clip(
            _splat_lines(
                canvas,
                choroid.x,
                choroid.y,
                choroid.width,
                np.float32(1.0),
                np.zeros(choroid.x.size, np.int64),
                1,
            )[0],
            0.0,
            1.0,
        )
        radius = np.sqrt((U - dx_disc + 0.3) ** 2 + (V - dy_disc) ** 2)
        amount = tessellation * (0.6 + 0.4 * _smoothstep(0.05, 0.4, radius))
        spaces = amount * (1.0 - vessels)  # dark pigmented spaces between the choroidal vessels
        image *= (1.0 - 0.42 * spaces)[..., None] * np.array([0.97, 1.0, 1.0], np.float32)
        image += (0.1 * amount * vessels)[..., None] * np.array([1.0, 0.4, 0.12], np.float32)
        image *= np.array([1.0, 1.0 - 0.15 * tessellation, 1.0 - 0.1 * tessellation], np.float32)

    # ---- macula and fovea
    d_fov2 = (U - fx) ** 2 + (V - fy) ** 2
    macula = anatomy.macula_darkness * np.exp(-d_fov2 / (2 * (1.0 * disc_r) ** 2)) + 0.12 * np.exp(
        -d_fov2 / (2 * (0.22 * disc_r) ** 2)
    )
    image *= 1.0 - macula[..., None] * np.array([0.75, 1.0, 0.9], np.float32)

    # ---- optic disc, cup, peripapillary atrophy
    cdr = anatomy.cup_ratio
    rim_pallor = 0.0
    disc_tilt = 0.0
    ppa = 0.0
    rx, ry, tilt_angle = disc_r, disc_r * anatomy.disc_aspect, 0.0
    if label == "glaucoma":
        cdr = 0.6 + 0.3 * s + rng.uniform(-0.03, 0.03)
        rim_pallor = round(0.3 + 0.6 * s, 3)
    elif label == "pathologic myopia":
        disc_tilt = round(0.3 + 0.6 * s, 3)
        ppa = round(0.3 + 0.7 * s, 3)
        rx, ry = disc_r * 0.82 * (1.0 - 0.3 * disc_tilt), disc_r * 0.85 * anatomy.disc_aspect
        tilt_angle = 0.35 * disc_tilt * (1 if rng.random() < 0.5 else -1)
    cdr = round(float(np.clip(cdr, 0.05, 0.95)), 2)
    if ppa > 0:
        # Pale crescent on the temporal side: an ellipse sharing the disc's nasal edge, pushed temporally.
        width = (0.35 + 0.9 * ppa) * rx
        d_ppa = canvas.ellipse_distance(
            dx_disc - 0.5 * width, dy_disc, rx + 0.5 * width, ry * (1 + 0.12 * ppa), tilt_angle
        )
        crescent = canvas.edge(d_ppa, rx + 0.5 * width)
        patch = 0.85 + 0.15 * _smooth_field(warp_grid, canvas.u * 4.0, canvas.v * 4.0)
        _over(image, crescent * 0.92 * patch, (0.93, 0.89, 0.8))
        border = np.clip(1.0 - np.abs(d_ppa - 1.0) * (rx + 0.5 * width) * canvas.radius / 1.0, 0.0, 1.0)
        image *= 1.0 - (0.4 * border * (U < dx_disc - 0.6 * rx))[..., None]
    d_disc = canvas.ellipse_distance(dx_disc, dy_disc, rx, ry, tilt_angle)
    disc_alpha = canvas.edge(d_disc, math.sqrt(rx * ry), 0.9)
    halo = np.exp(-(np.maximum(d_disc - 1.0, 0.0) ** 2) / 0.4**2) * 0.16
    image *= 1.0 + halo[..., None]
    rim = np.array([1.0, 0.7, 0.45]) * (1 - rim_pallor) + np.array([1.0, 0.9, 0.74]) * rim_pallor
    if ppa > 0:  # a pinker disc stands out against the white crescent
        rim = np.array([0.9, 0.55, 0.38])
    rim_shade = (1.0 - 0.12 * np.clip(d_disc, 0, 1))[..., None]
    image *= 1.0 - disc_alpha[..., None]
    image += disc_alpha[..., None] * rim.astype(np.float32) * rim_shade
    cup_x = dx_disc - 0.12 * rx * (1 - cdr)  # cups sit slightly temporal
    d_cup = canvas.ellipse_distance(cup_x, dy_disc, cdr * rx, cdr * ry, tilt_angle)
    cup_soft = max(0.9, 0.25 * cdr * ry * canvas.radius)
    cup_alpha = canvas.edge(d_cup, cdr * math.sqrt(rx * ry), cup_soft) * disc_alpha
    _over(image, cup_alpha * 0.95, (1.0, 0.96, 0.86))

    # ---- vessels (Beer-Lambert absorption)
    veins, arteries = _vessel_absorption(canvas, anatomy, cdr * math.sqrt(rx * ry))
    absorption = veins[..., None] * np.array([0.5, 1.05, 0.8], np.float32)
    absorption += arteries[..., None] * np.array([0.3, 0.8, 0.6], np.float32)

    # ---- diabetic retinopathy
    haemorrhages = microaneurysms = hard_exudates = cotton_wool = drusen = 0
    if label == "diabetic retinopathy":
        haemorrhages = int(round(6 + 20 * s * rng.uniform(0.8, 1.2)))
        microaneurysms = int(round(6 + 28 * s * rng.uniform(0.8, 1.2)))
        hard_exudates = int(round(5 + 35 * s * rng.uniform(0.8, 1.2)))
        cotton_wool = int(rng.integers(1, 2 + int(5 * (s - 0.55)))) if s > 0.6 else 0
        lesions = np.zeros((size, size), np.float32)
        hx, hy = _posterior_pole_points(rng, haemorrhages, anatomy, 1.4 * disc_r)
        hr = rng.uniform(0.028, 0.052, haemorrhages) * (0.8 + 0.4 * s)
        parts = rng.integers(1, 4, haemorrhages)  # dot (1) or irregular blot (2-3 overlapping parts)
        owner = np.repeat(np.arange(haemorrhages), parts)
        jitter = rng.normal(0.0, 0.6, (owner.size, 2)) * (parts[owner] > 1)[:, None] * hr[owner, None]
        hpx, hpy = canvas.to_px(hx[owner] + jitter[:, 0], hy[owner] + jitter[:, 1])
        pr = canvas.px(hr[owner] * np.where(parts[owner] > 1, rng.uniform(0.55, 0.85, owner.size), 1.0), 1.1)
        _stamp(
            lesions,
            hpx,
            hpy,
            pr * rng.uniform(0.75, 1.25, owner.size),
            pr,
            rng.uniform(0, np.pi, owner.size),
            rng.uniform(0.7, 1.0, owner.size),
            mode="max",
            soft=0.7,
        )
        mx, my = _posterior_pole_points(rng, microaneurysms, anatomy, 1.3 * disc_r)
        mpx, mpy = canvas.to_px(mx, my)
        mr = canvas.px(rng.uniform(0.009, 0.014, microaneurysms), 0.75)
        _stamp(
            lesions,
            mpx,
            mpy,
            mr,
            mr,
            np.zeros(microaneurysms),
            rng.uniform(0.9, 1.3, microaneurysms),
            mode="add",
            soft=0.5,
        )
        absorption += lesions[..., None] * np.array([0.75, 2.0, 1.4], np.float32)

    image *= np.exp(-absorption)

    if label == "diabetic retinopathy":
        ex_layer = np.zeros((size, size), np.float32)
        ex_x, ex_y = _macular_cluster_points(
            rng, hard_exudates, anatomy, int(rng.integers(1, 4)), rng.uniform(0.04, 0.08), (0.12, 0.35)
        )
        epx, epy = canvas.to_px(ex_x, ex_y)
        er = canvas.px(rng.uniform(0.012, 0.026, hard_exudates), 0.8)
        _stamp(
            ex_layer,
            epx,
            epy,
            er * rng.uniform(0.8, 1.3, hard_exudates),
            er,
            rng.uniform(0, np.pi, hard_exudates),
            rng.uniform(0.85, 1.0, hard_exudates),
            soft=0.45,
        )
        _over(image, ex_layer, (0.96, 0.85, 0.4))
        if cotton_wool:
            cw_layer = np.zeros((size, size), np.float32)
            cx, cy = _posterior_pole_points(rng, cotton_wool, anatomy, 1.8 * disc_r)
            cpx, cpy = canvas.to_px(cx, cy)
            cr = canvas.px(rng.uniform(0.035, 0.055, cotton_wool), 1.5)
            _stamp(
                cw_layer,
                cpx,
                cpy,
                cr * 1.5,
                cr,
                rng.uniform(0, np.pi, cotton_wool),
                rng.uniform(0.6, 0.8, cotton_wool),
                soft=1.6,
                dome=0.6,
            )
            _over(image, cw_layer, (0.96, 0.92, 0.84))

    # ---- age-related macular degeneration: drusen around the fovea
    large_drusen = False
    if label == "age-related macular degeneration":
        drusen = int(round(10 + 40 * s * rng.uniform(0.85, 1.15)))
        large_drusen = s > 0.7
        dist = np.abs(rng.normal(0, 0.13 + 0.08 * s, drusen))
        ang = rng.uniform(0, 2 * np.pi, drusen)
        dxs, dys = fx + dist * np.cos(ang), fy + 0.85 * dist * np.sin(ang)
        dpx, dpy = canvas.to_px(dxs, dys)
        dr = canvas.px(rng.uniform(0.018, 0.03, drusen) * (0.8 + 0.9 * s) * (1.0 + 0.6 * (dist < 0.1)), 1.1)
        dr_layer = np.zeros((size, size), np.float32)
        _stamp(
            dr_layer,
            dpx,
            dpy,
            dr,
            dr * rng.uniform(0.8, 1.1, drusen),
            ang,
            rng.uniform(0.6, 0.85, drusen),
            soft=0.9,
            dome=0.45,
        )
        _over(image, dr_layer, (0.86, 0.68, 0.33))
        if large_drusen:  # soft confluent yellowish area over the fovea
            confluent = 0.35 * (s - 0.6) * np.exp(-d_fov2 / (2 * (0.6 * disc_r) ** 2))
            _over(image, confluent, (0.95, 0.82, 0.5))

    # ---- illumination
    rho2 = (
        (np.arange(size, dtype=np.float32)[None, :] - canvas.cx) ** 2
        + (np.arange(size, dtype=np.float32)[:, None] - canvas.cy) ** 2
    ) / canvas.radius**2
    illum = brightness * (1.0 - vignette * rho2**1.6 + gradient[0] * U + gradient[1] * V)
    image *= np.clip(illum, 0.05, None)[..., None]

    # ---- cataract: blur, veiling haze, reduced contrast and saturation
    haze = 0.0
    if label == "cataract":
        haze = round(0.3 + 0.6 * s, 3)
        image = _blur(image, (0.004 + 0.028 * haze) * canvas.radius)
        patchy = 1.0 + 0.12 * _smooth_field(haze_grid, canvas.u, canvas.v)
        veil = (0.2 + 0.45 * haze) * patchy * (1.0 - 0.25 * rho2)
        grey = image.mean(axis=2, keepdims=True)
        image = image + (grey - image) * (0.18 * haze)
        veil_colour = np.array([0.88, 0.76, 0.56], np.float32) * brightness
        image = image * (1.0 - 0.8 * veil[..., None]) + veil[..., None] * veil_colour * 0.85

    # ---- camera response, sensor noise, field-of-view mask
    image = np.clip(image * gain.astype(np.float32), 0.0, 1.0) ** gamma
    image += rng.normal(0.0, noise_sigma, image.shape).astype(np.float32)
    fov = np.clip(canvas.radius * (1.0 - np.sqrt(rho2)) + 0.5, 0.0, 1.0)
    image *= fov[..., None]
    pixels = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)

    findings = FundusFindings(
        label=label,
        severity=s,
        eye=eye,
        cup_to_disc_ratio=cdr,
        haemorrhages=haemorrhages,
        microaneurysms=microaneurysms,
        hard_exudates=hard_exudates,
        drusen=drusen,
        haze=haze,
        tessellation=tessellation,
        cotton_wool_spots=cotton_wool,
        rim_pallor=rim_pallor,
        peripapillary_atrophy=ppa,
        disc_tilt=disc_tilt,
        large_drusen=large_drusen,
    )
    return pixels, findings


# ============================================================================ captions
_DIAGNOSIS = {
    "diabetic retinopathy": (
        "diabetic retinopathy",
        "non-proliferative diabetic retinopathy",
        "diabetic retinopathy (DR)",
    ),
    "glaucoma": ("glaucoma", "glaucomatous optic neuropathy", "glaucoma with glaucomatous cupping"),
    "age-related macular degeneration": (
        "age-related macular degeneration",
        "age-related macular degeneration (AMD)",
        "dry age-related macular degeneration",
    ),
    "cataract": ("cataract", "lens opacity due to cataract", "cataract (media opacity)"),
    "pathologic myopia": ("pathologic myopia", "pathological myopia", "pathologic (high) myopia"),
}
_SEVERITY_WORDS = {
    "diabetic retinopathy": (("mild",), ("moderate",), ("severe",)),
    "glaucoma": (("early", "mild"), ("moderate",), ("advanced", "severe")),
    "age-related macular degeneration": (("early",), ("intermediate",), ("advanced", "late")),
    "cataract": (("mild",), ("moderate",), ("dense", "severe")),
    "pathologic myopia": (("mild",), ("moderate",), ("severe",)),
}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _severity_word(label: str, severity: float, rng: np.random.Generator) -> str:
    band = 0 if severity < 0.5 else 1 if severity < 0.75 else 2
    return _pick(rng, _SEVERITY_WORDS[label][band])


def _count(n: int, singular: str, plural: str, rng: np.random.Generator) -> str:
    """A count phrase: exact number or a quantifier that agrees with ``n`` (> 0)."""
    if n == 1:
        return f"{_pick(rng, ('a single', 'one', 'an isolated'))} {singular}"
    if rng.random() < 0.35:
        number = _NUMBER_WORDS[n] if n <= 10 and rng.random() < 0.5 else str(n)
        return f"{number} {plural}"
    if n <= 4:
        words = ("a few", "a couple of") if n == 2 else ("a few",)
    elif n <= 12:
        words = ("several", "multiple", "scattered")
    else:
        words = ("numerous", "many", "multiple", "extensive")
    return f"{_pick(rng, words)} {plural}"


def _join(parts: list[str], rng: np.random.Generator) -> str:
    if len(parts) == 1:
        return parts[0]
    if rng.random() < 0.15:
        return "; ".join(parts)
    last = ", and " if len(parts) > 2 and rng.random() < 0.4 else " and "
    return ", ".join(parts[:-1]) + last + parts[-1]


def _finding_phrases(f: FundusFindings, rng: np.random.Generator) -> list[str]:
    """One phrase per finding that was actually drawn (normal anatomy for a normal eye)."""
    p: list[str] = []
    if f.label == "normal":
        p.append(
            _pick(
                rng,
                (
                    "a healthy optic disc",
                    "a normal optic disc with sharp margins",
                    "a pink, well-defined optic disc",
                    f"a healthy disc with a cup-to-disc ratio of {f.cup_to_disc_ratio:.1f}",
                ),
            )
        )
        p.append(_pick(rng, ("a normal macula", "a healthy macula and fovea", "an unremarkable macula")))
        p.append(
            _pick(rng, ("normal retinal vessels", "vessels of normal calibre", "normal vascular arcades"))
        )
        rng.shuffle(p)
        return p
    if f.microaneurysms:
        p.append(
            _count(
                f.microaneurysms,
                _pick(rng, ("microaneurysm", "tiny red dot")),
                _pick(rng, ("microaneurysms", "tiny red dots", "red dot microaneurysms")),
                rng,
            )
        )
    if f.haemorrhages:
        kind = _pick(
            rng,
            (
                "haemorrhage",
                "hemorrhage",
                "dot-blot haemorrhage",
                "blot hemorrhage",
                "bleeding spot",
                "intraretinal haemorrhage",
            ),
        )
        p.append(_count(f.haemorrhages, kind, kind + "s", rng))
    if f.hard_exudates:
        kind = _pick(
            rng,
            (
                ("hard exudate", "hard exudates"),
                ("yellow exudate", "yellow exudates"),
                ("lipid deposit", "lipid deposits"),
            ),
        )
        where = _pick(rng, ("", " near the macula", " around the fovea", " in the posterior pole"))
        p.append(_count(f.hard_exudates, kind[0], kind[1], rng) + where)
    if f.cotton_wool_spots:
        kind = _pick(rng, ("cotton wool spot", "cotton-wool spot"))
        p.append(_count(f.cotton_wool_spots, kind, kind + "s", rng))
    if f.label == "glaucoma":
        p.append(
            _pick(
                rng,
                (
                    f"a cup-to-disc ratio of {f.cup_to_disc_ratio:.1f}",
                    f"a vertical cup-to-disc ratio of {f.cup_to_disc_ratio:.2f}",
                    f"an enlarged optic cup (CDR {f.cup_to_disc_ratio:.1f})",
                    f"a large cup with a ratio of {f.cup_to_disc_ratio:.1f}",
                ),
            )
        )
        extra = ["thinning of the neuroretinal rim", "increased cupping of the optic disc", "a thin rim"]
        if f.rim_pallor > 0:
            extra += ["pallor of the neuroretinal rim", "a pale optic disc rim"]
        p.append(_pick(rng, extra))
    if f.drusen:
        size = (
            ("large confluent", "large soft", "confluent")
            if f.large_drusen
            else ("small", "medium-sized", "hard")
        )
        noun = _pick(rng, ("drusen", "yellow drusen", "drusen deposits"))
        where = _pick(
            rng, (" at the macula", " around the fovea", " in the macular region", " clustered at the macula")
        )
        p.append(_count(f.drusen, _pick(rng, size) + " druse", _pick(rng, size) + " " + noun, rng) + where)
    if f.haze > 0:
        strength = "marked " if f.haze >= 0.65 else "mild " if f.haze < 0.45 else ""
        options = [
            f"a {strength}hazy view of the fundus",
            f"{strength}diffuse haze over the retina",
            f"{strength}media opacity",
            "poor visibility of the vessels through hazy media",
        ]
        blur = [
            "blurred retinal details",
            "reduced image contrast",
            "indistinct vessel margins",
            "a washed-out view",
        ]
        p.append(_pick(rng, options))
        if rng.random() < 0.6:
            p.append(_pick(rng, blur))
    if f.tessellation > 0:
        p.append(
            _pick(
                rng,
                (
                    "a tessellated fundus",
                    "a tigroid fundus",
                    "prominent choroidal vessels",
                    "choroidal tessellation",
                ),
            )
        )
    if f.peripapillary_atrophy > 0:
        p.append(
            _pick(
                rng,
                (
                    "peripapillary atrophy",
                    "a temporal myopic crescent",
                    "a peripapillary atrophy crescent",
                    "temporal peripapillary atrophy",
                ),
            )
        )
    if f.disc_tilt > 0:
        p.append(_pick(rng, ("a tilted optic disc", "a small tilted disc", "an oblique, tilted disc")))
    order = rng.permutation(len(p))
    return [p[i] for i in order]


def write_caption(findings: FundusFindings, rng: np.random.Generator) -> str:
    """One English caption describing only what was drawn, with rng-chosen wording and structure.

    Most captions name the diagnosis (usually by its canonical class name); about one in five captions of
    a diseased eye only describes the findings. Normal captions describe a healthy disc, macula and vessels.
    """
    f = findings
    _check_label(f.label)
    phrases = _finding_phrases(f, rng)
    if f.label != "normal" and len(phrases) > 3 and rng.random() < 0.3:  # sometimes a shorter report
        phrases = phrases[: int(rng.integers(2, len(phrases)))]
    found = _join(phrases, rng)
    found_cap = found[0].upper() + found[1:] if not found[0].isdigit() else f"Findings: {found}"
    of_eye = in_eye = ""
    if rng.random() < 0.5:
        if rng.random() < 0.3:
            of_eye = in_eye = f" ({'OD' if f.eye == 'right' else 'OS'})"
        else:
            of_eye, in_eye = f" of the {f.eye} eye", f" in the {f.eye} eye"
    photo = _pick(
        rng, ("Fundus photograph", "Colour fundus photograph", "Color fundus image", "Retinal photograph")
    )
    if f.label == "normal":
        template = int(rng.integers(6))
        if template == 0:
            return f"Normal fundus{of_eye}: {found}."
        if template == 1:
            return f"{photo} of a normal, healthy retina{in_eye} with {found}."
        if template == 2:
            return f"{found_cap}{in_eye}. Impression: normal fundus."
        if template == 3:
            return f"A fundus photograph of a normal eye{in_eye}, with {found}."
        if template == 4:
            return f"{photo}{of_eye} showing {found}, within normal limits."
        return f"Healthy retina{in_eye} with {found}; no disease is visible."
    if rng.random() < 0.2:  # findings only, no diagnosis
        template = int(rng.integers(3))
        if template == 0:
            return f"{photo}{of_eye} showing {found}."
        if template == 1:
            return f"{found_cap}{in_eye}."
        return f"Findings{of_eye}: {found}."
    names = _DIAGNOSIS[f.label]
    diagnosis = names[0] if rng.random() < 0.7 else _pick(rng, names)
    if rng.random() < 0.6:
        diagnosis = f"{_severity_word(f.label, f.severity, rng)} {diagnosis}"
    diagnosis_cap = diagnosis[0].upper() + diagnosis[1:]
    template = int(rng.integers(6))
    if template == 0:
        return f"{photo}{of_eye} showing {found}, consistent with {diagnosis}."
    if template == 1:
        return f"{diagnosis_cap}{in_eye}: {found}."
    if template == 2:
        return f"{photo} of {diagnosis}{in_eye} with {found}."
    if template == 3:
        return f"{found_cap}{in_eye}. Impression: {diagnosis}."
    if template == 4:
        return f"{diagnosis_cap}. The fundus{of_eye} shows {found}."
    return f"A fundus photograph of {diagnosis}{in_eye}, with {found}."


# ============================================================================ dataset writer
_SPLITS = ("paired", "categorical", "unpaired", "test")


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` items by ``fractions`` (largest remainders), giving each positive fraction at least one item
    when there are enough items."""
    raw = [n * f for f in fractions]
    counts = [int(math.floor(r)) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts


def _validate_classes(classes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, str):
        classes = (classes,)
    classes = tuple(classes)
    if not classes:
        raise ValueError("classes must name at least one synthetic class")
    for label in classes:
        _check_label(label)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes contains duplicates: {classes}")
    return classes


def _read_marker(root: Path) -> dict | None:
    try:
        with open(root / _MARKER, encoding="utf-8") as fh:
            marker = json.load(fh)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _dataset(root: Path, classes: tuple[str, ...]) -> SyntheticDataset:
    return SyntheticDataset(
        root=root,
        classes=classes,
        paired=root / "paired.jsonl",
        categorical=root / "categorical.csv",
        unpaired=root / "unpaired.jsonl",
        test=root / "test.jsonl",
    )


def _is_complete(root: Path, marker: dict | None, parameters: dict) -> bool:
    if marker is None or marker.get("generator") != _GENERATOR or marker.get("version") != _GENERATOR_VERSION:
        return False
    if marker.get("parameters") != parameters:
        return False
    ds = _dataset(root, tuple(parameters["classes"]))
    return all(p.is_file() for p in (ds.paired, ds.categorical, ds.unpaired, ds.test, ds.findings))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _write_dataset(root: Path, parameters: dict) -> dict:
    """Render every image and write images, manifests and (last) the marker into ``root``."""
    seed = parameters["seed"]
    classes = tuple(parameters["classes"])
    num_patients = parameters["num_patients"]
    lo, hi = parameters["images_per_patient"]
    size = parameters["image_size"]
    width = max(4, len(str(num_patients)))

    order_rng = np.random.default_rng([seed, 0x5F0])
    labels = [classes[i % len(classes)] for i in range(num_patients)]
    order_rng.shuffle(labels)

    test_fraction = parameters["test_fraction"]
    rest = 1.0 - test_fraction
    fractions = (
        rest * parameters["paired_fraction"],
        rest * parameters["categorical_fraction"],
        rest * max(0.0, 1.0 - parameters["paired_fraction"] - parameters["categorical_fraction"]),
        test_fraction,
    )
    split_of: dict[int, str] = {}
    for label in classes:  # stratified by class, patients shuffled within their class
        members = [i for i, lab in enumerate(labels) if lab == label]
        members = [members[j] for j in order_rng.permutation(len(members))]
        start = 0
        for name, count in zip(_SPLITS, _allocate(len(members), fractions), strict=True):
            for i in members[start : start + count]:
                split_of[i] = name
            start += count

    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {name: [] for name in _SPLITS}
    findings_rows: list[dict] = []
    for p in range(num_patients):
        label = labels[p]
        patient_id = f"P{p + 1:0{width}d}"
        patient_rng = np.random.default_rng([seed, p])
        anatomy = PatientAnatomy.sample(patient_rng)
        n_images = int(patient_rng.integers(lo, hi + 1))
        first_eye = "right" if patient_rng.random() < 0.5 else "left"
        base_severity = float(patient_rng.uniform(0.3, 1.0))
        for k in range(n_images):
            eye = first_eye if k % 2 == 0 else ("left" if first_eye == "right" else "right")
            image_rng = np.random.default_rng([seed, p, k, 0])
            severity = float(np.clip(base_severity + image_rng.normal(0.0, 0.06), 0.3, 1.0))
            pixels, findings = render_fundus(
                label, image_rng, size=size, severity=severity, eye=eye, anatomy=anatomy
            )
            image = f"images/{patient_id}_{k}.png"
            (root / image).write_bytes(_png_bytes(pixels))
            split = split_of[p]
            if split in ("paired", "test"):
                text = write_caption(findings, np.random.default_rng([seed, p, k, 1]))
                rows[split].append({"image": image, "text": text, "label": label, "patient_id": patient_id})
            elif split == "categorical":
                rows[split].append({"image": image, "label": label, "patient_id": patient_id})
            else:
                rows[split].append({"image": image, "patient_id": patient_id})
            findings_rows.append(
                {"image": image, "patient_id": patient_id, "split": split, **asdict(findings)}
            )

    _write_jsonl(root / "paired.jsonl", rows["paired"])
    with open(root / "categorical.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image", "label", "patient_id"])
        writer.writerows([r["image"], r["label"], r["patient_id"]] for r in rows["categorical"])
    _write_jsonl(root / "unpaired.jsonl", rows["unpaired"])
    _write_jsonl(root / "test.jsonl", rows["test"])
    (root / "classes.json").write_text(json.dumps(list(classes), indent=2) + "\n", encoding="utf-8")
    _write_jsonl(root / "findings.jsonl", findings_rows)
    summary = {
        name: {"patients": len({r["patient_id"] for r in rows[name]}), "images": len(rows[name])}
        for name in _SPLITS
    }
    marker = {
        "generator": _GENERATOR,
        "version": _GENERATOR_VERSION,
        "parameters": parameters,
        "splits": summary,
    }
    (root / _MARKER).write_text(
        json.dumps(marker, indent=2) + "\n", encoding="utf-8"
    )  # completion marker, last
    return marker


def generate_synthetic_dataset(
    output_dir: str | os.PathLike,
    *,
    num_patients: int = 300,
    images_per_patient: tuple[int, int] = (1, 3),
    image_size: int = 96,
    seed: int = 0,
    classes: Sequence[str] = SYNTHETIC_CLASSES,
    test_fraction: float = 0.2,
    paired_fraction: float = 0.3,
    categorical_fraction: float = 0.3,
) -> SyntheticDataset:
    """Write (or reuse) a seeded synthetic fundus dataset split by patient.

    Patients get balanced classes (round-robin, shuffled with ``seed``) and ``images_per_patient`` images
    of alternating eyes. ``test_fraction`` of each class's patients go to the test split; the others are
    divided into paired (image-text), categorical (image-label) and unpaired (image only) patients by
    ``paired_fraction`` and ``categorical_fraction`` (the remainder is unpaired). Output layout::

        images/P0001_0.png ...   paired.jsonl  categorical.csv  unpaired.jsonl  test.jsonl
        classes.json  findings.jsonl  synthetic.json (parameters; written last, marks completion)

    Image paths in the manifests are relative to ``output_dir``. The same arguments give byte-identical
    files. If ``output_dir`` already holds a complete dataset with the same parameters it is returned as
    is; otherwise the dataset is written to a temporary sibling directory and moved into place at the end,
    so an interrupted run never leaves a half-written dataset that looks complete. An existing
    ``output_dir`` is only replaced if it is empty or a previous synthetic dataset.
    """
    classes = _validate_classes(classes)
    lo, hi = (int(v) for v in images_per_patient)
    if num_patients < 1:
        raise ValueError(f"num_patients must be >= 1, got {num_patients}")
    if not 1 <= lo <= hi:
        raise ValueError(
            f"images_per_patient must be (min, max) with 1 <= min <= max, got {images_per_patient}"
        )
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    for name, value in (
        ("test_fraction", test_fraction),
        ("paired_fraction", paired_fraction),
        ("categorical_fraction", categorical_fraction),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if test_fraction >= 1.0:
        raise ValueError("test_fraction must leave some patients for training")
    if paired_fraction + categorical_fraction > 1.0 + 1e-9:
        raise ValueError(
            f"paired_fraction + categorical_fraction must be <= 1, got {paired_fraction + categorical_fraction}"
        )
    parameters = {
        "num_patients": int(num_patients),
        "images_per_patient": [lo, hi],
        "image_size": int(image_size),
        "seed": int(seed),
        "classes": list(classes),
        "test_fraction": float(test_fraction),
        "paired_fraction": float(paired_fraction),
        "categorical_fraction": float(categorical_fraction),
    }
    root = Path(output_dir).expanduser().absolute()
    if _is_complete(root, _read_marker(root), parameters):
        return _dataset(root, classes)
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"{root} exists and is not a directory")
        previous = _read_marker(root)
        if any(root.iterdir()) and (previous is None or previous.get("generator") != _GENERATOR):
            raise FileExistsError(
                f"{root} is not empty and holds no synthetic dataset ({_MARKER}); refusing to overwrite it"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    # a few seconds to minutes of drawing before anything else prints: say what is happening
    logger.info(
        "Generating the synthetic fundus data set (%d patients, %d px, seed %d) in %s; later runs reuse it.",
        num_patients,
        image_size,
        seed,
        root,
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the dataset is an ordinary directory
        _write_dataset(staging, parameters)
        if _is_complete(root, _read_marker(root), parameters):  # a concurrent writer finished first
            shutil.rmtree(staging, ignore_errors=True)
            return _dataset(root, classes)
        retired = None
        if root.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old", dir=root.parent))
            os.replace(root, retired)  # onto an empty directory: allowed by rename(2)
        os.replace(staging, root)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _dataset(root, classes)
