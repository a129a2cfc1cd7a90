"""2 CPU processes × b images fine-tune exactly like 1 process × 2b images (the processes set up as `accelerate
launch --multi_gpu` sets up its workers: conftest.launch_ranks)."""

import json

import numpy as np
import pytest
import torch
from conftest import launch_ranks, make_tiny_config

from retvlp import MaskedCLIPModel, MaskedCLIPProcessor
from retvlp.cli import main
from retvlp.maskedclip import FundusImageProcessor
from retvlp.tokenization import tiny_tokenizer


def _arguments(checkpoint, synthetic, tmp_path, name, batch_size):
    return [
        "evaluate", "--bootstrap", "20", "--model", f"tiny={checkpoint}", "--data", str(synthetic.paired), str(synthetic.categorical),
        "--test-data", str(synthetic.test), "--task", "finetune", "--fractions", "1.0", "--seeds", "0",
        "--max-steps", "3", "--finetune-batch-size", str(batch_size), "--no-augment", "--drop-path", "0",
        "--lr", "1e-3", "--output-dir", str(tmp_path / name), "--cache-dir", str(tmp_path / "cache"),
        "--no-progress", "--no-save-models",
    ]  # fmt: skip


def test_two_processes_match_one_process_with_the_global_batch(tmp_path, synthetic):
    torch.manual_seed(0)
    checkpoint = tmp_path / "final"
    MaskedCLIPModel(make_tiny_config()).save_pretrained(checkpoint)
    MaskedCLIPProcessor(FundusImageProcessor(size=32), tiny_tokenizer(), max_length=16).save_pretrained(
        checkpoint
    )
    assert main(_arguments(checkpoint, synthetic, tmp_path, "single", 8)) == 0

    done = launch_ranks(main, _arguments(checkpoint, synthetic, tmp_path, "double", 4))
    if done.returncode != 0:
        pytest.fail(f"2-process run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

    def probabilities(name):
        (path,) = (tmp_path / name / "predictions").glob("*finetune*.npz")
        return np.load(path)["probabilities"]

    single, double = probabilities("single"), probabilities("double")
    assert single.shape == double.shape and single.shape[0] == len(synthetic.test.read_text().splitlines())
    np.testing.assert_allclose(double, single, rtol=1e-4, atol=1e-5)
    results = json.loads((tmp_path / "double" / "results.json").read_text())
    assert results["results"][0]["task"] == "finetune"
