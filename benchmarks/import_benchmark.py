"""How long the first things a newcomer runs take to start, as multiples of `import transformers`.

    python benchmarks/import_benchmark.py [--runs 7]

Times, in fresh interpreters (each command run `--runs` times, the commands interleaved so that a busy machine
slows them alike; the median is printed):

- `import transformers` (the reference) and `import retvlp`;
- `retvlp --help` and `python training/pretrain.py --help`;
- loading a tiny saved MaskedCLIP with `AutoModel.from_pretrained(dir, trust_remote_code=True)` in a process
  where retvlp cannot be imported (`sys.modules["retvlp"] = None`, run from a temporary folder), as a user
  without the package does; the remote-code module cache is warmed by one untimed load first;
- for comparison, the same load of a tiny transformers `CLIPModel` (stock code, no remote code).

Targets (issue 25): `import retvlp` ≤ 1.3× `import transformers`, each `--help` ≤ 2×. A wall time includes the
interpreter's start-up, identical for every row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REMOTE_LOAD = (
    "import sys; sys.modules['retvlp'] = None\n"  # `import retvlp` fails: only the checkpoint's code runs
    "from transformers import AutoModel\n"
    "AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
)


STOCK_LOAD = "import sys\nfrom transformers import AutoModel\nAutoModel.from_pretrained(sys.argv[1])\n"


def commands(checkpoint: Path, clip: Path) -> dict[str, tuple[list[str], str | None]]:
    """Row name → (command, working directory or None for the repository root)."""
    python = sys.executable
    cli = shutil.which("retvlp")
    return {
        "import transformers": ([python, "-c", "import transformers"], None),
        "import retvlp": ([python, "-c", "import retvlp"], None),
        "retvlp --help": ([cli, "--help"] if cli else [python, "-m", "retvlp.cli", "--help"], None),
        "training/pretrain.py --help": ([python, str(REPO / "training" / "pretrain.py"), "--help"], None),
        "remote-code load, no retvlp": ([python, "-c", REMOTE_LOAD, str(checkpoint)], str(checkpoint.parent)),
        "CLIPModel load (reference)": ([python, "-c", STOCK_LOAD, str(clip)], str(clip.parent)),
    }


TARGETS = {"import retvlp": 1.3, "retvlp --help": 2.0, "training/pretrain.py --help": 2.0}


def save_tiny_checkpoint(directory: Path) -> Path:
    """A tiny MaskedCLIP release saved with its remote code (the only part of the benchmark that imports retvlp)."""
    import torch

    from retvlp import MaskedCLIPConfig, MaskedCLIPModel

    torch.manual_seed(0)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                  patch_size=8, decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                  decoder_intermediate_size=32)  # fmt: skip
    text = dict(model_type="bert", vocab_size=400, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=48, max_position_embeddings=80)  # fmt: skip
    config = MaskedCLIPConfig(
        vision_config=vision, text_config=text, projection_dim=8, bridge_num_hidden_layers=1
    )
    path = directory / "tiny_maskedclip"
    MaskedCLIPModel(config).save_pretrained(path)
    return path


def save_tiny_clip(directory: Path) -> Path:
    """transformers' own CLIP at a comparable size: what loading stock code costs."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=400, hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                  patch_size=8)  # fmt: skip
    path = directory / "tiny_clip"
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(path)
    return path


def wall_time(command: list[str], cwd: str | None, environment: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd or REPO, env=environment, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{done.stderr[-2000:]}")
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (default: 7)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        checkpoint, clip = save_tiny_checkpoint(scratch), save_tiny_clip(scratch)
        environment = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(scratch / "hf_home"),  # the remote-code module cache of this benchmark only
            "RETVLP_MALLOC_TUNED": "0",  # pretrain.py: no re-exec (it would time two interpreter starts)
        }
        environment.pop("PYTHONPATH", None)
        rows = commands(checkpoint, clip)
        command, cwd = rows["remote-code load, no retvlp"]
        wall_time(command, cwd, environment)  # untimed: copies the checkpoint's code into the module cache
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.runs):
            for name, (command, cwd) in rows.items():
                times[name].append(wall_time(command, cwd, environment))
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = medians["import transformers"]
    print(f"Median wall time of {args.runs} fresh interpreters each (Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}):")  # fmt: skip
    print(f"{'':32} {'median':>8} {'× transformers':>15} {'target':>8}  runs (s)")
    for name, median in medians.items():
        target = TARGETS.get(name)
        ratio = median / reference
        verdict = "" if target is None else ("  ok" if ratio <= target else "  MISSED")
        print(
            f"{name:32} {median:7.2f}s {ratio:14.2f}× {f'≤ {target:g}×' if target else '':>8}  "
            f"{' '.join(f'{t:.2f}' for t in times[name])}{verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
