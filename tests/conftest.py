"""Shared tiny configurations: every test runs offline on 2 CPU cores in seconds."""

import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import prewarmed
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if sys.dont_write_bytecode and not sys.pycache_prefix:
    # PYTHONDONTWRITEBYTECODE=1 (this project's machines set it) made every test worker rewrite the assertions of
    # every test module again (10 s of each worker's collection) and every subprocess compile the package again.
    # The bytecode goes to one cache folder outside the tree instead; the sources and what runs are the same.
    sys.pycache_prefix = os.path.join(os.path.expanduser("~"), ".cache", "retvlp-test-pycache")
    sys.dont_write_bytecode = False
    os.environ["PYTHONPYCACHEPREFIX"] = sys.pycache_prefix
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs on every core (`-n auto`, pyproject.toml): one intra-op thread per worker, since tiny tensors
    # gain nothing from more and oversubscribed threads spin. Subprocesses the tests start inherit it.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# tqdm's monitor thread (started by the first progress bar of a worker) takes tqdm's lock every 10 s; a process
# forked from the worker at that moment (launch_ranks, run_two_processes) inherits the lock held. No monitor.
import tqdm  # noqa: E402

tqdm.tqdm.monitor_interval = 0

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
    result = prewarmed.run([sys.executable, str(script), *args], env=env, cwd=tmp_path, timeout=300)
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


def _forget_process_state() -> None:
    """In a process forked from a test worker: clear what the worker's earlier tests left in process-wide state
    that a fresh process would not have (accelerate's state, features held in memory, tqdm's lock)."""
    if "tqdm" in sys.modules:
        # A fork copies tqdm's write lock in whatever state another thread of the worker left it; a copy taken
        # while held is never released here (a forked rank hung at its end, closing a bar).
        from tqdm.std import TqdmDefaultWriteLock, tqdm

        tqdm.set_lock(TqdmDefaultWriteLock())
    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
    if "retvlp.evaluation.features" in sys.modules:
        sys.modules["retvlp.evaluation.features"].clear_feature_cache()


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
        _forget_process_state()
        worker(rank, *worker_args)

    mp.start_processes(fresh, args=args, nprocs=2, join=True, start_method="fork")


def pretrain_script():
    """training/pretrain.py loaded as a module (its `main(argv)`, `parse_args`, ...), as the entry point runs it."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "training" / "pretrain.py"
    spec = importlib.util.spec_from_file_location("pretrain_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@dataclass
class LaunchedRanks:
    """What `launch_ranks` saw, shaped like the `subprocess.CompletedProcess` of an `accelerate launch`:
    `returncode` is the first non-zero rank's exit code (0 when every rank succeeded), `stdout` / `stderr`
    every rank's output, rank 0 first; `returncodes` per rank."""

    returncode: int
    stdout: str
    stderr: str
    returncodes: list[int]


def launch_ranks(
    entry, *args, world_size: int = 2, machines: int = 1, env: dict | None = None, timeout: float = 280.0
) -> LaunchedRanks:
    """Run `entry(*args)` — a command's `main(argv)` or any function returning an exit code — on `world_size`
    processes set up as `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N` sets up its
    workers (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR / MASTER_PORT, gloo on the CPU), each
    with its own stdout and stderr, and wait for all of them. `world_size=1`: one process as `python script.py`
    runs it (no launcher variables), for a command's exit code and output. `machines=M`: the ranks as
    `accelerate launch --num_machines M --machine_rank R` starts them on M hosts (here all on localhost):
    LOCAL_RANK / LOCAL_WORLD_SIZE count the ranks of one machine and GROUP_RANK names the machine.

    The processes are forked from this test worker (see `run_two_processes`): a launched worker spends ten
    seconds of CPU importing torch, transformers and the package before its first step, the launcher a few
    more, and most multi-process tests check what the ranks compute together, not how they were started.
    The launcher itself stays under test where it is the subject (tests/test_streaming_pretrain.py's two
    machines, tests/test_newcomer_errors.py's `accelerate launch -q`). A rank that is still
    running after `timeout` seconds — a collective that waits forever — is killed and fails the test with
    every rank's output."""
    import multiprocessing
    import shutil
    import tempfile
    import time

    if world_size % machines:
        raise ValueError(f"world_size={world_size} ranks do not split over machines={machines}")
    port = free_port()
    logs = Path(tempfile.mkdtemp(prefix="ranks-"))

    def rank_main(rank: int) -> None:
        out = open(logs / f"{rank}.out", "w", buffering=1)  # left open: the process ends with os._exit
        err = open(logs / f"{rank}.err", "w", buffering=1)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout, sys.stderr = out, err
        code = 1
        try:
            _forget_process_state()
            # pytest's capture handlers would swallow the command's log lines; a launched process has none
            logging.root.handlers.clear()
            if world_size > 1:
                per_machine = world_size // machines
                os.environ.update(
                    ACCELERATE_USE_CPU="1",
                    RANK=str(rank),
                    LOCAL_RANK=str(rank % per_machine),
                    GROUP_RANK=str(rank // per_machine),
                    WORLD_SIZE=str(world_size),
                    LOCAL_WORLD_SIZE=str(per_machine),
                    MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(port),
                )
            # no re-exec with a tuned allocator: there is no script to run again
            os.environ.update(OMP_NUM_THREADS="1", RETVLP_MALLOC_TUNED="0", **(env or {}))
            torch.set_num_threads(1)
            result = entry(*args)
            code = int(result or 0)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=rank_main, args=(rank,)) for rank in range(world_size)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for rank in hung:
        processes[rank].kill()
        processes[rank].join()

    def read(suffix: str) -> str:
        return "".join((logs / f"{rank}{suffix}").read_text() for rank in range(world_size))

    stdout, stderr = read(".out"), read(".err")
    shutil.rmtree(logs, ignore_errors=True)
    if hung:
        pytest.fail(f"ranks {hung} still running after {timeout:.0f} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    codes = [process.exitcode for process in processes]
    return LaunchedRanks(next((c for c in codes if c), 0), stdout, stderr, codes)


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
