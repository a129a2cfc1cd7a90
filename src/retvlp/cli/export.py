"""`retvlp export`: a checkpoint's towers as torch.export / ONNX files that run without retvlp
(docs/export.md)."""

from __future__ import annotations

import argparse

from . import EXIT_OK, UsageError
from ._common import read_classes


def add_parser(parser) -> None:
    from ..export import FORMATS, TOWERS  # a light module: torch is imported when the export runs

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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..export import ExportDependencyError, ExportError, export_towers

    towers = [tower.strip() for value in args.tower for tower in value.split(",") if tower.strip()]
    try:
        result = export_towers(
            args.model,
            args.output,
            towers=towers,
            format=args.format,
            classes=read_classes(args),
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
