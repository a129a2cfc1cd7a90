"""`retvlp benchmark`: the field's public benchmark suites on local copies of the datasets, for every model given,
resumable, with one leaderboard (docs/benchmarks_public.md, "Running a suite")."""

from __future__ import annotations

import argparse
import os
import sys

from . import EXIT_FAILED, EXIT_OK, UsageError
from ._common import comma_list, model_sources


def add_parser(parser) -> None:
    from ..evaluation.protocols import FEW_SHOT_METHODS, TASKS

    parser.description = (
        "Run the RETFound suite (fine-tuning + linear probe; AUROC, AUPR, kappa for grading) and / or the "
        "FLAIR / KeepFIT suite (zero-shot, few-shot, linear probe; ACA) on the public datasets found under "
        "--data-root, for every --model (retvlp checkpoints, converted RETFound / FLAIR / KeepFIT weights, any "
        "CLIPModel folder); datasets not present are skipped and listed. Writes per-dataset reports and "
        "OUTPUT/leaderboard.{md,json,png}; a rerun skips finished (dataset, model) pairs. "
        "Exit code 0: done, 1: some pair failed, 2: usage error."
    )
    parser.add_argument(
        "--suite",
        nargs="+",
        required=True,
        metavar="retfound|flair|DATASET",
        help="suites and / or dataset names (e.g. --suite flair aptos2019)",
    )
    parser.add_argument(
        "--data-root", required=True, metavar="DIR", help="folder holding the datasets' releases"
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a model folder (save_pretrained output) or Hub id; repeat to compare models side by side",
    )
    parser.add_argument(
        "--output", default="outputs/benchmark", metavar="DIR", help="default: outputs/benchmark"
    )
    parser.add_argument(
        "--allowed-root",
        dest="allowed_roots",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder images may also live in besides --data-root (repeatable)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 seed, 1 shot, 2 fine-tuning steps, no bootstrap (numbers mean nothing)",
    )
    parser.add_argument("--force", action="store_true", help="rerun (dataset, model) pairs already finished")
    parser.add_argument("--device", help="device (default: cuda if available, else cpu)")
    group = parser.add_argument_group("overrides of the suites' settings (default: the papers')")
    group.add_argument(
        "--tasks", help=f"run only these of each suite's tasks (comma-separated; of {', '.join(TASKS)})"
    )
    group.add_argument("--seeds", help="comma-separated seeds (default: 0,1,2,3,4)")
    group.add_argument("--fractions", help="label fractions of linear probe / fine-tuning (default: 1.0)")
    group.add_argument("--shots", help="few-shot shots per class (default: 1,5,10)")
    group.add_argument("--few-shot-methods", help=f"comma-separated subset of {', '.join(FEW_SHOT_METHODS)}")
    group.add_argument("--epochs", type=float, help="fine-tuning epochs (default: 50)")
    group.add_argument("--max-steps", type=int, help="fine-tuning steps (overrides --epochs)")
    group.add_argument("--finetune-batch-size", type=int, help="fine-tuning batch size (default: 16)")
    group.add_argument("--bootstrap", type=int, help="patient-bootstrap resamples (default 1000; --quick: 0)")
    group.add_argument(
        "--calibration-fraction",
        type=float,
        default=0.0,
        help="share of the training pool held out for calibration (default 0, as the papers)",
    )
    group.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the recipes' patient-level splits where not official",
    )
    group.add_argument("--batch-size", type=int, default=64, help="feature-extraction batch size")
    group.add_argument("--save-models", action="store_true", help="keep the fine-tuned models")
    group.add_argument("--cache-dir", help="image + feature cache (default: OUTPUT/cache)")
    leak = parser.add_argument_group("leakage (issue 28: needs the harness's leakage check)")
    leak.add_argument(
        "--pretrain-manifests", nargs="+", metavar="MANIFEST", help="what the models were pretrained on"
    )
    leak.add_argument("--exclude-leaked", action="store_true", help="drop leaked test images from evaluation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def _options(args: argparse.Namespace):
    from ..benchmarks.suite import BenchmarkOptions

    def listed(value, convert, what):
        return None if value is None else comma_list(value, convert, what)

    return BenchmarkOptions(
        tasks=listed(args.tasks, str, "task"),
        seeds=listed(args.seeds, int, "seed"),
        fractions=listed(args.fractions, float, "fraction"),
        shots=listed(args.shots, int, "shots"),
        few_shot_methods=listed(args.few_shot_methods, str, "few-shot method"),
        epochs=args.epochs,
        max_steps=args.max_steps,
        finetune_batch_size=args.finetune_batch_size,
        bootstrap=args.bootstrap,
        calibration_fraction=args.calibration_fraction,
        split_seed=args.split_seed,
        quick=args.quick,
        save_models=args.save_models,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        show_progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from ..benchmarks.suite import NoDatasetError, UnknownNameError, plan, run_benchmark, suite_settings

    options = _options(args)
    try:
        planned = plan(args.suite)
        for entry in {e.suite.name: e for e in planned}.values():  # invalid overrides fail before any work
            suite_settings(entry.suite, options, cache_dir=None)
    except UnknownNameError as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not os.path.isdir(args.data_root):
        raise UsageError(f"--data-root {args.data_root} is not a folder")
    models = model_sources(args.model)
    try:
        outcome = run_benchmark(
            args.suite,
            args.data_root,
            models,
            args.output,
            options=options,
            force=args.force,
            device=args.device,
            allowed_roots=args.allowed_roots,
            pretrain_manifests=args.pretrain_manifests,
            exclude_leaked=args.exclude_leaked,
            log=lambda line: print(f"retvlp benchmark: {line}", flush=True),
        )
    except (UnknownNameError, NoDatasetError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(outcome.leaderboard["markdown"].read_text(encoding="utf-8"))
    for pair in outcome.failed:
        print(f"retvlp benchmark: {pair.dataset} / {pair.model} failed: {pair.error}", file=sys.stderr)
    return EXIT_FAILED if outcome.failed else EXIT_OK
