"""The shared image cache holds each image once per geometry, whatever row sets read it.

Checked against plain computations: the pixels of a view equal `fit_to_square(decode_image(file))` done here;
entry counts are read from the pool's shard sidecars; eviction order from their modification times.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from retvlp import cli
from retvlp.common.image_processing_fundus import decode_image, fit_to_square
from retvlp.data.cache import (
    ImageGeometry,
    build_image_cache,
    cache_summary,
    parse_size,
    pool_name,
    prune_cache,
    read_pixels,
    read_shards,
)
from retvlp.data.manifest import ManifestRecord

GEOMETRY = ImageGeometry(size=24)


def _write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i:03d}.png"
        PIL.Image.fromarray(rng.integers(0, 255, (40 + i, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _records(paths, source="m.csv") -> list[ManifestRecord]:
    return [
        ManifestRecord(
            image=str(p), text=f"t{i}", labels=(), group=None, source=source, row=i + 2, role="paired"
        )
        for i, p in enumerate(paths)
    ]


def _expected(path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return fit_to_square(decode_image(image), size=GEOMETRY.size, resample=GEOMETRY.resample)


def _pool(cache_dir: Path) -> Path:
    return cache_dir / pool_name(GEOMETRY, 32, 178_956_970)


def _entries(cache_dir: Path) -> list[str]:
    return [key for shard in read_shards(_pool(cache_dir)) for key in shard.keys]


def _build(records, cache_dir, **kw):
    kw.setdefault("min_size", 32)
    return build_image_cache(records, GEOMETRY, cache_dir, num_proc=1, show_progress=False, **kw)


def test_row_sets_share_entries_and_read_their_own_pixels(tmp_path):
    paths = _write_images(tmp_path / "img", 12)
    cache_dir = tmp_path / "cache"
    first = _build(_records(paths[:8]), cache_dir)
    second = _build(_records(paths[4:]), cache_dir)  # 4 shared, 4 new
    assert len(_entries(cache_dir)) == len(set(_entries(cache_dir))) == 12
    for view, chosen in ((first, paths[:8]), (second, paths[4:])):
        pixels = read_pixels(view.dataset, range(len(chosen)))
        for i, path in enumerate(chosen):
            np.testing.assert_array_equal(pixels[i], _expected(path))
    # a third row set of old images decodes nothing: no new shard
    shards_before = len(read_shards(_pool(cache_dir)))
    again = _build(_records(list(reversed(paths)), source="other.csv"), cache_dir)
    assert len(read_shards(_pool(cache_dir))) == shards_before
    np.testing.assert_array_equal(read_pixels(again.dataset, [0])[0], _expected(paths[-1]))
    assert first.key != second.key != again.key
    assert _build(_records(paths[:8]), cache_dir).key == first.key


def test_the_same_file_by_another_path_is_the_same_entry(tmp_path, monkeypatch):
    paths = _write_images(tmp_path / "img", 3)
    cache_dir = tmp_path / "cache"
    _build(_records(paths), cache_dir)
    monkeypatch.chdir(tmp_path)
    relative = [os.path.join("img", "..", "img", p.name) for p in paths]
    _build(_records(relative), cache_dir)
    assert len(_entries(cache_dir)) == 3


def test_a_replaced_file_is_decoded_again_and_old_views_stay_readable(tmp_path):
    paths = _write_images(tmp_path / "img", 2)
    cache_dir = tmp_path / "cache"
    old = _build(_records(paths), cache_dir)
    before = read_pixels(old.dataset, [0])[0].copy()
    PIL.Image.fromarray(np.full((50, 50, 3), 7, np.uint8)).save(paths[0])
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    new = _build(_records(paths), cache_dir)
    assert len(_entries(cache_dir)) == 3
    np.testing.assert_array_equal(read_pixels(new.dataset, [0])[0], _expected(paths[0]))
    np.testing.assert_array_equal(read_pixels(old.dataset, [0])[0], before)


def test_problems_belong_to_each_record_that_names_the_image(tmp_path):
    paths = _write_images(tmp_path / "img", 2)
    tiny = tmp_path / "img" / "tiny.png"
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tiny)
    cache_dir = tmp_path / "cache"
    _build(_records([paths[0], tiny], source="a.csv"), cache_dir)
    view = _build(_records([tiny, paths[1], tiny], source="b.csv"), cache_dir)
    assert list(view.dataset["ok"]) == [False, True, False]
    assert [(p.source, p.row, p.kind) for p in view.problems] == [
        ("b.csv", 2, "tiny-image"),
        ("b.csv", 4, "tiny-image"),
    ]
    assert len(_entries(cache_dir)) == 3


def test_an_unfinished_shard_of_a_killed_build_is_ignored(tmp_path):
    paths = _write_images(tmp_path / "img", 3)
    cache_dir = tmp_path / "cache"
    _build(_records(paths[:1]), cache_dir)
    pool = _pool(cache_dir)
    (finished,) = read_shards(pool)
    # a build killed after writing pixels but before its sidecar, and one killed mid-write
    (pool / "20200101000000-deadbeef0000.arrow").write_bytes(finished.path.read_bytes())
    (pool / ".20200101000000-cafe.arrow.tmp").write_bytes(b"partial")
    view = _build(_records(paths), cache_dir)
    assert sorted(_entries(cache_dir)) == sorted(set(_entries(cache_dir)))
    assert len(_entries(cache_dir)) == 3
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(read_pixels(view.dataset, [i])[0], _expected(path))


def _build_in_process(args):
    paths, cache_dir = args
    view = build_image_cache(
        _records(paths), GEOMETRY, cache_dir, min_size=32, num_proc=1, show_progress=False
    )
    return [read_pixels(view.dataset, [i])[0].tolist() for i in range(len(paths))]


def test_concurrent_builders_decode_each_image_once(tmp_path):
    paths = _write_images(tmp_path / "img", 16)
    cache_dir = tmp_path / "cache"
    jobs = [(paths[:12], cache_dir), (paths[4:], cache_dir), (paths[::-1], cache_dir)]
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_build_in_process, jobs)
    entries = _entries(cache_dir)
    assert len(entries) == len(set(entries)) == 16
    for (chosen, _), pixels in zip(jobs, results, strict=True):
        for i, path in enumerate(chosen):
            np.testing.assert_array_equal(np.asarray(pixels[i], np.uint8), _expected(path))


def _age(shard, seconds_ago: float) -> None:
    moment = time.time() - seconds_ago
    os.utime(shard.sidecar, (moment, moment))


def test_prune_evicts_least_recently_used_shards(tmp_path):
    paths = _write_images(tmp_path / "img", 6)
    cache_dir = tmp_path / "cache"
    for chunk in (paths[0:2], paths[2:4], paths[4:6]):
        _build(_records(chunk), cache_dir)
    shards = read_shards(_pool(cache_dir))
    assert len(shards) == 3
    by_first_key = {shard.keys[0]: shard for shard in shards}
    oldest, middle, newest = (by_first_key[_entries_of(cache_dir, p)] for p in (paths[0], paths[2], paths[4]))
    _age(oldest, 3 * 86400)
    _age(middle, 2 * 86400)
    _age(newest, 0)
    sizes = {s.path.name: s.num_bytes for s in shards}

    # unused for more than 2.5 days: only the oldest
    removed, freed = prune_cache(cache_dir, older_than_days=2.5)
    assert (removed, freed) == (1, sizes[oldest.path.name])
    assert {s.path.name for s in read_shards(_pool(cache_dir))} == {middle.path.name, newest.path.name}
    # a size limit that holds one shard: the least recently used of the two goes
    removed, _ = prune_cache(cache_dir, max_bytes=sizes[newest.path.name])
    assert removed == 1 and [s.path.name for s in read_shards(_pool(cache_dir))] == [newest.path.name]
    # a rebuild of evicted images decodes them again
    view = _build(_records(paths[:2]), cache_dir)
    np.testing.assert_array_equal(read_pixels(view.dataset, [1])[0], _expected(paths[1]))


def _entries_of(cache_dir, path) -> str:
    from retvlp.data.cache import image_key

    return image_key(str(path))


def test_a_size_limit_keeps_the_shards_the_run_uses(tmp_path):
    paths = _write_images(tmp_path / "img", 4)
    cache_dir = tmp_path / "cache"
    _build(_records(paths[:2]), cache_dir)
    for shard in read_shards(_pool(cache_dir)):
        _age(shard, 86400)
    view = _build(_records(paths[2:]), cache_dir, max_bytes=1)
    remaining = read_shards(_pool(cache_dir))
    assert len(remaining) == 1 and set(remaining[0].keys) == {_entries_of(cache_dir, p) for p in paths[2:]}
    np.testing.assert_array_equal(read_pixels(view.dataset, [0])[0], _expected(paths[2]))


def test_cache_cli_info_and_prune(tmp_path, capsys):
    paths = _write_images(tmp_path / "img", 3)
    cache_dir = tmp_path / "cache"
    _build(_records(paths), cache_dir)
    legacy = cache_dir / "0123456789abcdef01234567"  # a format-2 store of one row set
    legacy.mkdir()
    (legacy / "shard-00000.arrow").write_bytes(b"x" * 100)
    (legacy / "cache_info.json").write_text(
        json.dumps({"version": 2, "num_rows": 3, "shards": ["shard-00000.arrow"]})
    )
    assert cli.main(["cache", "info", "--cache-dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "2 pool(s)" in out and "3 image(s) (0 failed checks) in 1 shard(s)" in out and "legacy" in out
    summary = {pool.path.name: pool for pool in cache_summary(cache_dir)}
    assert summary[_pool(cache_dir).name].images == 3
    assert cli.main(["cache", "prune", "--cache-dir", str(cache_dir)]) == 2  # says what it needs
    assert "needs --max-size" in capsys.readouterr().err
    assert cli.main(["cache", "prune", "--cache-dir", str(cache_dir), "--max-size", "lots"]) == 2
    assert cli.main(["cache", "prune", "--cache-dir", str(cache_dir), "--all"]) == 0
    assert "removed 2 shard(s)" in capsys.readouterr().out
    assert read_shards(_pool(cache_dir)) == [] and not legacy.exists()


def test_legacy_stores_are_named_once_with_the_command_that_removes_them(tmp_path, caplog):
    paths = _write_images(tmp_path / "img", 1)
    cache_dir = tmp_path / "cache"
    legacy = cache_dir / "0123456789abcdef01234567"
    legacy.mkdir(parents=True)
    (legacy / "cache_info.json").write_text("{}")
    with caplog.at_level("WARNING", logger="retvlp.data.cache"):
        _build(_records(paths), cache_dir)
        _build(_records(paths), cache_dir)
    warnings = [r.getMessage() for r in caplog.records if "earlier cache format" in r.getMessage()]
    assert len(warnings) == 1 and "retvlp cache prune --all" in warnings[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("50GB", 50 * 10**9), ("1.5 GiB", int(1.5 * 2**30)), ("800M", 800 * 2**20), ("0", 0), (123, 123)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_names_the_bad_value():
    with pytest.raises(ValueError, match="'ten gigs'"):
        parse_size("ten gigs")
