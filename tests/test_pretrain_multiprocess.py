"""2 CPU processes × b rows train exactly like 1 process × 2b rows (the processes forked and set up as
`accelerate launch --multi_gpu` sets up its workers: conftest.launch_ranks; tests/test_streaming_pretrain.py
runs the launcher itself with two processes).

The global-batch contrastive loss gathers embeddings and labels from both processes with gradients, and
every per-sample random draw (rows, crops, flips, masks) is made for the global batch and then sliced per
process, so the two runs see the same loss, the same gradient norm and reach the same weights.
"""

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from conftest import launch_ranks, pretrain_script, tiny_pretrain_dict
from safetensors.torch import load_file

from retvlp.training import PretrainConfig, pretrain


def pretrain_on_two_processes(config_path: Path, *extra: str):
    """training/pretrain.py's `main(["--config", config_path, "--no-progress", *extra])` on 2 processes set up as
    `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2` sets up its workers
    (conftest.launch_ranks); the result has the launch's `returncode`, `stdout` and `stderr`."""
    argv = ["--config", str(config_path), "--no-progress", *extra]
    return launch_ranks(pretrain_script().main, argv)


def _pretrain_signalling_rank_1(argv: list[str], at_step: int) -> int:
    """pretrain.py's main in a launched rank, rank 1 sending itself SIGTERM from the task's hook after optimizer
    step `at_step` as a scheduler would (the multi-process counterpart of conftest.SIGNALLING_DRIVER)."""
    from retvlp.training.maskedclip_task import MaskedCLIPTask

    original, calls = MaskedCLIPTask.after_optimizer_step, {"n": 0}

    def signalling(self, model):
        original(self, model)
        calls["n"] += 1
        if calls["n"] == at_step and os.environ["RANK"] == "1":  # one process only: the other must stop too
            os.kill(os.getpid(), signal.SIGTERM)

    MaskedCLIPTask.after_optimizer_step = signalling  # in this forked rank only
    return pretrain_script().main(argv)


def _logs(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logs.jsonl").read_text().splitlines()]


RUN = dict(optim={"max_steps": 3, "gradient_accumulation_steps": 1, "warmup_steps": 0})
HALF_BATCH = {"paired_batch_size": 3, "unpaired_batch_size": 2}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, synthetic) -> Path:
    """The tiny run, straight, on 2 processes × half the batch (one run, shared by the tests below)."""
    tmp_path = tmp_path_factory.mktemp("two_processes")
    raw = tiny_pretrain_dict(tmp_path, synthetic, "double", maskedclip=HALF_BATCH, **RUN)
    config_path = tmp_path / "double.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    completed = pretrain_on_two_processes(config_path)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return Path(raw["run"]["output_dir"])


def test_two_processes_match_one_process_with_the_global_batch(tmp_path, synthetic, two_process_run):
    single = PretrainConfig.from_dict(
        tiny_pretrain_dict(
            tmp_path,
            synthetic,
            "single",
            maskedclip={"paired_batch_size": 6, "unpaired_batch_size": 4},
            **RUN,
        )
    )
    single_result = pretrain(single, show_progress=False)

    double_dir = two_process_run
    one, two = _logs(single_result.output_dir), _logs(double_dir)
    assert [e["step"] for e in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "loss_mim", "loss_clip", "loss_mfd", "grad_norm", "lr"):
            assert b[key] == pytest.approx(a[key], rel=2e-5, abs=1e-6), (a["step"], key)
    summary = json.loads((double_dir / "final" / "training_summary.json").read_text())
    assert summary["world_size"] == 2
    a = load_file(str(single_result.output_dir / "checkpoint-3" / "model.safetensors"))
    b = load_file(str(double_dir / "checkpoint-3" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=2e-5, msg=key)


def test_a_signal_to_one_of_two_processes_stops_both_at_one_step_and_resumes_exactly(
    tmp_path, synthetic, two_process_run
):
    """SIGTERM reaches rank 1 only, during step 2: both processes finish step 2, write checkpoint-2 and stop
    with the preempted exit code (preempted.json); `--resume latest` ends bit-identical to the straight run."""
    from retvlp.training import PREEMPTED_EXIT_CODE
    from retvlp.training.checkpointing import checkpoint_steps
    from retvlp.training.preemption import MARKER

    raw = tiny_pretrain_dict(tmp_path, synthetic, "preempted", maskedclip=HALF_BATCH, **RUN)
    config_path = tmp_path / "preempted.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    argv = ["--config", str(config_path), "--no-progress"]
    stopped = launch_ranks(_pretrain_signalling_rank_1, argv, 1)
    assert stopped.returncodes == [PREEMPTED_EXIT_CODE] * 2, stopped.stderr[-3000:]
    assert "preempted: stopped by SIGTERM after optimizer step 2" in stopped.stderr, stopped.stderr[-3000:]
    assert "a preemption signal on another process" in stopped.stderr  # rank 0 learnt it from rank 1
    output = Path(raw["run"]["output_dir"])
    assert [step for step, _ in checkpoint_steps(output)] == [2]
    assert json.loads((output / MARKER).read_text())["step"] == 2

    resumed = pretrain_on_two_processes(config_path, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (output / MARKER).exists()
    a = load_file(str(two_process_run / "checkpoint-3" / "model.safetensors"))
    b = load_file(str(output / "checkpoint-3" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_data_stops_both_processes_with_the_report(tmp_path, synthetic):
    """The main process validates first; its error must release and stop the other process, not hang it."""
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"image": str(tmp_path / "missing.png"), "text": "a fundus"}) + "\n")
    raw = tiny_pretrain_dict(tmp_path, synthetic, "bad", optim={"max_steps": 1})
    raw["data"]["train"].append({"path": str(manifest)})
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    completed = pretrain_on_two_processes(config_path)
    assert completed.returncode != 0 and all(completed.returncodes)
    assert completed.stderr.count("missing-file") >= 2  # reported by both processes
    assert "bad.jsonl" in completed.stderr
