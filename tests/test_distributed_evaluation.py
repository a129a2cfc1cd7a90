"""2 CPU processes (set up as `accelerate launch --multi_gpu` sets up its workers: conftest.launch_ranks) evaluate
exactly like 1 process, each image encoded once in all.

The feature extraction of `retvlp evaluate` shards the records over the processes in whole batches and
gathers the features back in the original order (`evaluation/distributed.py`); the row count here (33) is odd
and its 9 batches of 4 split 5 / 4, so the shares are uneven. `RETVLP_DEBUG_FEATURE_COUNTS` makes every
process log how many images it encoded and whether it wrote the feature cache.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import launch_ranks, make_tiny_config
from safetensors.numpy import load_file

from retvlp import MaskedCLIPModel, MaskedCLIPProcessor
from retvlp.cli import main
from retvlp.evaluation.distributed import SINGLE, Processes, evaluation_processes, shard_rows
from retvlp.evaluation.features import ImageFeatures, _joined, clear_feature_cache
from retvlp.maskedclip import FundusImageProcessor
from retvlp.tokenization import tiny_tokenizer

BATCH = 4
MODELS = ("tiny features", "random_init features")


# --------------------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize(
    ("num_rows", "batch_size", "count"), [(33, 4, 2), (34, 4, 2), (8, 4, 2), (5, 4, 3), (0, 4, 2), (17, 3, 4)]
)
def test_shards_are_contiguous_runs_of_whole_batches_covering_every_row_once(num_rows, batch_size, count):
    shares = [shard_rows(num_rows, batch_size, Processes(count, index)) for index in range(count)]
    rows = np.concatenate([np.arange(num_rows)[share] for share in shares])
    np.testing.assert_array_equal(rows, np.arange(num_rows))  # all rows, once, in order
    # batch boundaries as in one process (an empty share sits at the end)
    assert all(share.start % batch_size == 0 or share.start == num_rows for share in shares)
    batches = [-(-(share.stop - share.start) // batch_size) for share in shares]
    assert max(batches) - min(batches) <= 1


def test_gathered_shares_join_in_order_and_skip_empty_ones():
    first = ImageFeatures(probe=np.ones((2, 3), np.float32), embeds=np.ones((2, 4), np.float32))
    second = ImageFeatures(probe=np.zeros((1, 3), np.float32), embeds=np.zeros((1, 4), np.float32))
    joined = _joined([first, second, None])
    assert joined.probe[:, 0].tolist() == [1, 1, 0] and joined.embeds.shape == (3, 4)
    assert _joined([None, first]) is first
    with pytest.raises(ValueError, match="No images"):
        _joined([None, None])


def test_one_process_needs_no_accelerate_state(monkeypatch):
    from accelerate import PartialState

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = dict(PartialState._shared_state)
    assert evaluation_processes() == SINGLE
    assert dict(PartialState._shared_state) == before


# -------------------------------------------------------------------------------------------- 2 vs 1 process
def _odd_test_manifest(synthetic, tmp_path) -> Path:
    """The synthetic test split less its last row (33 records in all, with the 2 × 11 of the pool)."""
    rows = [json.loads(line) for line in synthetic.test.read_text().splitlines()][:-1]
    for row in rows:
        row["image"] = str(synthetic.root / row["image"])
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def _arguments(checkpoint, synthetic, test_manifest, tmp_path, name):
    return [
        "evaluate", "--bootstrap", "20", "--model", f"tiny={checkpoint}", "--random-init",
        "--data", str(synthetic.paired), str(synthetic.categorical), "--test-data", str(test_manifest),
        "--allowed-root", str(synthetic.root), "--task", "zero-shot,linear-probe,few-shot",
        "--fractions", "0.5,1", "--seeds", "0,1", "--shots", "1", "--few-shot-methods", "tip-adapter",
        "--batch-size", str(BATCH), "--output-dir", str(tmp_path / name / "report"),
        "--cache-dir", str(tmp_path / name / "cache"), "--no-progress",
    ]  # fmt: skip


def _counts(directory: Path) -> dict[int, list[dict]]:
    """Per rank, the extractions it logged (`RETVLP_DEBUG_FEATURE_COUNTS`)."""
    logs = sorted(directory.glob("feature-counts-rank*.jsonl"))
    return {
        int(log.stem.removeprefix("feature-counts-rank")): [
            json.loads(x) for x in log.read_text().splitlines()
        ]
        for log in logs
    }


def _logged(entries: list[dict]) -> list[tuple]:
    return [(e["description"], e["processes"], e["images"], e["wrote_cache"]) for e in entries]


def _results(tmp_path: Path, name: str) -> dict:
    results = json.loads((tmp_path / name / "report" / "results.json").read_text())
    results["settings"].pop("cache_dir")  # the only difference: each run has its own cache
    return results


def _features(tmp_path: Path, name: str) -> dict[str, dict[str, np.ndarray]]:
    return {path.name: load_file(str(path)) for path in (tmp_path / name / "cache" / "features").iterdir()}


def _run_one_process(arguments, counts_dir: Path, monkeypatch) -> None:
    from accelerate import PartialState

    monkeypatch.setenv("RETVLP_DEBUG_FEATURE_COUNTS", str(counts_dir))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    clear_feature_cache()
    before, threads = dict(PartialState._shared_state), torch.get_num_threads()
    torch.set_num_threads(1)  # as in the launched processes (OMP_NUM_THREADS=1)
    try:
        assert main(arguments) == 0
    finally:
        torch.set_num_threads(threads)
    assert dict(PartialState._shared_state) == before  # no accelerate state when not launched


def _run_two_processes(arguments, counts_dir: Path):
    """`retvlp evaluate` on 2 processes set up as `accelerate launch --multi_gpu` sets up its workers."""
    done = launch_ranks(main, arguments, env={"RETVLP_DEBUG_FEATURE_COUNTS": str(counts_dir)})
    if done.returncode != 0:
        pytest.fail(f"2-process run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def test_two_processes_share_the_encoding_and_match_one_process(tmp_path, synthetic, monkeypatch):
    torch.manual_seed(1)  # not the random_init baseline's seed (0): two models, two extractions
    checkpoint = tmp_path / "final"
    MaskedCLIPModel(make_tiny_config()).save_pretrained(checkpoint)
    MaskedCLIPProcessor(FundusImageProcessor(size=32), tiny_tokenizer(), max_length=16).save_pretrained(
        checkpoint
    )
    test_manifest = _odd_test_manifest(synthetic, tmp_path)
    rows = 11 + 11 + len(test_manifest.read_text().splitlines())
    assert rows == 33 and -(-rows // BATCH) == 9  # odd rows; 9 batches: 5 for rank 0 (20 rows), 4 for rank 1

    _run_one_process(
        _arguments(checkpoint, synthetic, test_manifest, tmp_path, "one"), tmp_path / "c1", monkeypatch
    )
    done = _run_two_processes(
        _arguments(checkpoint, synthetic, test_manifest, tmp_path, "two"), tmp_path / "c2"
    )

    # (b) every image encoded once in all: rank 0 its 5 batches, rank 1 the other 4; the cache written once.
    one, two = _counts(tmp_path / "c1"), _counts(tmp_path / "c2")
    assert sorted(one) == [0] and sorted(two) == [0, 1]
    assert _logged(one[0]) == [(m, 1, 33, True) for m in MODELS]
    assert _logged(two[0]) == [(m, 2, 20, True) for m in MODELS]
    assert _logged(two[1]) == [(m, 2, 13, False) for m in MODELS]

    # (a) the same features, bit for bit and in the same order, and the same results and report files.
    features_one, features_two = _features(tmp_path, "one"), _features(tmp_path, "two")
    assert len(features_one) == len(MODELS) and features_two.keys() == features_one.keys()
    for name, tensors in features_one.items():
        assert tensors["probe"].shape[0] == rows
        for tensor, value in tensors.items():
            np.testing.assert_array_equal(features_two[name][tensor], value)
    assert _results(tmp_path, "two") == _results(tmp_path, "one")
    report_one, report_two = tmp_path / "one" / "report", tmp_path / "two" / "report"
    assert sorted(p.relative_to(report_two) for p in report_two.rglob("*")) == sorted(
        p.relative_to(report_one) for p in report_one.rglob("*")
    )
    for path in (report_one / "predictions").glob("*.npz"):
        with np.load(path) as a, np.load(report_two / "predictions" / path.name) as b:
            assert a.files == b.files
            for key in a.files:
                np.testing.assert_array_equal(b[key], a[key])
    assert done.stdout.count("Report:") == 1  # only the main process reports
