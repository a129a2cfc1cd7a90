"""Leakage checks between pretraining and evaluation data (issue 28, item 3): planted duplicates of synthetic fundus
photographs (resized, JPEG re-encoded, cropped, colour-jittered, all at once) must be found, planted
non-duplicates of the same class must not; exact copies, shared patient ids, unreadable images; the bucketed
index against a plain all-pairs loop; the embedding pass; `retvlp check-leakage`; `evaluate_models(...,
pretrain_data=..., exclude_leaked=True)`."""

import csv
import io
import json
import shutil

import numpy as np
import pytest
from conftest import save_tiny_maskedclip
from PIL import Image, ImageEnhance

from retvlp.cli import main
from retvlp.data.leakage import HammingIndex, find_leakage, hamming, perceptual_hash
from retvlp.data.manifest import read_manifest
from retvlp.evaluation.leakage import cosine_pairs, embedding_pairs
from retvlp.synthetic import SYNTHETIC_CLASSES, render_fundus

NUM_ORIGINALS = 20
SIZE = 144
VARIANTS = ("resized", "jpeg70", "crop", "jitter", "combined")
# Measured on this planted set (docs/evaluation.md, "Leakage"): every planted duplicate is found, no
# non-duplicate is paired. The bounds leave a margin for other Pillow / numpy releases.
MIN_RECALL = 0.95


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def planted_variants(pixels: np.ndarray, rng: np.random.Generator) -> dict[str, Image.Image]:
    """The planted duplicates of one photograph: resized to 60 %, JPEG quality 70, a 3-5 % crop from one
    corner, colour-jittered (brightness, contrast, saturation 0.8-1.2), and the crop + a 75 % resize +
    brightness + JPEG 70 at once."""
    image = Image.fromarray(pixels)
    w, h = image.size
    fraction = rng.uniform(0.03, 0.05)
    dx, dy = int(fraction * w), int(fraction * h)
    box = [(dx, dy, w, h), (0, 0, w - dx, h - dy), (dx, 0, w, h - dy), (0, dy, w - dx, h)][rng.integers(4)]
    jitter = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
    jitter = ImageEnhance.Contrast(jitter).enhance(rng.uniform(0.85, 1.15))
    jitter = ImageEnhance.Color(jitter).enhance(rng.uniform(0.8, 1.2))
    combined = image.crop(box).resize((int(w * 0.75), int(h * 0.75)), Image.Resampling.BILINEAR)
    combined = _jpeg(ImageEnhance.Brightness(combined).enhance(rng.uniform(0.9, 1.1)), 70)
    return {
        "resized": image.resize((int(w * 0.6), int(h * 0.6)), Image.Resampling.BICUBIC),
        "jpeg70": _jpeg(image, 70),
        "crop": image.crop(box),
        "jitter": jitter,
        "combined": combined,
    }


