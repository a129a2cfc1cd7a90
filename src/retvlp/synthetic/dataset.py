"""Writing synthetic fundus data sets: images, manifests, the findings table and the completion marker.

:func:`generate_synthetic_dataset` writes a patient-level split dataset (paired image-text, categorical
image-label, unpaired images and a captioned test split) with manifests the rest of the package reads.
A run config's ``data.synthetic`` mapping (the demo's data) is a *spec* of such a data set:
:func:`resolve_synthetic_spec` generates (or reuses) it and :meth:`SyntheticDataset.training_specs` /
:meth:`SyntheticDataset.evaluation_specs` give the manifest specs the training and evaluation code read.
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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .anatomy import PatientAnatomy
from .captions import write_caption
from .findings import check_label
from .render import render_fundus

logger = logging.getLogger(__name__)

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "normal",
    "diabetic retinopathy",
    "glaucoma",
    "age-related macular degeneration",
    "cataract",
    "pathologic myopia",
)

# The generator's name in every marker written so far: kept when the code moved to `retvlp.synthetic`, so
# cached datasets stay valid (a different name makes `generate_synthetic_dataset` refuse the folder).
_GENERATOR = "retvlp.data.synthetic"
# Bump whenever the pictures, captions or file layout change, so cached datasets are regenerated.
_GENERATOR_VERSION = 1
_MARKER = "synthetic.json"
_SPLITS = ("paired", "categorical", "unpaired", "test")


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

    def training_specs(self) -> list[dict]:
        """Manifest specs of every training image: paired, categorical and unpaired."""
        return [{"path": str(self.paired)}, {"path": str(self.categorical)}, {"path": str(self.unpaired)}]

    def evaluation_specs(self) -> dict:
        """The labelled training manifests (for probes and few-shot), the test manifest and the class list."""
        return {
            "probe_train": [{"path": str(self.paired)}, {"path": str(self.categorical)}],
            "test": [{"path": str(self.test)}],
            "classes": list(self.classes),
        }


def resolve_synthetic_spec(spec: Mapping | None, cache_dir: str | os.PathLike) -> SyntheticDataset:
    """Generate (or reuse) the data set a run config's ``data.synthetic`` mapping describes.

    ``spec`` holds keyword arguments of :func:`generate_synthetic_dataset` and optionally ``output_dir``
    (default: ``cache_dir/synthetic``).
    """
    options = dict(spec or {})
    root = options.pop("output_dir", None) or Path(cache_dir) / "synthetic"
    return generate_synthetic_dataset(root, **options)


# ---------------------------------------------------------------------------------------------- helpers
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
        check_label(label)
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


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- writing
def _assign_patients(parameters: dict) -> tuple[list[str], dict[int, str]]:
    """Each patient's class (balanced round-robin, shuffled) and split (stratified by class)."""
    classes = tuple(parameters["classes"])
    num_patients = parameters["num_patients"]
    order_rng = np.random.default_rng([parameters["seed"], 0x5F0])
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
    return labels, split_of


def _write_patient(root: Path, parameters: dict, p: int, label: str, split: str, rows, findings_rows) -> None:
    """Render and write patient ``p``'s images (alternating eyes) and add their manifest and findings rows."""
    seed = parameters["seed"]
    lo, hi = parameters["images_per_patient"]
    patient_id = f"P{p + 1:0{max(4, len(str(parameters['num_patients'])))}d}"
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
            label, image_rng, size=parameters["image_size"], severity=severity, eye=eye, anatomy=anatomy
        )
        image = f"images/{patient_id}_{k}.png"
        (root / image).write_bytes(_png_bytes(pixels))
        if split in ("paired", "test"):
            text = write_caption(findings, np.random.default_rng([seed, p, k, 1]))
            rows[split].append({"image": image, "text": text, "label": label, "patient_id": patient_id})
        elif split == "categorical":
            rows[split].append({"image": image, "label": label, "patient_id": patient_id})
        else:
            rows[split].append({"image": image, "patient_id": patient_id})
        findings_rows.append({"image": image, "patient_id": patient_id, "split": split, **asdict(findings)})


def _render_block(root: Path, parameters: dict, patients: list[tuple[int, str, str]]):
    """Render a contiguous block of patients; their manifest rows (per split) and findings rows, in order."""
    rows: dict[str, list[dict]] = {name: [] for name in _SPLITS}
    findings_rows: list[dict] = []
    for p, label, split in patients:
        _write_patient(root, parameters, p, label, split, rows, findings_rows)
    return rows, findings_rows


