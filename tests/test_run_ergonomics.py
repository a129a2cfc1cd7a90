"""Saving without room, lengthening a run, and what a run prints (issue 14, parts 2, 5, 9 and 10).

Disk space: a save that would not fit stops before anything is written; a save that runs out of space midway
(an `OSError(ENOSPC)`, or torch's errno-less stream error on a full disk) is one "no space left on <device>
while writing <file>" error, its staging directory removed, the previous checkpoint untouched.
Extending: `--resume` into a longer run is refused unless `extend=True`; then the run continues with the
learning-rate schedule of the longer run.
Output: without a progress bar each start-up phase and each log step is one line; the logged `epoch` is the
docs' epoch (every row of every stream seen once), with each stream's own count beside it.
"""

import contextlib
import errno
import json
import logging
import shutil
from collections import namedtuple
from pathlib import Path

import accelerate
import pytest
from conftest import tiny_pretrain_dict

from retvlp.training import PretrainConfig, checkpointing, pretrain
from retvlp.training.checkpointing import (
    CheckpointError,
    DiskSpaceError,
    checkpoint_problems,
    checkpoint_steps,
    estimate_checkpoint_bytes,
)

Usage = namedtuple("Usage", "total used free")


def _config(tmp_path, synthetic, **optim):
    raw = tiny_pretrain_dict(tmp_path, synthetic, optim={"max_steps": 6, **optim})
    return PretrainConfig.from_dict(raw, source="test")


def _free_space(monkeypatch, free_by_call):
    """shutil.disk_usage as the checkpointing module sees it: the n-th call reports free_by_call(n) bytes."""
    calls = []

    def usage(path):
        calls.append(path)
        return Usage(2**40, 0, free_by_call(len(calls)))

    monkeypatch.setattr(checkpointing.shutil, "disk_usage", usage)
    return calls


def test_a_save_that_would_not_fit_stops_before_writing(tmp_path, synthetic, monkeypatch):
    config = _config(tmp_path, synthetic)
    # the first save (step 3) fits, the second (step 6) finds 1 MiB free
    _free_space(monkeypatch, lambda n: 2**40 if n == 1 else 2**20)
    with pytest.raises(DiskSpaceError) as error:
        pretrain(config, show_progress=False)
    message = str(error.value)
    assert error.value.errno == errno.ENOSPC
    assert "not enough free space on" in message and "checkpoint-6" in message
    assert "1.0 MiB free" in message and "run.keep_checkpoints" in message
    output = Path(config.run.output_dir)
    assert [step for step, _ in checkpoint_steps(output)] == [3]
    assert checkpoint_problems(output / "checkpoint-3") == []
    assert not list(output.glob(".staging-*")) and not (output / "final").exists()


def test_the_estimate_is_the_last_checkpoint_or_the_model_and_adam_moments(tmp_path):
    import torch

    model = torch.nn.Linear(10, 5)  # 55 fp32 values
    optimizer = torch.optim.AdamW(model.parameters())
    assert estimate_checkpoint_bytes(tmp_path, [model], [optimizer]) == 55 * 4 + 2 * 55 * 4
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"x" * 1000)
    assert estimate_checkpoint_bytes(tmp_path, [model], [optimizer]) == 1002


def _filling_save_state(failure):
    """accelerate's save_state that writes part of a file into the staging directory, then fails."""

    def save_state(self, output_dir=None, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "optimizer.bin").write_bytes(b"\0" * 100)
        raise failure(Path(output_dir) / "optimizer.bin")

    return save_state


@pytest.mark.parametrize(
    "failure",
    [
        lambda path: OSError(errno.ENOSPC, "No space left on device", str(path)),
        # what torch.save raises when the disk fills: no errno, no file name
        lambda path: RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4160 vs 4096"),
    ],
    ids=["ENOSPC", "torch-stream-error"],
)
def test_running_out_of_space_midway_is_named_and_cleaned_up(tmp_path, synthetic, monkeypatch, failure):
    config = _config(tmp_path, synthetic, max_steps=3)
    _free_space(monkeypatch, lambda n: 2**40 if n == 1 else 0)  # fits on the check, full after the failure
    monkeypatch.setattr(accelerate.Accelerator, "save_state", _filling_save_state(failure))
    with pytest.raises(DiskSpaceError) as error:
        pretrain(config, show_progress=False)
    message = str(error.value)
    assert message.startswith("no space left on ")
    assert "while writing " in message and "optimizer.bin" in message
    assert ".staging-checkpoint-3 was removed" in message
    output = Path(config.run.output_dir)
    assert not list(output.glob(".staging-*")) and checkpoint_steps(output) == []


def test_another_failure_midway_is_not_called_a_full_disk(tmp_path, synthetic, monkeypatch):
    config = _config(tmp_path, synthetic, max_steps=3)
    _free_space(monkeypatch, lambda n: 2**40)
    failure = lambda path: PermissionError(errno.EACCES, "Permission denied", str(path))  # noqa: E731
    monkeypatch.setattr(accelerate.Accelerator, "save_state", _filling_save_state(failure))
    with pytest.raises(PermissionError):
        pretrain(config, show_progress=False)
    assert not list(Path(config.run.output_dir).glob(".staging-*"))


# ------------------------------------------------------------------------------------------------ extend
@pytest.fixture(scope="module")
def four_step_run(tmp_path_factory, synthetic):
    tmp_path = tmp_path_factory.mktemp("extend")
    raw = tiny_pretrain_dict(tmp_path, synthetic, optim={"max_steps": 4}, run={"save_every": 2})
    result = pretrain(PretrainConfig.from_dict(raw, source="test"), show_progress=False)
    assert result.steps == 4
    return tmp_path, raw, result