def _write_manifest(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """pretrain.csv: NUM_ORIGINALS synthetic photographs (classes in turn). eval.csv: each one's VARIANTS,
    lossless re-saves (BMP) of the first two, one image of a pretraining patient, and NUM_ORIGINALS other
    photographs of the same classes (the planted non-duplicates)."""
    root = tmp_path_factory.mktemp("leakage")
    (root / "pre").mkdir()
    (root / "ev").mkdir()
    rng = np.random.default_rng(0)
    pre_rows, eval_rows, truth, negatives = [], [], {}, []
    for i in range(NUM_ORIGINALS):
        label = SYNTHETIC_CLASSES[i % len(SYNTHETIC_CLASSES)]
        pixels, _ = render_fundus(label, np.random.default_rng([11, i]), size=SIZE)
        Image.fromarray(pixels).save(root / "pre" / f"o{i}.png")
        pre_rows.append({"image": f"pre/o{i}.png", "patient_id": f"pre-{i}"})
        for kind, image in planted_variants(pixels, rng).items():
            name = f"ev/o{i}_{kind}.{'jpg' if kind in ('jpeg70', 'combined') else 'png'}"
            if name.endswith(".jpg"):
                image.save(root / name, quality=95)  # the q70 damage is in the pixels; saved near-losslessly
            else:
                image.save(root / name)
            eval_rows.append({"image": name, "patient_id": f"ev-{i}-{kind}"})
            truth[name] = f"pre/o{i}.png"
        other, _ = render_fundus(label, np.random.default_rng([12, i]), size=SIZE)
        Image.fromarray(other).save(root / "ev" / f"n{i}.png")
        eval_rows.append({"image": f"ev/n{i}.png", "patient_id": f"neg-{i}"})
        negatives.append(f"ev/n{i}.png")
    for i in (0, 1):  # lossless re-saves: the same decoded pixels
        Image.open(root / "pre" / f"o{i}.png").save(root / "ev" / f"copy{i}.bmp")
        eval_rows.append({"image": f"ev/copy{i}.bmp", "patient_id": f"copy-{i}"})
    eval_rows.append({"image": "ev/n0.png", "patient_id": "pre-5"})  # a pretraining patient's other image
    _write_manifest(root / "pretrain.csv", pre_rows)
    _write_manifest(root / "eval.csv", eval_rows)
    return root, truth, negatives


def _names(root, pairs, side):
    return [str(getattr(p, side)).replace(str(root) + "/", "") for p in pairs]


def test_planted_duplicates_are_found_and_non_duplicates_are_not(planted):
    root, truth, negatives = planted
    report = find_leakage(
        [read_manifest(root / "pretrain.csv")], [read_manifest(root / "eval.csv")], num_workers=2
    )
    found = {
        (ev, pre)
        for ev, pre in zip(
            _names(root, report.pairs, "eval"), _names(root, report.pairs, "pretrain"), strict=True
        )
    }
    recall = {
        kind: np.mean([(name, truth[name]) in found for name in truth if f"_{kind}." in name])
        for kind in VARIANTS
    }
    hits = sum((name, original) in found for name, original in truth.items())
    wrong = [
        pair for pair in found if pair[0] in negatives or (pair[0] in truth and truth[pair[0]] != pair[1])
    ]
    print(f"planted recall per kind {recall}; {hits}/{len(truth)} found; {len(wrong)} false pairs")
    assert hits / len(truth) >= MIN_RECALL
    assert min(recall.values()) >= 0.9
    assert wrong == []  # precision 1 on the planted set: no non-duplicate and no wrong original is paired
    near = [p for p in report.pairs if p.kind == "near"]
    assert max(p.distance for p in near) <= report.max_distance


def test_exact_copies_shared_patients_and_unreadable_images(planted, tmp_path):
    root, _, _ = planted
    rows = list(csv.DictReader(open(root / "eval.csv", encoding="utf-8")))
    (root / "ev" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    outside = tmp_path / "elsewhere.png"
    shutil.copy(root / "pre" / "o2.png", outside)
    rows += [{"image": "ev/broken.png", "patient_id": "b"}, {"image": str(outside), "patient_id": "c"}]
    _write_manifest(root / "eval_bad.csv", rows)
    report = find_leakage([read_manifest(root / "pretrain.csv")], [read_manifest(root / "eval_bad.csv")])
    exact = {(e, p) for e, p, k in zip(_names(root, report.pairs, "eval"), _names(root, report.pairs, "pretrain"), [p.kind for p in report.pairs], strict=True) if k == "exact"}  # fmt: skip
    assert exact == {("ev/copy0.bmp", "pre/o0.png"), ("ev/copy1.bmp", "pre/o1.png")}
    assert all(p.distance == 0 for p in report.pairs if p.kind == "exact")
    assert report.shared_ids == ["pre-5"]
    assert [report.eval_records[j].group for j in report.shared_id_images] == ["pre-5"]
    unreadable = report.unreadable["eval"]
    assert len(unreadable) == 2 and report.counts["unreadable_eval"] == 2
    assert any("broken.png" in u["image"] for u in unreadable)
    assert any("outside-data-root" in u["message"] for u in unreadable)  # never opened, but listed
    assert report.counts["eval_images_leaked"] == len(report.leaked_eval_images())
    written = report.write(tmp_path / "report")
    assert json.loads(written["json"].read_text())["counts"]["exact"] == 2
    assert "Shared patient ids: pre-5" in written["markdown"].read_text()
    assert (
        Image.open(written["sheet"]).size[1] > 100 and "data:image/jpeg;base64" in written["html"].read_text()
    )


def test_the_bucketed_index_returns_exactly_the_all_pairs_result():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2**64, size=400, dtype=np.uint64)
    b = rng.integers(0, 2**64, size=300, dtype=np.uint64)
    for j in range(0, 300, 3):  # planted near pairs: flip a few random bits of a pretraining hash
        flips = rng.choice(64, size=rng.integers(0, 14), replace=False)
        b[j] = a[j] ^ np.uint64(sum(1 << int(f) for f in flips))
    b[1] = b[0]  # two queries with the same hash
    # (max distance, bands): None is the default choice; k + 1 bands: exact band matches; fewer: flipped probes
    every_pair = [  # written plainly: every pair's distance
        (j, i, bin(int(a[i]) ^ int(b[j])).count("1")) for i in range(len(a)) for j in range(len(b))
    ]
    for k, bands in ((0, None), (3, None), (3, 2), (10, None), (10, 11), (10, 4), (13, 5), (30, None)):
        expected = {(j, i, distance) for j, i, distance in every_pair if distance <= k}
        q, i, d = HammingIndex(a, k, bands=bands).query(b, chunk=64)
        assert set(zip(q.tolist(), i.tolist(), d.tolist(), strict=True)) == expected, (k, bands)
        assert len(q) == len(expected)  # no pair twice
    with pytest.raises(ValueError, match="max_distance"):
        HammingIndex(a, 64)


def test_hamming_and_hash_basics():
    assert hamming(np.uint64(0), np.uint64(2**64 - 1)) == 64
    pixels, _ = render_fundus("glaucoma", np.random.default_rng(0), size=96)
    assert perceptual_hash(pixels) == perceptual_hash(pixels.copy())
    assert hamming(perceptual_hash(pixels), perceptual_hash(np.zeros_like(pixels))) > 0


def test_cosine_pairs_match_a_plain_computation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(30, 8))
    b[:5] = a[10:15] + 0.01 * rng.normal(size=(5, 8))
    i, j, c = cosine_pairs(a, b, 0.9, top_k=3, chunk=7)
    na, nb = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    expected = set()
    for y in range(len(b)):
        similarity = na @ nb[y]
        for x in np.argsort(-similarity)[:3]:
            if similarity[x] >= 0.9:
                expected.add((int(x), y))
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == expected
    assert {(10 + k, k) for k in range(5)} <= expected


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_maskedclip") / "final"
    return (*save_tiny_maskedclip(directory), directory)


