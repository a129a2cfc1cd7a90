"""`retvlp validate-data`: exit codes 0 (clean or warnings only), 1 (errors), 2 (usage), output naming file:row."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import prewarmed
from PIL import Image

from retvlp.cli import build_parser, main


def make_images(folder, names, size=40):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        pixels = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)


def clean_manifest(tmp_path):
    make_images(tmp_path / "images", ["a.png", "b.png", "c.png"])
    path = tmp_path / "clean.csv"
    path.write_text(
        "image,text,label,patient_id\n"
        "images/a.png,cup to disc 0.7,glaucoma,P1\n"
        "images/b.png,drusen,amd,P2\n"
        "images/c.png,normal fundus,normal,P2\n"
    )
    return path


def bad_manifest(tmp_path):
    make_images(tmp_path / "images", ["a.png"])
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image at all")
    path = tmp_path / "bad.csv"
    path.write_text(
        "image,text\nimages/a.png,fine\nimages/missing.png,gone\nimages/broken.png,broken\nimages/a.png,\n"
    )
    return path


def test_clean_manifest_exits_0(tmp_path, capsys):
    path = clean_manifest(tmp_path)
    assert main(["validate-data", str(path), "--classes", "glaucoma,amd,normal", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{path} [csv]: 3 records (paired 3, categorical 0, unpaired 0)" in out
    assert "3 classes: amd, glaucoma, normal" in out and "2 groups" in out
    assert "Checked 3 records: no problems found." in out


def test_errors_exit_1_and_name_file_and_row(tmp_path, capsys):
    path = bad_manifest(tmp_path)
    report = tmp_path / "out" / "problems.jsonl"
    assert main(["validate-data", str(path), "--report", str(report), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert f"{path}:2: images/missing.png: missing-file: " in out
    assert f"{path}:3: images/broken.png: unreadable-image: " in out
    assert f"{path}:4: images/a.png: empty-caption: " in out
    assert "Checked 4 records: 3 errors in 3 rows" in out
    assert "--on-bad-sample skip" in out
    assert f"Wrote 3 problems to {report}" in out
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(r["source"], r["row"], r["kind"]) for r in rows] == [
        (str(path), 2, "missing-file"),
        (str(path), 3, "unreadable-image"),
        (str(path), 4, "empty-caption"),
    ]


def test_max_shown_limits_the_listing(tmp_path, capsys):
    path = bad_manifest(tmp_path)
    assert main(["validate-data", str(path), "--max-shown", "1"]) == 1
    out = capsys.readouterr().out
    assert ":2: " in out and ":3: " not in out and "... and 2 more problems" in out


def test_warnings_only_exit_0(tmp_path, capsys):
    Image.new("L", (40, 40), 90).save(tmp_path / "grey.png")
    path = tmp_path / "m.jsonl"
    path.write_text('{"image": "grey.png", "label": "dr"}\n')
    assert main(["validate-data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "categorical 1" in out
    assert f"{path}:1: grey.png: converted-mode (warning): " in out


def test_unknown_labels_from_classes_file_and_role(tmp_path, capsys):
    path = clean_manifest(tmp_path)
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"glaucoma": 0, "amd": 1}))
    assert main(["validate-data", str(path), "--classes-file", str(classes), "--role", "categorical"]) == 1
    out = capsys.readouterr().out
    assert "categorical 3" in out
    assert f"{path}:3: images/c.png: unknown-label: label 'normal'" in out
    text_classes = tmp_path / "classes.txt"
    text_classes.write_text("# known classes\nglaucoma\namd\nnormal\n")
    assert main(["validate-data", str(path), "--classes-file", str(text_classes)]) == 0


def test_parse_problems_and_image_folder(tmp_path, capsys):
    make_images(tmp_path / "folder" / "dr", ["1.png"])
    make_images(tmp_path / "folder" / "amd", ["2.png"])
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"image": "folder/dr/1.png", "text": "ok"}\n{oops}\n')
    assert main(["validate-data", str(tmp_path / "folder"), str(jsonl)]) == 1
    out = capsys.readouterr().out
    assert "[imagefolder]: 2 records (paired 0, categorical 2, unpaired 0); 2 classes: amd, dr" in out
    assert f"{jsonl}:2: unparseable-row: not valid JSON" in out


def test_usage_errors_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    assert main(["validate-data", str(missing)]) == 2
    captured = capsys.readouterr()
    assert f"manifest not found: {missing}" in captured.err and "Traceback" not in captured.err
    wrong_column = tmp_path / "m.csv"
    wrong_column.write_text("path,text\na.png,t\n")
    assert main(["validate-data", str(wrong_column)]) == 2
    err = capsys.readouterr().err
    assert "no image column 'image'" in err and "--image-column" in err
    assert main(["validate-data", str(wrong_column), "--image-column", "path", "--skip-images"]) == 0
    capsys.readouterr()
    assert (
        main(["validate-data", str(wrong_column), "--image-column", "path", "--classes-file", "x.json"]) == 2
    )
    assert "classes file not found" in capsys.readouterr().err
    assert main(["validate-data", str(wrong_column), "--role", "captions"]) == 2
    assert main(["validate-data"]) == 2
    assert main([]) == 2
    assert main(["validate-data", str(wrong_column), "--classes", "a", "--classes-file", "b.txt"]) == 2
    capsys.readouterr()


def test_parser_has_subcommands():
    parser = build_parser()
    args = parser.parse_args(["validate-data", "a.csv", "b.jsonl", "--min-size", "64"])
    assert args.command == "validate-data" and args.manifests == ["a.csv", "b.jsonl"] and args.min_size == 64
    assert args.max_pixels == 178_956_970
    assert args.allowed_roots == [] and not args.allow_outside_data_roots and not args.no_progress
    options = ["--allowed-root", "/x", "--allowed-root", "/y", "--allow-outside-data-roots", "--no-progress"]
    args = parser.parse_args(["validate-data", "a.csv", *options])
    assert args.allowed_roots == ["/x", "/y"] and args.allow_outside_data_roots and args.no_progress


def test_module_entry_point_in_subprocess(tmp_path):
    path = bad_manifest(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    result = prewarmed.run(
        [sys.executable, "-m", "retvlp.cli", "validate-data", str(path)], env=env, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert f"{path}:2: images/missing.png: missing-file" in result.stdout
    assert "Traceback" not in result.stderr
