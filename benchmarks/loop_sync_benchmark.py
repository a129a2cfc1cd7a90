"""The training loop's step time on 2 processes, this tree against an earlier commit (issue 26, item 4).

Until f39894c the loop read every micro-step's loss back from the device (`.item()` after an all-reduce of a
non-finite flag) and checked the gradient norm with a second all-reduce and read-back; now it reads one flag
vector per optimizer step (non-finite loss or gradient, preemption) and the logged terms only on log steps. This
script times both loops on the same run file (this tree's `maskedclip_tiny_cpu.yaml`, the README's demo model,
evaluation off, one checkpoint at the end):

    python benchmarks/loop_sync_benchmark.py                          # baseline f39894c, 2 processes
    python benchmarks/loop_sync_benchmark.py --accumulation 4 --steps 20 60

Each tree is run through `accelerate launch --num_processes 2 <tree>/training/pretrain.py` with the tree's `src`
first on PYTHONPATH (the baseline is checked out with `git worktree` under the system's temporary folder), one
thread per process (OMP_NUM_THREADS=1: both trees then use the 2 cores alike), for two step counts; the step
time is the difference of the two wall times over the difference of the steps, so start-up, data, the final
checkpoint and the launcher cancel. Runs alternate between the trees so that drift in the machine's speed
affects both. It prints each run's wall time and, per tree, the median step time and the ratio.

Measured 2026-12-07 on the 2-core AVX2 machine (`--accumulation 4 --steps 10 30 --repeats 2`): baseline f39894c
1,787 / 1,660 ms a step, this tree 1,865 / 1,619 ms, medians 1,723 against 1,742 ms (ratio 1.011): on CPU
processes under gloo the per-micro-step read-backs cost nothing measurable next to 4 micro-batches of compute;
what the change removes is a device synchronisation per micro-step, which stalls a GPU's queue and is not
measured here. Start-up fell from 52–53 s to 44–46 s for a 10-step run (the synthetic patients drawn in
parallel, fewer imports).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_FILE = REPO / "training" / "configs" / "maskedclip_tiny_cpu.yaml"


def baseline_tree(ref: str) -> Path:
    """A detached worktree of `ref` (created once, reused)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = Path(tempfile.gettempdir()) / f"retvlp-baseline-{commit}"
    if not (tree / "src" / "retvlp").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=REPO, check=True)
    return tree


def run_once(tree: Path, steps: int, accumulation: int, output_dir: Path) -> float:
    """Wall seconds of one 2-process run of `tree`'s loop for `steps` optimizer steps."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-q",
        str(tree / "training" / "pretrain.py"), "--config", str(RUN_FILE), "--no-progress",
        f"optim.max_steps={steps}", "optim.warmup_steps=0", f"optim.gradient_accumulation_steps={accumulation}",
        f"run.output_dir={output_dir}", f"run.save_every={steps}", "run.log_every=10", "run.evaluate=false",
        f"data.cache_dir={output_dir.parent / 'cache'}",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{tree} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", default="f39894c", help="the commit to compare against")
    parser.add_argument("--steps", type=int, nargs=2, default=(20, 80), help="the two step counts")
    parser.add_argument("--accumulation", type=int, default=1, help="micro-steps per optimizer step")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    trees = {"baseline " + args.baseline: baseline_tree(args.baseline), "this tree": REPO}
    short, long = args.steps
    per_step: dict[str, list[float]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="loop-sync-") as scratch:
        for repeat in range(args.repeats):
            for name, tree in trees.items():
                walls = {}
                for steps in (short, long):
                    out = Path(scratch) / f"{name.split()[0]}-{repeat}-{steps}" / "run"
                    walls[steps] = run_once(tree, steps, args.accumulation, out)
                seconds = (walls[long] - walls[short]) / (long - short)
                per_step[name].append(seconds)
                print(
                    f"{name:>18} repeat {repeat}: {short} steps {walls[short]:.1f} s, {long} steps "
                    f"{walls[long]:.1f} s -> {1000 * seconds:.1f} ms a step",
                    flush=True,
                )
    base, this = (statistics.median(values) for values in per_step.values())
    print(
        f"\n2 processes x 1 thread, accumulation {args.accumulation}: baseline {1000 * base:.1f} ms a step, "
        f"this tree {1000 * this:.1f} ms a step, ratio {this / base:.3f} (median of {args.repeats})"
    )


if __name__ == "__main__":
    main()
