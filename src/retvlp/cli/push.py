"""`retvlp push`: upload a checkpoint, fine-tuned classifier or LoRA adapter with its model card in one
commit."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import EXIT_OK, UsageError


def add_parser(parser) -> None:
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
    parser.set_defaults(handler=run)


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


def run(args: argparse.Namespace) -> int:
    from ..hub import folder_kind, push_to_hub

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
