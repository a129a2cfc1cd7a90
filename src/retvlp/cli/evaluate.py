"""`retvlp evaluate`: zero-shot, few-shot, linear-probe and fine-tuning evaluation of trained models
(docs/evaluation.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import EXIT_FAILED, EXIT_OK, UsageError
from ._common import DEMO_DATA, add_data_root_options, comma_list, demo_data, model_sources, read_classes


def add_parser(parser) -> None:
    from ..evaluation.protocols import TASKS

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
    _add_data_options(parser.add_argument_group("data"))
    _add_protocol_options(parser.add_argument_group("protocols"))
    _add_finetune_options(parser.add_argument_group("fine-tuning (finetune, lora)"))
    _add_trust_options(parser.add_argument_group("intervals, calibration, conformal sets, operating points"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def _add_trust_options(group) -> None:
    """What a clinical reader asks besides the means (docs/evaluation.md, "How far to trust a number")."""
    group.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="patient-bootstrap resamples of the test set for the 95%% intervals of every figure (0: off; "
        "default 1000)",
    )
    group.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    group.add_argument(
        "--calibration-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="share of the training pool's patients held out to fit temperature scaling, conformal sets and "
        "screening thresholds (default 0.1; 0: none of them)",
    )
    group.add_argument("--calibration-bins", type=int, default=15, help="ECE bins, equal mass (default 15)")
    group.add_argument(
        "--coverage",
        default="0.9",
        metavar="LEVELS",
        help="conformal prediction-set coverage(s), comma-separated (default 0.9)",
    )
    group.add_argument(
        "--conformal-methods", default="lac,aps", help="lac and / or aps (randomised), comma-separated"
    )
    group.add_argument(
        "--maps",
        type=int,
        default=0,
        metavar="N",
        help="evidence maps over the photograph for N correct and N wrong zero-shot test images per class, under "
        "OUTPUT_DIR/evidence/ (MaskedCLIP: patch-text similarity; KeepFIT: spatial class map; default 0: none)",
    )
    group.add_argument(
        "--operating-points",
        default="spec=0.9,0.95 sens=0.9",
        metavar="SPEC",
        help='screening thresholds chosen on the calibration patients (default "spec=0.9,0.95 sens=0.9"; '
        "Youden's J is always added)",
    )


def _add_data_options(data) -> None:
    """The data: where images are, which columns hold what, the classes, bad rows, the split."""
    data.add_argument("--image-root", help="folder relative image paths start from (default: the manifest's)")
    add_data_root_options(data)
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
    data.add_argument(
        "--pretrain-manifests",
        nargs="+",
        metavar="MANIFEST",
        help="the models' pretraining manifest(s): check the evaluation data for leakage first (exact and near "
        "duplicates, shared patient ids; a warning and a Leakage section in results.json / results.md; "
        "`retvlp check-leakage` runs the same check alone)",
    )
    data.add_argument(
        "--exclude-leaked",
        action="store_true",
        help="with --pretrain-manifests: leave the leaked evaluation images out (counted and listed)",
    )
    data.add_argument("--test-fraction", type=float, default=0.2)
    data.add_argument("--split-seed", type=int, default=0)
    data.add_argument(
        "--cache-dir", default="outputs/cache", help="image + feature cache (default: outputs/cache)"
    )


def _add_protocol_options(protocol) -> None:
    """The protocols' label fractions, seeds and shots, prompts, probe and feature extraction."""
    from ..evaluation.protocols import FEW_SHOT_METHODS

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


def _add_finetune_options(tune) -> None:
    """Full fine-tuning and LoRA: schedule, optimiser, adapters, augmentation, precision."""
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