def _log(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "logs.jsonl").read_text().splitlines()]


def _longer(four_step_run, tmp_path, max_steps):
    _, raw, result = four_step_run
    run = tmp_path / "run"
    shutil.copytree(result.output_dir, run)
    longer = json.loads(json.dumps(raw))
    longer["optim"]["max_steps"] = max_steps
    longer["run"]["output_dir"] = str(run)
    return PretrainConfig.from_dict(longer, source="test")


def test_resuming_into_a_longer_run_needs_extend(four_step_run, tmp_path):
    config = _longer(four_step_run, tmp_path, 6)
    with pytest.raises(CheckpointError, match=r"run of 4 steps; this config gives 6.*--extend"):
        pretrain(config, resume="latest", show_progress=False)


def test_extend_below_the_checkpoint_step_is_refused(four_step_run, tmp_path):
    config = _longer(four_step_run, tmp_path, 3)
    with pytest.raises(CheckpointError, match=r"at step 4.*raise optim.max_steps"):
        pretrain(config, resume="latest", show_progress=False, extend=True)


def test_extend_continues_with_the_longer_runs_schedule(four_step_run, tmp_path, synthetic):
    base, raw, _ = four_step_run
    config = _longer(four_step_run, tmp_path, 6)
    result = pretrain(config, resume="latest", show_progress=False, extend=True)
    assert result.steps == 6 and (result.final_dir / "model.safetensors").is_file()
    extended = _log(result.output_dir)
    assert [entry["step"] for entry in extended] == [1, 2, 3, 4, 5, 6]
    # the straight 6-step run: the same schedule from step 5 on (warm-up 2, then linear decay over 6 steps)
    straight_raw = json.loads(json.dumps(raw))
    straight_raw["optim"]["max_steps"] = 6
    straight_raw["run"]["output_dir"] = str(tmp_path / "straight")
    straight = pretrain(PretrainConfig.from_dict(straight_raw, source="test"), show_progress=False)
    reference = {entry["step"]: entry["lr"] for entry in _log(straight.output_dir)}
    four = {entry["step"]: entry["lr"] for entry in _log(base / "run")}
    for step in (5, 6):
        assert extended[step - 1]["lr"] == pytest.approx(reference[step], rel=1e-12)
    for step in (1, 2, 3, 4):  # the first four steps kept the 4-step run's log
        assert extended[step - 1]["lr"] == four[step]
    state = json.loads((result.output_dir / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["total_steps"] == 6


# ------------------------------------------------------------------------------------- output, epochs
def _rows(path):
    text = Path(path).read_text().splitlines()
    return len(text) - 1 if str(path).endswith(".csv") else len(text)


def test_without_a_bar_each_phase_and_log_step_is_a_line(tmp_path, synthetic, caplog):
    config = _config(tmp_path, synthetic)
    with caplog.at_level(logging.INFO, logger="retvlp"):
        pretrain(config, show_progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "retvlp.training"]
    assert any(line.startswith("Validating and caching ") for line in lines)
    assert any(line.startswith("Building the maskedclip model (new weights)") for line in lines)
    assert any(line.startswith("Training steps 1-6 of 6: 14 images per step") for line in lines)
    steps = [line for line in lines if line.startswith("pretrain step ")]
    assert [line.split()[2] for line in steps] == [f"{s}/6" for s in range(1, 7)]  # log_every 1
    assert all(" loss " in line and " lr " in line and "epoch_paired=" in line for line in steps)


def test_the_logged_epoch_counts_the_slowest_stream(tmp_path, synthetic):
    config = _config(tmp_path, synthetic)
    result = pretrain(config, show_progress=False)
    paired = _rows(synthetic.paired) + _rows(synthetic.categorical)  # categorical rows become prompt pairs
    unpaired = _rows(synthetic.unpaired)
    for entry in _log(result.output_dir):
        micro = 2 * entry["step"]  # 2 accumulated micro-steps per optimizer step
        assert entry["epoch_paired"] == pytest.approx(micro * 4 / paired, abs=1e-4)
        assert entry["epoch_unpaired"] == pytest.approx(micro * 3 / unpaired, abs=1e-4)
        assert entry["epoch"] == min(entry["epoch_paired"], entry["epoch_unpaired"])


def test_entry_points_hide_transformers_load_reports_unless_verbose(tmp_path, monkeypatch, hf_caplog):
    """A real load report: the pretraining model read from a released checkpoint lists its decoders as missing.
    Hidden inside `load_reports_hidden` (unless RETVLP_VERBOSE=1), shown again after it."""
    from conftest import make_tiny_config

    from retvlp import MaskedCLIPForPreTraining, MaskedCLIPModel
    from retvlp.runtime import load_reports_hidden

    caplog = hf_caplog
    MaskedCLIPModel(make_tiny_config()).save_pretrained(tmp_path / "model")

    def reported(verbose: str, hidden: bool) -> bool:
        monkeypatch.setenv("RETVLP_VERBOSE", verbose)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="transformers"):
            with load_reports_hidden() if hidden else contextlib.nullcontext():
                MaskedCLIPForPreTraining.from_pretrained(tmp_path / "model")
        return "LOAD REPORT" in caplog.text

    assert reported("0", hidden=False)  # control: the report is there
    assert not reported("0", hidden=True)
    assert reported("1", hidden=True)
    assert reported("0", hidden=False)  # the filter is gone after the block
