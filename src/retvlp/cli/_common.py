"""What several subcommands share: the class list (--classes / --classes-file), the manifests and their
options, the data-root options, comma-separated option values, the models to evaluate and the embedded demo
data set. Light at import: the data and evaluation code is imported inside the functions."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import UsageError


def read_classes(args: argparse.Namespace) -> list[str] | None:
    """The class names of --classes, or of --classes-file (a .json list or {name: index} mapping, or a text
    file, one a line, `#` comments left out); None when neither is given."""
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


def describe_manifest(manifest) -> str:
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


def read_manifests(args: argparse.Namespace) -> list:
    """The manifests named on the command line, read with the shared manifest options (one line printed
    per manifest)."""
    from ..data.manifest import read_manifest

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
        print(describe_manifest(manifest))
    return manifests


def add_data_root_options(parser) -> None:
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


def add_manifest_options(parser) -> None:
    """The manifests and how to read and check them: shared by validate-data and prepare-data."""
    from ..data.manifest import FORMATS, ROLES
    from ..data.validation import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE

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
    add_data_root_options(parser)


DEMO_DATA = "demo"  # `--data demo`: the embedded synthetic data set


def comma_list(text: str, convert=str, what: str = "value") -> tuple:
    """The comma-separated values of an option, each converted; unreadable or none: a usage error that
    names `what`."""
    try:
        values = tuple(convert(item.strip()) for item in text.split(",") if item.strip())
    except ValueError:
        raise UsageError(f"cannot read {what} list {text!r}: give values separated by commas") from None
    if not values:
        raise UsageError(f"the {what} list is empty")
    return values


def model_sources(entries: list[str]) -> dict[str, str]:
    """{name: folder or Hub id} of the --model entries ([NAME=]SOURCE; by default the folder's name, a run's
    final/ or model/ folder the run's, a Hub id's last part)."""
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
DEMO_CONFIG = Path(__file__).resolve().parents[3] / "training" / "configs" / "maskedclip_tiny_cpu.yaml"
DEMO_SPEC_COPY = Path(__file__).resolve().parents[1] / "synthetic" / "demo_spec.json"


def demo_synthetic_spec() -> dict:
    """`data.synthetic` of the demo run config (read through the run-config loader), or its packaged copy."""
    if DEMO_CONFIG.is_file():
        from ..training.config import ConfigError, PretrainConfig

        try:
            spec = PretrainConfig.from_yaml(DEMO_CONFIG).data.synthetic
        except ConfigError as error:
            raise UsageError(f"cannot read the demo data set from {DEMO_CONFIG}: {error}") from None
        if spec is None:
            raise UsageError(f"{DEMO_CONFIG} has no data.synthetic section: no demo data set to evaluate on")
        return dict(spec)
    return dict(json.loads(DEMO_SPEC_COPY.read_text(encoding="utf-8"))["synthetic"])


def demo_data(cache_dir: str) -> tuple[list[dict], list[dict], str]:
    """The embedded synthetic demo data set (generated if missing, like the pretraining demo's)."""
    from ..synthetic import resolve_synthetic_spec

    specs = resolve_synthetic_spec(demo_synthetic_spec(), cache_dir).evaluation_specs()
    return specs["probe_train"], specs["test"], "synthetic-demo"