def run(args: argparse.Namespace) -> int:
    from ..evaluation.runner import evaluate_models

    settings = _settings(args)
    data, test_data, name = _data(args)
    models = model_sources(args.model)
    pretrain = _pretrain_specs(args)
    try:
        results = evaluate_models(
            models,
            data,
            test_data=test_data,
            class_names=read_classes(args),
            multi_label=args.multi_label,
            ordinal=args.ordinal,
            positive_class=args.positive_class,
            settings=settings,
            random_init=args.random_init,
            output_dir=args.output_dir,
            dataset_name=args.dataset_name or name,
            device=args.device,
            on_bad_sample=args.on_bad_sample,
            pretrain_data=pretrain,
            exclude_leaked=args.exclude_leaked,
        )
    except (FileNotFoundError, OSError) as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:
        if os.environ.get("RETVLP_DEBUG") == "1":
            raise
        print(f"retvlp evaluate: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_OK
    return _report(results, args.output_dir)


def _settings(args: argparse.Namespace):
    """The `EvaluationSettings` of the options, with their `FinetuneSettings`; invalid values are usage
    errors."""
    from ..evaluation.finetune import FinetuneSettings
    from ..evaluation.operating_points import parse_operating_points
    from ..evaluation.runner import EvaluationSettings

    tasks = tuple(task for entry in args.task for task in comma_list(entry, what="task"))
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
        return EvaluationSettings(
            tasks=tasks,
            fractions=comma_list(args.fractions, float, "fraction"),
            seeds=comma_list(args.seeds, int, "seed"),
            shots=comma_list(args.shots, int, "shots"),
            few_shot_methods=comma_list(args.few_shot_methods, what="few-shot method"),
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
            bootstrap=args.bootstrap,
            confidence=args.confidence,
            calibration_fraction=args.calibration_fraction,
            calibration_bins=args.calibration_bins,
            coverage=comma_list(args.coverage, float, "coverage"),
            conformal_methods=comma_list(args.conformal_methods, what="conformal method"),
            operating_points={k: tuple(v) for k, v in parse_operating_points(args.operating_points).items()},
            maps=args.maps,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _data(args: argparse.Namespace) -> tuple[list[dict], list[dict] | None, str | None]:
    """(data specs, test data specs or None, data set name): the demo data set, or --data / --test-data."""
    if args.data == [DEMO_DATA]:
        if args.test_data:
            raise UsageError("--data demo brings its own test split; leave out --test-data")
        return demo_data(args.cache_dir)
    data = _data_specs(args.data, args)
    test_data = _data_specs(args.test_data, args) if args.test_data else None
    return data, test_data, args.dataset_name


def _pretrain_specs(args: argparse.Namespace) -> list[dict] | None:
    """The --pretrain-manifests as specs with the data-root options (their columns: the defaults)."""
    if args.exclude_leaked and not args.pretrain_manifests:
        raise UsageError("--exclude-leaked needs --pretrain-manifests (the data to check against)")
    if not args.pretrain_manifests:
        return None
    specs = []
    for path in args.pretrain_manifests:
        if not os.path.exists(path):
            raise UsageError(f"pretraining manifest not found: {path}")
        spec = {"path": path, "allowed_roots": list(args.allowed_roots)}
        if args.allow_outside_data_roots:
            spec["allow_outside_data_roots"] = True
        specs.append(spec)
    return specs


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


def _report(results: dict, output_dir: str) -> int:
    """Print the results table, what was left out and the tasks not run (then exit code 1)."""
    from ..evaluation.report import markdown_table

    print(markdown_table(results))
    print(f"Report: {Path(output_dir) / 'results.md'} (plots and results.json next to it)")
    _print_left_out(results)
    _print_leakage(results)
    skipped = {
        name: info["skipped_tasks"] for name, info in results["models"].items() if info.get("skipped_tasks")
    }
    for name, problems in skipped.items():
        for problem in problems:
            print(f"retvlp evaluate: {name}: {problem['task']} not run: {problem['reason']}", file=sys.stderr)
    return EXIT_FAILED if skipped else EXIT_OK


def _print_leakage(results: dict) -> None:
    """Warn about leakage found by --pretrain-manifests (results.md and leakage/ list the pairs)."""
    leakage = results.get("leakage")
    if not leakage:
        return
    counts = leakage["counts"]
    found = counts["eval_images_leaked"]
    if not found:
        print("No leakage found between the pretraining and the evaluation data.")
        return
    what = (
        "left out of the evaluation (--exclude-leaked)"
        if leakage.get("excluded_from_evaluation")
        else "still evaluated (--exclude-leaked leaves them out)"
    )
    print(
        f"retvlp evaluate: warning: {found} evaluation image(s) leak from the pretraining data ({counts['exact']} "
        f"exact, {counts['near']} near duplicate pair(s), {counts['shared_patient_ids']} shared patient id(s)), "
        f"{what}; listed in results.md and leakage/",
        file=sys.stderr,
    )


def _print_left_out(results: dict) -> None:
    """List the rows and images `--on-bad-sample skip` left out (results.json names them too)."""
    from ..evaluation.data import UNUSABLE_REASONS, format_unusable

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
