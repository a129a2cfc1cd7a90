"""`retvlp push`: upload a checkpoint, fine-tuned classifier or LoRA adapter with its model card in one
commit."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import EXIT_OK, UsageError
from ._common import read_classes


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
    space = parser.add_argument_group(
        "Space",
        "--space-app pushes the folder as a Gradio Space (repository type space) that serves the page of "
        "`retvlp demo` from its own files: app.py (loads the model from the Space with trust_remote_code=True), "
        "requirements.txt (retvlp[demo]) and the Space keys (sdk: gradio) in README.md's front matter",
    )
    space.add_argument("--space-app", action="store_true", help="add the page and push as a Space")
    classes = space.add_mutually_exclusive_group()
    classes.add_argument(
        "--classes", help="zero-shot class names of a pretraining checkpoint's page, comma-separated"
    )
    classes.add_argument("--classes-file", help="class names: .json list / {name: index}, or one per line")
    space.add_argument(
        "--coverage", type=float, default=0.9, help="the page's conformal-set coverage (default 0.9)"
    )
    space.add_argument(
        "--retvlp-requirement",
        help='the Space\'s requirements.txt line for retvlp (default "retvlp[demo]==<this version>"; e.g. '
        '"retvlp[demo] @ git+https://...", where retvlp is not on the package index)',
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
    space_app = None
    if args.space_app:
        space_app = {
            "classes": read_classes(args),
            "coverage": args.coverage,
            "retvlp_requirement": args.retvlp_requirement,
            "title": args.repo_id.rpartition("/")[2],
        }
    elif args.classes is not None or args.classes_file is not None or args.retvlp_requirement is not None:
        raise UsageError("--classes, --classes-file and --retvlp-requirement go with --space-app")
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
            space_app=space_app,
        )
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if args.dry_run:
        files = sorted(str(p.relative_to(outcome)) for p in outcome.rglob("*") if p.is_file())
        what = f"the {kind} as a Gradio Space" if space_app else f"the {kind}"
        print(f"Staged {len(files)} files of {what} in {outcome} (nothing uploaded):")
        print("\n".join(f"  {name}" for name in files))
        return EXIT_OK
    where = f"the Space {args.repo_id}" if space_app else args.repo_id
    print(f"Pushed {folder} to {where} in one commit: {getattr(outcome, 'commit_url', outcome)}")
    return EXIT_OK
