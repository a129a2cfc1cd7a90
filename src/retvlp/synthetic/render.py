"""Rendering one synthetic colour fundus photograph: the stages of the picture, back to front.

Every image is drawn from a seeded :class:`numpy.random.Generator` with numpy only: a circular field of
view with vignetting, an orange-red textured background, a darker macula, a yellowish optic disc with a cup
on the nasal side and a branching vessel tree leaving the disc. The class's drawing function
(:data:`~.findings.FINDINGS`) adds its findings at the stages it names. The generator is consumed in a
fixed order (acquisition, background grain, the finding's own draws, sensor noise), so the same seed gives
the same picture.
"""

from __future__ import annotations

import math

import numpy as np

from .anatomy import Disc, PatientAnatomy, darken_macula, draw_background, draw_optic_disc, patient_texture
from .camera import Acquisition, expose, illuminate
from .findings import FINDINGS, NORMAL, PLACEABLE, QUADRANTS, FindingContext, FundusFindings, check_label
from .vessels import vessel_absorption


def _image_arguments(
    label: str, rng: np.random.Generator, size: int, severity, eye, anatomy
) -> tuple[PatientAnatomy, str, float]:
    """Check the arguments; draw the patient, the eye and the severity left open (in this order)."""
    check_label(label)
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if anatomy is None:
        anatomy = PatientAnatomy.sample(rng)
    if eye is None:
        eye = "right" if rng.random() < 0.5 else "left"
    if eye not in ("left", "right"):
        raise ValueError(f"eye must be 'left' or 'right', got {eye!r}")
    if label == NORMAL:
        severity = 0.0
    elif severity is None:
        severity = float(rng.uniform(0.3, 1.0))
    elif not 0.0 < severity <= 1.0:
        raise ValueError(f"severity must be in (0, 1] for {label!r}, got {severity}")
    return anatomy, eye, round(float(severity), 3)


def _paint(ctx: FindingContext, stage: str, image: np.ndarray) -> np.ndarray:
    for step in ctx.stages[stage]:
        image = step(image)
    return image


def _draw_retina(ctx: FindingContext, image: np.ndarray) -> np.ndarray:
    """Choroid, macula, disc, vessels (Beer-Lambert absorption, with absorbing lesions) and surface deposits."""
    canvas, anatomy, disc = ctx.canvas, ctx.anatomy, ctx.disc
    image = _paint(ctx, "choroid", image)
    darken_macula(image, canvas, anatomy)
    image = _paint(ctx, "peripapillary", image)
    draw_optic_disc(image, canvas, anatomy, disc)
    veins, arteries = vessel_absorption(canvas, anatomy, disc.cdr * math.sqrt(disc.rx * disc.ry))
    absorption = veins[..., None] * np.array([0.5, 1.05, 0.8], np.float32)
    absorption += arteries[..., None] * np.array([0.3, 0.8, 0.6], np.float32)
    for density in ctx.absorption:
        absorption += density
    image *= np.exp(-absorption)
    return _paint(ctx, "surface", image)


def render_fundus(
    label: str,
    rng: np.random.Generator,
    *,
    size: int = 224,
    severity: float | None = None,
    eye: str | None = None,
    anatomy: PatientAnatomy | None = None,
    quadrant: str | None = None,
) -> tuple[np.ndarray, FundusFindings]:
    """Draw one synthetic fundus photograph of class ``label`` (a key of :data:`~.findings.FINDINGS`).

    ``severity`` in (0, 1] (drawn uniformly from 0.3..1 when None; always 0 for "normal"), ``eye`` "left"
    or "right" (random when None) and ``anatomy`` (a fresh patient when None) may be fixed. ``quadrant`` (one
    of :data:`~.findings.QUADRANTS`, e.g. "top-left", in the picture's frame) confines the lesions of a class
    in :data:`~.findings.PLACEABLE` to that quadrant (for tests of where a model looks); None leaves them
    where they fall, drawing the same picture as before the option existed. Returns a ``(size, size, 3)``
    uint8 RGB array and the :class:`FundusFindings` actually drawn.
    """
    if quadrant is not None and (quadrant not in QUADRANTS or label not in PLACEABLE):
        raise ValueError(
            f"quadrant={quadrant!r}: expected one of {QUADRANTS}, for a class whose lesions can be placed "
            f"({', '.join(PLACEABLE)}); got class {label!r}"
        )
    anatomy, eye, s = _image_arguments(label, rng, size, severity, eye, anatomy)
    canvas, acquisition = Acquisition.sample(rng, size, eye)
    image = draw_background(canvas, anatomy, rng)
    ctx = FindingContext(
        label=label,
        severity=s,
        rng=rng,
        canvas=canvas,
        anatomy=anatomy,
        texture=patient_texture(anatomy),
        acquisition=acquisition,
        disc=Disc.of(anatomy),
        quadrant=quadrant,
    )
    FINDINGS[label](ctx)
    image = _draw_retina(ctx, image)
    illuminate(image, canvas, acquisition)
    image = _paint(ctx, "media", image)
    pixels = expose(image, canvas, acquisition, rng)
    findings = FundusFindings(label=label, severity=s, eye=eye, cup_to_disc_ratio=ctx.disc.cdr, **ctx.values)
    return pixels, findings
