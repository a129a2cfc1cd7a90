"""Normal anatomy of the synthetic fundus: the patient record, the textured background, the macula and the
optic disc with its cup (the vessels are in :mod:`.vessels`).

Anatomy shared by the images of one patient lives in :class:`PatientAnatomy` (both eyes, mirrored); the
per-image jitter comes from the image's own generator. Positions and sizes are in field-of-view radii of the
canonical right-eye frame (see :mod:`.canvas`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .canvas import Canvas
from .raster import over, smooth_field


# ---------------------------------------------------------------------------------------------- patient
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


class PatientTexture(NamedTuple):
    """Control grids of the patient's smooth random fields."""

    background: np.ndarray  # background texture
    warp: np.ndarray  # choroidal warp (also the patchiness of the peripapillary atrophy)
    haze: np.ndarray  # haze patchiness (cataract)


@lru_cache(maxsize=64)
def patient_texture(anatomy: PatientAnatomy) -> PatientTexture:
    """Control grids of the patient's smooth background texture, choroidal warp and haze patchiness."""
    rng = np.random.default_rng(anatomy.texture_seed)
    return PatientTexture(
        rng.normal(0, 1, (12, 12)).astype(np.float32),
        rng.normal(0, 1, (11, 11)).astype(np.float32),
        rng.normal(0, 1, (5, 5)).astype(np.float32),
    )


# ---------------------------------------------------------------------------------------------- background
def draw_background(canvas: Canvas, anatomy: PatientAnatomy, rng: np.random.Generator) -> np.ndarray:
    """The fundus background (H, W, 3) float32: the patient's pigment, smooth texture and per-image grain."""
    texture = patient_texture(anatomy).background
    pigment = np.asarray(anatomy.pigment, dtype=np.float32)
    smooth = smooth_field(texture, canvas.u, canvas.v)
    grain = smooth_field(rng.normal(0, 1, (40, 40)).astype(np.float32), canvas.u, canvas.v)
    image = pigment * (1.0 + 0.06 * smooth + 0.03 * grain)[..., None]
    return image.astype(np.float32)


def fovea_distance2(canvas: Canvas, anatomy: PatientAnatomy) -> np.ndarray:
    """Squared distance of every pixel to the fovea, in FOV radii."""
    fx, fy = anatomy.fovea
    return (canvas.U - fx) ** 2 + (canvas.V - fy) ** 2


def darken_macula(image: np.ndarray, canvas: Canvas, anatomy: PatientAnatomy) -> None:
    """The darker macula and its foveal pit, in place."""
    disc_r = anatomy.disc_radius
    d_fov2 = fovea_distance2(canvas, anatomy)
    macula = anatomy.macula_darkness * np.exp(-d_fov2 / (2 * (1.0 * disc_r) ** 2)) + 0.12 * np.exp(
        -d_fov2 / (2 * (0.22 * disc_r) ** 2)
    )
    image *= 1.0 - macula[..., None] * np.array([0.75, 1.0, 0.9], np.float32)


# ---------------------------------------------------------------------------------------------- optic disc
@dataclass
class Disc:
    """The optic disc drawn in one image: the patient's disc unless a finding changes it."""

    rx: float  # horizontal radius, FOV radii
    ry: float  # vertical radius
    cup_ratio: float  # cup-to-disc ratio before clipping to [0.05, 0.95]
    tilt: float = 0.0  # rotation of disc and cup, radians
    rim_pallor: float = 0.0  # 0: pink-orange rim, 1: pale
    rim_colour: tuple[float, float, float] | None = None  # overrides the pallor-mixed rim colour

    @classmethod
    def of(cls, anatomy: PatientAnatomy) -> Disc:
        return cls(anatomy.disc_radius, anatomy.disc_radius * anatomy.disc_aspect, anatomy.cup_ratio)

    @property
    def cdr(self) -> float:
        """The cup-to-disc ratio drawn (and recorded)."""
        return round(float(np.clip(self.cup_ratio, 0.05, 0.95)), 2)

    def rim(self) -> np.ndarray:
        if self.rim_colour is not None:
            return np.array(self.rim_colour)
        return (
            np.array([1.0, 0.7, 0.45]) * (1 - self.rim_pallor) + np.array([1.0, 0.9, 0.74]) * self.rim_pallor
        )


def draw_optic_disc(image: np.ndarray, canvas: Canvas, anatomy: PatientAnatomy, disc: Disc) -> None:
    """The disc with its halo, shaded rim and pale cup (slightly temporal), in place."""
    dx_disc, dy_disc = anatomy.disc_x, anatomy.disc_y
    rx, ry, tilt_angle, cdr = disc.rx, disc.ry, disc.tilt, disc.cdr
    d_disc = canvas.ellipse_distance(dx_disc, dy_disc, rx, ry, tilt_angle)
    disc_alpha = canvas.edge(d_disc, math.sqrt(rx * ry), 0.9)
    halo = np.exp(-(np.maximum(d_disc - 1.0, 0.0) ** 2) / 0.4**2) * 0.16
    image *= 1.0 + halo[..., None]
    rim_shade = (1.0 - 0.12 * np.clip(d_disc, 0, 1))[..., None]
    image *= 1.0 - disc_alpha[..., None]
    image += disc_alpha[..., None] * disc.rim().astype(np.float32) * rim_shade
    cup_x = dx_disc - 0.12 * rx * (1 - cdr)  # cups sit slightly temporal
    d_cup = canvas.ellipse_distance(cup_x, dy_disc, cdr * rx, cdr * ry, tilt_angle)
    cup_soft = max(0.9, 0.25 * cdr * ry * canvas.radius)
    cup_alpha = canvas.edge(d_cup, cdr * math.sqrt(rx * ry), cup_soft) * disc_alpha
    over(image, cup_alpha * 0.95, (1.0, 0.96, 0.86))
