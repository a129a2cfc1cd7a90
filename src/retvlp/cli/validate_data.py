"""`retvlp validate-data`: read manifests, decode every image and report each problem with its file and
row."""

from __future__ import annotations

import argparse
import os

from . import EXIT_FAILED, EXIT_OK, UsageError
from ._common import add_manifest_options, read_classes, read_manifests


def add_parser(parser) -> None:
    parser.description = (
        "Read manifests (CSV/TSV with image + text and/or label columns, FLAIR CSV, JSON lines, or an "
        "ImageFolder directory), decode every image and report each problem with its file and row. "
        "Exit code 0: no errors (warnings allowed), 1: errors found, 2: usage error."
    )
    add_manifest_options(parser)
    parser.add_argument(
        "--skip-images",
        action="store_true",
        help="only read the manifests and check the records; open no image",
    )
    parser.add_argument("--report", metavar="PATH", help="write every problem to this JSON-lines file")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="threads decoding images (default: number of CPUs, at most 8)",
    )
    parser.add_argument(
        "--max-shown", type=int, default=50, help="print at most this many problems (default: 50; 0: all)"
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (plain lines only, for logs and CI)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..data.validation import validate_manifests

    if args.min_size < 1:
        raise UsageError("--min-size must be at least 1")
    if args.max_pixels < 1:
        raise UsageError("--max-pixels must be at least 1")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    class_names = read_classes(args)
    manifests = read_manifests(args)
    if class_names is not None:
        print(f"Checking labels against {len(class_names)} classes: {', '.join(class_names)}")
    if args.no_progress and not args.skip_images:
        # instead of the progress bar: one plain line, so logs show what the (possibly long) wait is
        print(f"Checking the images of {sum(len(m.records) for m in manifests)} records...", flush=True)
    report = validate_manifests(
        manifests,
        class_names=class_names,
        min_size=args.min_size,
        max_pixels=args.max_pixels,
        check_images=not args.skip_images,
        num_workers=args.workers,
        show_progress=not args.no_progress,
    )
    print()
    print(report.format(max_problems=None if args.max_shown == 0 else args.max_shown))
    if args.report:
        try:
            report.write_jsonl(args.report)
        except OSError as exc:
            raise UsageError(f"cannot write the report {args.report}: {exc}") from None
        print(
            f"Wrote {len(report.problems)} problem{'s' if len(report.problems) != 1 else ''} to {args.report}"
        )
    if not report.ok:
        bad = len(report.bad_records)
        print(
            f"{bad} row{'s' if bad != 1 else ''} with errors: fix or remove them, or train with "
            "`--on-bad-sample skip` to leave them out."
        )
        return EXIT_FAILED
    return EXIT_OK
