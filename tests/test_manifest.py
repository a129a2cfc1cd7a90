"""Manifest readers: CSV/TSV, JSON lines, FLAIR, ImageFolder and datasets.Dataset, with row numbers, roles,
path resolution, role forcing and parse-level problems (never a crash, never a silent drop)."""

import json
import os

import datasets
import pytest
from PIL import Image

from retvlp.data.manifest import (
    ROLES,
    HFImageRef,
    Manifest,
    ManifestRecord,
    manifest_from_hf_dataset,
    parse_labels,
    read_manifest,
    read_manifests,
)


def write(path, content, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode(encoding))
    return path


def save_image(path, color=(10, 20, 30), size=(40, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def by_row(manifest):
    return {record.row: record for record in manifest.records}


# ---------------------------------------------------------------------------------------------------------------
# CSV / TSV


def test_csv_paired_rows_paths_and_groups(tmp_path):
    manifest_path = write(
        tmp_path / "data" / "paired.csv",
        "image,text,patient_id\n"
        "images/a.png,  optic disc cupping  ,P1\n"
        f"{tmp_path / 'elsewhere' / 'b.png'},macular drusen,P2\n"
        "\n"  # blank line: counted, no record, no problem
        '../c.png,"a caption, with a comma",\n',
    )
    contained = read_manifest(manifest_path)  # rows 2 and 4 leave the manifest's folder
    assert [(p.row, p.kind) for p in contained.problems] == [(row, "outside-data-root") for row in (2, 4)]
    assert [r.row for r in contained.records] == [1]
    manifest = read_manifest(manifest_path, allow_outside_data_roots=True)
    assert isinstance(manifest, Manifest)
    assert manifest.source == str(manifest_path)
    assert manifest.format == "csv"
    assert manifest.problems == []
    assert len(manifest) == 3
    rows = by_row(manifest)
    assert sorted(rows) == [1, 2, 4]
    assert rows[1] == ManifestRecord(
        image=str(tmp_path / "data" / "images" / "a.png"),
        text="optic disc cupping",
        labels=(),
        group="P1",
        source=str(manifest_path),
        row=1,
        role="paired",
    )
    assert rows[2].image == str(tmp_path / "elsewhere" / "b.png")  # absolute paths are kept
    assert rows[4].image == str(tmp_path / "c.png")  # normalised, '..' resolved
    assert rows[4].text == "a caption, with a comma"
    assert rows[4].group is None  # empty group cell
    assert {r.role for r in manifest.records} == {"paired"}
    assert manifest.class_names == ()


def test_csv_image_root_and_label_columns(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    manifest_path = write(
        tmp_path / "labels.csv",
        "image,labels,group\n"
        "a.png,dr|amd,G1\n"
        'b.png,"[""glaucoma"", ""dr""]",G2\n'
        "c.png,\"['cataract', 'dr']\",G3\n"
        "d.png,,G4\n"
        "e.png, normal ,\n",
    )
    manifest = read_manifest(manifest_path, image_root=root)
    rows = by_row(manifest)
    assert manifest.problems == []
    assert rows[1].image == str(root / "a.png")
    assert rows[1].labels == ("dr", "amd")
    assert rows[2].labels == ("glaucoma", "dr")
    assert rows[3].labels == ("cataract", "dr")
    assert rows[4].labels == () and rows[4].role == "unpaired"
    assert rows[5].labels == ("normal",) and rows[5].role == "categorical"
    assert [rows[i].role for i in (1, 2, 3)] == ["categorical"] * 3
    assert all(r.text is None for r in manifest.records)  # no text column -> no caption
    assert [rows[i].group for i in range(1, 6)] == ["G1", "G2", "G3", "G4", None]  # 'group' fallback
    assert manifest.class_names == ("amd", "cataract", "dr", "glaucoma", "normal")
    assert manifest.role_counts() == {"paired": 0, "categorical": 4, "unpaired": 1}


def test_csv_single_label_column_and_patient_fallback(tmp_path):
    path = write(tmp_path / "m.csv", "image,label,patient\na.png,3,p-7\nb.png,glaucoma,\n")
    rows = by_row(read_manifest(path))
    assert rows[1].labels == ("3",) and rows[1].group == "p-7"
    assert rows[2].labels == ("glaucoma",) and rows[2].group is None


def test_csv_empty_caption_stays_paired_with_empty_text(tmp_path):
    path = write(tmp_path / "m.csv", "image,text,label\na.png,   ,dr\nb.png,,\n")
    rows = by_row(read_manifest(path))
    assert rows[1].text == "" and rows[1].role == "paired" and rows[1].labels == ("dr",)
    assert rows[2].text == "" and rows[2].role == "paired"


def test_tsv_with_bom_and_custom_columns(tmp_path):
    path = write(tmp_path / "m.tsv", "\ufefffile\tcaption text\tdx\tsubject\nx/a.png\thello, world\tdr\tS1\n")
    manifest = read_manifest(
        path, image_column="file", text_column="caption text", label_column="dx", group_column="subject"
    )
    (record,) = manifest.records
    assert manifest.format == "tsv"
    assert record.image == str(tmp_path / "x" / "a.png")
    assert (record.text, record.labels, record.group, record.role) == (
        "hello, world",
        ("dr",),
        "S1",
        "paired",
    )


def test_csv_caption_fallback_column(tmp_path):
    path = write(tmp_path / "m.csv", "image,caption\na.png,drusen\n")
    (record,) = read_manifest(path).records
    assert record.text == "drusen" and record.role == "paired"


def test_csv_latin1_rows_are_reported_and_utf8_rows_kept(tmp_path):
    content = b"image,text\n" + "a.png,café au lait spots\n".encode("latin-1")
    content += "b.png,naïve caption\n".encode() + "c.png,hémorragie\n".encode("latin-1")
    path = write(tmp_path / "mixed.csv", content)
    manifest = read_manifest(path)
    assert [r.row for r in manifest.records] == [2]
    assert manifest.records[0].text == "naïve caption"
    assert [(p.row, p.kind, p.severity) for p in manifest.problems] == [
        (1, "not-utf8", "error"),
        (3, "not-utf8", "error"),
    ]
    first = manifest.problems[0]
    assert first.source == str(path)
    assert first.image == str(tmp_path / "a.png")
    offset = content.index(b"\xe9")  # the first Latin-1 byte of the file
    assert "byte e9" in first.message and f"offset {offset} " in first.message
    assert "UTF-8" in first.message and "iconv" in first.message
    assert first.format().startswith(f"{path}:1: a.png: not-utf8: ")


def test_csv_whole_file_latin1_reports_every_row(tmp_path):
    rows = [f"img{i}.png,r\xe9tine {i}\n" for i in range(1, 5)]
    path = write(tmp_path / "latin.csv", "image,text\n" + "".join(rows), encoding="latin-1")
    manifest = read_manifest(path)
    assert manifest.records == []
    assert [(p.row, p.kind) for p in manifest.problems] == [(i, "not-utf8") for i in range(1, 5)]


def test_csv_broken_rows_become_problems(tmp_path):
    path = write(
        tmp_path / "broken.csv",
        "image,text\n"
        "a.png,fine\n"
        'b.png,"bad"quote\n'  # strict CSV: a quote must be followed by the delimiter
        "c.png,too,many,fields\n"
        ",no image\n"
        'd.png,"unclosed\n'
        "e.png,swallowed\n",
    )
    manifest = read_manifest(path)
    assert [r.row for r in manifest.records] == [1]
    problems = {p.row: p for p in manifest.problems}
    assert problems[2].kind == "unparseable-row"
    assert problems[3].kind == "unparseable-row" and "4 fields" in problems[3].message
    assert problems[4].kind == "missing-image-field"
    assert problems[5].kind == "unparseable-row" and "lines 6-7" in problems[5].message
    assert all(p.source == str(path) for p in manifest.problems)


def test_empty_and_headerless_files(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        read_manifest(write(tmp_path / "empty.csv", ""))
    manifest = read_manifest(write(tmp_path / "header.csv", "image,text\n"))
    assert len(manifest) == 0 and manifest.problems == []


# ---------------------------------------------------------------------------------------------------------------
# JSON lines


def test_jsonl_reader(tmp_path):
    lines = [
        json.dumps({"image": "a.png", "text": "disc haemorrhage", "patient_id": 12}),
        json.dumps({"image": "b.png", "text": None, "label": 3}),
        "",
        json.dumps({"image": "c.png", "labels": ["dr", "amd", "dr"], "group": "g"}),
        '{"image": "d.png", "text": "unterminated',
        json.dumps(["not", "an", "object"]),
        json.dumps({"text": "no image"}),
        json.dumps({"image": "e.png"}),
        json.dumps({"image": "f.png", "labels": "['x', 'y']"}),
    ]
    path = write(tmp_path / "sub" / "m.jsonl", "\n".join(lines) + "\n")
    manifest = read_manifest(path)
    assert manifest.format == "jsonl"
    rows = by_row(manifest)
    assert sorted(rows) == [1, 2, 4, 8, 9]
    assert rows[1].image == str(tmp_path / "sub" / "a.png")
    assert (rows[1].text, rows[1].group, rows[1].role) == ("disc haemorrhage", "12", "paired")
    assert (rows[2].text, rows[2].labels, rows[2].role) == (None, ("3",), "categorical")
    assert (rows[4].labels, rows[4].group, rows[4].role) == (("dr", "amd"), "g", "categorical")
    assert rows[8].role == "unpaired"
    assert rows[9].labels == ("x", "y")
    problems = {p.row: p for p in manifest.problems}
    assert sorted(problems) == [5, 6, 7]
    assert problems[5].kind == "unparseable-row" and "not valid JSON" in problems[5].message
    assert problems[6].kind == "unparseable-row" and "object" in problems[6].message
    assert problems[7].kind == "missing-image-field"
    assert problems[5].format().startswith(f"{path}:5: unparseable-row: ")


def test_jsonl_latin1_line(tmp_path):
    content = b'{"image": "a.png", "text": "ok"}\n' + '{"image": "b.png", "text": "r\xe9tine"}\n'.encode(
        "latin-1"
    )
    manifest = read_manifest(write(tmp_path / "m.jsonl", content))
    assert [r.row for r in manifest.records] == [1]
    assert [(p.row, p.kind) for p in manifest.problems] == [(2, "not-utf8")]


def test_json_array_file(tmp_path):
    path = write(tmp_path / "m.json", json.dumps([{"image": "a.png", "text": "t"}, 5, {"image": "b.png"}]))
    manifest = read_manifest(path)
    assert manifest.format == "json"
    assert [(r.row, r.role) for r in manifest.records] == [(1, "paired"), (3, "unpaired")]
    assert [(p.row, p.kind) for p in manifest.problems] == [(2, "unparseable-row")]


# ---------------------------------------------------------------------------------------------------------------
# FLAIR


def test_flair_csv_with_stringified_lists(tmp_path):
    path = write(
        tmp_path / "flair" / "01_EYEPACS.csv",
        "image,atributes,categories\n"
        "01_EYEPACS/1.jpeg,\"['hard exudates']\",\"['no diabetic retinopathy', 'cataract']\"\n"
        "01_EYEPACS/2.jpeg,[],\"['mild diabetic retinopathy']\"\n",
    )
    root = tmp_path / "FLAIR_data"
    root.mkdir()
    manifest = read_manifest(path, image_root=root)
    assert manifest.format == "flair"
    assert manifest.problems == []
    first, second = manifest.records
    assert first.image == str(root / "01_EYEPACS" / "1.jpeg")
    assert first.labels == ("no diabetic retinopathy", "cataract")
    assert first.attributes == ("hard exudates",)
    assert first.role == "categorical" and first.text is None
    assert second.labels == ("mild diabetic retinopathy",) and second.attributes == ()
    assert manifest.class_names == ("cataract", "mild diabetic retinopathy", "no diabetic retinopathy")


def test_flair_unparseable_list_is_a_problem(tmp_path):
    path = write(tmp_path / "f.csv", "image,atributes,categories\na.jpeg,[],\"['unclosed', \"\n")
    manifest = read_manifest(path)
    assert manifest.records == []
    ((problem),) = manifest.problems
    assert (problem.row, problem.kind) == (1, "unparseable-row")


# ---------------------------------------------------------------------------------------------------------------
# ImageFolder


def test_image_folder(tmp_path):
    root = tmp_path / "folder"
    save_image(root / "glaucoma" / "z.png")
    save_image(root / "glaucoma" / "nested" / "a.JPG")
    save_image(root / "amd" / "b.png")
    save_image(root / "loose.png")
    write(root / "amd" / "notes.txt", "not an image")
    save_image(root / ".hidden" / "c.png")
    manifest = read_manifest(root)
    assert manifest.format == "imagefolder" and manifest.source == str(root)
    got = [(r.row, os.path.relpath(r.image, root), r.labels, r.role) for r in manifest.records]
    assert got == [
        (1, os.path.join("amd", "b.png"), ("amd",), "categorical"),
        (2, os.path.join("glaucoma", "nested", "a.JPG"), ("glaucoma",), "categorical"),
        (3, os.path.join("glaucoma", "z.png"), ("glaucoma",), "categorical"),
        (4, "loose.png", (), "unpaired"),
    ]
    assert all(os.path.isabs(r.image) and r.text is None and r.group is None for r in manifest.records)
    assert manifest.class_names == ("amd", "glaucoma")


# ---------------------------------------------------------------------------------------------------------------
# datasets.Dataset


def test_hf_dataset_image_feature_and_class_label():
    images = [Image.new("RGB", (36, 36), (i * 40, 0, 0)) for i in range(4)]
    dataset = datasets.Dataset.from_dict(
        {
            "image": images,
            "label": [0, 1, -1, 2],
            "text": ["a caption", None, None, "  "],
            "patient_id": ["p1", "p1", "p2", None],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.ClassLabel(names=["normal", "dr", "amd"]),
                "text": datasets.Value("string"),
                "patient_id": datasets.Value("string"),
            }
        ),
    )
    manifest = manifest_from_hf_dataset(dataset, name="fundus")
    assert manifest.source == "hf:fundus" and manifest.problems == []
    records = manifest.records
    assert [r.row for r in records] == [1, 2, 3, 4]
    assert [r.labels for r in records] == [("normal",), ("dr",), (), ("amd",)]
    assert [r.role for r in records] == ["paired", "categorical", "unpaired", "paired"]
    assert records[3].text == ""  # blank caption kept for validation to report
    assert [r.group for r in records] == ["p1", "p1", "p2", None]
    assert all(isinstance(r.image, HFImageRef) and r.source == "hf:fundus" for r in records)
    reference = records[2].image
    assert reference.index == 2 and reference.column == "image"
    assert reference.dataset.features["image"].decode is False  # nothing decoded while reading
    assert isinstance(reference.raw(), dict)
    loaded = reference.load()
    assert loaded.size == (36, 36) and loaded.getpixel((0, 0)) == (80, 0, 0)
    assert records[2].image == HFImageRef(reference.dataset, 2, "image")
    assert records[2].image != records[1].image
    assert manifest.class_names == ("amd", "dr", "normal")


def test_hf_dataset_multilabel_class_labels_and_role():
    dataset = datasets.Dataset.from_dict(
        {"img": [Image.new("L", (33, 33))] * 2, "labels": [[0, 1], [1]]},
        features=datasets.Features(
            {"img": datasets.Image(), "labels": datasets.List(datasets.ClassLabel(names=["a", "b"]))}
        ),
    )
    manifest = manifest_from_hf_dataset(dataset, image_column="img")
    assert [r.labels for r in manifest.records] == [("a", "b"), ("b",)]
    forced = manifest_from_hf_dataset(dataset, image_column="img", role="unpaired")
    assert [(r.labels, r.role) for r in forced.records] == [((), "unpaired"), ((), "unpaired")]


def test_hf_dataset_with_path_strings(tmp_path):
    save_image(tmp_path / "a.png")
    dataset = datasets.Dataset.from_dict(
        {"path": ["a.png", str(tmp_path / "b.png"), ""], "diagnosis": ["dr|amd", "normal", "x"]}
    )
    manifest = manifest_from_hf_dataset(
        dataset, image_column="path", label_column="diagnosis", image_root=tmp_path
    )
    first, second = manifest.records
    assert first.image == str(tmp_path / "a.png") and second.image == str(tmp_path / "b.png")
    assert first.labels == ("dr", "amd") and second.labels == ("normal",)
    assert [r.row for r in manifest.records] == [1, 2]
    assert [(p.row, p.kind) for p in manifest.problems] == [(3, "missing-image-field")]


def test_hf_dataset_errors():
    dataset = datasets.Dataset.from_dict({"pixels": [1, 2]})
    with pytest.raises(ValueError, match="no image column 'image'.*'pixels'"):
        manifest_from_hf_dataset(dataset)
    with pytest.raises(ValueError, match="expected a datasets.Image"):
        manifest_from_hf_dataset(dataset, image_column="pixels")
    with pytest.raises(ValueError, match="one split"):
        manifest_from_hf_dataset(datasets.DatasetDict({"train": dataset}))


# ---------------------------------------------------------------------------------------------------------------
# Role forcing, errors, helpers


def test_role_forcing(tmp_path):
    path = write(tmp_path / "m.csv", "image,text,label\na.png,caption,dr\nb.png,,amd\nc.png,,\n")
    unpaired = read_manifest(path, role="unpaired")
    assert [(r.text, r.labels, r.role) for r in unpaired.records] == [(None, (), "unpaired")] * 3
    categorical = read_manifest(path, role="categorical")
    assert [(r.text, r.labels, r.role) for r in categorical.records] == [
        (None, ("dr",), "categorical"),
        (None, ("amd",), "categorical"),
        (None, (), "categorical"),
    ]
    jsonl = write(
        tmp_path / "m.jsonl", '{"image": "a.png", "label": "dr"}\n{"image": "b.png", "text": "t"}\n'
    )
    paired = read_manifest(jsonl, role="paired")
    assert [(r.text, r.role) for r in paired.records] == [("", "paired"), ("t", "paired")]
    with pytest.raises(ValueError, match="unknown role"):
        read_manifest(path, role="captioned")
    assert ROLES == ("paired", "categorical", "unpaired")


def test_reader_usage_errors(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv") as info:
        read_manifest(missing)
    assert info.value.filename == str(missing)
    path = write(tmp_path / "m.csv", "file_path,text\na.png,t\n")
    with pytest.raises(ValueError) as info:
        read_manifest(path)
    message = str(info.value)
    assert (
        str(path) in message
        and "'file_path'" in message
        and "'text'" in message
        and "--image-column" in message
    )
    with pytest.raises(ValueError, match="unknown manifest format 'xlsx'"):
        read_manifest(path, format="xlsx")
    with pytest.raises(ValueError, match="no text column 'report'.*--text-column"):
        read_manifest(path, image_column="file_path", text_column="report")
    with pytest.raises(FileNotFoundError, match="image root"):
        read_manifest(path, image_column="file_path", image_root=tmp_path / "missing-root")
    empty_jsonl = write(tmp_path / "m.jsonl", '{"path": "a.png"}\n')
    with pytest.raises(ValueError, match="'path'.*--image-column"):
        read_manifest(empty_jsonl)


def test_read_manifests_specs(tmp_path):
    a = write(tmp_path / "a.csv", "image,text\na.png,t\n")
    b = write(tmp_path / "b.jsonl", '{"img": "b.png", "label": "dr"}\n')
    first, second = read_manifests([{"path": a}, {"path": str(b), "image_column": "img", "role": "unpaired"}])
    assert first.records[0].role == "paired"
    assert second.records[0].role == "unpaired" and second.records[0].image == str(tmp_path / "b.png")


def test_format_detection_and_explicit_format(tmp_path):
    path = write(tmp_path / "manifest.txt", '{"image": "a.png", "text": "t"}\n')
    assert read_manifest(path).format == "jsonl"
    path = write(tmp_path / "manifest.dat", "image,text\na.png,t\n")
    assert read_manifest(path).format == "csv"
    assert read_manifest(path, format="csv").records[0].text == "t"


def test_parse_labels():
    assert parse_labels(None) == ()
    assert parse_labels(float("nan")) == ()
    assert parse_labels("  ") == ()
    assert parse_labels("dr") == ("dr",)
    assert parse_labels("dr | amd|") == ("dr", "amd")
    assert parse_labels("dr|amd", separator=None) == ("dr|amd",)
    assert parse_labels('["a", "b"]') == ("a", "b")
    assert parse_labels("['a', 'b', 'a']") == ("a", "b")
    assert parse_labels(["x", 2, None, 3.0]) == ("x", "2", "3")
    assert parse_labels(4) == ("4",)
    with pytest.raises(ValueError):
        parse_labels("['a', ")


def test_records_are_hashable_and_frozen(tmp_path):
    path = write(tmp_path / "m.csv", "image,text\na.png,t\n")
    (record,) = read_manifest(path).records
    assert {record: 1}[record] == 1
    with pytest.raises(AttributeError):
        record.text = "changed"
