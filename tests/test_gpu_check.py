"""benchmarks/gpu_check.py --cpu-smoke runs every section of the GPU check end to end at tiny sizes on the
CPU (the figures themselves are only meaningful on a GPU; no timing is asserted)."""

import os
import sys
from pathlib import Path

import prewarmed

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke_runs_every_section():
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    completed = prewarmed.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu-smoke"],
        env=environment,
        timeout=600,
    )
    out = completed.stdout
    assert completed.returncode == 0, (out + completed.stderr)[-4000:]
    for section in (
        "loss parity",
        "bf16 autocast step",
        "SDPA backends",
        "host syncs per step",
        "training steps",
    ):
        assert f"== {section}" in out
    for term in (
        "loss_mim", "loss_clip", "loss_mfd", "loss_itc_categorical", "loss_itc_elite", "loss_semantic",
        "loss_appearance", "reconstruction_loss", "quantization_loss", "entropy_loss",
    ):  # fmt: skip
        assert term in out, term
    assert "E_I encoder (masked and full passes)" in out and "flash (CPU)" in out
    assert "MaskedCLIPForPreTraining, compiled: TorchDynamo compiled 1 graph(s)" in out
    assert "0 graph break(s)" in out
    assert "MFU ratio" in out and "failed sections: none" in out
