"""`accelerate launch` with 2 CPU processes × b rows trains exactly like 1 process × 2b rows.

The global-batch contrastive loss gathers embeddings and labels from both processes with gradients, and
every per-sample random draw (rows, crops, flips, masks) is made for the global batch and then sliced per
process, so the two runs see the same loss, the same gradient norm and reach the same weights.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import free_port, tiny_pretrain_dict
from safetensors.torch import load_file

from retvlp.training import PretrainConfig, pretrain

REPO = Path(__file__).resolve().parents[1]


def _launch_two_processes(config_path: Path) -> subprocess.CompletedProcess:
    """`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 training/pretrain.py --config ...`"""
    environment = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "RETVLP_MALLOC_TUNED": "0",
        "PYTHONPATH": str(REPO / "src"),
    }
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        str(REPO / "training" / "pretrain.py"), "--config", str(config_path), "--no-progress",
    ]  # fmt: skip
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=280)


def _logs(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logs.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process_with_the_global_batch(tmp_path, synthetic):
    run = dict(optim={"max_steps": 3, "gradient_accumulation_steps": 1, "warmup_steps": 0})
    single = PretrainConfig.from_dict(
        tiny_pretrain_dict(
            tmp_path,
            synthetic,
            "single",
            maskedclip={"paired_batch_size": 6, "unpaired_batch_size": 4},
            **run,
        )
    )
    single_result = pretrain(single, show_progress=False)

    raw = tiny_pretrain_dict(
        tmp_path, synthetic, "double", maskedclip={"paired_batch_size": 3, "unpaired_batch_size": 2}, **run
    )
    config_path = tmp_path / "double.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    completed = _launch_two_processes(config_path)
    assert completed.returncode == 0, completed.stderr[-4000:]

    double_dir = Path(raw["run"]["output_dir"])
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


def test_bad_data_stops_both_processes_with_the_report(tmp_path, synthetic):
    """The main process validates first; its error must release and stop the other process, not hang it."""
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"image": str(tmp_path / "missing.png"), "text": "a fundus"}) + "\n")
    raw = tiny_pretrain_dict(tmp_path, synthetic, "bad", optim={"max_steps": 1})
    raw["data"]["train"].append({"path": str(manifest)})
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    completed = _launch_two_processes(config_path)
    assert completed.returncode != 0
    assert completed.stderr.count("missing-file") >= 2  # reported by both processes
    assert "bad.jsonl" in completed.stderr
