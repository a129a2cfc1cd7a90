"""The `retvlp` command line.

    retvlp validate-data MANIFEST [MANIFEST ...] [options]
    retvlp prepare-data MANIFEST [MANIFEST ...] --output DIR [--shard-size N] [--rank R --world-size W] [options]
    retvlp cache info|prune [--max-size SIZE | --older-than DAYS | --all]
    retvlp push FOLDER --repo-id USER/NAME [--evaluation results.json] [--base-model ID] [--dry-run DIR]
    retvlp evaluate --model DIR|HUB_ID [--model NAME=DIR ...] --data MANIFEST|demo --task zero-shot,... [options]
    retvlp export MODEL --format torch-export|onnx --tower image [--tower text] [--classes A,B,...] --output DIR

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
from pathlib import Path

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


def _read_manifests_of(args: argparse.Namespace) -> list:
    """The manifests named on the command line, read with the shared manifest options (one line printed
    per manifest)."""
    from .data.manifest import read_manifest

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
                allowed_roots=args.allowed_roots,
                allow_outside_data_roots=args.allow_outside_data_roots,
            )
        except FileNotFoundError as exc:
            what = exc.strerror or "not found"
            raise UsageError(f"{what}: {exc.filename or path}") from None
        except (ValueError, OSError) as exc:
            raise UsageError(str(exc)) from None
        manifests.append(manifest)
        print(_describe_manifest(manifest))
    return manifests


def _run_validate_data(args: argparse.Namespace) -> int:
    from .data.validation import validate_manifests

    if args.min_size < 1:
        raise UsageError("--min-size must be at least 1")
    if args.max_pixels < 1:
        raise UsageError("--max-pixels must be at least 1")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    class_names = _read_classes(args)
    manifests = _read_manifests_of(args)
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


def _add_data_root_options(parser) -> None:
    """--allowed-root / --allow-outside-data-roots (`retvlp.data.roots`), shared by validate-data and evaluate."""
    parser.add_argument(
        "--allowed-root",
        dest="allowed_roots",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder images may live in besides each manifest's folder and --image-root (repeatable); "
        "image paths resolving (symlinks, ..) anywhere else are outside-data-root errors and never opened",
    )
    parser.add_argument(
        "--allow-outside-data-roots",
        action="store_true",
        help="let manifests point anywhere: no data-root containment check",
    )


def _add_manifest_options(parser) -> None:
    """The manifests and how to read and check them: shared by validate-data and prepare-data."""
    from .data.manifest import FORMATS, ROLES
    from .data.validation import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE

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
    _add_data_root_options(parser)


def _add_validate_data_parser(parser) -> None:
    parser.description = (
        "Read manifests (CSV/TSV with image + text and/or label columns, FLAIR CSV, JSON lines, or an "
        "ImageFolder directory), decode every image and report each problem with its file and row. "
        "Exit code 0: no errors (warnings allowed), 1: errors found, 2: usage error."
    )
    _add_manifest_options(parser)
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
    parser.set_defaults(handler=_run_validate_data)


# ---------------------------------------------------------------------------------------------- prepare-data
def _rank_from_environment() -> tuple[int, int]:
    """(rank, world size) of a launcher: torchrun / accelerate (RANK, WORLD_SIZE), SLURM (SLURM_PROCID,
    SLURM_NTASKS), else (0, 1)."""
    for rank, world in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank in os.environ and world in os.environ:
            return int(os.environ[rank]), int(os.environ[world])
    return 0, 1


def _run_prepare_data(args: argparse.Namespace) -> int:
    from .data.cache import ImageGeometry
    from .data.shards import prepare_shards
    from .data.validation import DataValidationError

    if args.shard_size < 1 or args.image_size < 1:
        raise UsageError("--shard-size and --image-size must be at least 1")
    rank, world = _rank_from_environment()
    rank = rank if args.rank is None else args.rank
    world = world if args.world_size is None else args.world_size
    if not 0 <= rank < world:
        raise UsageError(f"--rank {rank} must be in 0..{world - 1} (--world-size {world})")
    manifests = _read_manifests_of(args)
    geometry = ImageGeometry(
        size=args.image_size, pad_to_square=args.pad_to_square, crop_to_fov=args.crop_to_fov
    )
    try:
        result = prepare_shards(
            manifests,
            args.output,
            geometry=geometry,
            shard_size=args.shard_size,
            class_names=_read_classes(args),
            on_bad_sample=args.on_bad_sample,
            min_size=args.min_size,
            max_pixels=args.max_pixels,
            rank=rank,
            world_size=world,
            num_proc=args.num_proc,
            shuffle_seed=None if args.no_shuffle else args.shuffle_seed,
            max_shards=args.max_shards,
            image_format=args.image_format,
            show_progress=not args.no_progress,
        )
    except DataValidationError as exc:
        print(exc.report.format(max_problems=50))
        print(
            f"Stopped: rows with errors (problems in {args.output}/problems.jsonl when images were decoded). Fix "
            "them, or prepare with --on-bad-sample skip to leave them out; shards already written are kept."
        )
        return EXIT_FAILED
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(
        f"rank {rank}/{world}: wrote {len(result.written)} shard(s), {result.already_done} already done, "
        f"{result.num_shards} in the set."
    )
    if result.index is None:
        print("Not every shard is done yet (other ranks, or --max-shards): run again to continue; the last one to "
              "finish writes index.json.")  # fmt: skip
        return EXIT_OK
    report = result.report
    print(report.summary())
    skipped = len(report.bad_records)
    if skipped:
        print(f"{skipped} row(s) left out, listed in {args.output}/skipped_samples.jsonl")
    print(f"Wrote {result.index}: train on it with data.train: [{{shards: {args.output}}}]")
    return EXIT_OK


def _add_prepare_data_parser(parser) -> None:
    parser.description = (
        "Check every row and image (the checks of validate-data), decode and resize each image once, and "
        "write webdataset tar shards with an index (docs/scale-out.md). Runs in parallel processes and, by "
        "rank, on several machines; a killed preparation resumes when run again with the same arguments."
    )
    _add_manifest_options(parser)
    parser.add_argument("--output", required=True, metavar="DIR", help="the shard directory to write")
    parser.add_argument("--shard-size", type=int, default=1024, help="rows per shard (default: 1024)")
    parser.add_argument("--image-size", type=int, default=224, help="square side in pixels (default: 224)")
    parser.add_argument("--pad-to-square", action="store_true", help="pad to square instead of resizing")
    parser.add_argument("--crop-to-fov", action="store_true", help="crop to the camera's field of view first")
    parser.add_argument(
        "--on-bad-sample",
        choices=("error", "skip"),
        default="error",
        help="rows with errors stop the preparation (error, the default) or are left out and listed (skip)",
    )
    parser.add_argument("--rank", type=int, help="this job's share (default: $RANK or $SLURM_PROCID, else 0)")
    parser.add_argument(
        "--world-size",
        type=int,
        help="number of jobs sharing the work (default: $WORLD_SIZE or $SLURM_NTASKS, else 1)",
    )
    parser.add_argument("--num-proc", type=int, help="worker processes on this machine (default: the CPUs)")
    parser.add_argument(
        "--shuffle-seed", type=int, default=0, help="seed of the row order in the shards (default: 0)"
    )
    parser.add_argument("--no-shuffle", action="store_true", help="keep the manifest order in the shards")
    parser.add_argument(
        "--max-shards", type=int, help="write at most this many shards in this call (time-boxed jobs)"
    )
    parser.add_argument(
        "--image-format",
        choices=("png", "npy"),
        default="png",
        help="png: lossless, a third of the bytes (object storage); npy: raw, nothing to decode (local disks)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (plain lines only)")
    parser.set_defaults(handler=_run_prepare_data)


# ---------------------------------------------------------------------------------------------- cache
def _format_bytes(count: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count} B"


def _run_cache(args: argparse.Namespace) -> int:
    import time

    from .data.cache import cache_summary, default_cache_dir, parse_size, prune_cache

    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.action == "info":
        pools = cache_summary(cache_dir)
        total = sum(pool.num_bytes for pool in pools)
        print(f"{cache_dir}: {len(pools)} pool(s), {_format_bytes(total)}")
        for pool in pools:
            used = (
                "never"
                if pool.last_used is None
                else time.strftime("%Y-%m-%d %H:%M", time.localtime(pool.last_used))
            )
            print(
                f"  {pool.path.name}: {pool.images} image(s) ({pool.failed} failed checks) in {pool.shards} shard(s), "
                f"{_format_bytes(pool.num_bytes)}, last used {used}; {json.dumps(pool.geometry)}"
            )
        return EXIT_OK
    if args.max_size is None and args.older_than is None and not args.all:
        raise UsageError("cache prune needs --max-size SIZE, --older-than DAYS or --all")
    try:
        limit = 0 if args.all or args.max_size is None else parse_size(args.max_size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    removed, freed = prune_cache(cache_dir, max_bytes=limit, older_than_days=args.older_than)
    print(f"{cache_dir}: removed {removed} shard(s), freed {_format_bytes(freed)}")
    return EXIT_OK


def _add_cache_parser(parser) -> None:
    parser.description = (
        "The image cache holds each image once per geometry, shared by every run and evaluation "
        "($RETVLP_CACHE/images or ~/.cache/retvlp/images). info: pools, images, size, last use. prune: "
        "evict least recently used shards."
    )
    parser.add_argument("action", choices=("info", "prune"))
    parser.add_argument(
        "--cache-dir", help="the cache folder (default: $RETVLP_CACHE/images or ~/.cache/retvlp/images)"
    )
    parser.add_argument(
        "--max-size", help="prune: evict until each pool holds at most this much (e.g. 50GB, 800MiB)"
    )
    parser.add_argument(
        "--older-than", type=float, metavar="DAYS", help="prune: evict shards unused for DAYS days"
    )
    parser.add_argument("--all", action="store_true", help="prune: empty the cache (legacy stores too)")
    parser.set_defaults(handler=_run_cache)


# ---------------------------------------------------------------------------------------------- evaluate
DEMO_DATA = "demo"


def _csv(text: str, convert=str, what: str = "value") -> tuple:
    try:
        values = tuple(convert(item.strip()) for item in text.split(",") if item.strip())
    except ValueError:
        raise UsageError(f"cannot read {what} list {text!r}: give values separated by commas") from None
    if not values:
        raise UsageError(f"the {what} list is empty")
    return values


def _models(entries: list[str]) -> dict[str, str]:
    models: dict[str, str] = {}
    for entry in entries:
        name, _, source = (
            entry.partition("=") if "=" in entry and not os.path.exists(entry) else ("", "", entry)
        )
        name = name or (Path(source).name if os.path.exists(source) else source.rsplit("/", 1)[-1])
        if name in ("final", "model") and os.path.exists(source):  # `runs/demo/final` → `demo`
            name = Path(source).resolve().parent.name
        if name == "random_init":
            raise UsageError("random_init is the baseline's name (--random-init): call the model differently")
        if name in models:
            raise UsageError(f"two models are called {name!r}: name them, e.g. --model {name}-b={source}")
        models[name] = source
    return models


# The pretraining demo's run config, the source of truth for the demo data set (its `data.synthetic` spec).
# Found in a source checkout or an editable install; a wheel carries a checked copy of the spec instead.
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "maskedclip_tiny_cpu.yaml"
DEMO_SPEC_COPY = Path(__file__).resolve().parent / "synthetic" / "demo_spec.json"


def _demo_synthetic_spec() -> dict:
    """`data.synthetic` of the demo run config (read through the run-config loader), or its packaged copy."""
    if DEMO_CONFIG.is_file():
        from .training.config import ConfigError, PretrainConfig

        try:
            spec = PretrainConfig.from_yaml(DEMO_CONFIG).data.synthetic
        except ConfigError as error:
            raise UsageError(f"cannot read the demo data set from {DEMO_CONFIG}: {error}") from None
        if spec is None:
            raise UsageError(f"{DEMO_CONFIG} has no data.synthetic section: no demo data set to evaluate on")
        return dict(spec)
    return dict(json.loads(DEMO_SPEC_COPY.read_text(encoding="utf-8"))["synthetic"])


def _demo_data(cache_dir: str) -> tuple[list[dict], list[dict], str]:
    """The embedded synthetic demo data set (generated if missing, like the pretraining demo's)."""
    from .synthetic import resolve_synthetic_spec

    specs = resolve_synthetic_spec(_demo_synthetic_spec(), cache_dir).evaluation_specs()
    return specs["probe_train"], specs["test"], "synthetic-demo"


def _data_specs(paths: list[str], args: argparse.Namespace) -> list[dict]:
    specs = []
    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"data not found: {path}")
        spec = {
            "path": path,
            "label_column": args.label_column,
            "group_column": args.group_column,
            "image_column": args.image_column,
            "label_separator": args.label_separator,
        }
        if args.image_root:
            spec["image_root"] = args.image_root
        if args.allowed_roots:
            spec["allowed_roots"] = list(args.allowed_roots)
        if args.allow_outside_data_roots:
            spec["allow_outside_data_roots"] = True
        specs.append(spec)
    return specs


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.finetune import FinetuneSettings
    from .evaluation.runner import EvaluationSettings, evaluate_models

    tasks = tuple(task for entry in args.task for task in _csv(entry, what="task"))
    try:
        finetune = FinetuneSettings(
            epochs=args.epochs,
            warmup_epochs=args.warmup_epochs,
            max_steps=args.max_steps,
            batch_size=args.finetune_batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            layer_decay=args.layer_decay,
            drop_path_rate=args.drop_path,
            lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            lora_target_modules=args.lora_targets,
            mixed_precision=args.mixed_precision,
            augment=args.augment,
        )
        settings = EvaluationSettings(
            tasks=tasks,
            fractions=_csv(args.fractions, float, "fraction"),
            seeds=_csv(args.seeds, int, "seed"),
            shots=_csv(args.shots, int, "shots"),
            few_shot_methods=_csv(args.few_shot_methods, what="few-shot method"),
            test_fraction=args.test_fraction,
            split_seed=args.split_seed,
            modality=args.modality,
            include_descriptions=not args.no_descriptions,
            probe_C=args.probe_c,
            batch_size=args.batch_size,
            finetune=finetune,
            save_models=args.save_models,
            cache_dir=args.cache_dir,
            show_progress=not args.no_progress,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.data == [DEMO_DATA]:
        if args.test_data:
            raise UsageError("--data demo brings its own test split; leave out --test-data")
        data, test_data, name = _demo_data(args.cache_dir)
    else:
        data = _data_specs(args.data, args)
        test_data = _data_specs(args.test_data, args) if args.test_data else None
        name = args.dataset_name
    models = _models(args.model)
    try:
        results = evaluate_models(
            models,
            data,
            test_data=test_data,
            class_names=_read_classes(args),
            multi_label=args.multi_label,
            ordinal=args.ordinal,
            positive_class=args.positive_class,
            settings=settings,
            random_init=args.random_init,
            output_dir=args.output_dir,
            dataset_name=args.dataset_name or name,
            device=args.device,
            on_bad_sample=args.on_bad_sample,
        )
    except (FileNotFoundError, OSError) as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:
        if os.environ.get("RETVLP_DEBUG") == "1":
            raise
        print(f"retvlp evaluate: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    from .evaluation.report import markdown_table

    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_OK
    print(markdown_table(results))
    print(f"Report: {Path(args.output_dir) / 'results.md'} (plots and results.json next to it)")
    _print_left_out(results)
    skipped = {
        name: info["skipped_tasks"] for name, info in results["models"].items() if info.get("skipped_tasks")
    }
    for name, problems in skipped.items():
        for problem in problems:
            print(f"retvlp evaluate: {name}: {problem['task']} not run: {problem['reason']}", file=sys.stderr)
    return EXIT_FAILED if skipped else EXIT_OK


def _print_left_out(results: dict) -> None:
    """List the rows and images `--on-bad-sample skip` left out (results.json names them too)."""
    from .evaluation.data import UNUSABLE_REASONS, format_unusable

    dataset = results.get("dataset") or {}
    count = sum((dataset.get("excluded") or {}).get(reason, 0) for reason in UNUSABLE_REASONS)
    if not count:
        return
    examples = [e for e in dataset.get("excluded_examples") or [] if e.get("reason") in UNUSABLE_REASONS]
    print(
        f"retvlp evaluate: left out {count} row(s) or image(s) that could not be used (--on-bad-sample skip):\n"
        + format_unusable(count, examples),
        file=sys.stderr,
    )


def _add_evaluate_parser(parser) -> None:
    from .evaluation.protocols import FEW_SHOT_METHODS, TASKS

    parser.description = (
        "Evaluate one or more models (retvlp checkpoints, or any dual encoder with get_image_features / "
        "get_text_features such as transformers' CLIPModel) on labelled data with the protocols of "
        "METHODS.md §3; writes results.json, results.md and PNG plots to --output-dir. "
        "Exit code 0: done, 1: the data or a model cannot be evaluated, 2: usage error."
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]DIR|HUB_ID",
        help="model to evaluate (repeat to compare models side by side)",
    )
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="MANIFEST",
        help="labelled manifest(s) (CSV/TSV/JSONL/ImageFolder, or a datasets save_to_disk folder: one "
        "split's folder), or 'demo' for the embedded synthetic data set",
    )
    parser.add_argument(
        "--test-data",
        nargs="+",
        metavar="MANIFEST",
        help="fixed test manifest(s); default: a group-aware stratified --test-fraction of --data",
    )
    parser.add_argument(
        "--task", action="append", required=True, help=f"comma-separated tasks: {', '.join(TASKS)}"
    )
    parser.add_argument(
        "--output-dir", default="outputs/evaluation", help="report folder (default: outputs/evaluation)"
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="also evaluate the first model's architecture at random weights (baseline)",
    )
    parser.add_argument("--dataset-name", help="name of the data set in reports and model cards")
    data = parser.add_argument_group("data")
    data.add_argument("--image-root", help="folder relative image paths start from (default: the manifest's)")
    _add_data_root_options(data)
    data.add_argument("--image-column", default="image")
    data.add_argument("--label-column", default="label")
    data.add_argument(
        "--group-column", default="patient_id", help="patient column: splits keep patients whole"
    )
    data.add_argument("--label-separator", default="|")
    classes = data.add_mutually_exclusive_group()
    classes.add_argument(
        "--classes",
        help="class names in order, comma-separated; every metric uses this order (default: the data's "
        "ClassLabel order, else every label found, sorted alphabetically)",
    )
    classes.add_argument("--classes-file", help="class names: .json list / {name: index}, or one per line")
    data.add_argument(
        "--multi-label",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="multi-label evaluation (default: when some image has several labels)",
    )
    data.add_argument(
        "--ordinal",
        action="store_true",
        help="the classes are ordered grades, lowest first (give the order with --classes): report "
        "quadratic kappa over that order (not reported for nominal classes)",
    )
    data.add_argument(
        "--positive-class",
        metavar="NAME",
        help="binary tasks: the class whose PR-AUC is reported (default: the second class in order)",
    )
    data.add_argument(
        "--on-bad-sample",
        choices=("error", "skip"),
        default="error",
        help="rows or images that cannot be used (unreadable, outside the data roots, failing to decode) stop "
        "the evaluation with their list (error, the default) or are left out and listed (skip)",
    )
    data.add_argument("--test-fraction", type=float, default=0.2)
    data.add_argument("--split-seed", type=int, default=0)
    data.add_argument(
        "--cache-dir", default="outputs/cache", help="image + feature cache (default: outputs/cache)"
    )
    protocol = parser.add_argument_group("protocols")
    protocol.add_argument(
        "--fractions", default="0.01,0.1,1.0", help="label fractions (default: 0.01,0.1,1.0)"
    )
    protocol.add_argument(
        "--seeds", default="0,1,2", help="seeds of the label draws / shots (default: 0,1,2)"
    )
    protocol.add_argument("--shots", default="1,5,10", help="few-shot shots per class (default: 1,5,10)")
    protocol.add_argument("--few-shot-methods", default=",".join(FEW_SHOT_METHODS))
    protocol.add_argument(
        "--modality", default="CFP", help="prompt templates of this modality (default: CFP)"
    )
    protocol.add_argument(
        "--no-descriptions",
        action="store_true",
        help="zero-shot prompts with the class names only (no expert descriptions)",
    )
    protocol.add_argument("--probe-c", type=float, default=0.316, help="linear-probe inverse L2 strength")
    protocol.add_argument("--batch-size", type=int, default=64, help="feature-extraction batch size")
    protocol.add_argument("--device", help="feature-extraction device (default: cuda if available, else cpu)")
    tune = parser.add_argument_group("fine-tuning (finetune, lora)")
    tune.add_argument("--epochs", type=float, default=50)
    tune.add_argument("--warmup-epochs", type=float, default=10)
    tune.add_argument("--max-steps", type=int, help="stop after this many steps (overrides --epochs)")
    tune.add_argument("--finetune-batch-size", type=int, default=16, help="per process (default: 16)")
    tune.add_argument("--lr", type=float, default=5e-4)
    tune.add_argument("--weight-decay", type=float, default=0.05)
    tune.add_argument("--layer-decay", type=float, default=0.75)
    tune.add_argument("--drop-path", type=float, default=0.1)
    tune.add_argument("--lora-rank", type=int, default=8)
    tune.add_argument("--lora-alpha", type=int, default=16)
    tune.add_argument("--lora-dropout", type=float, default=0.1)
    tune.add_argument(
        "--lora-targets",
        help="regex of the module names LoRA adapts (default: per family, what retvlp.lora_targets(classifier) "
        "gives: the image tower's attention projections, KeepFIT: its residual blocks' convolutions)",
    )
    tune.add_argument(
        "--save-models",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep each fine-tuned model / LoRA adapter under OUTPUT_DIR/finetuned (default: yes)",
    )
    tune.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="random crop (80-100%% of the side) + flip of training images (default: yes)",
    )
    tune.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_evaluate)


