"""`retvlp check-leakage`: exact and near duplicates, and shared patient ids, between pretraining and evaluation
manifests (docs/evaluation.md, "Leakage")."""

from __future__ import annotations

import argparse
import os
import sys

from . import EXIT_FAILED, EXIT_OK, UsageError
from ._common import add_data_root_options, describe_manifest


def add_parser(parser) -> None:
    from ..data.leakage import DEFAULT_MAX_DISTANCE, DEFAULT_MAX_FINE_DISTANCE

    parser.description = (
        "Find the evaluation images that are also in the pretraining data: exact duplicates (the same decoded "
        "pixels), near duplicates (a perceptual hash robust to resizing, JPEG re-encoding, small crops and "
        "colour jitter; optionally a model's embedding cosine) and shared patient ids. Writes leakage.json, "
        "leakage.md, a contact sheet (leakage.png) and leakage.html to --output. Exit code 0: done (leakage or "
        "not: a warning lists it), 1: leakage found with --fail-on-leak, 2: usage error."
    )
    parser.add_argument(
        "--pretrain", nargs="+", required=True, metavar="MANIFEST", help="pretraining manifest(s)"
    )
    parser.add_argument("--eval", nargs="+", required=True, metavar="MANIFEST", help="evaluation manifest(s)")
    parser.add_argument(
        "--output", default="outputs/leakage", metavar="DIR", help="report folder (default: outputs/leakage)"
    )
    parser.add_argument(
        "--max-distance",
        type=int,
        default=DEFAULT_MAX_DISTANCE,
        metavar="K",
        help=f"near duplicates: Hamming distance of the 64-bit perceptual hashes (default {DEFAULT_MAX_DISTANCE})",
    )
    parser.add_argument(
        "--max-fine-distance",
        type=int,
        default=DEFAULT_MAX_FINE_DISTANCE,
        metavar="F",
        help="near duplicates: distance of the 256-bit hashes that confirms a candidate "
        f"(default {DEFAULT_MAX_FINE_DISTANCE})",
    )
    parser.add_argument(
        "--group-column",
        default="patient_id",
        help="patient column of both sides (default: patient_id, else group or patient if present)",
    )
    parser.add_argument(
        "--no-patient-ids",
        action="store_true",
        help="skip the shared-patient-id check (ids numbered independently on both sides collide by chance)",
    )
    add_data_root_options(parser)
    model = parser.add_argument_group("embedding pass (optional)")
    model.add_argument(
        "--model", metavar="DIR|HUB_ID", help="also compare the images' embeddings under this model"
    )
    model.add_argument(
        "--min-cosine",
        type=float,
        default=None,
        metavar="C",
        help="embedding pairs: cosine similarity at or above C (default 0.95)",
    )
    model.add_argument(
        "--top-k", type=int, default=5, help="embedding pairs kept per evaluation image (default 5)"
    )
    model.add_argument("--device", help="embedding device (default: cuda if available, else cpu)")
    model.add_argument(
        "--cache-dir", default="outputs/cache", help="image + feature cache (default: outputs/cache)"
    )
    parser.add_argument(
        "--fail-on-leak", action="store_true", help="exit with code 1 when any leakage is found (for CI)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="threads decoding images (default: number of CPUs, at most 8)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def _read(paths: list[str], args: argparse.Namespace) -> list:
    """The manifests of one side, read like validate-data reads them (data roots included)."""
    from ..data.manifest import read_manifest

    manifests = []
    for path in paths:
        try:
            manifest = read_manifest(
                path,
                group_column=args.group_column,
                allowed_roots=args.allowed_roots,
                allow_outside_data_roots=args.allow_outside_data_roots,
            )
        except FileNotFoundError as exc:
            raise UsageError(f"{exc.strerror or 'not found'}: {exc.filename or path}") from None
        except (ValueError, OSError) as exc:
            raise UsageError(str(exc)) from None
        print(describe_manifest(manifest))
        manifests.append(manifest)
    return manifests


def _check_options(args: argparse.Namespace) -> None:
    if not 0 <= args.max_distance < 64:
        raise UsageError("--max-distance must lie in 0..63")
    if not 0 <= args.max_fine_distance <= 256:
        raise UsageError("--max-fine-distance must lie in 0..256")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.min_cosine is not None and args.model is None:
        raise UsageError("--min-cosine needs --model (the embeddings compared)")
    if args.min_cosine is not None and not -1 <= args.min_cosine <= 1:
        raise UsageError("--min-cosine must lie in [-1, 1]")
    if args.top_k < 1:
        raise UsageError("--top-k must be at least 1")


def run(args: argparse.Namespace) -> int:
    from ..data.leakage import find_leakage

    _check_options(args)
    pretrain, evaluation = _read(args.pretrain, args), _read(args.eval, args)
    total = sum(len(m.records) for m in pretrain + evaluation)
    with _progress(total, not args.no_progress) as bar:
        report = find_leakage(
            pretrain,
            evaluation,
            max_distance=args.max_distance,
            max_fine_distance=args.max_fine_distance,
            patients=not args.no_patient_ids,
            num_workers=args.workers,
            progress=bar.update,
        )
    if args.model is not None:
        _embedding_pass(report, args)
    written = report.write(args.output)
    print()
    print(report.markdown(max_pairs=20), end="")
    print(
        f"\nReport: {written['markdown']} ({', '.join(p.name for k, p in written.items() if k != 'markdown')})"
    )
    unreadable = sum(len(items) for items in report.unreadable.values())
    if unreadable:
        print(
            f"retvlp check-leakage: {unreadable} image(s) could not be read and were not checked",
            file=sys.stderr,
        )
    if report.found:
        print(f"retvlp check-leakage: warning: {report.summary()}", file=sys.stderr)
        return EXIT_FAILED if args.fail_on_leak else EXIT_OK
    return EXIT_OK


def _embedding_pass(report, args: argparse.Namespace) -> None:
    """Add the pairs whose embeddings under --model are at least --min-cosine similar."""
    from ..evaluation.leakage import DEFAULT_MIN_COSINE, embedding_pairs
    from ..evaluation.runner import load_model

    min_cosine = DEFAULT_MIN_COSINE if args.min_cosine is None else args.min_cosine
    try:
        loaded = load_model("model", args.model, args.device)
    except (FileNotFoundError, OSError) as exc:
        raise UsageError(str(exc)) from None
    report.add_pairs(
        embedding_pairs(
            loaded.model,
            loaded.image_processor,
            report.pretrain_records,
            report.eval_records,
            min_cosine=min_cosine,
            top_k=args.top_k,
            cache_dir=args.cache_dir,
            show_progress=not args.no_progress,
        )
    )
    report.settings.update(min_cosine=min_cosine, model=args.model, top_k=args.top_k)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="hashing images", unit="img")
