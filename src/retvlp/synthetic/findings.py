"""Findings of the synthetic fundus classes: one drawing function per class, in the :data:`FINDINGS` registry.

A drawing function receives a :class:`FindingContext` (the image's canvas, the patient's anatomy, the
severity and the image's generator), draws its random parameters and hands the renderer what to paint at
each stage of the picture (:data:`STAGES`): under the retina (``"choroid"``), around the disc before it is
drawn (``"peripapillary"``), absorbing lesions that darken with the vessels (:meth:`FindingContext.absorb`),
deposits on the retinal surface (:meth:`FindingContext.overlay`) and the optical media in front of the
retina (``"media"``). It may also change the optic disc (:attr:`FindingContext.disc`) and records what it
drew (:meth:`FindingContext.record`), which the captions describe. Adding a class is one decorated function::

    @register_finding("laser scars")
    def laser_scars(ctx: FindingContext) -> None:
        ...

The built-in classes, scaled so that they stay visible at 64-96 px:

* ``normal``: none of the findings below;
* ``diabetic retinopathy``: dot-blot haemorrhages, microaneurysms, hard exudates near the macula and, when
  severe, cotton wool spots;
* ``glaucoma``: a large cup (cup-to-disc ratio 0.6-0.9) with a pale, thin rim;
* ``age-related macular degeneration``: yellowish drusen clustered around the fovea;
* ``cataract``: blur, haze and reduced contrast over the whole picture;
* ``pathologic myopia``: choroidal tessellation, a peripapillary atrophy crescent and a small tilted disc.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from .anatomy import Disc, PatientAnatomy, PatientTexture, fovea_distance2
from .camera import Acquisition
from .canvas import Canvas
from .raster import blur, over, smooth_field, smoothstep, stamp
from .vessels import choroid_tree, splat_lines

STAGES = ("choroid", "peripapillary", "surface", "media")
NORMAL = "normal"
# Image quadrants a finding's lesions can be confined to (`render_fundus(..., quadrant=...)`), in the picture's
# own frame (rows from the top, columns from the left), whichever eye it shows.
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
# The classes whose drawing functions place their lesions through `FindingContext.place` (a quadrant applies).
PLACEABLE = ("diabetic retinopathy",)


# ---------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class FundusFindings:
    """What was actually drawn in one image (JSON-serialisable through :func:`dataclasses.asdict`)."""

    label: str
    severity: float  # 0..1, 0 for normal
    eye: str  # "left" | "right"
    cup_to_disc_ratio: float
    haemorrhages: int = 0
    microaneurysms: int = 0
    hard_exudates: int = 0
    drusen: int = 0
    haze: float = 0.0  # 0..1 (cataract)
    tessellation: float = 0.0  # 0..1 (pathologic myopia)
    cotton_wool_spots: int = 0
    rim_pallor: float = 0.0  # 0..1 (glaucoma)
    peripapillary_atrophy: float = 0.0  # 0..1 crescent extent (pathologic myopia)
    disc_tilt: float = 0.0  # 0..1 (pathologic myopia)
    large_drusen: bool = False  # confluent/large drusen (advanced AMD)


_RECORDED = tuple(f.name for f in fields(FundusFindings))[4:]  # what a drawing function may record


@dataclass
class FindingContext:
    """What a drawing function works with, and what it hands back to the renderer."""

    label: str
    severity: float  # rounded to 3 decimals; 0 for normal
    rng: np.random.Generator  # the image's generator: draw from it in a fixed order
    canvas: Canvas
    anatomy: PatientAnatomy
    texture: PatientTexture
    acquisition: Acquisition
    disc: Disc  # the disc to draw; change it in place (cup, rim, size, tilt)
    stages: dict[str, list[Callable[[np.ndarray], np.ndarray]]] = field(
        default_factory=lambda: {name: [] for name in STAGES}
    )
    absorption: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) optical densities
    values: dict = field(default_factory=dict)  # FundusFindings fields drawn
    quadrant: str | None = None  # one of QUADRANTS: the lesions go there (`place`); None: where they fall

    def place(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lesion centres `(x, y)` (canonical FOV radii) mirrored into the image quadrant `self.quadrant`
        about the canvas's middle row and column; unchanged when no quadrant is set. Mirroring keeps each
        point's distance to the middle lines, so the lesions keep their sizes and spread."""
        if self.quadrant is None:
            return x, y
        canvas = self.canvas
        # The canonical coordinates of the image's middle column and row (`Canvas.to_px` solved for size / 2).
        x_mid = canvas.sign * (canvas.size / 2 - canvas.cx) / canvas.radius - canvas.sx
        y_mid = (canvas.size / 2 - canvas.cy) / canvas.radius - canvas.sy
        left, top = self.quadrant.endswith("left"), self.quadrant.startswith("top")
        # Pixel column grows with sign · x: the left half is sign · (x − x_mid) < 0.
        x_side = -canvas.sign if left else canvas.sign
        y_side = -1.0 if top else 1.0
        return x_mid + x_side * np.abs(x - x_mid), y_mid + y_side * np.abs(y - y_mid)

    def record(self, **values) -> None:
        """Note what was drawn (FundusFindings fields: counts, strengths) for the findings record and captions."""
        unknown = sorted(set(values) - set(_RECORDED))
        if unknown:
            raise TypeError(
                f"not FundusFindings fields a finding can record: {unknown}; expected {_RECORDED}"
            )
        self.values.update(values)

    def paint(self, stage: str, step: Callable[[np.ndarray], np.ndarray]) -> None:
        """Run ``step(image) -> image`` (float32 RGB, may work in place) at ``stage`` of :data:`STAGES`."""
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        self.stages[stage].append(step)

    def absorb(self, density: np.ndarray) -> None:
        """Add an (H, W, 3) optical density darkening the image together with the vessels (Beer-Lambert)."""
        self.absorption.append(density)

    def overlay(self, alpha: np.ndarray, colour) -> None:
        """Composite a flat ``colour`` with coverage ``alpha`` (H, W) over the retinal surface."""

        def step(image: np.ndarray) -> np.ndarray:
            over(image, alpha, colour)
            return image

        self.paint("surface", step)

    def layer(self) -> np.ndarray:
        """An empty (H, W) float32 coverage layer to stamp lesions into."""
        return np.zeros((self.canvas.size, self.canvas.size), np.float32)


