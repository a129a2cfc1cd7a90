"""Shared tiny configurations: every test runs offline on 2 CPU cores in seconds."""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs on every core (`-n auto`, pyproject.toml): one intra-op thread per worker, since tiny tensors
    # gain nothing from more and oversubscribed threads spin. Subprocesses the tests start inherit it.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

from retvlp import MaskedCLIPConfig  # noqa: E402

TINY_VISION = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=32,
)
TINY_TEXT = dict(
    model_type="bert",
    vocab_size=400,
    hidden_size=24,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=48,
    max_position_embeddings=80,
    hidden_dropout_prob=0.0,  # deterministic train-mode forwards in tests
    attention_probs_dropout_prob=0.0,
)


TINY_HEADS = dict(
    bridge_num_hidden_layers=1,
    feature_decoder_hidden_size=16,
    feature_decoder_num_hidden_layers=1,
    feature_decoder_num_attention_heads=2,
    feature_decoder_intermediate_size=32,
    projection_dim=8,
)


def make_tiny_config(vision=None, text=None, **kwargs) -> MaskedCLIPConfig:
    """A MaskedCLIP config small enough for unit tests (32 px images, 16 patches)."""
    return MaskedCLIPConfig(
        vision_config={**TINY_VISION, **(vision or {})},
        text_config={**TINY_TEXT, **(text or {})},
        **{**TINY_HEADS, **kwargs},
    )


@pytest.fixture
def tiny_config():
    return make_tiny_config


@pytest.fixture
def tiny_batch():
    """4 paired samples (images, token ids, labels) and 3 unpaired images at 32 px."""
    generator = torch.Generator().manual_seed(0)
    return dict(
        pixel_values=torch.randn(4, 3, 32, 32, generator=generator),
        input_ids=torch.randint(5, 400, (4, 9), generator=generator),
        attention_mask=torch.ones(4, 9, dtype=torch.long),
        unpaired_pixel_values=torch.randn(3, 3, 32, 32, generator=generator),
        labels=torch.tensor([0, 1, 0, 2]),
    )


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """A small procedural fundus data set (24 patients, 32 px) with all four manifests."""
    from retvlp.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic") / "data", num_patients=24, image_size=32, seed=1
    )


@pytest.fixture
def hf_caplog(caplog):
    """caplog that sees transformers' warnings: its loggers do not propagate by default, and whether they do
    in this process depends on which tests ran before, so a "not in caplog.text" check could not fail."""
    root = logging.getLogger("transformers")
    propagated = root.propagate
    root.propagate = True
    try:
        yield caplog
    finally:
        root.propagate = propagated


def spec_within(manifest, *roots) -> dict:
    """A manifest spec whose images may lie under `roots` too (data-root containment: by default only the
    manifest's own folder is allowed, and test manifests in tmp_path name images of the shared synthetic set)."""
    return {"path": str(manifest), "allowed_roots": [str(root) for root in roots]}


