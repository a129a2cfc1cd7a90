"""The `retvlp` command line.

    retvlp validate-data MANIFEST [MANIFEST ...] [options]

Each subcommand is a `_add_<name>_parser(subparsers)` function that registers its options and sets
`handler`; `main` parses, dispatches and turns usage problems into exit code 2. Exit codes: 0 success, 1 the
data (or the result) has errors, 2 usage error (bad option, manifest not found, column missing, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with the command line or its input files: reported without a traceback, exit code 2."""


def _read_classes(args: argparse.Namespace) -> list[str] | None:
    if args.classes is not None:
        names = [name.strip() for name in args.classes.split(",") if name.strip()]
        if not names:
            raise UsageError(
                "--classes is empty; give class names separated by commas, e.g. --classes dr,amd"
            )
        return names
    if args.classes_file is None:
        return None
    path = args.classes_file
    if not os.path.isfile(path):
        raise UsageError(f"classes file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            content = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the classes file {path}: {exc}") from None
    if path.lower().endswith(".json"):
        try:
            data = json.loads(content)
        except ValueError as exc:
            raise UsageError(f"{path} is not valid JSON: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("classes"), list):
            data = data["classes"]
        if isinstance(data, dict):  # {name: index} (e.g. label2id) -> names in index order
            try:
                names = [str(name) for name, _ in sorted(data.items(), key=lambda item: int(item[1]))]
            except (TypeError, ValueError):
                raise UsageError(
                    f"{path}: expected a list of class names or a {{name: index}} mapping"
                ) from None
        elif isinstance(data, list):
            names = [str(name).strip() for name in data]
        else:
            raise UsageError(f"{path}: expected a list of class names or a {{name: index}} mapping")
    else:
        names = [line.strip() for line in content.splitlines()]
        names = [name for name in names if name and not name.startswith("#")]
    names = [name for name in names if name]
    if not names:
        raise UsageError(f"the classes file {path} lists no class names")
    return names


def _describe_manifest(manifest) -> str:
    counts = manifest.role_counts()
    roles = ", ".join(f"{role} {count}" for role, count in counts.items())
    text = f"{manifest.source} [{manifest.format}]: {len(manifest)} record{'s' if len(manifest) != 1 else ''} ({roles})"
    classes = manifest.class_names
    if classes:
        shown = ", ".join(classes[:15]) + (f", ... ({len(classes) - 15} more)" if len(classes) > 15 else "")
        text += f"; {len(classes)} class{'es' if len(classes) != 1 else ''}: {shown}"
    groups = {record.group for record in manifest.records if record.group is not None}
    if groups:
        text += f"; {len(groups)} group{'s' if len(groups) != 1 else ''} (patients)"
    if manifest.problems:
        bad = len({problem.row for problem in manifest.problems})
        text += f"; {bad} row{'s' if bad != 1 else ''} could not be read"
    if not manifest.records and not manifest.problems:
        text += "; WARNING: no records"
    return text


def _run_validate_data(args: argparse.Namespace) -> int:
    from .data.manifest import read_manifest
    from .data.validation import validate_manifests

    if args.min_size < 1:
        raise UsageError("--min-size must be at least 1")
    if args.max_pixels < 1:
        raise UsageError("--max-pixels must be at least 1")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    class_names = _read_classes(args)
    manifests = []
    for path in args.manifests:
        try:
            manifest = read_manifest(
                path,
                image_root=args.image_root,
                image_column=args.image_column,
                text_column=args.text_column,
                label_column=args.label_column,
                group_column=args.group_column,
                role=args.role,
                format=args.format,
                label_separator=args.label_separator,
            )
        except FileNotFoundError as exc:
            what = exc.strerror or "not found"
            raise UsageError(f"{what}: {exc.filename or path}") from None
        except (ValueError, OSError) as exc:
            raise UsageError(str(exc)) from None
        manifests.append(manifest)
        print(_describe_manifest(manifest))
    if class_names is not None:
        print(f"Checking labels against {len(class_names)} classes: {', '.join(class_names)}")
    report = validate_manifests(
        manifests,
        class_names=class_names,
        min_size=args.min_size,
        max_pixels=args.max_pixels,
        check_images=not args.skip_images,
        num_workers=args.workers,
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


def _add_validate_data_parser(subparsers) -> None:
    from .data.manifest import FORMATS, ROLES
    from .data.validation import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE

    parser = subparsers.add_parser(
        "validate-data",
        help="check manifests and every image before training",
        description=(
            "Read manifests (CSV/TSV with image + text and/or label columns, FLAIR CSV, JSON lines, or an "
            "ImageFolder directory), decode every image and report each problem with its file and row. "
            "Exit code 0: no errors (warnings allowed), 1: errors found, 2: usage error."
        ),
    )
    parser.add_argument(
        "manifests", nargs="+", metavar="MANIFEST", help="manifest file or ImageFolder directory"
    )
    parser.add_argument(
        "--image-root", help="folder that relative image paths start from (default: the manifest's folder)"
    )
    parser.add_argument("--image-column", default="image", help="column holding image paths (default: image)")
    parser.add_argument(
        "--text-column", default="text", help="caption column (default: text, else caption if present)"
    )
    parser.add_argument(
        "--label-column",
        default="label",
        help="label column (default: label, else labels or categories if present)",
    )
    parser.add_argument(
        "--group-column",
        default="patient_id",
        help="patient/group column (default: patient_id, else group or patient if present)",
    )
    parser.add_argument(
        "--label-separator", default="|", help="separator of several labels in one field (default: |)"
    )
    parser.add_argument(
        "--role", choices=ROLES, help="force the role of every row (default: decided per row)"
    )
    parser.add_argument(
        "--format", choices=FORMATS, help="manifest format (default: from the file extension)"
    )
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument(
        "--classes", help="known class names, comma-separated: labels outside them are errors"
    )
    classes.add_argument(
        "--classes-file",
        help="known class names: a .json list / {name: index} mapping, or a text file, one a line",
    )
    parser.add_argument(
        "--min-size",
        type=int,
        default=DEFAULT_MIN_SIZE,
        help=f"smallest allowed image side in pixels (default: {DEFAULT_MIN_SIZE})",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest allowed width x height, checked before decoding (default: {DEFAULT_MAX_PIXELS})",
    )
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
    parser.set_defaults(handler=_run_validate_data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retvlp", description="Retinal vision-language pretraining on your own data."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_validate_data_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.handler(args)
    except UsageError as exc:
        print(f"retvlp {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