# ---------------------------------------------------------------------------------------------- push
def _evaluated_model(evaluation: str | None, requested: str | None) -> str:
    """The results row name of the pushed model: --evaluated-model, or the only non-baseline model."""
    if requested or evaluation is None:
        return requested or "pretrained"
    try:
        rows = json.loads(Path(evaluation).read_text(encoding="utf-8")).get("results", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise UsageError(f"cannot read the evaluation results {evaluation}: {exc}") from None
    names = sorted({row["model"] for row in rows if row.get("model") != "random_init"})
    if len(names) != 1:
        raise UsageError(
            f"{evaluation} holds the models {names}: say which one this is with --evaluated-model"
        )
    return names[0]


def _run_push(args: argparse.Namespace) -> int:
    from .hub import folder_kind, push_to_hub

    folder = Path(args.folder)
    if not folder.is_dir():
        raise UsageError(f"folder not found: {folder}")
    try:
        kind = folder_kind(folder)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # A fine-tuned classifier or adapter knows its result row (training_summary.json); a released checkpoint is
    # the only non-baseline model of the results, unless told otherwise.
    evaluated_model = (
        _evaluated_model(args.evaluation, args.evaluated_model) if kind == "model" else args.evaluated_model
    )
    card_kwargs = {
        "evaluation": args.evaluation,
        "evaluated_model": evaluated_model,
        "dataset_name": args.dataset_name,
        "data_provenance": args.data_provenance,
    }
    card_kwargs = {key: value for key, value in card_kwargs.items() if value is not None}
    try:
        # One call for the dry run and the push: the dry run stages exactly the folder the push uploads.
        outcome = push_to_hub(
            args.repo_id,
            folder=folder,
            base_model=args.base_model,
            private=args.private,
            revision=args.revision,
            card_kwargs=card_kwargs,
            dry_run=args.dry_run,
        )
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if args.dry_run:
        files = sorted(str(p.relative_to(outcome)) for p in outcome.rglob("*") if p.is_file())
        print(f"Staged {len(files)} files of the {kind} in {outcome} (nothing uploaded):")
        print("\n".join(f"  {name}" for name in files))
        return EXIT_OK
    print(f"Pushed {folder} to {args.repo_id} in one commit: {getattr(outcome, 'commit_url', outcome)}")
    return EXIT_OK


def _add_push_parser(parser) -> None:
    parser.description = (
        "Stage a final/ checkpoint (weights, config, remote code, processor, model card), a fine-tuned "
        "classifier (finetuned/<run>/model: weights, config with class names, remote code, image processor, "
        "classifier card) or a LoRA adapter folder (finetuned/<run>/adapter) and upload it with one "
        "HfApi.upload_folder commit. Training-only files (optimizer states, checkpoint-* folders, pickles) "
        "are left out; a folder that would not load from the Hub is refused."
    )
    parser.add_argument(
        "folder",
        help="a save_pretrained folder (e.g. outputs/run/final), a classifier or a LoRA adapter folder",
    )
    parser.add_argument("--repo-id", required=True, help="USER/NAME on the Hub")
    parser.add_argument("--evaluation", help="results.json of `retvlp evaluate`, for the card's model-index")
    parser.add_argument(
        "--evaluated-model",
        help="this model's name in the results (default: the classifier's / adapter's own, else the only one)",
    )
    parser.add_argument("--dataset-name", help="evaluation data set name for the card")
    parser.add_argument("--data-provenance", help="one sentence on the training data, for the card")
    parser.add_argument(
        "--base-model",
        help="Hub id of the base model (adapters: required unless the adapter already names a Hub id)",
    )
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to (created if missing)")
    parser.add_argument(
        "--dry-run",
        metavar="DIR",
        help="stage in DIR exactly what would be uploaded, list it, upload nothing",
    )
    parser.set_defaults(handler=_run_push)


# ---------------------------------------------------------------------------------------------- export
def _run_export(args: argparse.Namespace) -> int:
    from .export import ExportDependencyError, ExportError, export_towers

    towers = [tower.strip() for value in args.tower for tower in value.split(",") if tower.strip()]
    try:
        result = export_towers(
            args.model,
            args.output,
            towers=towers,
            format=args.format,
            classes=_read_classes(args),
            modality=args.modality,
            include_descriptions=not args.no_descriptions,
            verify=not args.no_check,
        )
    except (ExportError, ExportDependencyError) as exc:
        raise UsageError(str(exc)) from None
    for tower, entry in result.manifest["towers"].items():
        check = entry.get("check")
        checked = (
            f"checked: max |exported - eager| = {check['max_abs_difference']:.1e}"
            if isinstance(check, dict)
            else (check or "not checked")
        )
        print(f"{tower} tower -> {result.files[tower]} ({checked})")
    if "prototypes" in result.files:
        zero_shot = result.manifest["zero_shot"]
        print(
            f"class prototypes -> {result.files['prototypes']} ({len(zero_shot['classes'])} classes, "
            f"logit scale {zero_shot['logit_scale']:.2f})"
        )
    if "tokenizer" in result.files:
        print(f"tokenizer -> {result.files['tokenizer']}")
    print(
        f"Wrote {result.files['manifest']}: inputs, outputs and preprocessing of each file (docs/export.md)"
    )
    return EXIT_OK


def _add_export_parser(parser) -> None:
    from .export import FORMATS, TOWERS  # a light module: torch is imported when the export runs

    parser.description = (
        "Write towers of a released MaskedCLIP / KeepFIT checkpoint as standalone artifacts that run without "
        "retvlp: a torch.export program (.pt2, needs torch) or an ONNX graph (.onnx, needs onnxruntime; "
        'exporting needs pip install "retvlp[export]"). With --classes, also the zero-shot class-prototype '
        "matrix, so the image tower alone classifies. Exit code 0: done, 2: usage error (unknown tower or "
        "format, not a retvlp checkpoint, a tower the checkpoint lacks, a missing package)."
    )
    parser.add_argument(
        "model", metavar="MODEL", help="a released checkpoint folder (e.g. a run's final/) or Hub id"
    )
    parser.add_argument("--format", choices=FORMATS, default="torch-export", help="default: torch-export")
    parser.add_argument(
        "--tower",
        action="append",
        required=True,
        metavar="|".join(TOWERS),
        help="the tower to export (repeat, or separate with commas, for both): image (pixel_values -> image "
        "embedding) or text (input_ids, attention_mask -> text embedding)",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="the folder to write")
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument(
        "--classes", help="zero-shot class names, comma-separated: also write their prototype matrix"
    )
    classes.add_argument("--classes-file", help="class names: .json list / {name: index}, or one per line")
    parser.add_argument(
        "--modality", default="CFP", help="prompt templates of this modality (default: CFP, as evaluate)"
    )
    parser.add_argument(
        "--no-descriptions",
        action="store_true",
        help="class prompts with the class names only (no expert descriptions)",
    )
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="do not load each file back and compare it with the model on a check batch",
    )
    parser.set_defaults(handler=_run_export)


