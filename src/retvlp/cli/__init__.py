"""The `retvlp` command line.

    retvlp validate-data MANIFEST [MANIFEST ...] [options]
    retvlp prepare-data MANIFEST [MANIFEST ...] --output DIR [--shard-size N] [--rank R --world-size W] [options]
    retvlp cache info|prune [--max-size SIZE | --older-than DAYS | --all]
    retvlp push FOLDER --repo-id USER/NAME [--evaluation results.json] [--base-model ID] [--space-app] [--dry-run DIR]
    retvlp evaluate --model DIR|HUB_ID [--model NAME=DIR ...] --data MANIFEST|demo --task zero-shot,... [options]
    retvlp check-leakage --pretrain MANIFEST... --eval MANIFEST... [--output DIR] [--model DIR] [--fail-on-leak]
    retvlp export MODEL --format torch-export|onnx --tower image [--tower text] [--classes A,B,...] --output DIR
    retvlp benchmark --suite retfound|flair|DATASET... --data-root DIR --model NAME=PATH... --output DIR [--quick]
    retvlp demo MODEL [--classes A,B,...] [--coverage 0.9] [--port N]

One module per subcommand (`validate_data`, `prepare_data`, `cache`, `evaluate`, `check_leakage`, `push`,
`export`, `benchmark`, `demo`), each with
`add_parser(parser)`, which adds the subcommand's description and options and sets `handler` to the module's
`run(args)`; `_common` holds what several of them share. A subcommand's module is imported only when its
options are built, and `main` builds only those of the command it runs, so `retvlp --help` imports none of the
data and evaluation code. `main` parses, dispatches and turns usage problems into exit code 2. Exit codes:
0 success, 1 the data (or the result) has errors, 2 usage error (bad option, manifest not found, column
missing, ...). `python -m retvlp.cli` runs the same `main`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with the command line or its input files: reported without a traceback, exit code 2."""


# name → (one-line help, the module of this package adding the subcommand's description and options)
_COMMANDS = {
    "validate-data": ("check manifests and every image before training", "validate_data"),
    "prepare-data": (
        "validate, decode and resize manifests once into tar shards for streaming",
        "prepare_data",
    ),
    "cache": ("show or prune the shared image cache", "cache"),
    "evaluate": (
        "zero-shot, few-shot, linear-probe and fine-tuning evaluation of trained models",
        "evaluate",
    ),
    "check-leakage": (
        "duplicates and shared patients between pretraining and evaluation data",
        "check_leakage",
    ),
    "push": (
        "upload a checkpoint, fine-tuned classifier or LoRA adapter with its model card in one commit",
        "push",
    ),
    "export": (
        "write a checkpoint's towers as torch.export / ONNX files that run without retvlp",
        "export",
    ),
    "benchmark": (
        "public benchmark suites (RETFound, FLAIR / KeepFIT) over local datasets, one leaderboard",
        "benchmark",
    ),
    "demo": ("serve a page to try a model on one fundus photograph (needs retvlp[demo])", "demo"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `retvlp` parser: every subcommand with its options, or, given `command`, only that one's options
    (the others are listed by name). Some options read their choices and defaults from the data and evaluation
    code; `main` builds only the options of the command it runs, so `retvlp --help` imports none of it."""
    parser = argparse.ArgumentParser(
        prog="retvlp", description="Retinal vision-language pretraining on your own data."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (summary, module) in _COMMANDS.items():
        subparser = subparsers.add_parser(name, help=summary)
        if command is None or command == name:
            importlib.import_module(f"{__name__}.{module}").add_parser(subparser)
    return parser


def _command_of(argv: Sequence[str]) -> str:
    """The subcommand named by `argv` (the first argument that is not an option; the top-level parser has no
    option taking a value), or "" when there is none."""
    return next((arg for arg in argv if not arg.startswith("-")), "")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    from ..runtime import load_reports_hidden

    try:
        with load_reports_hidden():  # transformers' per-load key tables; RETVLP_VERBOSE=1 shows them
            return args.handler(args)
    except UsageError as exc:
        print(f"retvlp {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
