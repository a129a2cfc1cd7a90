"""Data-root containment (issue 14.6) and complete skip lists (14.7).

An image path that resolves (symlinks, `..`, absolute paths) outside its manifest's folder, its image_root and
the allowed roots is an `outside-data-root` problem and is never opened; nothing of a file that is not an image
reaches a message or a report; every row counted as skipped is listed, whatever stage dropped it.
"""

import builtins
import json
import logging
import os

import datasets
import numpy as np
import PIL.Image
import pytest
from conftest import tiny_pretrain_dict

from retvlp.cli import main
from retvlp.data.manifest import manifest_from_hf_dataset, read_manifest, read_manifests
from retvlp.data.roots import DataRoots, is_within
from retvlp.data.validation import validate_manifests
from retvlp.training import ConfigError, PretrainConfig, pretrain
from retvlp.training.config import DataSection
from retvlp.training.data import discover_classes, prepare_streams, read_training_manifests

SECRET = "SECRET-MARKER-9b7e root:x:0:0:root:/root:/bin/bash"


def save_image(path, seed=0, size=40):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)


@pytest.fixture
def layout(tmp_path):
    """data/ (the manifests' folder: three images, a symlink to a secret outside, a symlink to an image
    inside), secret/passwd (a text file), other/d.png (an image outside data/)."""
    data = tmp_path / "data"
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        save_image(data / "images" / name, seed=i)
    (tmp_path / "secret").mkdir()
    secret = tmp_path / "secret" / "passwd"
    secret.write_text(SECRET + "\n")
    os.symlink(secret, data / "link_secret.png")
    os.symlink(data / "images" / "a.png", data / "inside_link.png")
    save_image(tmp_path / "other" / "d.png", seed=3)
    return tmp_path


