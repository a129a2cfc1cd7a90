"""Reading what a card is made from: checkpoint folders (`config.json`, `training_summary.json`,
`eval_results.json`, `run_config.yaml`, adapter files) and the packaged template files."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..families import FamilySpec, family_of_model_type, get_family
from .architecture import card_families, card_parts

_ARTIFACT_DIR_NAMES = ("model", "adapter", "base", "final")
_INCLUDE = re.compile(r'\{% include "([\w.-]+)" %\}')


def card_family(family: str) -> FamilySpec:
    """The model facts (`retvlp.families`) of a family with a card (`architecture.register_card`)."""
    card_parts(family)
    return get_family(family)


def template_path(family: str) -> Path:
    """Path of a family's packaged card template (its `register_card` template)."""
    return Path(str(resources.files("retvlp.model_cards").joinpath(card_parts(family).template)))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def _load_optional(value: Mapping | str | Path | None, default: Path, what: str) -> dict | None:
    """A dict given as such, read from a path, or from `default` when it exists; `{}` means 'none'."""
    if value is None:
        return _read_json(default) if default.is_file() else None
    if isinstance(value, Mapping):
        return dict(value) or None
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    return _read_json(path) or None


def _read_config(checkpoint_dir: Path) -> dict:
    path = checkpoint_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} has no config.json: not a saved retvlp checkpoint")
    config = _read_json(path)
    model_type = config.get("model_type")
    if model_type not in card_families():
        raise ValueError(
            f"cannot render a model card for model_type {model_type!r} (from {path}); "
            f"supported model types: {', '.join(card_families())}"
        )
    return config


def _read_yaml(path: Path) -> dict | None:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return None
    return loaded if isinstance(loaded, dict) else None


def find_run_config(checkpoint_dir: str | Path) -> dict | None:
    """The pretraining loop writes `run_config.yaml` in its output directory, the parent of `final/` (and of
    `checkpoint-*`); other folders are only searched themselves."""
    checkpoint_dir = Path(checkpoint_dir)
    candidates = [checkpoint_dir / "run_config.yaml"]
    name = checkpoint_dir.resolve().name
    if name == "final" or name.startswith("checkpoint-"):
        candidates.append(checkpoint_dir.resolve().parent / "run_config.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return _read_yaml(candidate)
    return None


def _default_model_name(checkpoint_dir: Path, repo_id: str | None) -> str:
    if repo_id:
        return repo_id.rstrip("/").split("/")[-1]
    directory = checkpoint_dir.resolve()
    if directory.name == "final" or directory.name.startswith("checkpoint-"):
        directory = directory.parent
    return directory.name or "retvlp-model"


def template_text(name: str) -> str:
    """A packaged template file of ``retvlp/model_cards/`` (e.g. ``"adapter.md"``, ``"maskedclip.bib"``), with
    its ``{% include "file" %}`` directives expanded and the file's final newline dropped (the files end with
    one; the text they hold does not)."""
    text = Path(str(resources.files("retvlp.model_cards").joinpath(name))).read_text(encoding="utf-8")
    text = text[:-1] if text.endswith("\n") else text
    return _INCLUDE.sub(lambda match: template_text(match.group(1)), text)


def is_hub_id(value: Any) -> bool:
    """Whether `value` reads as a Hub repository id (``"name"`` or ``"owner/name"``) and not as a local path."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(value, str) or not value or Path(value).is_absolute() or value.startswith((".", "~")):
        return False
    if Path(value).exists():
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def _family_of(model_type: str | None) -> str | None:
    spec = family_of_model_type(str(model_type or ""))
    return spec.name if spec is not None and spec.name in card_families() else None


def _class_names(config: Mapping) -> list[str]:
    id2label = config.get("id2label") or {}
    return [str(label) for _, label in sorted(id2label.items(), key=lambda item: int(item[0]))]


def _artifact_name(folder: Path, repo_id: str | None) -> str:
    """The repo name, else the run directory's name for `<run>/model`, `<run>/adapter` and `<run>/base`."""
    if repo_id:
        return repo_id.rstrip("/").split("/")[-1]
    directory = folder.resolve()
    if directory.name in _ARTIFACT_DIR_NAMES and directory.parent.name:
        return (
            f"{directory.parent.name}-{directory.name}" if directory.name == "base" else directory.parent.name
        )
    return directory.name or "retvlp-classifier"


def _read_folder(folder: Path) -> tuple[dict, dict | None]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a saved classifier")
    return _read_json(config_path), _load_optional(None, folder / "training_summary.json", "training summary")


def _adapter_num_labels(adapter_dir: Path) -> int | None:
    """Rows of the saved classifier head (a `modules_to_save` copy), if the adapter carries one."""
    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            if key.endswith("classifier.weight"):
                return int(handle.get_slice(key).get_shape()[0])
    return None


def saved_preprocessing(checkpoint_dir: Path) -> str | None:
    """The saved processor's preprocessing in words: a processor (`processor_config.json`, released checkpoints)
    or an image processor alone (`preprocessor_config.json`, classifiers and adapters)."""
    path = checkpoint_dir / "processor_config.json"
    if path.is_file():
        processor = _read_json(path)
        image = processor.get("image_processor") or {}
    elif (checkpoint_dir / "preprocessor_config.json").is_file():
        processor = {}
        image = _read_json(checkpoint_dir / "preprocessor_config.json")
    else:
        return None
    if image.get("size") is None:
        return None
    parts = [f"images resized to {image.get('size')} px"]
    if image.get("pad_to_square"):
        parts[0] += " (aspect kept, zero-padded to a square)"
    if image.get("crop_to_fov"):
        parts.append("cropped to the field of view")
    parts.append(
        "mean/std normalised" if image.get("do_normalize", True) else "pixels in [0, 1], no normalisation"
    )
    if processor.get("max_length"):
        parts.append(f"text up to {processor['max_length']} tokens")
    return ", ".join(parts)