def test_embedding_pass_pairs_identical_images(planted, tiny_checkpoint, tmp_path):
    root, _, _ = planted
    model, processor, _ = tiny_checkpoint
    pre = read_manifest(root / "pretrain.csv").records
    ev = read_manifest(root / "eval.csv").records
    pairs = embedding_pairs(
        model, processor.image_processor, pre, ev, min_cosine=0.9999, cache_dir=tmp_path, show_progress=False
    )
    names = {(str(p.eval).rsplit("/", 1)[-1], str(p.pretrain).rsplit("/", 1)[-1]) for p in pairs}
    assert {("copy0.bmp", "o0.png"), ("copy1.bmp", "o1.png")} <= names
    assert all(p.kind == "embedding" and p.distance >= 0.9999 for p in pairs)


def test_cli_check_leakage_end_to_end(planted, tiny_checkpoint, tmp_path, capsys):
    root, _, _ = planted
    output = tmp_path / "out"
    cache = ["--cache-dir", str(tmp_path / "cache")]  # never the default outputs/cache of the checkout
    arguments = [
        "check-leakage",
        "--pretrain",
        str(root / "pretrain.csv"),
        "--eval",
        str(root / "eval.csv"),
        *cache,
    ]
    code = main([*arguments, "--output", str(output), "--no-progress", "--workers", "2"])
    captured = capsys.readouterr()
    assert code == 0  # leakage is a warning unless --fail-on-leak
    assert "warning:" in captured.err and "| exact duplicates (decoded pixels) | 2 |" in captured.out
    saved = json.loads((output / "leakage.json").read_text())
    assert saved["counts"]["exact"] == 2 and saved["shared_ids"] == ["pre-5"]
    assert (output / "leakage.png").is_file() and (output / "leakage.html").is_file()
    _write_manifest(
        root / "copies.csv", [{"image": f"ev/copy{i}.bmp", "patient_id": f"copy-{i}"} for i in (0, 1)]
    )
    copies = [
        "check-leakage",
        "--pretrain",
        str(root / "pretrain.csv"),
        "--eval",
        str(root / "copies.csv"),
        *cache,
    ]
    assert main([*copies, "--output", str(tmp_path / "copies"), "--no-progress", "--fail-on-leak"]) == 1
    # no leakage: the pretraining set against itself minus... nothing shared with the negatives alone
    _write_manifest(
        root / "negatives.csv", [{"image": f"ev/n{i}.png", "patient_id": f"neg-{i}"} for i in range(4)]
    )
    clean = [
        "check-leakage",
        "--pretrain",
        str(root / "pretrain.csv"),
        "--eval",
        str(root / "negatives.csv"),
        *cache,
    ]
    assert main([*clean, "--output", str(tmp_path / "clean"), "--no-progress", "--fail-on-leak"]) == 0
    assert "no leakage found" in capsys.readouterr().out.lower()
    assert main([*arguments, "--min-cosine", "0.9"]) == 2
    assert "--min-cosine needs --model" in capsys.readouterr().err
    # the embedding pass through the command line
    _, _, directory = tiny_checkpoint
    model_args = ["--model", str(directory), "--min-cosine", "0.9999"]
    assert main([*clean, "--output", str(tmp_path / "emb"), "--no-progress", *model_args]) == 0
    saved = json.loads((tmp_path / "emb" / "leakage.json").read_text())
    assert saved["settings"]["min_cosine"] == 0.9999 and "embedding" in saved["counts"]