def tiny_pretrain_dict(tmp_path, synthetic, name="run", **sections) -> dict:
    """A pretraining run description (see `retvlp.training.config`) for the tiny model on `synthetic`:
    6 optimizer steps of 2 accumulated micro-steps, 4 paired + 3 unpaired images each, checkpoints at 3 and 6."""
    text = {k: v for k, v in TINY_TEXT.items() if k not in ("model_type", "vocab_size")}
    raw = {
        "model": {
            "tokenizer": "build",
            "tokenizer_vocab_size": 300,
            "max_text_length": 32,
            "config": {"vision_config": dict(TINY_VISION), "text_config": text, **TINY_HEADS},
        },
        "data": {
            "train": [
                {"path": str(synthetic.paired)},
                {"path": str(synthetic.categorical)},
                {"path": str(synthetic.unpaired)},
            ],
            "image_size": 32,
            "cache_dir": str(tmp_path / "cache"),
            "num_workers": 0,
            "preprocessing_workers": 1,
            "horizontal_flip": True,
        },
        "maskedclip": {"paired_batch_size": 4, "unpaired_batch_size": 3},
        "optim": {"lr": 1e-3, "max_steps": 6, "warmup_steps": 2, "gradient_accumulation_steps": 2},
        "run": {
            "output_dir": str(tmp_path / name),
            "save_every": 3,
            "log_every": 1,
            "evaluate": False,
            "tensorboard": False,
            "num_threads": 1,
        },
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    if "warmup_steps" not in sections.get("optim", {}):
        fit_warmup(raw)
    return raw


def fit_warmup(raw: dict) -> dict:
    """Shorten the tiny runs' 2 warm-up steps for a run of at most 2 steps (a warm-up as long as the run is
    refused: optim.warmup_steps < optim.max_steps). For the helpers that change optim.max_steps afterwards."""
    optim = raw["optim"]
    if optim.get("max_steps") is not None and (optim.get("warmup_steps") or 0) >= optim["max_steps"]:
        optim["warmup_steps"] = optim["max_steps"] - 1
    return raw


def run_without_retvlp(script_text: str, tmp_path, *args: str) -> dict:
    """Run `script_text` in a fresh interpreter that cannot import retvlp (the script blocks it itself and
    loads checkpoints through remote code), offline and with an empty HF cache; return the JSON it prints
    last."""
    script = tmp_path / "load_remote.py"
    script.write_text(script_text)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a process group's rendezvous in multi-process tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_tiny_maskedclip(directory, seed: int = 0):
    """A tiny seeded `MaskedCLIPModel` with its processor (32 px, the offline tokenizer, 16 tokens) saved to
    `directory` as a released checkpoint; returns `(model, processor)`."""
    from retvlp import MaskedCLIPModel, MaskedCLIPProcessor
    from retvlp.maskedclip import FundusImageProcessor
    from retvlp.tokenization import tiny_tokenizer

    torch.manual_seed(seed)
    model = MaskedCLIPModel(make_tiny_config()).eval()
    processor = MaskedCLIPProcessor(FundusImageProcessor(size=32), tiny_tokenizer(), max_length=16)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor


def run_two_processes(worker, *args) -> None:
    """Run `worker(rank, *args)` in two processes (rank 0 and 1) and wait for both; a failure in either is
    raised here with its traceback.

    The processes are forked, not spawned: they inherit this worker's imported torch, transformers and retvlp
    instead of importing them again (about ten seconds per test on two cores). Forking is safe here because the
    suite runs torch single-threaded (OMP_NUM_THREADS=1 above) and nothing in the parent holds a process group;
    accelerate's process-wide state, which a fork would inherit from earlier tests, is cleared first so each
    child starts as a fresh process would."""
    import torch.multiprocessing as mp

    def fresh(rank, *worker_args):
        if "accelerate.state" in sys.modules:
            from accelerate.state import AcceleratorState, PartialState

            AcceleratorState._reset_state(reset_partial_state=True)
            PartialState._reset_state()
        worker(rank, *worker_args)

    mp.start_processes(fresh, args=args, nprocs=2, join=True, start_method="fork")


# A launcher stand-in for preemption tests: runs the given script (e.g. training/pretrain.py) after making the
# process with RANK=1 send itself SIGTERM right after optimizer step $PREEMPT_AT_STEP, as a scheduler would.
SIGNALLING_DRIVER = """
import os, runpy, signal, sys
from retvlp.training.maskedclip_task import MaskedCLIPTask

original, calls = MaskedCLIPTask.after_optimizer_step, {"n": 0}
at = int(os.environ.get("PREEMPT_AT_STEP", "0"))


def signalling(self, model):
    original(self, model)
    calls["n"] += 1
    if calls["n"] == at and os.environ.get("RANK") == "1":  # one process only: the other must stop as well
        os.kill(os.getpid(), signal.SIGTERM)


MaskedCLIPTask.after_optimizer_step = signalling
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""
