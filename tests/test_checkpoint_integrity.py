"""Checkpoint integrity: every checkpoint carries a manifest of sizes and SHA-256 sums; a truncated, emptied,
deleted or altered file is named on resume, and `--resume latest` falls back to the newest checkpoint that
passes."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from conftest import launch_ranks, pretrain_script, tiny_pretrain_dict
from safetensors.torch import load_file

from retvlp.training import PretrainConfig, pretrain
from retvlp.training.checkpointing import (
    MANIFEST_FILE,
    STATE_FILE,
    CheckpointError,
    checkpoint_problems,
    resolve_resume,
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic):
    """A 6-step tiny run with checkpoints at steps 3 and 6 (and its straight-run final weights)."""
    tmp_path = tmp_path_factory.mktemp("integrity")
    config = PretrainConfig.from_dict(tiny_pretrain_dict(tmp_path, synthetic), source="test")
    result = pretrain(config, show_progress=False)
    return tmp_path, config, result


def _copy_run(finished_run, tmp_path):
    source = finished_run[2].output_dir
    target = tmp_path / "run"
    shutil.copytree(source, target)
    return target


def test_every_checkpoint_file_is_in_its_manifest(finished_run):
    for step in (3, 6):
        checkpoint = finished_run[2].output_dir / f"checkpoint-{step}"
        files = json.loads((checkpoint / MANIFEST_FILE).read_text())["files"]
        on_disk = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
        assert set(files) == on_disk - {MANIFEST_FILE}
        assert {"model.safetensors", "optimizer.bin", STATE_FILE} <= set(files)
        assert checkpoint_problems(checkpoint) == []


def _truncate(path, size=None):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if size is None else size])


def _flip(path, offset=4096, count=64):
    data = bytearray(path.read_bytes())
    offset = min(offset, len(data) - count)
    data[offset : offset + count] = bytes(255 - b for b in data[offset : offset + count])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, file, reason",
    [
        (_truncate, "model.safetensors", "bytes,"),
        (lambda p: _truncate(p, 0), "model.safetensors", "has 0 bytes"),
        (_flip, "model.safetensors", "does not match its checksum"),
        (lambda p: p.unlink(), "model.safetensors", "is missing"),
        (_truncate, "optimizer.bin", "bytes,"),
        (_truncate, STATE_FILE, "bytes,"),
    ],
    ids=["truncated", "emptied", "64-bytes-flipped", "deleted", "optimizer-truncated", "state-truncated"],
)
def test_damaged_newest_checkpoint_is_named_and_latest_falls_back(
    finished_run, tmp_path, caplog, damage, file, reason
):
    run = _copy_run(finished_run, tmp_path)
    damage(run / "checkpoint-6" / file)
    problems = checkpoint_problems(run / "checkpoint-6")
    assert len(problems) == 1 and problems[0].startswith(file) and reason in problems[0]
    with pytest.raises(CheckpointError, match=f"{file}.*{reason}|{reason}"):
        resolve_resume(str(run / "checkpoint-6"), run)
    with caplog.at_level(logging.WARNING, logger="retvlp.training.checkpointing"):
        assert resolve_resume("latest", run) == run / "checkpoint-3"
    assert (
        "checkpoint-6 fails its integrity check" in caplog.text
        and "resuming from checkpoint-3" in caplog.text
    )


def test_no_passing_checkpoint_is_one_named_error(finished_run, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    _flip(run / "checkpoint-6" / "model.safetensors")
    (run / "checkpoint-3" / "optimizer.bin").unlink()
    with pytest.raises(CheckpointError) as error:
        resolve_resume("latest", run)
    message = str(error.value)
    assert "checkpoint-6 fails" in message and "checkpoint-3 fails" in message
    assert "optimizer.bin is missing" in message


def test_resume_latest_with_nothing_to_resume_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="retvlp.training.checkpointing"):
        assert resolve_resume("latest", tmp_path) is None
    assert "no checkpoint" in caplog.text and "starting from step 0" in caplog.text


def test_fallback_resume_finishes_the_run_like_the_straight_run(finished_run, tmp_path):
    """The newest checkpoint is corrupt: the run resumes from step 3 and ends with the straight run's weights."""
    _, config, straight = finished_run
    run = _copy_run(finished_run, tmp_path)
    _flip(run / "checkpoint-6" / "model.safetensors")
    shutil.rmtree(run / "final")
    resumed_config = PretrainConfig.from_dict(
        {**config.to_dict(), "run": {**config.to_dict()["run"], "output_dir": str(run)}}, source="test"
    )
    result = pretrain(resumed_config, resume="latest", show_progress=False)
    assert result.steps == 6
    expected = load_file(str(straight.final_dir / "model.safetensors"))
    resumed = load_file(str(result.final_dir / "model.safetensors"))
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


def test_cli_reports_a_damaged_checkpoint_without_a_traceback(finished_run, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    _truncate(run / "checkpoint-6" / "model.safetensors", 0)
    config = finished_run[1].to_dict()
    config["run"]["output_dir"] = str(run)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    argv = ["--config", str(path), "--resume", str(run / "checkpoint-6")]
    result = launch_ranks(pretrain_script().main, argv, world_size=1)  # a process of its own, forked
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "model.safetensors has 0 bytes" in result.stderr


def _forge_optimizer_state(checkpoint: Path) -> None:
    """Replace optimizer.bin by a torch file that unpickles only with arbitrary code allowed, and forge its
    manifest entry too: the checksums pass, the loading (weights_only=True) refuses."""
    import argparse
    import hashlib

    target = checkpoint / "optimizer.bin"
    torch.save({"state": argparse.Namespace(payload="not a tensor")}, target)
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
    manifest["files"]["optimizer.bin"] = {
        "bytes": target.stat().st_size,
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
    }
    (checkpoint / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_a_forged_file_that_passes_its_checksum_falls_back_like_a_corrupt_one(finished_run, tmp_path, caplog):
    _, config, straight = finished_run
    run = _copy_run(finished_run, tmp_path)
    _forge_optimizer_state(run / "checkpoint-6")
    assert checkpoint_problems(run / "checkpoint-6") == []  # the forgery passes the integrity check
    shutil.rmtree(run / "final")
    raw = config.to_dict()
    raw["run"]["output_dir"] = str(run)
    resumed_config = PretrainConfig.from_dict(raw, source="test")
    with pytest.raises(CheckpointError, match=r"checkpoint-6 cannot be read \(UnpicklingError"):
        pretrain(resumed_config, resume=str(run / "checkpoint-6"), show_progress=False)
    with caplog.at_level(logging.WARNING, logger="retvlp.training.checkpointing"):
        result = pretrain(resumed_config, resume="latest", show_progress=False)
    assert "checkpoint-6 cannot be read (UnpicklingError" in caplog.text
    assert "resuming from checkpoint-3" in caplog.text
    expected = load_file(str(straight.final_dir / "model.safetensors"))
    resumed = load_file(str(result.final_dir / "model.safetensors"))
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)


def test_only_forged_checkpoints_is_one_named_error(finished_run, tmp_path):
    _, config, _ = finished_run
    run = _copy_run(finished_run, tmp_path)
    for step in (3, 6):
        _forge_optimizer_state(run / f"checkpoint-{step}")
    raw = config.to_dict()
    raw["run"]["output_dir"] = str(run)
    with pytest.raises(CheckpointError, match="checkpoint-6 cannot be read.*checkpoint-3 cannot be read"):
        pretrain(PretrainConfig.from_dict(raw, source="test"), resume="latest", show_progress=False)
