"""`retvlp prepare-data` shard sets: what they hold, how preparation splits, resumes and reports, how a
shard set is opened and read back (locally, by `file://` and from fsspec's in-memory filesystem), and the
streaming step sampler's guarantees.

Independent checks: pixels are compared with the training cache's (`build_image_cache`) and with a plain
decode; tar members are read with `tarfile` and with `datasets`' webdataset loader; sampler properties are
counted directly.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import PIL.Image
import pytest

from retvlp import cli
from retvlp.data.cache import ImageGeometry, build_image_cache, read_pixels
from retvlp.data.manifest import read_manifests
from retvlp.data.shard_stream import (
    ShardedStepSampler,
    ShardReadError,
    default_stream_readers,
    open_shard_set,
)
from retvlp.data.shards import prepare_shards

GEOMETRY = ImageGeometry(size=32)


def _manifests(synthetic):
    return read_manifests(
        [
            {"path": str(synthetic.paired)},
            {"path": str(synthetic.categorical)},
            {"path": str(synthetic.unpaired)},
        ]
    )


def _prepare(synthetic, output, **kw):
    kw.setdefault("shard_size", 8)
    kw.setdefault("num_proc", 1)
    return prepare_shards(_manifests(synthetic), output, geometry=GEOMETRY, show_progress=False, **kw)


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("image_format", ["png", "npy"])
def test_shards_hold_every_row_once_with_the_cache_pixels(tmp_path, synthetic, image_format):
    result = _prepare(synthetic, tmp_path / "shards", image_format=image_format)
    with tarfile.open(tmp_path / "shards" / "shard-00000.tar") as tar:
        assert tar.getnames()[0].endswith(f".{image_format}")
    assert result.index is not None and result.report.ok
    records = [r for m in _manifests(synthetic) for r in m.records]
    shards = open_shard_set(str(tmp_path / "shards"))
    assert len(shards) == len(records) == json.loads(result.index.read_text())["num_rows"]
    assert sorted(zip(shards.sources, shards.source_rows, strict=True)) == sorted(
        (r.source, r.row) for r in records
    )
    cache = build_image_cache(records, GEOMETRY, tmp_path / "cache", num_proc=1, show_progress=False)
    where = {(r.source, r.row): i for i, r in enumerate(records)}
    cached = read_pixels(
        cache.dataset, [where[key] for key in zip(shards.sources, shards.source_rows, strict=True)]
    )
    np.testing.assert_array_equal(shards.read_pixels(np.arange(len(shards))), cached)
    for i in range(len(shards)):
        record = records[where[(shards.sources[i], shards.source_rows[i])]]
        assert (shards.texts[i], shards.labels[i], shards.roles[i]) == (
            record.text,
            record.labels,
            record.role,
        )


def test_shards_are_plain_webdataset_tars(tmp_path, synthetic):
    _prepare(synthetic, tmp_path / "shards")
    shards = open_shard_set(str(tmp_path / "shards"))
    with tarfile.open(tmp_path / "shards" / "shard-00000.tar") as tar:
        names = tar.getnames()
        assert names[:2] == [f"{shards.keys[0]}.png", f"{shards.keys[0]}.json"]
        png = np.asarray(PIL.Image.open(tar.extractfile(names[0])))
        meta = json.loads(tar.extractfile(names[1]).read())
    np.testing.assert_array_equal(png, shards.read_pixels([0])[0])
    assert meta["source"] == shards.sources[0] and meta["row"] == shards.source_rows[0]

    import datasets

    loaded = datasets.load_dataset(
        "webdataset", data_files=str(tmp_path / "shards" / "shard-*.tar"), split="train"
    )
    assert len(loaded) == len(shards)
    np.testing.assert_array_equal(np.asarray(loaded[0]["png"]), shards.read_pixels([0])[0])


def test_ranks_split_the_work_and_give_the_same_bytes(tmp_path, synthetic):
    straight = _prepare(synthetic, tmp_path / "one")
    first = _prepare(synthetic, tmp_path / "two", rank=0, world_size=2)
    assert (
        first.index is None
        and first.written == ["shard-00000", "shard-00002", "shard-00004"][: len(first.written)]
    )
    second = _prepare(synthetic, tmp_path / "two", rank=1, world_size=2)
    assert second.index is not None and set(first.written).isdisjoint(second.written)
    assert len(first.written) + len(second.written) == straight.num_shards
    assert _tree(tmp_path / "two") == _tree(tmp_path / "one")


def test_a_killed_preparation_resumes_without_duplicates_or_losses(tmp_path, synthetic):
    straight = _prepare(synthetic, tmp_path / "straight")
    output = tmp_path / "resumed"
    partial = _prepare(synthetic, output, max_shards=2)
    assert partial.index is None and len(partial.written) == 2
    # what a kill leaves: a temporary tar, and a renamed tar whose index was never written
    (output / ".shard-00003.deadbeef.tar.tmp").write_bytes(b"half a tar")
    (output / "shard-00004.tar").write_bytes(b"a tar without its index")
    resumed = _prepare(synthetic, output, num_proc=2)
    assert resumed.already_done == 2 and resumed.index is not None
    tree = {name: data for name, data in _tree(output).items() if not name.endswith(".tmp")}
    assert tree == _tree(tmp_path / "straight")
    assert straight.index.read_bytes() == resumed.index.read_bytes()


def test_other_inputs_in_the_same_output_are_refused(tmp_path, synthetic):
    _prepare(synthetic, tmp_path / "shards", max_shards=1)
    with pytest.raises(ValueError, match="preparation of different inputs"):
        _prepare(synthetic, tmp_path / "shards", shard_size=5)


def _manifest_with_bad_rows(tmp_path, synthetic) -> Path:
    rows = [json.loads(line) for line in Path(synthetic.paired).read_text().splitlines()][:6]
    for row in rows:
        row["image"] = str(Path(synthetic.paired).parent / row["image"])
    (tmp_path / "tiny.png").parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "tiny.png")
    rows.append({"image": str(tmp_path / "tiny.png"), "text": "a small fundus"})
    rows.append({"image": str(tmp_path / "missing.png"), "text": "gone"})
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def test_bad_rows_stop_or_are_skipped_and_listed(tmp_path, synthetic, capsys):
    manifest = _manifest_with_bad_rows(tmp_path, synthetic)
    base = ["prepare-data", str(manifest), "--allow-outside-data-roots", "--output", str(tmp_path / "shards")]
    base += ["--image-size", "32", "--shard-size", "3", "--num-proc", "1", "--no-progress"]
    assert cli.main(base) == 1
    out = capsys.readouterr().out
    assert "tiny-image" in out and "missing-file" in out and "--on-bad-sample skip" in out
    assert not (tmp_path / "shards" / "index.json").exists()
    assert cli.main(base + ["--on-bad-sample", "skip"]) == 0
    out = capsys.readouterr().out
    assert (
        "2 row(s) left out" in out and "0 already done" not in out
    )  # the shards of the first call are reused
    skipped = [
        json.loads(line) for line in (tmp_path / "shards" / "skipped_samples.jsonl").read_text().splitlines()
    ]
    assert [(e["row"], e["problems"][0].split(":")[0]) for e in skipped] == [
        (7, "tiny-image"),
        (8, "missing-file"),
    ]
    shards = open_shard_set(str(tmp_path / "shards"))
    assert len(shards) == 6 and len(shards.skipped_at_preparation) == 2


def test_usage_errors_name_the_option(tmp_path, synthetic, capsys):
    assert (
        cli.main(
            ["prepare-data", str(synthetic.paired), "--output", str(tmp_path / "s"), "--shard-size", "0"]
        )
        == 2
    )
    assert "--shard-size" in capsys.readouterr().err
    assert (
        cli.main(["prepare-data", str(synthetic.paired), "--output", str(tmp_path / "s"), "--rank", "2"]) == 2
    )
    assert "--rank 2" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- opening
def test_opening_names_what_is_missing(tmp_path, synthetic):
    with pytest.raises(FileNotFoundError, match="no index.json"):
        open_shard_set(str(tmp_path))
    _prepare(synthetic, tmp_path / "shards")
    (tmp_path / "shards" / "shard-00001.tar").unlink()
    with pytest.raises(FileNotFoundError, match="shard-00001.tar"):
        open_shard_set(str(tmp_path / "shards"), on_bad_sample="skip")  # missing: an error under any policy


def test_an_index_naming_files_outside_its_directory_is_refused(tmp_path, synthetic):
    _prepare(synthetic, tmp_path / "shards")
    index_path = tmp_path / "shards" / "index.json"
    index = json.loads(index_path.read_text())
    index["shards"][0]["name"] = "../outside.tar"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"names the file '\.\./outside\.tar'"):
        open_shard_set(str(tmp_path / "shards"))


def test_a_truncated_shard_is_fatal_or_left_out_by_the_policy(tmp_path, synthetic):
    _prepare(synthetic, tmp_path / "shards")
    path = tmp_path / "shards" / "shard-00002.tar"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"shard-00002.tar: truncated-shard"):
        open_shard_set(str(tmp_path / "shards"))
    whole = json.loads((tmp_path / "shards" / "index.json").read_text())
    skipped = open_shard_set(str(tmp_path / "shards"), on_bad_sample="skip")
    assert len(skipped) == whole["num_rows"] - whole["shards"][2]["rows"]
    assert len(skipped.left_out) == whole["shards"][2]["rows"]
    assert all("shard-00002.tar:" in p.image and p.kind == "truncated-shard" for p in skipped.left_out)
    assert 2 not in set(skipped.shard_of.tolist())


def _corrupt_one_member(folder: Path) -> str:
    index = json.loads((folder / "shard-00001.json").read_text())
    member = index["members"][1]
    path = folder / "shard-00001.tar"
    data = bytearray(path.read_bytes())
    position = member["offset"] + member["size"] // 2
    data[position] ^= 0xFF  # same size: only a checksum finds it
    path.write_bytes(bytes(data))
    return f"shard-00001.tar:{member['key']}.png"


def test_a_corrupt_member_is_named_when_read_or_left_out_by_a_full_check(tmp_path, synthetic):
    _prepare(synthetic, tmp_path / "shards")
    name = _corrupt_one_member(tmp_path / "shards")
    shards = open_shard_set(str(tmp_path / "shards"))  # the size check cannot see it
    bad_row = [i for i in range(len(shards)) if shards.shard_of[i] == 1][1]
    shards.read_pixels([bad_row - 1])  # its neighbours read fine
    with pytest.raises(ShardReadError, match=name.replace(".", r"\.")):
        shards.read_pixels([bad_row])
    with pytest.raises(ValueError, match="corrupt-member"):
        open_shard_set(str(tmp_path / "shards"), verify="full")
    checked = open_shard_set(str(tmp_path / "shards"), verify="full", on_bad_sample="skip")
    assert len(checked) == len(shards) - 1
    assert [p.image.split("/")[-1] for p in checked.left_out] == [name]
    checked.read_pixels(np.arange(len(checked)))


def test_file_and_memory_urls_read_the_same_pixels(tmp_path, synthetic):
    _prepare(synthetic, tmp_path / "shards")
    local = open_shard_set(str(tmp_path / "shards"))
    by_url = open_shard_set(f"file://{tmp_path / 'shards'}")
    memory = fsspec.filesystem("memory")
    for path in (tmp_path / "shards").iterdir():
        memory.pipe_file(f"/test-shards/{path.name}", path.read_bytes())
    try:
        in_memory = open_shard_set("memory://test-shards")
        rows = np.arange(len(local))[::-1]
        expected = local.read_pixels(rows)
        np.testing.assert_array_equal(by_url.read_pixels(rows), expected)
        np.testing.assert_array_equal(in_memory.read_pixels(rows), expected)
        assert in_memory.fingerprint == local.fingerprint
    finally:
        memory.rm("/test-shards", recursive=True)


# ---------------------------------------------------------------------------------------------- the sampler
def _shard_of_row(rows_per_shard: list[int]) -> np.ndarray:
    return np.concatenate([np.full(n, k) for k, n in enumerate(rows_per_shard)])


@pytest.mark.parametrize("world", [1, 2, 4])
def test_processes_get_equal_disjoint_slices_of_the_one_process_batch(world):
    shard_of = _shard_of_row([16] * 7 + [5])
    one = ShardedStepSampler(shard_of, batch_size=8, world_size=1, seed=3, readers=4, shuffle_buffer=10)
    many = ShardedStepSampler(
        shard_of, batch_size=8 // world, world_size=world, seed=3, readers=4, shuffle_buffer=10
    )
    for step in range(40):
        parts = [many.indices(step, rank) for rank in range(world)]
        assert all(len(part) == 8 // world for part in parts)
        np.testing.assert_array_equal(np.concatenate(parts), one.global_indices(step))


def test_every_row_once_per_epoch_and_reads_stay_local():
    shard_of = _shard_of_row([10] * 12)  # 120 rows
    sampler = ShardedStepSampler(shard_of, batch_size=12, seed=0, readers=4, shuffle_buffer=10)
    steps_per_epoch = 120 // 12
    for epoch in range(3):
        rows = np.concatenate(
            [sampler.global_indices(s) for s in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)]
        )
        assert sorted(rows.tolist()) == list(range(120))
    # a reader's rows of one step come from at most 2 shards (windows no longer than a shard)
    for step in range(30):
        for reader in range(4):
            assert len(set(shard_of[sampler.reader_rows(reader, step)].tolist())) <= 2
    # epochs are ordered differently, and windows are shuffled
    first = np.concatenate([sampler.global_indices(s) for s in range(steps_per_epoch)])
    second = np.concatenate([sampler.global_indices(s) for s in range(steps_per_epoch, 2 * steps_per_epoch)])
    assert not np.array_equal(first, second)
    assert not np.array_equal(sampler.reader_rows(0, 0), np.sort(sampler.reader_rows(0, 0)))


def test_uneven_shares_roll_over_and_the_position_says_where():
    shard_of = _shard_of_row([7, 7, 7])  # 21 rows over 2 readers: shares of 10 and 11
    sampler = ShardedStepSampler(shard_of, batch_size=4, seed=1, readers=2, shuffle_buffer=4)
    assert sampler.share_length.tolist() == [10, 11]
    share0 = np.concatenate([sampler.reader_rows(0, s) for s in range(5)])  # 10 rows: exactly epoch 0
    assert len(set(share0.tolist())) == 10
    position = sampler.position(5)
    assert [p["epoch"] for p in position["positions"]] == [1, 0] and position["positions"][1]["offset"] == 10
    assert sampler.position(5) == ShardedStepSampler(
        shard_of, 4, seed=1, readers=2, shuffle_buffer=4
    ).position(5)


def test_reader_counts_are_checked():
    shard_of = _shard_of_row([8, 8])
    with pytest.raises(ValueError, match="multiple of the process count"):
        ShardedStepSampler(shard_of, batch_size=3, world_size=2, readers=3)
    with pytest.raises(ValueError, match="more than the 16 rows of the stream"):
        ShardedStepSampler(shard_of, batch_size=32, readers=32)
    assert default_stream_readers(720, 1, 10_000) == default_stream_readers(720, 4, 10_000) == 8
    assert default_stream_readers(6, 2, 100) == 6 and default_stream_readers(4, 1, 3) == 2


def test_a_preparation_killed_by_sigkill_resumes_to_the_straight_result(tmp_path, synthetic):
    """`retvlp prepare-data` in a process of its own (forked: it has the package imported already), killed with
    SIGKILL after three shards; the same command again resumes to the straight preparation's files."""
    import multiprocessing
    import time

    arguments = ["prepare-data", str(synthetic.paired), str(synthetic.categorical), str(synthetic.unpaired)]
    arguments += ["--image-size", "32", "--shard-size", "1", "--num-proc", "1", "--no-progress"]
    straight = _prepare(synthetic, tmp_path / "straight", shard_size=1)
    output = tmp_path / "killed"
    process = multiprocessing.get_context("fork").Process(
        target=cli.main, args=([*arguments, "--output", str(output)],)
    )
    process.start()
    deadline = time.time() + 120
    while len(list(output.glob("shard-*.json"))) < 3:
        assert process.is_alive() and time.time() < deadline, "the preparation ended before the kill"
        time.sleep(0.002)
    process.kill()
    process.join()
    done = len(list(output.glob("shard-*.json")))
    assert not (output / "index.json").exists() and done < straight.num_shards
    assert cli.main([*arguments, "--output", str(output)]) == 0
    tree = {name: data for name, data in _tree(output).items() if not name.endswith(".tmp")}
    assert tree == _tree(tmp_path / "straight")
