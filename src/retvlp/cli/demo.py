"""`retvlp demo`: serve the page a clinician can try a model on (Gradio, an optional extra; docs/evaluation.md,
"Try it on a page")."""

from __future__ import annotations

import argparse

from . import EXIT_OK, UsageError
from ._common import read_classes


def add_parser(parser) -> None:
    parser.description = (
        "Serve a web page (Gradio) where one uploads a fundus photograph and sees the class probabilities, the "
        "conformal prediction set at the chosen coverage and the evidence map over the photograph. MODEL is a "
        "pretraining checkpoint (zero-shot over --classes) or a fine-tuned classifier folder of `retvlp "
        "evaluate` (its own classes; calibrated scores and conformal sets where it has calibration.json). "
        'Needs Gradio: pip install "retvlp[demo]". Exit code 0: served until interrupted, 2: usage error '
        "(no Gradio, no model, classes missing or not allowed)."
    )
    parser.add_argument(
        "model", metavar="MODEL", help="a checkpoint folder (a run's final/), a classifier folder or a Hub id"
    )
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument(
        "--classes", help="zero-shot class names, comma-separated (a pretraining checkpoint needs them)"
    )
    classes.add_argument("--classes-file", help="class names: .json list / {name: index}, or one per line")
    parser.add_argument(
        "--coverage",
        type=float,
        default=0.9,
        help="the conformal set's coverage; the classifier's calibration file must have a set fitted at it "
        "(default 0.9)",
    )
    parser.add_argument("--port", type=int, default=7860, help="the port to serve on (default 7860)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument(
        "--share",
        choices=("no", "yes"),
        default="no",
        help="yes: also a temporary public gradio.live link (the photographs then leave this machine)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.demo_app import require_gradio

    try:
        require_gradio()
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    from ..evaluation.demo_app import build_demo, load_page_model

    if not 0.0 < args.coverage < 1.0:
        raise UsageError(f"--coverage must lie strictly between 0 and 1, got {args.coverage}")
    try:
        page = load_page_model(args.model, read_classes(args), args.coverage)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    demo = build_demo(args.model, page=page)
    print(
        f"Serving {page.name} ({page.kind}, {len(page.class_names)} classes) on http://{args.host}:{args.port}"
    )
    demo.launch(server_name=args.host, server_port=args.port, share=args.share == "yes", show_error=True)
    return EXIT_OK
