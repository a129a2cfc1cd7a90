"""The fundus camera of the synthetic images: per-image framing and exposure jitter, uneven illumination with
vignetting, the camera response, sensor noise and the circular field-of-view aperture."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .canvas import Canvas


@dataclass(frozen=True)
class Acquisition:
    """Per-image acquisition settings, drawn from the image's generator."""

    brightness: float
    gain: np.ndarray  # per-channel gain (3,)
    gamma: float
    gradient: np.ndarray  # illumination gradient along x and y (2,)
    vignette: float
    noise_sigma: float

    @classmethod
    def sample(cls, rng: np.random.Generator, size: int, eye: str) -> tuple[Canvas, Acquisition]:
        """The image's framing (a slightly off-centre, shifted field of view) and its exposure settings."""
        centre = (
            (size - 1) / 2 + rng.uniform(-0.015, 0.015) * size,
            (size - 1) / 2 + rng.uniform(-0.015, 0.015) * size,
        )
        canvas = Canvas(
            size,
            centre,
            (float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03))),
            1.0 if eye == "right" else -1.0,
        )
        acquisition = cls(
            brightness=rng.uniform(0.88, 1.06),
            gain=rng.normal(1.0, 0.03, 3),
            gamma=rng.uniform(0.9, 1.1),
            gradient=rng.normal(0.0, 0.07, 2),
            vignette=rng.uniform(0.3, 0.5),
            noise_sigma=rng.uniform(0.006, 0.018),
        )
        return canvas, acquisition


def illuminate(image: np.ndarray, canvas: Canvas, acquisition: Acquisition) -> None:
    """Brightness, vignetting and a linear illumination gradient, in place."""
    a = acquisition
    illum = a.brightness * (
        1.0 - a.vignette * canvas.rho2**1.6 + a.gradient[0] * canvas.U + a.gradient[1] * canvas.V
    )
    image *= np.clip(illum, 0.05, None)[..., None]


def expose(
    image: np.ndarray, canvas: Canvas, acquisition: Acquisition, rng: np.random.Generator
) -> np.ndarray:
    """Camera response, sensor noise and the field-of-view mask: the final (H, W, 3) uint8 picture."""
    image = np.clip(image * acquisition.gain.astype(np.float32), 0.0, 1.0) ** acquisition.gamma
    image += rng.normal(0.0, acquisition.noise_sigma, image.shape).astype(np.float32)
    image *= canvas.field_of_view()[..., None]
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
