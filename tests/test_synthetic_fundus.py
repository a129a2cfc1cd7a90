"""Synthetic fundus generator: determinism, geometry, per-class findings and their registry, captions, dataset
writer, the demo spec, separability."""

import csv
import json
import re
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from retvlp.synthetic import (
    FINDINGS,
    SYNTHETIC_CLASSES,
    FindingContext,
    FundusFindings,
    PatientAnatomy,
    SyntheticDataset,
    generate_synthetic_dataset,
    register_finding,
    render_fundus,
    resolve_synthetic_spec,
    write_caption,
)
from retvlp.synthetic.anatomy import Disc
from retvlp.synthetic.raster import stamp

DISEASES = [c for c in SYNTHETIC_CLASSES if c != "normal"]


def render(label, seed, size=64, **kwargs):
    return render_fundus(label, np.random.default_rng(seed), size=size, **kwargs)


def luminance(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def radius_map(size: int) -> np.ndarray:
    idx = np.arange(size) - (size - 1) / 2
    return np.sqrt(idx[None, :] ** 2 + idx[:, None] ** 2)


# ----------------------------------------------------------------------------- rendering
@pytest.mark.parametrize("label", SYNTHETIC_CLASSES)
def test_render_is_deterministic_shaped_uint8(label):
    a, fa = render(label, 7)
    b, fb = render(label, 7)
    c, _ = render(label, 8)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert fa == fb
    assert not np.array_equal(a, c)
    json.dumps(asdict(fa))  # JSON-serialisable


def test_large_and_small_sizes_work():
    big, _ = render("diabetic retinopathy", 0, size=224)
    small, _ = render("diabetic retinopathy", 0, size=48)
    assert big.shape == (224, 224, 3) and small.shape == (48, 48, 3)
    assert luminance(big)[112, 112] > 20


@pytest.mark.parametrize("size", [64, 96])
def test_outside_the_field_of_view_is_black_and_inside_is_not(size):
    outside = radius_map(size) > 0.49 * size + 1
    centre = radius_map(size) < 0.3 * size
    for i, label in enumerate(SYNTHETIC_CLASSES):
        image, _ = render(label, 100 + i, size=size)
        assert image[outside].max() == 0, label
        assert luminance(image)[centre].min() > 5, label


def test_class_findings_match_the_label():
    for seed in range(5):
        anatomy = PatientAnatomy.sample(np.random.default_rng(seed))
        f = {label: render(label, seed, anatomy=anatomy)[1] for label in SYNTHETIC_CLASSES}
        normal = f["normal"]
        assert normal.severity == 0
        assert (normal.haemorrhages, normal.microaneurysms, normal.hard_exudates, normal.drusen) == (
            0,
            0,
            0,
            0,
        )
        assert (normal.haze, normal.tessellation, normal.cotton_wool_spots, normal.peripapillary_atrophy) == (
            0,
            0,
            0,
            0,
        )
        assert 0.2 <= normal.cup_to_disc_ratio <= 0.4
        dr = f["diabetic retinopathy"]
        assert dr.haemorrhages > 0 and dr.microaneurysms > 0 and dr.hard_exudates > 0 and dr.drusen == 0
        glaucoma = f["glaucoma"]
        assert (
            glaucoma.cup_to_disc_ratio >= 0.55
            and glaucoma.cup_to_disc_ratio > normal.cup_to_disc_ratio + 0.15
        )
        assert glaucoma.haemorrhages == glaucoma.drusen == 0
        amd = f["age-related macular degeneration"]
        assert amd.drusen > 0 and amd.haemorrhages == amd.hard_exudates == 0
        assert f["cataract"].haze > 0 and f["cataract"].tessellation == 0
        myopia = f["pathologic myopia"]
        assert myopia.tessellation > 0 and myopia.peripapillary_atrophy > 0 and myopia.haze == 0
        for label in DISEASES:
            assert 0.3 <= f[label].severity <= 1.0 and f[label].label == label


def test_counts_and_strength_grow_with_severity():
    anatomy = PatientAnatomy.sample(np.random.default_rng(3))

    def findings(label, severity):
        return render(label, 0, anatomy=anatomy, severity=severity)[1]

    mild, severe = findings("diabetic retinopathy", 0.3), findings("diabetic retinopathy", 1.0)
    assert severe.haemorrhages > mild.haemorrhages and severe.hard_exudates > mild.hard_exudates
    assert findings("glaucoma", 1.0).cup_to_disc_ratio > findings("glaucoma", 0.3).cup_to_disc_ratio
    assert (
        findings("age-related macular degeneration", 1.0).drusen
        > findings("age-related macular degeneration", 0.3).drusen
    )
    assert findings("cataract", 1.0).haze > findings("cataract", 0.3).haze
    assert findings("pathologic myopia", 1.0).tessellation > findings("pathologic myopia", 0.3).tessellation


def test_findings_are_visible_at_64_px():
    """Even mild disease changes many pixels strongly compared with the same eye rendered as normal."""
    centre = radius_map(64) < 0.4 * 64
    for seed in range(3):
        anatomy = PatientAnatomy.sample(np.random.default_rng(seed))
        normal, _ = render("normal", seed, anatomy=anatomy, eye="right")
        for label in DISEASES:
            image, _ = render(label, seed, anatomy=anatomy, eye="right", severity=0.3)
            difference = np.abs(image.astype(int) - normal.astype(int)).max(axis=2)
            if label == "cataract":  # a global change rather than local lesions
                assert difference[centre].mean() > 12, (seed, difference[centre].mean())
            else:
                assert (difference > 40).sum() >= 8, (label, seed, (difference > 40).sum())


def test_cataract_lowers_contrast():
    centre = radius_map(96) < 0.4 * 96
    for seed in range(4):
        anatomy = PatientAnatomy.sample(np.random.default_rng(seed))
        normal, _ = render("normal", seed, size=96, anatomy=anatomy, eye="left")
        cataract, _ = render("cataract", seed, size=96, anatomy=anatomy, eye="left")
        lum_normal, lum_cataract = luminance(normal)[centre], luminance(cataract)[centre]
        assert lum_cataract.std() < lum_normal.std()
        # RMS contrast (standard deviation over mean) drops clearly.
        assert lum_cataract.std() / lum_cataract.mean() < 0.8 * lum_normal.std() / lum_normal.mean()
        # Haze also removes fine detail: smaller differences between neighbouring pixels.
        detail = np.abs(np.diff(luminance(cataract), axis=1))[centre[:, 1:]].mean()
        assert detail < np.abs(np.diff(luminance(normal), axis=1))[centre[:, 1:]].mean()


@pytest.mark.parametrize("eye", ["left", "right"])
def test_disc_is_on_the_nasal_side(eye):
    size = 96
    k = 13  # box window about the size of the disc
    for i, label in enumerate(SYNTHETIC_CLASSES):
        for seed in range(3):
            severity = None if label == "normal" else 0.6  # very dense lesion clusters can outshine the disc
            image, findings = render(label, 10 * i + seed, size=size, eye=eye, severity=severity)
            assert findings.eye == eye
            lum = luminance(image)
            integral = np.pad(lum.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            boxes = integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]
            _, x = np.unravel_index(np.argmax(boxes), boxes.shape)
            x_centre = x + (k - 1) / 2
            if eye == "right":
                assert x_centre > size * 0.6, (label, seed, x_centre)
            else:
                assert x_centre < size * 0.4, (label, seed, x_centre)


def test_patient_anatomy_is_shared_but_images_differ():
    def detail(image):  # vessels, disc and macula: luminance minus its 5x5 local mean, central part
        lum = luminance(image)
        integral = np.pad(lum.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        local = (integral[5:, 5:] - integral[:-5, 5:] - integral[5:, :-5] + integral[:-5, :-5]) / 25
        return (lum[2:-2, 2:-2] - local)[20:-20, 20:-20]

    def similarity(x, y):  # best correlation over small shifts (a patient's images are not aligned)
        dx, dy = detail(x), detail(y)
        return max(
            np.corrcoef(dx[8:-8, 8:-8].ravel(), np.roll(dy, (i, j), (0, 1))[8:-8, 8:-8].ravel())[0, 1]
            for i in range(-4, 5)
            for j in range(-4, 5)
        )

    same, other = [], []
    for patient in range(3):
        anatomy = PatientAnatomy.sample(np.random.default_rng(patient))
        assert anatomy == PatientAnatomy.sample(np.random.default_rng(patient))
        a, _ = render("normal", [patient, 1], size=96, anatomy=anatomy, eye="right")
        b, _ = render("normal", [patient, 2], size=96, anatomy=anatomy, eye="right")
        c, _ = render("normal", [patient, 3], size=96, eye="right")  # someone else
        assert not np.array_equal(a, b)
        same.append(similarity(a, b))
        other.append(similarity(a, c))
    assert min(same) > 0.7 and max(other) < 0.55, (same, other)


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="retinitis pigmentosa") as info:
        render("retinitis pigmentosa", 0)
    assert "diabetic retinopathy" in str(info.value)
    with pytest.raises(ValueError, match="eye"):
        render("normal", 0, eye="both")
    with pytest.raises(ValueError, match="severity"):
        render("glaucoma", 0, severity=1.5)


# ----------------------------------------------------------------------------- findings registry
@contextmanager
def registered(label, function):
    """``function`` registered as the finding of class ``label`` for the duration of the block."""
    register_finding(label)(function)
    try:
        yield
    finally:
        del FINDINGS[label]


def demo_spec() -> dict:
    from retvlp.cli._common import demo_synthetic_spec

    return demo_synthetic_spec()


def test_the_registry_covers_every_demo_class():
    classes = demo_spec().get("classes", SYNTHETIC_CLASSES)
    assert set(SYNTHETIC_CLASSES) <= set(FINDINGS) and set(classes) <= set(FINDINGS)
    for label in classes:
        assert callable(FINDINGS[label]), label
    with pytest.raises(ValueError, match="already registered"):
        register_finding("glaucoma")(lambda ctx: None)


def laser_scars(ctx: FindingContext) -> None:
    """Rows of small pale round scars in the mid-periphery (a test class)."""
    count = int(ctx.rng.integers(20, 30))
    angle = ctx.rng.uniform(0, 2 * np.pi, count)
    x, y = ctx.canvas.to_px(0.7 * np.cos(angle), 0.7 * np.sin(angle))
    scars = ctx.layer()
    radius = ctx.canvas.px(0.03, 1.0)
    stamp(scars, x, y, np.full(count, radius), np.full(count, radius), np.zeros(count), np.ones(count))
    ctx.overlay(scars, (0.95, 0.9, 0.75))
    ctx.record(hard_exudates=0)


def test_a_finding_added_through_the_registry_renders_captions_and_writes(tmp_path):
    anatomy = PatientAnatomy.sample(np.random.default_rng(0))
    normal, _ = render("normal", 3, anatomy=anatomy, eye="right")
    with pytest.raises(ValueError, match="laser scars"):
        render("laser scars", 3)
    with registered("laser scars", laser_scars):
        image, findings = render("laser scars", 3, anatomy=anatomy, eye="right", severity=0.5)
        assert findings.label == "laser scars" and findings.severity == 0.5
        assert (np.abs(image.astype(int) - normal.astype(int)).max(axis=2) > 40).sum() >= 20
        text = write_caption(findings, np.random.default_rng(0))
        assert text[0].isupper() and text.endswith(".")
        ds = generate_synthetic_dataset(
            tmp_path / "scars", num_patients=6, image_size=24, classes=("normal", "laser scars")
        )
        assert {row["label"] for row in read_jsonl(ds.findings)} == {"normal", "laser scars"}
    assert "laser scars" not in FINDINGS


def test_finding_context_rejects_unknown_records_and_stages():
    ctx = FindingContext("glaucoma", 0.5, None, None, None, None, None, None)
    with pytest.raises(TypeError, match="scars"):
        ctx.record(scars=3)
    with pytest.raises(ValueError, match="stage"):
        ctx.paint("lens", lambda image: image)


@pytest.mark.parametrize("label", SYNTHETIC_CLASSES)
def test_each_finding_changes_only_pixels_inside_the_field_of_view(label):
    """The class rendered against its undrawn twin: same random draws (so the same noise), nothing painted."""
    seen = {}

    def undrawn(ctx: FindingContext) -> None:
        FINDINGS[label](ctx)
        ctx.stages = {stage: [] for stage in ctx.stages}
        ctx.absorption.clear()
        ctx.disc = Disc.of(ctx.anatomy)
        seen["fov"] = ctx.canvas.field_of_view()

    for seed in range(3):
        with registered("undrawn", undrawn):
            blank, _ = render("undrawn", seed, size=64, severity=0.8)
        image, _ = render(label, seed, size=64, severity=None if label == "normal" else 0.8)
        changed = (image != blank).any(axis=2)
        assert not changed[seen["fov"] == 0].any(), (label, seed)
        assert changed.any() == (label != "normal"), (label, seed)


# ----------------------------------------------------------------------------- captions
FINDING_WORDS = {
    "haemorrhages": r"haemorrhag|hemorrhag|bleeding",
    "microaneurysms": r"microaneurysm|red dot",
    "hard_exudates": r"hard exudate|yellow exudate|lipid",
    "cotton_wool_spots": r"cotton|soft exudate",
    "drusen": r"drusen|druse",
    "haze": r"haz[ey]|opacity|blur|washed|contrast|indistinct",
    "tessellation": r"tessellat|tigroid|choroidal",
    "peripapillary_atrophy": r"atrophy|crescent",
    "disc_tilt": r"tilt",
    "rim_pallor": r"pallor|pale",
}


def test_captions_only_mention_drawn_findings():
    for i, label in enumerate(SYNTHETIC_CLASSES):
        for seed in range(6):
            _, findings = render(label, 1000 * i + seed, size=32)
            for k in range(15):
                text = write_caption(findings, np.random.default_rng([seed, k]))
                lower = text.lower()
                for field, pattern in FINDING_WORDS.items():
                    if not getattr(findings, field):
                        assert not re.search(pattern, lower), (field, text)
                if label != "glaucoma":
                    assert not re.search(r"enlarged|large cup|cupping|glaucom", lower), text
                other = "right" if findings.eye == "left" else "left"
                assert f"{other} eye" not in lower, text
                assert not re.search(r"\b" + ("OD" if other == "right" else "OS") + r"\b", text), text
                assert text[0].isupper() and text.endswith(".") and "  " not in text


def test_normal_captions_describe_a_healthy_eye():
    _, findings = render("normal", 4, size=32)
    for k in range(30):
        text = write_caption(findings, np.random.default_rng(k)).lower()
        assert "normal" in text or "healthy" in text
        assert (
            re.search(r"disc", text)
            and re.search(r"macula|fovea", text)
            and re.search(r"vessel|arcade", text)
        )


def test_captions_vary_and_usually_name_the_diagnosis():
    for i, label in enumerate(DISEASES):
        _, findings = render(label, 50 + i, size=32)
        texts = [write_caption(findings, np.random.default_rng(k)) for k in range(200)]
        assert len(set(texts[:20])) >= 15
        named = np.mean([label in t.lower() for t in texts])
        assert 0.5 <= named <= 0.95, (label, named)
    words = " ".join(
        write_caption(
            render("diabetic retinopathy", 9, size=32, severity=severity, eye=eye)[1],
            np.random.default_rng(k),
        )
        for severity, eye in ((0.3, "left"), (1.0, "right"))
        for k in range(150)
    ).lower()
    for synonym in (
        "haemorrhages",
        "hemorrhages",
        "bleeding spots",
        "hard exudates",
        "lipid deposits",
        "several",
        "numerous",
        "left eye",
        "right eye",
        "(os)",
        "(od)",
    ):
        assert synonym in words, synonym


def test_caption_severity_words_follow_severity():
    anatomy = PatientAnatomy.sample(np.random.default_rng(0))
    _, mild = render("diabetic retinopathy", 0, size=32, anatomy=anatomy, severity=0.3)
    _, severe = render("diabetic retinopathy", 0, size=32, anatomy=anatomy, severity=0.95)
    mild_text = " ".join(write_caption(mild, np.random.default_rng(k)) for k in range(100)).lower()
    severe_text = " ".join(write_caption(severe, np.random.default_rng(k)) for k in range(100)).lower()
    assert "mild" in mild_text and "severe" not in mild_text
    assert "severe" in severe_text and "mild" not in severe_text


# ----------------------------------------------------------------------------- dataset writer
SMALL = dict(num_patients=36, images_per_patient=(1, 2), image_size=32, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> SyntheticDataset:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "data", **SMALL)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_split(ds: SyntheticDataset, name: str) -> list[dict]:
    path = getattr(ds, name)
    if name == "categorical":
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    return read_jsonl(path)


SPLITS = ("paired", "categorical", "unpaired", "test")


def test_dataset_layout_and_manifests(dataset):
    root = dataset.root
    assert dataset.classes == SYNTHETIC_CLASSES
    assert json.loads((root / "classes.json").read_text()) == list(SYNTHETIC_CLASSES)
    assert (root / "categorical.csv").read_text().splitlines()[0] == "image,label,patient_id"
    keys = {
        "paired": {"image", "text", "label", "patient_id"},
        "categorical": {"image", "label", "patient_id"},
        "unpaired": {"image", "patient_id"},
        "test": {"image", "text", "label", "patient_id"},
    }
    for name in SPLITS:
        rows = read_split(dataset, name)
        assert rows, name
        for row in rows:
            assert set(row) == keys[name]
            assert re.fullmatch(r"images/P\d{4}_\d\.png", row["image"])
            path = getattr(dataset, name).parent / row["image"]
            assert path.is_file()
            assert row["image"].startswith(row["patient_id"] + "_", len("images/"))
            if "text" in row:
                assert len(row["text"]) > 20
    with PIL.Image.open(root / read_split(dataset, "paired")[0]["image"]) as im:
        assert im.format == "PNG" and im.size == (32, 32) and im.mode == "RGB"
    marker = json.loads((root / "synthetic.json").read_text())
    assert marker["parameters"]["seed"] == 3 and marker["parameters"]["image_size"] == 32
    assert not list(root.parent.glob(".data.*"))  # no staging leftovers


def test_dataset_splits_are_patient_disjoint_stratified_and_consistent(dataset):
    patients = {name: {row["patient_id"] for row in read_split(dataset, name)} for name in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not patients[a] & patients[b], (a, b)
    findings = read_jsonl(dataset.findings)
    assert {row["patient_id"] for row in findings} == set().union(*patients.values())
    assert len({row["patient_id"] for row in findings}) == 36
    label_of: dict[str, set] = {}
    eyes: dict[str, list] = {}
    for row in findings:
        label_of.setdefault(row["patient_id"], set()).add(row["label"])
        eyes.setdefault(row["patient_id"], []).append(row["eye"])
        FundusFindings(**{k: v for k, v in row.items() if k not in ("image", "patient_id", "split")})
    assert all(len(labels) == 1 for labels in label_of.values())
    assert all(len(e) in (1, 2) and len(set(e)) == len(e) for e in eyes.values())  # two images: both eyes
    by_split = {}
    for row in findings:
        by_split.setdefault(row["split"], set()).add(row["label"])
    for name in SPLITS:
        assert by_split[name] == set(SYNTHETIC_CLASSES), name
    counts = np.bincount([SYNTHETIC_CLASSES.index(next(iter(v))) for v in label_of.values()])
    assert counts.tolist() == [6] * 6  # balanced round-robin
    for name in ("paired", "categorical", "test"):
        for row in read_split(dataset, name):
            assert row["label"] == next(iter(label_of[row["patient_id"]]))


def test_dataset_is_byte_identical_for_the_same_seed(dataset, tmp_path):
    again = generate_synthetic_dataset(tmp_path / "again", **SMALL)
    files = sorted(p.relative_to(dataset.root) for p in dataset.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    for rel in files:
        assert (dataset.root / rel).read_bytes() == (again.root / rel).read_bytes(), rel
    other = generate_synthetic_dataset(tmp_path / "other", **{**SMALL, "seed": 4})
    assert other.paired.read_bytes() != dataset.paired.read_bytes()


def test_patient_images_do_not_depend_on_the_number_of_patients(dataset, tmp_path):
    bigger = generate_synthetic_dataset(tmp_path / "bigger", **{**SMALL, "num_patients": 42})
    small = {row["image"]: row for row in read_jsonl(dataset.findings)}
    large = {row["image"]: row for row in read_jsonl(bigger.findings)}
    shared = [image for image in small if image in large and small[image]["label"] == large[image]["label"]]
    assert shared
    for image in shared:
        assert (dataset.root / image).read_bytes() == (bigger.root / image).read_bytes()


def test_cached_dataset_is_reused_and_changed_parameters_regenerate(tmp_path):
    out = tmp_path / "cache"
    first = generate_synthetic_dataset(out, **SMALL)
    marker_mtime = first.marker.stat().st_mtime_ns
    image = out / read_split(first, "paired")[0]["image"]
    image_mtime = image.stat().st_mtime_ns
    again = generate_synthetic_dataset(out, **SMALL)
    assert again == first
    assert first.marker.stat().st_mtime_ns == marker_mtime and image.stat().st_mtime_ns == image_mtime

    changed = generate_synthetic_dataset(out, **{**SMALL, "num_patients": 30, "seed": 9})
    assert changed.root == first.root
    assert json.loads(changed.marker.read_text())["parameters"]["num_patients"] == 30
    assert len({row["patient_id"] for row in read_jsonl(changed.findings)}) == 30
    assert not (out / "images" / "P0036_0.png").exists()  # nothing left over from the previous dataset
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_incomplete_dataset_is_regenerated_and_foreign_directories_are_kept(tmp_path):
    out = tmp_path / "partial"
    ds = generate_synthetic_dataset(out, **SMALL)
    ds.test.unlink()
    generate_synthetic_dataset(out, **SMALL)
    assert ds.test.is_file()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_dataset_class_subset_and_bad_arguments(tmp_path):
    subset = generate_synthetic_dataset(
        tmp_path / "two", num_patients=8, image_size=24, classes=("normal", "glaucoma")
    )
    assert subset.classes == ("normal", "glaucoma")
    assert {row["label"] for row in read_jsonl(subset.findings)} == {"normal", "glaucoma"}
    with pytest.raises(ValueError, match="retinal detachment"):
        generate_synthetic_dataset(tmp_path / "bad", classes=("normal", "retinal detachment"))
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path / "bad", paired_fraction=0.7, categorical_fraction=0.6)
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path / "bad", images_per_patient=(2, 1))
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- the demo's data spec
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "maskedclip_tiny_cpu.yaml"


def test_the_cli_reads_the_demo_spec_from_the_run_config_and_the_packaged_copy_matches():
    from retvlp.cli import _common
    from retvlp.training.config import PretrainConfig

    assert _common.DEMO_CONFIG == DEMO_CONFIG and DEMO_CONFIG.is_file()
    from_yaml = PretrainConfig.from_yaml(DEMO_CONFIG).data.synthetic
    assert demo_spec() == from_yaml and from_yaml["num_patients"] > 0
    packaged = json.loads(_common.DEMO_SPEC_COPY.read_text(encoding="utf-8"))["synthetic"]
    assert packaged == from_yaml, "src/retvlp/synthetic/demo_spec.json drifted from the demo run config"


def test_the_demo_spec_resolves_to_the_dataset_and_its_manifest_specs(tmp_path, monkeypatch):
    from retvlp.cli import _common

    monkeypatch.setattr(_common, "demo_synthetic_spec", lambda: dict(SMALL))
    probe, test, name = _common.demo_data(str(tmp_path))
    ds = generate_synthetic_dataset(tmp_path / "synthetic", **SMALL)  # reused, not rewritten
    assert probe == [{"path": str(ds.paired)}, {"path": str(ds.categorical)}] and name == "synthetic-demo"
    assert test == [{"path": str(ds.test)}]
    assert ds.training_specs() == [
        {"path": str(getattr(ds, n))} for n in ("paired", "categorical", "unpaired")
    ]
    assert ds.evaluation_specs() == {"probe_train": probe, "test": test, "classes": list(SYNTHETIC_CLASSES)}
    elsewhere = resolve_synthetic_spec({**SMALL, "output_dir": str(tmp_path / "mine")}, tmp_path / "unused")
    assert elsewhere.root == tmp_path / "mine" and not (tmp_path / "unused").exists()


# ----------------------------------------------------------------------------- separability
def test_a_linear_classifier_separates_the_classes_from_pixels():
    """Ridge regression on 32x32 pixels (left eyes mirrored) of 40 images per class, tested on fresh patients."""
    from sklearn.linear_model import RidgeClassifier

    def features(seed, per_class):
        x, y = [], []
        for c, label in enumerate(SYNTHETIC_CLASSES):
            for k in range(per_class):
                image, findings = render(label, [seed, c, k], size=64)
                if findings.eye == "left":
                    image = image[:, ::-1]
                small = PIL.Image.fromarray(np.ascontiguousarray(image)).resize(
                    (32, 32), PIL.Image.Resampling.BOX
                )
                x.append(np.asarray(small, dtype=np.float32).ravel() / 255)
                y.append(c)
        return np.stack(x), np.array(y)

    x_train, y_train = features(1, 40)
    x_test, y_test = features(2, 15)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-3
    clf = RidgeClassifier(alpha=100.0).fit((x_train - mean) / std, y_train)
    accuracy = float((clf.predict((x_test - mean) / std) == y_test).mean())
    assert accuracy > 0.6, accuracy


def test_rendering_over_processes_writes_the_same_bytes(tmp_path, monkeypatch):
    """The demo's 600 patients are drawn by a process pool; every file must equal the one-process drawing."""
    import hashlib

    from retvlp.synthetic import dataset as synthetic_dataset

    def digest(root):
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    options = dict(num_patients=24, image_size=32, seed=3)
    monkeypatch.setattr(synthetic_dataset, "_PARALLEL_FROM_PATIENTS", 10**9)
    serial = synthetic_dataset.generate_synthetic_dataset(tmp_path / "serial", **options)
    monkeypatch.setattr(synthetic_dataset, "_PARALLEL_FROM_PATIENTS", 2)
    monkeypatch.setattr(synthetic_dataset.os, "cpu_count", lambda: 2)
    pooled = synthetic_dataset.generate_synthetic_dataset(tmp_path / "pooled", **options)
    assert digest(serial.root) == digest(pooled.root) and len(digest(serial.root)) > 24