# ---------------------------------------------------------------------------------------------- registry
Finding = Callable[[FindingContext], None]
FINDINGS: dict[str, Finding] = {}


def register_finding(label: str) -> Callable[[Finding], Finding]:
    """Decorator: register ``function`` as the drawing function of class ``label`` in :data:`FINDINGS`."""

    def decorate(function: Finding) -> Finding:
        if label in FINDINGS:
            raise ValueError(f"a finding is already registered for {label!r}")
        FINDINGS[label] = function
        return function

    return decorate


def check_label(label: str) -> None:
    if label not in FINDINGS:
        raise ValueError(f"unknown synthetic fundus class {label!r}; expected one of {tuple(FINDINGS)}")


# ---------------------------------------------------------------------------------------------- where lesions go
def posterior_pole_points(
    rng, n: int, anatomy: PatientAnatomy, disc_clear: float, place=None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points spread over the posterior pole (around the macula, inside the arcades), off the disc;
    ``place`` (`FindingContext.place`) moves the candidates first (into a quadrant), before the checks."""
    fx, fy = anatomy.fovea
    xs, ys = np.empty(0), np.empty(0)
    while xs.size < n:
        x = rng.normal(fx + 0.25, 0.42, 4 * n + 8)
        y = rng.normal(fy, 0.36, 4 * n + 8)
        if place is not None:
            x, y = place(x, y)
        ok = (x * x + y * y < 0.88**2) & (
            (x - anatomy.disc_x) ** 2 + (y - anatomy.disc_y) ** 2 > disc_clear**2
        )
        xs, ys = np.concatenate([xs, x[ok]]), np.concatenate([ys, y[ok]])
    return xs[:n], ys[:n]


def macular_cluster_points(
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


# ---------------------------------------------------------------------------------------------- the classes
@register_finding(NORMAL)
def normal(ctx: FindingContext) -> None:
    """A healthy eye: nothing beyond the patient's anatomy."""


@register_finding("diabetic retinopathy")
def diabetic_retinopathy(ctx: FindingContext) -> None:
    """Dot-blot haemorrhages and microaneurysms (absorbing), hard exudates and, when severe, cotton wool spots."""
    rng, s = ctx.rng, ctx.severity
    haemorrhages = int(round(6 + 20 * s * rng.uniform(0.8, 1.2)))
    microaneurysms = int(round(6 + 28 * s * rng.uniform(0.8, 1.2)))
    hard_exudates = int(round(5 + 35 * s * rng.uniform(0.8, 1.2)))
    cotton_wool = int(rng.integers(1, 2 + int(5 * (s - 0.55)))) if s > 0.6 else 0
    lesions = ctx.layer()
    _haemorrhages(ctx, lesions, haemorrhages)
    _microaneurysms(ctx, lesions, microaneurysms)
    ctx.absorb(lesions[..., None] * np.array([0.75, 2.0, 1.4], np.float32))
    ctx.overlay(_hard_exudates(ctx, hard_exudates), (0.96, 0.85, 0.4))
    if cotton_wool:
        ctx.overlay(_cotton_wool_spots(ctx, cotton_wool), (0.96, 0.92, 0.84))
    ctx.record(
        haemorrhages=haemorrhages,
        microaneurysms=microaneurysms,
        hard_exudates=hard_exudates,
        cotton_wool_spots=cotton_wool,
    )


def _haemorrhages(ctx: FindingContext, lesions: np.ndarray, count: int) -> None:
    """Dots (one part) and irregular blots (2-3 overlapping parts) over the posterior pole."""
    rng, s, canvas, anatomy = ctx.rng, ctx.severity, ctx.canvas, ctx.anatomy
    hx, hy = posterior_pole_points(rng, count, anatomy, 1.4 * anatomy.disc_radius, ctx.place)
    hr = rng.uniform(0.028, 0.052, count) * (0.8 + 0.4 * s)
    parts = rng.integers(1, 4, count)  # dot (1) or irregular blot (2-3 overlapping parts)
    owner = np.repeat(np.arange(count), parts)
    jitter = rng.normal(0.0, 0.6, (owner.size, 2)) * (parts[owner] > 1)[:, None] * hr[owner, None]
    hpx, hpy = canvas.to_px(hx[owner] + jitter[:, 0], hy[owner] + jitter[:, 1])
    pr = canvas.px(hr[owner] * np.where(parts[owner] > 1, rng.uniform(0.55, 0.85, owner.size), 1.0), 1.1)
    stamp(
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


def _microaneurysms(ctx: FindingContext, lesions: np.ndarray, count: int) -> None:
    rng, canvas, anatomy = ctx.rng, ctx.canvas, ctx.anatomy
    mx, my = posterior_pole_points(rng, count, anatomy, 1.3 * anatomy.disc_radius, ctx.place)
    mpx, mpy = canvas.to_px(mx, my)
    mr = canvas.px(rng.uniform(0.009, 0.014, count), 0.75)
    stamp(lesions, mpx, mpy, mr, mr, np.zeros(count), rng.uniform(0.9, 1.3, count), mode="add", soft=0.5)


def _hard_exudates(ctx: FindingContext, count: int) -> np.ndarray:
    """Small sharp yellow deposits in 1-3 clusters around the fovea."""
    rng, canvas = ctx.rng, ctx.canvas
    layer = ctx.layer()
    ex_x, ex_y = ctx.place(
        *macular_cluster_points(
            rng, count, ctx.anatomy, int(rng.integers(1, 4)), rng.uniform(0.04, 0.08), (0.12, 0.35)
        )
    )
    epx, epy = canvas.to_px(ex_x, ex_y)
    er = canvas.px(rng.uniform(0.012, 0.026, count), 0.8)
    stamp(
        layer,
        epx,
        epy,
        er * rng.uniform(0.8, 1.3, count),
        er,
        rng.uniform(0, np.pi, count),
        rng.uniform(0.85, 1.0, count),
        soft=0.45,
    )
    return layer


def _cotton_wool_spots(ctx: FindingContext, count: int) -> np.ndarray:
    """Large soft-edged whitish patches."""
    rng, canvas, anatomy = ctx.rng, ctx.canvas, ctx.anatomy
    layer = ctx.layer()
    cx, cy = posterior_pole_points(rng, count, anatomy, 1.8 * anatomy.disc_radius, ctx.place)
    cpx, cpy = canvas.to_px(cx, cy)
    cr = canvas.px(rng.uniform(0.035, 0.055, count), 1.5)
    stamp(
        layer,
        cpx,
        cpy,
        cr * 1.5,
        cr,
        rng.uniform(0, np.pi, count),
        rng.uniform(0.6, 0.8, count),
        soft=1.6,
        dome=0.6,
    )
    return layer


@register_finding("glaucoma")
def glaucoma(ctx: FindingContext) -> None:
    """A large cup (cup-to-disc ratio 0.6-0.9) with a pale, thin rim."""
    s = ctx.severity
    ctx.disc.cup_ratio = 0.6 + 0.3 * s + ctx.rng.uniform(-0.03, 0.03)
    ctx.disc.rim_pallor = round(0.3 + 0.6 * s, 3)
    ctx.record(rim_pallor=ctx.disc.rim_pallor)


@register_finding("age-related macular degeneration")
def age_related_macular_degeneration(ctx: FindingContext) -> None:
    """Yellowish drusen clustered around the fovea; when advanced, larger drusen and a confluent area."""
    rng, s, canvas, anatomy = ctx.rng, ctx.severity, ctx.canvas, ctx.anatomy
    fx, fy = anatomy.fovea
    drusen = int(round(10 + 40 * s * rng.uniform(0.85, 1.15)))
    large_drusen = s > 0.7
    dist = np.abs(rng.normal(0, 0.13 + 0.08 * s, drusen))
    ang = rng.uniform(0, 2 * np.pi, drusen)
    dxs, dys = fx + dist * np.cos(ang), fy + 0.85 * dist * np.sin(ang)
    dpx, dpy = canvas.to_px(dxs, dys)
    dr = canvas.px(rng.uniform(0.018, 0.03, drusen) * (0.8 + 0.9 * s) * (1.0 + 0.6 * (dist < 0.1)), 1.1)
    dr_layer = ctx.layer()
    stamp(
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
    ctx.overlay(dr_layer, (0.86, 0.68, 0.33))
    if large_drusen:  # soft confluent yellowish area over the fovea
        d_fov2 = fovea_distance2(canvas, anatomy)
        confluent = 0.35 * (s - 0.6) * np.exp(-d_fov2 / (2 * (0.6 * anatomy.disc_radius) ** 2))
        ctx.overlay(confluent, (0.95, 0.82, 0.5))
    ctx.record(drusen=drusen, large_drusen=large_drusen)


@register_finding("cataract")
def cataract(ctx: FindingContext) -> None:
    """Blur, a patchy veiling haze, reduced contrast and saturation over the whole picture."""
    haze = round(0.3 + 0.6 * ctx.severity, 3)
    canvas, brightness, haze_grid = ctx.canvas, ctx.acquisition.brightness, ctx.texture.haze

    def cloud(image: np.ndarray) -> np.ndarray:
        image = blur(image, (0.004 + 0.028 * haze) * canvas.radius)
        patchy = 1.0 + 0.12 * smooth_field(haze_grid, canvas.u, canvas.v)
        veil = (0.2 + 0.45 * haze) * patchy * (1.0 - 0.25 * canvas.rho2)
        grey = image.mean(axis=2, keepdims=True)
        image = image + (grey - image) * (0.18 * haze)
        veil_colour = np.array([0.88, 0.76, 0.56], np.float32) * brightness
        return image * (1.0 - 0.8 * veil[..., None]) + veil[..., None] * veil_colour * 0.85

    ctx.paint("media", cloud)
    ctx.record(haze=haze)


@register_finding("pathologic myopia")
def pathologic_myopia(ctx: FindingContext) -> None:
    """Choroidal tessellation, a small tilted disc and a temporal peripapillary atrophy crescent."""
    s, anatomy, disc = ctx.severity, ctx.anatomy, ctx.disc
    tessellation = round(0.35 + 0.6 * s, 3)
    ctx.paint("choroid", lambda image: _tessellate(image, ctx, tessellation))
    disc_tilt = round(0.3 + 0.6 * s, 3)
    ppa = round(0.3 + 0.7 * s, 3)
    disc_r = anatomy.disc_radius
    disc.rx, disc.ry = disc_r * 0.82 * (1.0 - 0.3 * disc_tilt), disc_r * 0.85 * anatomy.disc_aspect
    disc.tilt = 0.35 * disc_tilt * (1 if ctx.rng.random() < 0.5 else -1)
    disc.rim_colour = (0.9, 0.55, 0.38)  # a pinker disc stands out against the white crescent
    ctx.paint("peripapillary", lambda image: _atrophy_crescent(image, ctx, ppa))
    ctx.record(tessellation=tessellation, peripapillary_atrophy=ppa, disc_tilt=disc_tilt)


def _tessellate(image: np.ndarray, ctx: FindingContext, tessellation: float) -> np.ndarray:
    """Large choroidal vessels with dark pigmented spaces between them, seen through a thin retina."""
    canvas, anatomy = ctx.canvas, ctx.anatomy
    choroid = choroid_tree(anatomy)
    vessels = np.clip(
        splat_lines(
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
    radius = np.sqrt((canvas.U - anatomy.disc_x + 0.3) ** 2 + (canvas.V - anatomy.disc_y) ** 2)
    amount = tessellation * (0.6 + 0.4 * smoothstep(0.05, 0.4, radius))
    spaces = amount * (1.0 - vessels)  # dark pigmented spaces between the choroidal vessels
    image *= (1.0 - 0.42 * spaces)[..., None] * np.array([0.97, 1.0, 1.0], np.float32)
    image += (0.1 * amount * vessels)[..., None] * np.array([1.0, 0.4, 0.12], np.float32)
    image *= np.array([1.0, 1.0 - 0.15 * tessellation, 1.0 - 0.1 * tessellation], np.float32)
    return image


def _atrophy_crescent(image: np.ndarray, ctx: FindingContext, ppa: float) -> np.ndarray:
    """Pale crescent on the temporal side: an ellipse sharing the disc's nasal edge, pushed temporally."""
    canvas, disc = ctx.canvas, ctx.disc
    dx_disc, dy_disc = ctx.anatomy.disc_x, ctx.anatomy.disc_y
    rx, ry = disc.rx, disc.ry
    width = (0.35 + 0.9 * ppa) * rx
    d_ppa = canvas.ellipse_distance(
        dx_disc - 0.5 * width, dy_disc, rx + 0.5 * width, ry * (1 + 0.12 * ppa), disc.tilt
    )
    crescent = canvas.edge(d_ppa, rx + 0.5 * width)
    patch = 0.85 + 0.15 * smooth_field(ctx.texture.warp, canvas.u * 4.0, canvas.v * 4.0)
    over(image, crescent * 0.92 * patch, (0.93, 0.89, 0.8))
    border = np.clip(1.0 - np.abs(d_ppa - 1.0) * (rx + 0.5 * width) * canvas.radius / 1.0, 0.0, 1.0)
    image *= 1.0 - (0.4 * border * (canvas.U < dx_disc - 0.6 * rx))[..., None]
    return image