@pytest.fixture
def opened(monkeypatch):
    """The real paths of every file opened with open() or PIL.Image.open while the test runs."""
    seen = []
    real_open, real_image_open = builtins.open, PIL.Image.open

    def spy_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            seen.append(os.path.realpath(file))
        return real_open(file, *args, **kwargs)

    def spy_image_open(fp, *args, **kwargs):
        if isinstance(fp, (str, os.PathLike)):
            seen.append(os.path.realpath(fp))
        return real_image_open(fp, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(PIL.Image, "open", spy_image_open)
    return seen


def kinds(problems):
    return [(p.row, p.kind) for p in problems]


def assert_no_secret(*texts):
    for text in texts:
        assert "SECRET" not in text and "root:x" not in text


# ------------------------------------------------------------------------------------------------ manifests
def test_a_symlink_out_of_the_data_folder_is_a_problem_and_never_opened(layout, opened, tmp_path):
    manifest = layout / "data" / "m.csv"
    manifest.write_text("image,text\nimages/a.png,fine\nlink_secret.png,leak\ninside_link.png,inside\n")
    read = read_manifest(manifest)
    assert [r.row for r in read.records] == [1, 3]  # a symlink that stays inside is fine
    assert kinds(read.problems) == [(2, "outside-data-root")]
    problem = read.problems[0]
    secret = os.path.realpath(layout / "secret" / "passwd")
    assert problem.image == str(layout / "data" / "link_secret.png")
    assert f"resolves to {secret}, outside the allowed data roots [{os.path.realpath(layout / 'data')}]" in (
        problem.message
    )
    assert (
        "data.allowed_roots" in problem.message and "data.allow_outside_data_roots: true" in problem.message
    )
    report = validate_manifests([read])
    assert kinds(report.problems) == [(2, "outside-data-root")]
    report.write_jsonl(tmp_path / "problems.jsonl")
    assert secret not in opened  # neither the reader nor the image checks touched it
    assert_no_secret(report.format(), (tmp_path / "problems.jsonl").read_text())


def test_dotdot_and_absolute_paths_leaving_the_folder_are_problems(layout):
    other = layout / "other" / "d.png"
    rows = ["images/a.png", "../other/d.png", str(other), "images/../../other/d.png", str(layout / "data")]
    manifest = layout / "data" / "m.jsonl"
    manifest.write_text("".join(json.dumps({"image": image, "text": "t"}) + "\n" for image in rows))
    read = read_manifest(manifest)
    # the folder itself is inside (validation then says it is a directory)
    assert [r.row for r in read.records] == [1, 5]
    assert kinds(read.problems) == [(row, "outside-data-root") for row in (2, 3, 4)]
    assert all(p.image == str(other) for p in read.problems)  # shown as resolved, not as written


def test_the_opt_out_and_allowed_roots_admit_paths_elsewhere(layout):
    manifest = layout / "data" / "m.csv"
    manifest.write_text("image,text\n../other/d.png,outside\nlink_secret.png,secret\n")
    assert kinds(read_manifest(manifest).problems) == [(1, "outside-data-root"), (2, "outside-data-root")]
    anywhere = read_manifest(manifest, allow_outside_data_roots=True)
    assert [r.row for r in anywhere.records] == [1, 2] and anywhere.problems == []
    # a list, or one folder written as a scalar; the secret's folder stays out either way
    for roots in ([str(layout / "other")], str(layout / "other")):
        allowed = read_manifest(manifest, allowed_roots=roots)
        assert [r.row for r in allowed.records] == [1]
        assert kinds(allowed.problems) == [(2, "outside-data-root")]
    # the image_root is an allowed root too
    rooted = layout / "data" / "rooted.csv"
    rooted.write_text("image,text\nd.png,outside\n")
    assert read_manifest(rooted, image_root=layout / "other").problems == []
    # run-wide settings add to each spec's own
    specs = [{"path": str(manifest), "allowed_roots": [str(layout / "other")]}]
    (merged,) = read_manifests(specs, allowed_roots=[str(layout / "secret")])
    assert [r.row for r in merged.records] == [1, 2]
    (spec_opt_out,) = read_manifests([{"path": str(manifest), "allow_outside_data_roots": True}])
    assert len(spec_opt_out.records) == 2


def test_roots_reached_through_symlinks_and_prefix_lookalikes(layout):
    os.symlink(layout / "data", layout / "alias")
    manifest = layout / "data" / "m.csv"
    manifest.write_text("image,text\nimages/a.png,a\n")
    # a manifest read through a symlinked folder
    assert read_manifest(layout / "alias" / "m.csv").problems == []
    save_image(layout / "data-evil" / "x.png")  # shares the prefix "data" but is another folder
    manifest.write_text("image,text\n../data-evil/x.png,x\n")
    assert kinds(read_manifest(manifest).problems) == [(1, "outside-data-root")]
    assert is_within("/a/b", "/a") and is_within("/a", "/a") and is_within("/x", "/")
    assert not is_within("/ab", "/a")
    assert not DataRoots((str(layout / "data"),)).contains(str(layout / "data-evil" / "x.png"))


def test_image_folder_links_leading_out_are_not_followed(layout, opened):
    tree = layout / "tree"
    save_image(tree / "normal" / "a.png")
    os.symlink(layout / "other" / "d.png", tree / "normal" / "out.png")
    os.symlink(layout / "other", tree / "escape")  # a folder link: not descended into
    read = read_manifest(tree)
    assert [os.path.relpath(r.image, tree) for r in read.records] == ["normal/a.png"]
    assert [(p.row, p.kind, os.path.relpath(p.image, tree)) for p in read.problems] == [
        (0, "outside-data-root", "escape"),
        (2, "outside-data-root", "normal/out.png"),
    ]
    assert os.path.realpath(layout / "other" / "d.png") not in opened
    everything = read_manifest(tree, allow_outside_data_roots=True)
    assert [os.path.relpath(r.image, tree) for r in everything.records] == [
        "escape/d.png",
        "normal/a.png",
        "normal/out.png",
    ]
    assert everything.problems == []


def test_hf_path_columns_are_contained_but_embedded_images_are_not(layout):
    images = layout / "data" / "images"
    paths = datasets.Dataset.from_dict(
        {"path": ["a.png", str(layout / "secret" / "passwd")], "text": ["a", "b"]}
    )
    read = manifest_from_hf_dataset(paths, image_column="path", image_root=images)
    assert [r.row for r in read.records] == [1] and kinds(read.problems) == [(2, "outside-data-root")]
    allowed = manifest_from_hf_dataset(
        paths, image_column="path", image_root=images, allowed_roots=[str(layout / "secret")]
    )
    assert len(allowed.records) == 2
    embedded = datasets.Dataset.from_dict({"image": [str(layout / "other" / "d.png")], "text": ["d"]})
    embedded = embedded.cast_column("image", datasets.Image())
    assert manifest_from_hf_dataset(embedded).problems == []  # the dataset's own data, not a file path


def test_read_training_manifests_applies_the_run_settings(layout):
    manifest = layout / "data" / "m.csv"
    manifest.write_text("image,text\n../other/d.png,outside\n")
    specs = [{"path": str(manifest)}]
    assert kinds(read_training_manifests(specs)[0].problems) == [(1, "outside-data-root")]
    (allowed,) = read_training_manifests(specs, allowed_roots=[str(layout / "other")])
    (anywhere,) = read_training_manifests(specs, allow_outside_data_roots=True)
    assert len(allowed.records) == len(anywhere.records) == 1
    assert specs == [{"path": str(manifest)}]  # the caller's specs are not modified


def test_config_fields_are_checked(tmp_path):
    base = {"train": [{"path": "m.csv"}]}
    config = PretrainConfig.from_dict({"data": {**base, "allowed_roots": ["/data/x"]}})
    assert config.data.allowed_roots == ["/data/x"] and config.data.allow_outside_data_roots is False
    opted_out = PretrainConfig.from_dict({"data": {**base, "allow_outside_data_roots": True}})
    assert opted_out.data.allow_outside_data_roots is True
    with pytest.raises(ConfigError, match="data.allowed_roots expects a list of strings, got str"):
        PretrainConfig.from_dict({"data": {**base, "allowed_roots": "/data/x"}})
    with pytest.raises(ConfigError, match="data.allow_outside_data_roots expects bool, got str"):
        PretrainConfig.from_dict({"data": {**base, "allow_outside_data_roots": "yes"}})


# ------------------------------------------------------------------------------------------------ validate-data
def test_validate_data_reports_outside_paths_and_has_the_options(layout, capsys, tmp_path):
    manifest = layout / "data" / "m.csv"
    manifest.write_text("image,text\nimages/a.png,fine\nlink_secret.png,leak\n../other/d.png,other\n")
    report = tmp_path / "problems.jsonl"
    assert main(["validate-data", str(manifest), "--workers", "1", "--report", str(report)]) == 1
    out = capsys.readouterr().out
    assert f"{manifest}:2: " in out and f"{manifest}:3: " in out and out.count("outside-data-root") >= 2
    assert_no_secret(out, report.read_text())
    args = ["validate-data", str(manifest), "--workers", "1", "--allowed-root", str(layout / "other")]
    assert main(args) == 1  # the secret is still outside
    out = capsys.readouterr().out
    assert f"{manifest}:2: " in out and f"{manifest}:3: " not in out
    # Allowed anywhere, the secret is read, found not to be an image, and still never shown.
    assert main(["validate-data", str(manifest), "--workers", "1", "--allow-outside-data-roots"]) == 1
    out = capsys.readouterr().out
    assert "outside-data-root" not in out and "unreadable-image" in out and "bytes of text" in out
    assert_no_secret(out)


def test_validate_data_no_progress_prints_plain_lines(layout, capsys, monkeypatch):
    from retvlp.data import validation

    monkeypatch.setattr(validation, "PROGRESS_THRESHOLD", 1)  # a bar even for three images
    manifest = layout / "data" / "m.csv"
    manifest.write_text("image,text\nimages/a.png,a\nimages/b.png,b\nimages/c.png,c\n")
    assert main(["validate-data", str(manifest), "--workers", "1"]) == 0
    assert "checking images" in capsys.readouterr().err
    assert main(["validate-data", str(manifest), "--workers", "1", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "checking images" not in captured.err and "\r" not in captured.err + captured.out
    assert "Checking the images of 3 records..." in captured.out


# ------------------------------------------------------------------------------------------------ skip lists
def mixed_manifest(folder):
    """Rows 3-7 fail at different stages: not UTF-8 and too many fields (parsing), outside the roots
    (containment), a missing file (image cache), an empty caption (check_records)."""
    lines = [
        b"image,text",
        b"images/a.png,caption a",
        b"images/b.png,caption b",
        b"images/c.png,caf\xe9 latin-1",
        b"link_secret.png,leak",
        b"images/missing.png,gone",
        b"images/c.png,",
        b"images/a.png,too,many",
        b"images/c.png,caption c",
    ]
    path = folder / "mixed.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_every_skipped_row_is_listed_and_counted(layout, tmp_path, caplog):
    manifest = mixed_manifest(layout / "data")
    manifests = read_training_manifests([{"path": str(manifest)}])
    data = DataSection(
        train=[{"path": str(manifest)}],
        on_bad_sample="skip",
        image_size=32,
        cache_dir=str(tmp_path / "cache"),
        preprocessing_workers=1,
    )
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="retvlp.training.data"):
        streams, report = prepare_streams(
            manifests, data, discover_classes(manifests, None), out, show_progress=False
        )
    skipped = [json.loads(line) for line in (out / "skipped_samples.jsonl").read_text().splitlines()]
    assert [entry["row"] for entry in skipped] == [3, 4, 5, 6, 7]
    assert {(e["source"], e["row"]) for e in skipped} == report.bad_records  # = training_summary's count
    kinds_by_row = {e["row"]: [p.split(":")[0] for p in e["problems"]] for e in skipped}
    assert kinds_by_row == {
        3: ["not-utf8"],
        4: ["outside-data-root"],
        5: ["missing-file"],
        6: ["empty-caption"],
        7: ["unparseable-row"],
    }
    assert skipped[1]["image"] == str(layout / "data" / "link_secret.png")
    assert any("Skipped 5 of 8 rows" in record.getMessage() for record in caplog.records)
    assert len(streams["paired"]) == 3
    assert_no_secret((out / "skipped_samples.jsonl").read_text(), (out / "data_problems.jsonl").read_text())


def test_a_pretraining_run_lists_and_counts_every_skipped_row(tmp_path, synthetic):
    folder = tmp_path / "manifests"
    folder.mkdir()
    good = json.loads(synthetic.paired.read_text().splitlines()[0])
    image = (synthetic.paired.parent / good["image"]).resolve()
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "passwd").write_text(SECRET + "\n")
    os.symlink(tmp_path / "secret" / "passwd", folder / "link.png")
    manifest = folder / "extra.csv"
    manifest.write_bytes(
        b"image,text\n"
        + f"{image},a fundus\n".encode()
        + f"{image},caf\xe9 fundus\n".encode("latin-1")
        + b"link.png,a fundus\n"
        + f"{folder / 'missing.png'},a fundus\n".encode()
    )
    spec = {"path": str(manifest), "allowed_roots": [str(synthetic.paired.parent)]}
    train = [{"path": str(synthetic.paired)}, spec]
    raw = tiny_pretrain_dict(
        tmp_path, synthetic, "skip", data={"train": train, "on_bad_sample": "skip"}, optim={"max_steps": 1}
    )
    result = pretrain(PretrainConfig.from_dict(raw, source="test"), show_progress=False)
    skipped = [json.loads(x) for x in (result.output_dir / "skipped_samples.jsonl").read_text().splitlines()]
    assert [(os.path.basename(s["source"]), s["row"]) for s in skipped] == [
        ("extra.csv", 2),
        ("extra.csv", 3),
        ("extra.csv", 4),
    ]
    summary = json.loads((result.final_dir / "training_summary.json").read_text())
    assert summary["skipped_samples"] == len(skipped) == 3
    for path in result.output_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".txt", ".md", ".yaml", ".log"):
            assert_no_secret(path.read_text(errors="replace"))