def test_evaluate_models_reports_and_drops_exactly_the_planted_leaks(synthetic, tiny_checkpoint, tmp_path):
    from retvlp.evaluation.data import read_labelled_records
    from retvlp.evaluation.leakage import check_evaluation_leakage
    from retvlp.evaluation.runner import EvaluationSettings, evaluate_models

    _, _, directory = tiny_checkpoint
    test_rows = [json.loads(line) for line in open(synthetic.test, encoding="utf-8")]
    planted_rows = test_rows[:3]
    (tmp_path / "pre").mkdir()
    pre_rows = []
    for k, row in enumerate(planted_rows):  # exact copies under new names and new patient ids
        target = tmp_path / "pre" / f"copy{k}.png"
        shutil.copy(synthetic.root / row["image"], target)
        pre_rows.append({"image": f"pre/copy{k}.png", "patient_id": f"other-{k}"})
    _write_manifest(tmp_path / "pretrain.csv", pre_rows)
    settings = EvaluationSettings(
        tasks=("zero-shot",),
        seeds=(0,),
        bootstrap=0,
        calibration_fraction=0.0,
        cache_dir=str(tmp_path / "cache"),
        show_progress=False,
    )
    # without exclusion the records stay (the check evaluate_models runs, on its records)
    labelled = read_labelled_records([synthetic.paired, synthetic.categorical, synthetic.test])
    report, same, num_pool = check_evaluation_leakage(labelled, 10, [str(tmp_path / "pretrain.csv")])
    assert report.counts["eval_images_leaked"] == 3 and same is labelled and num_pool == 10
    with pytest.raises(ValueError, match="exclude_leaked needs pretrain_data"):
        evaluate_models({"tiny": str(directory)}, [synthetic.test], exclude_leaked=True)
    dropped = evaluate_models(
        {"tiny": str(directory)},
        [synthetic.paired, synthetic.categorical],
        test_data=[synthetic.test],
        settings=settings,
        pretrain_data=[str(tmp_path / "pretrain.csv")],
        exclude_leaked=True,
        output_dir=tmp_path / "report",
    )
    assert dropped["dataset"]["num_test"] == len(test_rows) - 3
    assert dropped["leakage"]["counts"]["eval_images_leaked"] == 3
    assert dropped["dataset"]["excluded"]["leaked"] == 3
    left_out = [e["image"] for e in dropped["dataset"]["excluded_examples"] if e["reason"] == "leaked"]
    assert sorted(left_out) == sorted(str(synthetic.root / row["image"]) for row in planted_rows)
    assert dropped["leakage"]["excluded_from_evaluation"] is True
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert saved["leakage"]["counts"]["eval_images_leaked"] == 3
    assert (
        "## Leakage between pretraining and evaluation data"
        in (tmp_path / "report" / "results.md").read_text()
    )
    assert (tmp_path / "report" / "leakage" / "leakage.html").is_file()


def test_cli_evaluate_leakage_flags(tmp_path, capsys):
    from retvlp.cli.evaluate import _print_leakage

    manifest = tmp_path / "m.csv"
    _write_manifest(manifest, [])
    code = main(["evaluate", "--model", str(tmp_path), "--data", str(manifest), "--task", "zero-shot", "--exclude-leaked"])  # fmt: skip
    assert code == 2 and "--exclude-leaked needs --pretrain-manifests" in capsys.readouterr().err
    code = main(["evaluate", "--model", str(tmp_path), "--data", str(manifest), "--task", "zero-shot", "--pretrain-manifests", str(tmp_path / "missing.csv")])  # fmt: skip
    assert code == 2 and "pretraining manifest not found" in capsys.readouterr().err
    counts = {"eval_images_leaked": 3, "exact": 2, "near": 1, "shared_patient_ids": 0}
    _print_leakage({"leakage": {"counts": counts, "excluded_from_evaluation": True}})
    assert "3 evaluation image(s) leak" in capsys.readouterr().err