# Below this many patients a process pool costs more than it saves (the tests' small sets).
_PARALLEL_FROM_PATIENTS = 120


def _render_patients(root: Path, parameters: dict, patients: list[tuple[int, str, str]]):
    """Every patient's images, in contiguous blocks over the machine's cores: each patient draws from its own
    seeded generators, so the files are byte-identical whatever the number of processes (a test checks it),
    and the blocks' rows are joined in patient order. The README's demo draws 600 patients: 14 s on one of
    2 cores."""
    workers = min(os.cpu_count() or 1, 8)
    if workers < 2 or len(patients) < _PARALLEL_FROM_PATIENTS:
        return _render_block(root, parameters, patients)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = math.ceil(len(patients) / (2 * workers))  # two blocks per process evens out slow patients
    blocks = [patients[i : i + size] for i in range(0, len(patients), size)]
    # fork where there is one: the blocks need no re-import of the package; elsewhere the default start method
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        results = list(pool.map(_render_block, [root] * len(blocks), [parameters] * len(blocks), blocks))
    rows: dict[str, list[dict]] = {name: [] for name in _SPLITS}
    findings_rows: list[dict] = []
    for block_rows, block_findings in results:
        for name in _SPLITS:
            rows[name].extend(block_rows[name])
        findings_rows.extend(block_findings)
    return rows, findings_rows


def _write_manifests(
    root: Path, classes: tuple[str, ...], rows: dict[str, list[dict]], findings_rows
) -> None:
    _write_jsonl(root / "paired.jsonl", rows["paired"])
    with open(root / "categorical.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image", "label", "patient_id"])
        writer.writerows([r["image"], r["label"], r["patient_id"]] for r in rows["categorical"])
    _write_jsonl(root / "unpaired.jsonl", rows["unpaired"])
    _write_jsonl(root / "test.jsonl", rows["test"])
    (root / "classes.json").write_text(json.dumps(list(classes), indent=2) + "\n", encoding="utf-8")
    _write_jsonl(root / "findings.jsonl", findings_rows)


def _write_dataset(root: Path, parameters: dict) -> dict:
    """Render every image and write images, manifests and (last) the marker into ``root``."""
    labels, split_of = _assign_patients(parameters)
    (root / "images").mkdir(parents=True, exist_ok=True)
    patients = [(p, labels[p], split_of[p]) for p in range(parameters["num_patients"])]
    rows, findings_rows = _render_patients(root, parameters, patients)
    _write_manifests(root, tuple(parameters["classes"]), rows, findings_rows)
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


def _parameters(
    num_patients,
    images_per_patient,
    image_size,
    seed,
    classes,
    test_fraction,
    paired_fraction,
    categorical_fraction,
) -> dict:
    """Check the arguments of :func:`generate_synthetic_dataset`; the canonical parameters the marker stores."""
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
    return {
        "num_patients": int(num_patients),
        "images_per_patient": [lo, hi],
        "image_size": int(image_size),
        "seed": int(seed),
        "classes": list(classes),
        "test_fraction": float(test_fraction),
        "paired_fraction": float(paired_fraction),
        "categorical_fraction": float(categorical_fraction),
    }


def _check_replaceable(root: Path) -> None:
    """Refuse to replace anything but an empty folder or a previous synthetic dataset."""
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    previous = _read_marker(root)
    if any(root.iterdir()) and (previous is None or previous.get("generator") != _GENERATOR):
        raise FileExistsError(
            f"{root} is not empty and holds no synthetic dataset ({_MARKER}); refusing to overwrite it"
        )


def _write_and_publish(root: Path, parameters: dict) -> None:
    """Write the dataset into a temporary sibling of ``root`` and move it into place at the end."""
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the dataset is an ordinary directory
        _write_dataset(staging, parameters)
        if _is_complete(root, _read_marker(root), parameters):  # a concurrent writer finished first
            shutil.rmtree(staging, ignore_errors=True)
            return
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
    parameters = _parameters(
        num_patients,
        images_per_patient,
        image_size,
        seed,
        classes,
        test_fraction,
        paired_fraction,
        categorical_fraction,
    )
    classes = tuple(parameters["classes"])
    root = Path(output_dir).expanduser().absolute()
    if not _is_complete(root, _read_marker(root), parameters):
        _check_replaceable(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        # a few seconds to minutes of drawing before anything else prints: say what is happening
        logger.info(
            "Generating the synthetic fundus data set (%d patients, %d px, seed %d) in %s; later runs reuse it.",
            num_patients,
            image_size,
            seed,
            root,
        )
        _write_and_publish(root, parameters)
    return _dataset(root, classes)
