"""Preemption: SIGTERM / SIGUSR1 end a run after the step in progress, with a checkpoint, the marker file and
the lock released; the resumed run is bit-identical to a straight one (2 processes, the signal sent to one of
them: tests/test_pretrain_multiprocess.py, which holds the straight 2-process run)."""

import json
import os
import signal
import sys
from pathlib import Path

import prewarmed
import pytest
import torch
import yaml
from conftest import SIGNALLING_DRIVER, tiny_pretrain_dict
from safetensors.torch import load_file

from retvlp.training import PREEMPTED_EXIT_CODE, PreemptedError, PretrainConfig, pretrain
from retvlp.training.checkpointing import checkpoint_steps
from retvlp.training.maskedclip_task import MaskedCLIPTask
from retvlp.training.preemption import MARKER, PreemptionWatch
from retvlp.training.run_lock import LOCK_FILE

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")


def _signal_after_step(monkeypatch, step: int, signum: int) -> None:
    """The process signals itself right after optimizer step `step`, as a scheduler would mid-run."""
    original = MaskedCLIPTask.after_optimizer_step
    calls = {"n": 0}

    def signalling(self, model):
        original(self, model)
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(MaskedCLIPTask, "after_optimizer_step", signalling)


def _weights(directory: Path) -> dict:
    return load_file(str(directory / "model.safetensors"))


def test_sigterm_checkpoints_the_step_in_progress_and_resumes_bit_for_bit(tmp_path, synthetic, monkeypatch):
    straight = pretrain(
        PretrainConfig.from_dict(tiny_pretrain_dict(tmp_path, synthetic, "straight")), show_progress=False
    )
    config = PretrainConfig.from_dict(tiny_pretrain_dict(tmp_path, synthetic, "preempted"))
    output = Path(config.run.output_dir)
    previous = signal.getsignal(signal.SIGTERM)
    # the signal lands after step 1, so step 2 is the one in progress; it is finished (not a save step: save_every 3)
    _signal_after_step(monkeypatch, 1, signal.SIGTERM)
    with pytest.raises(PreemptedError, match=r"SIGTERM after optimizer step 2.*--resume latest") as caught:
        pretrain(config, show_progress=False)
    assert caught.value.step == 2 and caught.value.checkpoint == output / "checkpoint-2"
    assert [step for step, _ in checkpoint_steps(output)] == [2]
    assert json.loads((output / MARKER).read_text())["signal"] == "SIGTERM"
    assert not (output / LOCK_FILE).exists()  # the lock is released: the requeued job can start
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is the caller's again
    assert [json.loads(x)["step"] for x in (output / "logs.jsonl").read_text().splitlines()] == [1, 2]

    monkeypatch.undo()
    resumed = pretrain(config, resume="latest", show_progress=False)
    assert resumed.steps == 6 and not (output / MARKER).exists()
    a, b = _weights(straight.output_dir / "checkpoint-6"), _weights(output / "checkpoint-6")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigusr1_stops_too_and_a_signal_at_the_last_step_just_finishes(tmp_path, synthetic, monkeypatch):
    config = PretrainConfig.from_dict(tiny_pretrain_dict(tmp_path, synthetic, "usr1", optim={"max_steps": 4}))
    _signal_after_step(monkeypatch, 1, signal.SIGUSR1)
    with pytest.raises(PreemptedError, match="SIGUSR1 after optimizer step 2"):
        pretrain(config, show_progress=False)
    monkeypatch.undo()
    last = PretrainConfig.from_dict(tiny_pretrain_dict(tmp_path, synthetic, "last", optim={"max_steps": 3}))
    _signal_after_step(monkeypatch, 2, signal.SIGTERM)
    result = pretrain(last, show_progress=False)  # the step in progress was the last: final/, no marker
    assert result.steps == 3 and result.final_dir.exists() and not (result.output_dir / MARKER).exists()


def test_watch_restores_handlers_and_ignores_other_threads():
    import threading

    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionWatch() as watch:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # the first signal is the one named
        assert watch.requested and watch.signal_name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) == before
    seen = {}

    def in_thread():
        with PreemptionWatch() as other:  # Python installs handlers in the main thread only: a no-op here
            seen["requested"] = other.requested

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == {"requested": False} and signal.getsignal(signal.SIGUSR1) == before


def test_entry_point_exits_with_the_preempted_code(tmp_path, synthetic):
    """`python training/pretrain.py` (one process): the distinct exit code and one line, no traceback."""
    raw = tiny_pretrain_dict(tmp_path, synthetic, "one", optim={"max_steps": 4})
    config_path = tmp_path / "one.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    driver = tmp_path / "driver.py"
    driver.write_text(SIGNALLING_DRIVER)
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RETVLP_MALLOC_TUNED": "0",
        "PYTHONPATH": str(REPO / "src"),
        "PREEMPT_AT_STEP": "1",
        "RANK": "1",  # the driver signals on rank 1
    }
    done = prewarmed.run(
        [sys.executable, str(driver), str(REPO / "training" / "pretrain.py"), "--config", str(config_path)],
        env=environment,
        timeout=280,
    )
    assert done.returncode == PREEMPTED_EXIT_CODE, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "preempted: stopped by SIGTERM after optimizer step 2" in done.stderr


def test_ctrl_c_is_one_line_naming_the_last_checkpoint(tmp_path, synthetic, monkeypatch, capsys):
    """KeyboardInterrupt inside the run: training/pretrain.py prints one line (where to resume) and exits 130."""
    import argparse
    import importlib.util

    import retvlp.run

    spec = importlib.util.spec_from_file_location("pretrain_entry_point", REPO / "training" / "pretrain.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config = PretrainConfig.from_dict(tiny_pretrain_dict(tmp_path, synthetic, "interrupted"))
    (Path(config.run.output_dir) / "checkpoint-3").mkdir(parents=True)
    (Path(config.run.output_dir) / "checkpoint-3" / "trainer_state.json").write_text("{}")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(retvlp.run, "pretrain_and_evaluate", interrupted)
    args = argparse.Namespace(no_progress=True, resume=None, extend=False, rerun_stages=None)
    assert script.run(config, args) == 130
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("interrupted (Ctrl-C); the last checkpoint is")
    assert "checkpoint-3 (--resume latest continues from it)" in err
