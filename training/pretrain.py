"""Pretrain a retvlp model: `accelerate launch training/pretrain.py [--config run.yaml] [--resume latest]`.

With no arguments it runs the embedded demo (`training/configs/maskedclip_tiny_cpu.yaml`): it generates
the procedural synthetic fundus data into a cache, pretrains a tiny MaskedCLIP on the CPU in a few
minutes, evaluates zero-shot and linear-probe accuracy on the held-out split against the same encoder at
its random initial weights, prints the table, and leaves `<output_dir>/final`, which
`AutoModel.from_pretrained` loads.

Examples:
    accelerate launch -q training/pretrain.py                                # the demo
    accelerate launch training/pretrain.py --config training/configs/maskedclip_vitl16.yaml
    accelerate launch training/pretrain.py --config training/configs/keepfit_resnet50.yaml   # KeepFIT V2, whole
    accelerate launch training/pretrain.py --config run.yaml --rerun-stages text_mlm   # retrain a changed stage
    accelerate launch training/pretrain.py --config run.yaml --resume latest
    accelerate launch training/pretrain.py --config run.yaml optim.max_steps=100 data.on_bad_sample=skip
    accelerate launch training/pretrain.py --config run.yaml --allowed-root /data/fundus   # images elsewhere
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 training/pretrain.py   # 2 CPU procs

Flags and section.key=value overrides may come in any order. `accelerate launch -q` (--quiet) shows an error
without the launcher's own traceback after it; the exit code is non-zero either way (1: the config, the data
or the run failed; 2: a usage error).
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "maskedclip_tiny_cpu.yaml"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="run YAML (default: the CPU demo)")
    parser.add_argument(
        "--model",
        default=None,
        # Checked against the family registry (retvlp.families) when the config is validated, with the
        # registered names in the error.
        help="model family (overrides model.family): maskedclip, keepfit, ibq-tokenizer, text-mlm or any "
        "family registered in retvlp.families",
    )
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint directory")
    parser.add_argument(
        "--extend",
        action="store_true",
        help="with --resume: continue a run to a larger optim.max_steps / epochs than it was started with "
        "(the learning-rate schedule becomes that of the longer run; docs/training.md, 'Extending a run')",
    )
    parser.add_argument(
        "--rerun-stages",
        default=None,
        metavar="NAME[,NAME]|all",
        help="train these stages of the run file's `stages:` again (their folders are emptied) although an "
        "output exists; a stage whose config or data changed is refused without it (docs/training.md, "
        "'Whole recipes')",
    )
    parser.add_argument("--output-dir", default=None, help="overrides run.output_dir")
    parser.add_argument(
        "--on-bad-sample", default=None, choices=["error", "skip"], help="overrides data.on_bad_sample"
    )
    parser.add_argument(
        "--allowed-root",
        dest="allowed_roots",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder images may live in besides each manifest's folder (repeatable; adds to "
        "data.allowed_roots, as --allowed-root of retvlp validate-data / evaluate)",
    )
    parser.add_argument(
        "--allow-outside-data-roots",
        action="store_true",
        help="let manifests point anywhere: no data-root containment check (data.allow_outside_data_roots)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars: a log line per logging step and per start-up phase (the default when stderr "
        "is not a terminal)",
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.max_steps=10")
    # Intermixed: flags may follow the overrides (`... optim.max_steps=20 --no-progress`).
    return parser.parse_intermixed_args(argv)


def override_list(args) -> list[str]:
    """The `section.key=value` overrides of the command line, the flags that stand for one included."""
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model.family={args.model}")
    if args.output_dir:
        overrides.append(f"run.output_dir={args.output_dir}")
    if args.on_bad_sample:
        overrides.append(f"data.on_bad_sample={args.on_bad_sample}")
    if args.allow_outside_data_roots:
        overrides.append("data.allow_outside_data_roots=true")
    return overrides


def load_config(args):
    """The run config: the YAML, the overrides and the flags (`--allowed-root` adds to data.allowed_roots),
    checked. Raises `ConfigError` naming the file, section and key."""
    from retvlp.training.config import PretrainConfig

    config = PretrainConfig.from_yaml(args.config)
    config.apply_overrides(override_list(args))
    if args.allowed_roots:
        config.data.allowed_roots = [*config.data.allowed_roots, *args.allowed_roots]
        config.validate()
    return config


def main(argv=None) -> int:
    started = time.perf_counter()
    # Arguments first: --help and usage errors end here, before the restart below and any heavy import.
    args = parse_args(argv)
    if args.extend and not args.resume:
        print(
            "error: --extend continues a run: give it with --resume latest (or a checkpoint).",
            file=sys.stderr,
        )
        return 2
    from retvlp.runtime import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one INFO line per saved file otherwise
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from retvlp.training.config import ConfigError

    try:
        # The config is read and checked before the training loop, accelerate and the evaluation code are
        # imported: a typo ends sooner.
        config = load_config(args)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        return report_error(error)
    return run(config, args, started)


def run(config, args, started: float | None = None) -> int:
    """Train (and evaluate) the checked `config`; print the results table, where the model is and where the
    time went (`started`: the process's `time.perf_counter()` at entry, so start-up is counted too)."""
    from retvlp.data.validation import DataValidationError
    from retvlp.evaluation.quick import format_results_table
    from retvlp.families import get_family
    from retvlp.run import pretrain_and_evaluate
    from retvlp.runtime import load_reports_hidden
    from retvlp.training import (
        PREEMPTED_EXIT_CODE,
        ConfigError,
        ContrastiveCollapseError,
        NonFiniteLossError,
        PreemptedError,
    )
    from retvlp.training.checkpointing import DiskSpaceError

    try:
        # a bar redrawn with carriage returns is noise in a log file: plain lines when not on a terminal
        show_progress = not args.no_progress and sys.stderr.isatty()
        with load_reports_hidden():  # RETVLP_VERBOSE=1 shows transformers' per-load key tables
            result = pretrain_and_evaluate(
                config,
                resume=args.resume,
                show_progress=show_progress,
                extend=args.extend,
                rerun_stages=args.rerun_stages,
            )
    except PreemptedError as error:  # SIGTERM / SIGUSR1: a checkpoint is written; a requeued job resumes
        print(f"\npreempted: {error}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        from retvlp.training.checkpointing import latest_checkpoint

        last = latest_checkpoint(config.run.output_dir)
        where = (
            f"the last checkpoint is {last} (--resume latest continues from it)"
            if last
            else "no checkpoint yet"
        )
        print(f"\ninterrupted (Ctrl-C); {where}.", file=sys.stderr)
        return 130
    except (
        ConfigError,
        ContrastiveCollapseError,
        DataValidationError,
        DiskSpaceError,
        NonFiniteLossError,
        FileNotFoundError,
        ValueError,
    ) as error:
        return report_error(error)
    if result.evaluation is not None:
        print("\n" + format_results_table(result.evaluation))
    if result.steps and result.final_dir.exists():
        loader = get_family(config.model.family).loader_hint
        print(f"\nfinal model: {result.final_dir}  ({loader})")
    if result.times.seconds:
        wall = time.perf_counter() - started if started is not None else None
        print(f"\ntime: {result.times.summary(wall)}")
    return 0


def report_error(error: Exception) -> int:
    """Input problems (config, data, paths, shapes) end with their message, not a traceback; set
    RETVLP_DEBUG=1 to see where one came from."""
    if os.environ.get("RETVLP_DEBUG"):
        raise error
    print(f"\nerror: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
