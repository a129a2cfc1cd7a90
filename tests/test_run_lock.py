"""One run per output directory: a live owner refuses a second trainer; a dead owner's lock is taken over."""

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_pretrain_dict

from retvlp.training import PretrainConfig, pretrain
from retvlp.training.run_lock import LOCK_FILE, RunLockedError, run_lock


def _config(tmp_path, synthetic):
    return PretrainConfig.from_dict(
        tiny_pretrain_dict(tmp_path, synthetic, optim={"max_steps": 2}, run={"save_every": 2}), source="test"
    )


def _write_lock(directory, pid, host=None):
    directory.mkdir(parents=True, exist_ok=True)
    owner = {"pid": pid, "host": host or socket.gethostname(), "started": "2026-12-02T00:00:00"}
    (directory / LOCK_FILE).write_text(json.dumps(owner))


def test_a_second_trainer_on_a_live_runs_directory_refuses_to_start(tmp_path, synthetic):
    config = _config(tmp_path, synthetic)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path / "run", sleeper.pid)
        with pytest.raises(RunLockedError, match=rf"in use by another run \(pid {sleeper.pid}"):
            pretrain(config, show_progress=False)
        assert not (tmp_path / "run" / "checkpoint-2").exists()  # nothing written
        assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == sleeper.pid  # owner kept
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_dead_owners_lock_is_taken_over_and_released_at_the_end(tmp_path, synthetic, caplog):
    config = _config(tmp_path, synthetic)
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    _write_lock(tmp_path / "run", int(finished.stdout))
    with caplog.at_level(logging.WARNING, logger="retvlp.training.run_lock"):
        result = pretrain(config, show_progress=False)
    assert result.steps == 2 and "stale lock" in caplog.text
    assert not (tmp_path / "run" / LOCK_FILE).exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombies are told apart through /proc")
def test_a_killed_owner_not_yet_reaped_is_gone(tmp_path):
    """A trainer killed with its launcher is a zombie until init reaps it (late, in containers): its lock is
    stale, though signal 0 still reaches its pid."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        os.kill(zombie.pid, 0)  # still signalable
        _write_lock(tmp_path, zombie.pid)
        with run_lock(tmp_path, is_main_process=True):
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        zombie.wait()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        _write_lock(tmp_path, sleeper.pid)
        with pytest.raises(RunLockedError):  # a live process is still an owner
            with run_lock(tmp_path, is_main_process=True):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    _write_lock(tmp_path, 1, host="some-other-node")
    with pytest.raises(RunLockedError, match="some-other-node"):
        with run_lock(tmp_path, is_main_process=True):
            pass


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path, is_main_process=True):
            assert (tmp_path / LOCK_FILE).is_file()
            raise RuntimeError("boom")
    assert not (tmp_path / LOCK_FILE).exists()
    with run_lock(tmp_path, is_main_process=False):  # other ranks never touch it
        assert not (tmp_path / LOCK_FILE).exists()
