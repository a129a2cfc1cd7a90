"""The pixel grid of one synthetic image and its map to canonical retina coordinates.

All retina geometry is computed in a canonical right-eye frame measured in field-of-view radii (x to the
right, y downwards, the disc at x > 0); a left eye is the mirror image (``sign`` -1).
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np

FOV_RADIUS = 0.46  # field-of-view radius as a fraction of the image side


class Canvas:
    """The pixel grid of one image and its map to canonical retina coordinates (FOV radii, right eye)."""

    def __init__(self, size: int, centre: tuple[float, float], shift: tuple[float, float], sign: float):
        self.size = size
        self.radius = FOV_RADIUS * size
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

    @cached_property
    def rho2(self) -> np.ndarray:
        """Squared distance of every pixel to the field-of-view centre, in FOV radii (not shifted)."""
        return (
            (np.arange(self.size, dtype=np.float32)[None, :] - self.cx) ** 2
            + (np.arange(self.size, dtype=np.float32)[:, None] - self.cy) ** 2
        ) / self.radius**2

    def field_of_view(self) -> np.ndarray:
        """Anti-aliased field-of-view mask (H, W): 1 inside the circular aperture, 0 outside."""
        return np.clip(self.radius * (1.0 - np.sqrt(self.rho2)) + 0.5, 0.0, 1.0)
