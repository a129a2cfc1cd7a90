"""Data validation: every problem kind from a crafted file, named by file and row; image conversion to RGB;
the report, its JSON lines and DataValidationError."""

import io
import json
import pickle
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import datasets
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from retvlp.data.manifest import ManifestRecord, manifest_from_hf_dataset, read_manifest
from retvlp.data.validation import (
    PROBLEM_KINDS,
    SEVERITIES,
    DataProblem,
    DataValidationError,
    ValidationReport,
    check_records,
    load_checked_image,
    to_rgb,
    validate_manifests,
    validate_records,
)


def noise_rgb(size=64, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def png_header_only(width, height):
    """A PNG whose header claims `width` x `height` RGB pixels and which holds no pixel data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def jpeg_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def record(image, row=1, text="a caption", labels=(), role=None, source="m.csv"):
    if role is None:
        role = "paired" if text is not None else "categorical" if labels else "unpaired"
    return ManifestRecord(
        image=str(image), text=text, labels=tuple(labels), group=None, source=source, row=row, role=role
    )


def kinds(problems):
    return [(p.row, p.kind) for p in problems]


# ---------------------------------------------------------------------------------------------------------------
# Problem kinds and messages


def test_problem_kinds_and_format():
    assert SEVERITIES == ("error", "warning")
    assert PROBLEM_KINDS["converted-mode"] == "warning"
    assert {severity for kind, severity in PROBLEM_KINDS.items() if kind != "converted-mode"} == {"error"}
    problem = DataProblem(
        "paired.csv",
        12,
        "images/a.jpg",
        "truncated-image",
        "image file is truncated; re-export or remove the row",
    )
    assert problem.severity == "error"
    assert problem.format() == (
        "paired.csv:12: images/a.jpg: truncated-image: image file is truncated; re-export or remove the row"
    )
    warning = DataProblem("m.csv", 3, "", "converted-mode", "mode L", "warning")
    assert warning.format() == "m.csv:3: converted-mode (warning): mode L"


def test_clean_manifest_has_no_problems(tmp_path):
    for i in range(3):
        noise_rgb(48, seed=i).save(tmp_path / f"{i}.png")
    (tmp_path / "clean.csv").write_text("image,text,label\n0.png,cup,dr\n1.png,disc,amd\n2.png,drusen,dr\n")
    manifest = read_manifest(tmp_path / "clean.csv")
    report = validate_manifests([manifest], class_names=["dr", "amd"])
    assert report.ok and report.problems == [] and report.num_records == 3
    assert report.errors == [] and report.warnings == [] and report.bad_records == set()
    assert report.format() == "Checked 3 records: no problems found."


def test_every_image_problem_kind_names_file_and_row(tmp_path):
    noise_rgb(64).save(tmp_path / "good.png")
    full = jpeg_bytes(noise_rgb(64, seed=1))
    (tmp_path / "half.jpg").write_bytes(full[: len(full) // 2])
    (tmp_path / "random.png").write_bytes(
        np.random.default_rng(2).integers(0, 256, 500, dtype=np.uint8).tobytes()
    )
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "tiny.png")
    (tmp_path / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    (tmp_path / "huge_header.png").write_bytes(png_header_only(20_000, 10_000))  # over 178,956,970 px
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(np.full((40, 40), 200, np.uint8), "L").save(tmp_path / "grey.png")
    lines = ["image,text"] + [
        f"{name},caption {i}"
        for i, name in enumerate(
            [
                "good.png",
                "missing.png",
                "half.jpg",
                "random.png",
                "tiny.png",
                "bomb.png",
                "huge_header.png",
                "empty.png",
                "grey.png",
            ],
            1,
        )
    ]
    manifest_path = tmp_path / "images.csv"
    manifest_path.write_text("\n".join(lines) + "\n")
    report = validate_manifests([read_manifest(manifest_path)])
    assert kinds(report.problems) == [
        (2, "missing-file"),
        (3, "truncated-image"),
        (4, "unreadable-image"),
        (5, "tiny-image"),
        (6, "decompression-bomb"),
        (7, "decompression-bomb"),
        (8, "unreadable-image"),
        (9, "converted-mode"),
    ]
    assert all(p.source == str(manifest_path) for p in report.problems)
    by_row = {p.row: p for p in report.problems}
    assert by_row[2].image == str(tmp_path / "missing.png")
    assert (
        by_row[3]
        .format()
        .startswith(f"{manifest_path}:3: half.jpg: truncated-image: image file is truncated")
    )
    assert "remove the row" in by_row[3].message
    assert "8x8" in by_row[5].message and "--min-size" in by_row[5].message
    assert "200,000,000 pixels" in by_row[7].message and "--max-pixels" in by_row[7].message
    assert by_row[9].severity == "warning"
    assert not report.ok
    assert report.bad_records == {(str(manifest_path), row) for row in range(2, 9)}
    assert report.counts_by_kind() == {
        "missing-file": 1,
        "unreadable-image": 2,
        "truncated-image": 1,
        "tiny-image": 1,
        "decompression-bomb": 2,
        "converted-mode": 1,
    }


def test_truncated_png_and_header_only_truncation(tmp_path):
    buffer = io.BytesIO()
    noise_rgb(64).save(buffer, "PNG")
    (tmp_path / "half.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    image, problems = load_checked_image(str(tmp_path / "half.png"), source="x.csv", row=4)
    assert image is None
    assert [(p.source, p.row, p.kind) for p in problems] == [("x.csv", 4, "truncated-image")]
    flat = jpeg_bytes(Image.new("RGB", (40, 40)))  # mostly header: cut in half, even the header is incomplete
    (tmp_path / "flat.jpg").write_bytes(flat[: len(flat) // 2])
    assert kinds(load_checked_image(str(tmp_path / "flat.jpg"), row=2)[1]) == [(2, "truncated-image")]


def test_truncation_is_detected_even_if_pillow_is_told_to_load_truncated_images(tmp_path, monkeypatch):
    full = jpeg_bytes(noise_rgb(64))
    (tmp_path / "half.jpg").write_bytes(full[: len(full) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    limit = Image.MAX_IMAGE_PIXELS
    report = validate_records([record(tmp_path / "half.jpg")], num_workers=2)
    assert kinds(report.problems) == [(1, "truncated-image")]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards
    assert Image.MAX_IMAGE_PIXELS == limit  # never changed
    with ThreadPoolExecutor(4) as pool:  # direct calls from several threads at once
        results = list(pool.map(lambda _: load_checked_image(str(tmp_path / "half.jpg"))[1], range(16)))
    assert all([p.kind for p in found] == ["truncated-image"] for found in results)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_max_pixels_on_a_real_image(tmp_path):
    noise_rgb(100).save(tmp_path / "big.png")
    image, problems = load_checked_image(str(tmp_path / "big.png"), max_pixels=5000)
    assert image is None and [p.kind for p in problems] == ["decompression-bomb"]
    assert "10,000 pixels" in problems[0].message
    image, problems = load_checked_image(str(tmp_path / "big.png"), max_pixels=10_000)
    assert problems == [] and image.size == (100, 100)


def test_good_rgb_image_is_returned_loaded(tmp_path):
    source = noise_rgb(40)
    source.save(tmp_path / "ok.png")
    image, problems = load_checked_image(str(tmp_path / "ok.png"), min_size=40)
    assert problems == [] and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(source))
    image, problems = load_checked_image(str(tmp_path / "ok.png"), min_size=41)
    assert image is None and [p.kind for p in problems] == ["tiny-image"]


# ---------------------------------------------------------------------------------------------------------------
# Mode conversion


def converted(tmp_path, image, name, **save_kwargs):
    path = tmp_path / name
    image.save(path, **save_kwargs)
    rgb, problems = load_checked_image(str(path), min_size=1, source="modes.csv", row=7)
    assert [(p.kind, p.severity, p.row) for p in problems] == [("converted-mode", "warning", 7)]
    assert rgb is not None and rgb.mode == "RGB" and rgb.size == image.size
    return np.asarray(rgb), problems[0]


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    # The canonical decode keeps deep images in float (0..255 scale) until they are resized and rounded once.
    values = np.array([[0, 257, 32896, 65535, 100]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    image.save(tmp_path / "deep.png")
    decoded, problems = load_checked_image(str(tmp_path / "deep.png"), min_size=1, source="modes.csv", row=7)
    assert [(p.kind, p.severity, p.row) for p in problems] == [("converted-mode", "warning", 7)]
    assert isinstance(decoded, torch.Tensor) and decoded.dtype == torch.float32 and decoded.shape == (3, 1, 5)
    assert decoded[0, 0, :4].tolist() == [0, 1, 128, 255]
    assert decoded[0, 0, 4].item() == pytest.approx(100 / 257)  # not rounded before the resize
    assert torch.equal(decoded[0], decoded[1]) and torch.equal(decoded[0], decoded[2])
    assert "I;16" in problems[0].message


def test_grey_palette_cmyk_and_alpha_conversions(tmp_path):
    pixels, problem = converted(tmp_path, Image.new("L", (4, 3), 77), "grey.png")
    assert (pixels == 77).all() and "mode is L" in problem.message

    palette = Image.new("P", (4, 4))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((1, 1), 1)
    pixels, _ = converted(tmp_path, palette, "palette.png")
    assert pixels[1, 1].tolist() == [10, 200, 30] and pixels[0, 0].tolist() == [0, 0, 0]

    pixels, _ = converted(tmp_path, Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "cmyk.jpg", quality=100)
    assert (pixels >= 250).all()  # no ink -> white

    rgba = Image.new("RGBA", (2, 1), (200, 100, 50, 255))
    rgba.putpixel((1, 0), (200, 100, 50, 128))
    pixels, problem = converted(tmp_path, rgba, "alpha.png")
    assert pixels[0, 0].tolist() == [200, 100, 50]
    assert pixels[0, 1].tolist() == [100, 50, 25]  # composited on black: value * 128 / 255
    assert "black" in problem.message

    pixels, _ = converted(tmp_path, Image.new("LA", (2, 2), (255, 0)), "la.png")
    assert (pixels == 0).all()  # fully transparent white on black


def test_to_rgb_integer_and_float_modes(tmp_path):
    # `to_rgb` is the canonical decode (the processor's): deep modes stay float on the 0..255 scale.
    rgb, detail = to_rgb(Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I"))
    assert rgb[:, 0].tolist() == [[0, 255]] * 3 and "16-bit" in detail
    with pytest.raises(ValueError, match=r"values in \[-10, 90\], outside the 16-bit range 0\.\.65535"):
        to_rgb(Image.fromarray(np.array([[-10, 90]], dtype=np.int32), "I"))  # refused, no longer stretched
    rgb, _ = to_rgb(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F"))
    assert rgb[0, 0].tolist() == [0, 127.5, 255]  # rounded once, after the resize
    with pytest.raises(ValueError, match=r"float images must have values in \[0, 1\], got range \[0, 200\]"):
        to_rgb(Image.fromarray(np.array([[0.0, 200.0]], dtype=np.float32), "F"))  # refused, no longer rounded
    image = noise_rgb(8)
    assert to_rgb(image) == (image, None)
    # The data checks report a refused range as an error naming the file and the range.
    Image.fromarray(np.full((40, 40), 300.0, np.float32), "F").save(tmp_path / "float.tiff")
    decoded, problems = load_checked_image(str(tmp_path / "float.tiff"), source="m.csv", row=3)
    assert decoded is None and [(p.row, p.kind) for p in problems] == [(3, "unreadable-image")]
    assert problems[0].image == str(tmp_path / "float.tiff") and "[0, 1]" in problems[0].message


# ---------------------------------------------------------------------------------------------------------------
# Record checks


def test_check_records_empty_caption_unknown_label_duplicates(tmp_path):
    records = [
        record("/d/a.png", row=1, text="cup", labels=["dr"]),
        record("/d/b.png", row=2, text="   "),
        record("/d/c.png", row=3, text=None, labels=["dr", "glaucom"]),
        record("/d/a.png", row=4, text="cup", labels=["dr"]),  # duplicate of row 1
        record("/d/a.png", row=5, text="another caption", labels=["dr"]),  # same image, other caption: fine
        record("/d/a.png", row=6, text="cup", labels=["dr"], source="other.csv"),  # duplicate across files
        record("/d/d.png", row=7, text=None, labels=[], role="categorical"),
    ]
    problems = check_records(records, class_names=["dr", "amd"])
    assert [(p.source, p.row, p.kind) for p in problems] == [
        ("m.csv", 2, "empty-caption"),
        ("m.csv", 3, "unknown-label"),
        ("m.csv", 4, "duplicate-row"),
        ("other.csv", 6, "duplicate-row"),
        ("m.csv", 7, "missing-label"),
    ]
    unknown = problems[1]
    assert "'glaucom'" in unknown.message and "'amd', 'dr'" in unknown.message
    assert "row 1" in problems[2].message
    assert "row 1 of m.csv" in problems[3].message
    assert all(p.severity == "error" for p in problems)
    assert kinds(check_records(records[:3])) == [(2, "empty-caption")]  # no class list: labels not checked


def test_validate_records_reports_shared_image_for_every_row_and_workers_agree(tmp_path):
    noise_rgb(40).save(tmp_path / "ok.png")
    records = [
        record(tmp_path / "gone.png", row=1, text="first caption"),
        record(tmp_path / "gone.png", row=2, text="second caption"),
        record(tmp_path / "ok.png", row=3),
        record(tmp_path / "ok.png", row=4, text=""),
    ]
    serial = validate_records(records)
    assert kinds(serial.problems) == [(1, "missing-file"), (2, "missing-file"), (4, "empty-caption")]
    threaded = validate_records(records, num_workers=3)
    assert threaded.problems == serial.problems
    assert kinds(validate_records(records, check_images=False).problems) == [(4, "empty-caption")]


def test_parse_problems_are_included_with_file_and_row(tmp_path):
    noise_rgb(40).save(tmp_path / "a.png")
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"image": "a.png", "text": "ok"}\n{"image": "a.png", "text": \n')
    csv_path = tmp_path / "latin.csv"
    csv_path.write_bytes("image,text\na.png,fine\na.png,h\xe9morragie\n".encode("latin-1"))
    report = validate_manifests([read_manifest(jsonl), read_manifest(csv_path)])
    assert [(p.source, p.row, p.kind) for p in report.problems] == [
        (str(jsonl), 2, "unparseable-row"),
        (str(csv_path), 2, "not-utf8"),
    ]
    assert report.num_records == 2


def test_hf_dataset_images_are_validated():
    good = io.BytesIO()
    noise_rgb(40).save(good, "PNG")
    half = jpeg_bytes(noise_rgb(64))[:400]
    dataset = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": good.getvalue(), "path": None}, {"bytes": half, "path": None}],
            "text": ["a", "b"],
        },
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
    )
    report = validate_manifests([manifest_from_hf_dataset(dataset, name="demo")])
    assert [(p.source, p.row, p.kind, p.image) for p in report.problems] == [
        ("hf:demo", 2, "truncated-image", "image[1]")
    ]
    assert report.problems[0].format().startswith("hf:demo:2: image[1]: truncated-image: ")


# ---------------------------------------------------------------------------------------------------------------
# Report and error


def sample_report():
    problems = [
        DataProblem(
            "/data/b.csv", 3, "/data/img/x.png", "missing-file", "image file not found; fix the path"
        ),
        DataProblem("/data/a.csv", 5, "/data/img/y.png", "converted-mode", "mode L", "warning"),
        DataProblem("/data/a.csv", 2, "/data/img/z.png", "empty-caption", "caption is empty; write it"),
        DataProblem("/data/a.csv", 2, "/data/img/z.png", "tiny-image", "image is only 8x8; replace it"),
    ]
    return ValidationReport(problems=problems, num_records=10)


def test_report_format_groups_by_source_and_counts():
    report = sample_report()
    assert len(report.errors) == 3 and len(report.warnings) == 1 and not report.ok
    assert report.bad_records == {("/data/b.csv", 3), ("/data/a.csv", 2)}
    text = report.format()
    lines = text.splitlines()
    assert lines[0] == (
        "Checked 10 records: 3 errors in 2 rows, 1 warning "
        "(missing-file: 1, tiny-image: 1, converted-mode: 1, empty-caption: 1)."
    )
    assert lines[1] == "/data/b.csv (1 problem):"
    assert lines[2] == "  /data/b.csv:3: img/x.png: missing-file: image file not found; fix the path"
    assert lines[3] == "/data/a.csv (3 problems):"
    assert [line.split(": ")[2] for line in lines[4:]] == [
        "tiny-image",
        "empty-caption",
        "converted-mode (warning)",
    ]
    assert lines[4].startswith("  /data/a.csv:2: img/z.png: ")
    short = report.format(max_problems=2).splitlines()
    assert len(short) == 1 + 2 + 2 + 1  # summary, 2 headers, 2 problems, "... and 2 more"
    assert short[-1].startswith("... and 2 more problems")


def test_report_write_jsonl(tmp_path):
    out = tmp_path / "reports" / "problems.jsonl"
    sample_report().write_jsonl(out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    assert rows[0] == {
        "source": "/data/b.csv",
        "row": 3,
        "image": "/data/img/x.png",
        "kind": "missing-file",
        "message": "image file not found; fix the path",
        "severity": "error",
    }
    assert [r["kind"] for r in rows[1:]] == ["tiny-image", "empty-caption", "converted-mode"]


def test_data_validation_error_message():
    problems = [
        DataProblem("m.csv", row, f"/d/{row}.png", "missing-file", "not found") for row in range(1, 31)
    ]
    report = ValidationReport(problems=problems, num_records=30)
    error = DataValidationError(report)
    assert isinstance(error, ValueError) and error.report is report
    message = str(error)
    assert "Checked 30 records: 30 errors in 30 rows" in message
    assert "m.csv:20: " in message and "m.csv:21: " not in message  # the first 20 problems only
    assert "and 10 more problems" in message
    assert "retvlp validate-data" in message and "--on-bad-sample skip" in message
    with pytest.raises(ValueError, match="missing-file"):
        raise error
    copy = pickle.loads(pickle.dumps(error))  # crosses process boundaries intact
    assert str(copy) == message and copy.report.problems == problems


def test_pixel_limits_are_ours_not_pillows(tmp_path, recwarn):
    (tmp_path / "large.png").write_bytes(png_header_only(10_000, 10_000))  # over Pillow's warning limit only
    image, problems = load_checked_image(str(tmp_path / "large.png"))
    assert image is None and [p.kind for p in problems] == ["unreadable-image"]  # no pixel data, not a bomb
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    (tmp_path / "huge.png").write_bytes(png_header_only(20_000, 10_000))
    _, problems = load_checked_image(str(tmp_path / "huge.png"), max_pixels=300_000_000)
    assert [p.kind for p in problems] == ["decompression-bomb"]
    assert "Pillow refuses" in problems[0].message and "200,000,000" in problems[0].message


def test_messages_never_show_the_content_of_a_file_that_is_not_an_image(tmp_path):
    """A caption file saved as .png, or a text file whose first bytes happen to look like a PPM header: the
    message says how large it is and what kind of data it holds, never its bytes."""
    secret = "SECRET-MARKER-5d1c root:x:0:0:/root:/bin/bash"
    (tmp_path / "text.png").write_text(secret + "\n")
    (tmp_path / "binary.png").write_bytes(b"\x00\x01SECRET-MARKER-5d1c" + bytes(range(256)))
    (tmp_path / "header.pgm").write_bytes(b"P2\nSECRET-MARKER-5d1c 7\n")  # Pillow's PPM plugin quotes tokens
    (tmp_path / "long.pgm").write_bytes(b"P2\n12 SECRET-MARKER-5d1c\n")
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,text\ntext.png,a\nbinary.png,b\nheader.pgm,c\nlong.pgm,d\n")
    report = validate_manifests([read_manifest(manifest)])
    assert kinds(report.problems) == [(row, "unreadable-image") for row in (1, 2, 3, 4)]
    by_row = {p.row: p.message for p in report.problems}
    assert f"{len(secret) + 1} bytes of text" in by_row[1]
    assert "bytes of binary data" in by_row[2]
    report.write_jsonl(tmp_path / "problems.jsonl")
    for text in (report.format(), (tmp_path / "problems.jsonl").read_text()):
        assert "SECRET" not in text and "root:x" not in text and "\\x00" not in text


def test_the_config_and_the_image_processor_share_one_minimum_size():
    """`data/limits.py` restates the processor's threshold so the config can be read without torch; the two
    must never drift apart (nor the family copies of the processor)."""
    import importlib
    import sys

    from retvlp.common import image_processing_fundus
    from retvlp.data import limits, validation

    assert limits.DEFAULT_MIN_SIZE == image_processing_fundus.DEFAULT_MIN_SIZE == validation.DEFAULT_MIN_SIZE
    for family in ("maskedclip", "keepfit"):
        copy = importlib.import_module(f"retvlp.{family}.image_processing_fundus")
        assert copy.DEFAULT_MIN_SIZE == limits.DEFAULT_MIN_SIZE
    assert "torch" in sys.modules  # (this process has it; the config's import chain is checked below)
