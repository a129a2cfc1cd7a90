"""Procedural synthetic colour fundus photographs: the package's default, fully offline demo data.

Every image is drawn from a seeded :class:`numpy.random.Generator` with numpy only (Pillow writes the PNGs).
The subpackage is split by meaning:

* :mod:`.anatomy`, :mod:`.vessels`: the normal eye (background, macula, optic disc and cup, retinal and
  choroidal vessel trees), per patient; :mod:`.camera`: framing, illumination, noise, field of view;
  :mod:`.canvas`, :mod:`.raster`: the pixel grid and the numeric drawing primitives;
* :mod:`.findings`: one drawing function per class in the :data:`FINDINGS` registry
  (:func:`register_finding` adds a class);
* :mod:`.render`: :func:`render_fundus`, the picture's stages back to front;
* :mod:`.captions`: :func:`write_caption`, a varied English report of what was drawn;
* :mod:`.dataset`: :func:`generate_synthetic_dataset` (images, manifests, findings, marker) and
  :func:`resolve_synthetic_spec`, which turns a run config's ``data.synthetic`` spec (the demo's data) into
  the data set and its manifest specs.

This subpackage sits in the data layer: it imports nothing above :mod:`retvlp.data`.
"""

from ..lazy import lazy_package

# name → module, imported on first use (`retvlp.lazy.lazy_package`)
lazy_package(
    __name__,
    {
        "PatientAnatomy": ".anatomy",
        "write_caption": ".captions",
        "SYNTHETIC_CLASSES": ".dataset",
        "SyntheticDataset": ".dataset",
        "generate_synthetic_dataset": ".dataset",
        "resolve_synthetic_spec": ".dataset",
        "FINDINGS": ".findings",
        "STAGES": ".findings",
        "FindingContext": ".findings",
        "FundusFindings": ".findings",
        "register_finding": ".findings",
        "render_fundus": ".render",
    },
)

__all__ = [
    "FINDINGS",
    "STAGES",
    "SYNTHETIC_CLASSES",
    "FindingContext",
    "FundusFindings",
    "PatientAnatomy",
    "SyntheticDataset",
    "generate_synthetic_dataset",
    "register_finding",
    "render_fundus",
    "resolve_synthetic_spec",
    "write_caption",
]