# name → (one-line help, the function adding the subcommand's description and options)
_COMMANDS = {
    "validate-data": ("check manifests and every image before training", _add_validate_data_parser),
    "prepare-data": (
        "validate, decode and resize manifests once into tar shards for streaming",
        _add_prepare_data_parser,
    ),
    "cache": ("show or prune the shared image cache", _add_cache_parser),
    "evaluate": (
        "zero-shot, few-shot, linear-probe and fine-tuning evaluation of trained models",
        _add_evaluate_parser,
    ),
    "push": (
        "upload a checkpoint, fine-tuned classifier or LoRA adapter with its model card in one commit",
        _add_push_parser,
    ),
    "export": (
        "write a checkpoint's towers as torch.export / ONNX files that run without retvlp",
        _add_export_parser,
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `retvlp` parser: every subcommand with its options, or, given `command`, only that one's options
    (the others are listed by name). Some options read their choices and defaults from the data and evaluation
    code; `main` builds only the options of the command it runs, so `retvlp --help` imports none of it."""
    parser = argparse.ArgumentParser(
        prog="retvlp", description="Retinal vision-language pretraining on your own data."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (summary, add_options) in _COMMANDS.items():
        subparser = subparsers.add_parser(name, help=summary)
        if command is None or command == name:
            add_options(subparser)
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
    from .runtime import load_reports_hidden

    try:
        with load_reports_hidden():  # transformers' per-load key tables; RETVLP_VERBOSE=1 shows them
            return args.handler(args)
    except UsageError as exc:
        print(f"retvlp {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
