"""Publishing retvlp checkpoints, fine-tuned classifiers and LoRA adapters on the Hugging Face Hub in one commit.

`model.push_to_hub` uploads the weights with a generic README and the processor separately; here the upload
folder is staged first (weights, config with `auto_map`, the modelling code for `trust_remote_code`, processor
and tokenizer files, training summary, and our model card as README.md), checked (every `auto_map` entry names
a class in a file of the folder, every code file finds its relative imports), then sent with a single
`HfApi.upload_folder` call. A dry run (`push_to_hub(..., dry_run=DIR)`) runs the same staging into DIR and stops
before the upload, so DIR holds byte for byte what the push would send.

Three kinds of folders (:func:`folder_kind`): a released checkpoint ("model": the family model card), a
fine-tuned classifier ("classifier": `architectures` ends in `ForImageClassification`; the classifier card) and
a PEFT adapter ("adapter": the adapter card; `base_model_name_or_path` must end up a Hub id).

Files of a training run that never go to the Hub (:data:`TRAINING_ONLY_PATTERNS`): `checkpoint-*` and
`.staging-checkpoint-*` directories, `runs/` (TensorBoard), `__pycache__/`, `.git/`, `.cache/`; optimizer and
scheduler states (`optimizer*.bin|.pt`, `scheduler*.bin|.pt`, `scaler*.pt`), RNG states (`rng_state*`,
`random_states_*`), `trainer_state.json`, `training_args.bin`, TensorBoard event files, and any pickle-based
file (`*.pth`, `*.pkl`, `*.pyc`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import OfflineModeIsEnabled

from .evaluation.finetune import save_finetuned
from .families import family_of_model_type
from .model_card import (
    card_families,
    find_run_config,
    is_hub_id,
    render_adapter_card,
    render_classifier_card,
    render_model_card,
)

TRAINING_ONLY_DIRS = ("checkpoint-*", ".staging-checkpoint-*", "runs", "__pycache__", ".git", ".cache")
TRAINING_ONLY_FILES = (
    "optimizer*.bin",
    "optimizer*.pt",
    "scheduler*.bin",
    "scheduler*.pt",
    "scaler*.pt",
    "rng_state*",
    "random_states_*",
    "trainer_state.json",
    "training_args.bin",
    "events.out.tfevents.*",
    "*.pth",
    "*.pkl",
    "*.pyc",
    ".DS_Store",
)
TRAINING_ONLY_PATTERNS = TRAINING_ONLY_DIRS + TRAINING_ONLY_FILES

_TRUE = {"1", "true", "yes", "on"}
# Files whose `auto_map` a loader follows with trust_remote_code.
AUTO_MAP_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer_config.json")
_CLASS_DEFINITION = r"^class\s+{}\b"

logger = logging.getLogger(__name__)


def _offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _require_online(api: Any) -> None:
    if api is None and _offline():
        raise OfflineModeIsEnabled("HF_HUB_OFFLINE=1: unset it to push (nothing was staged or uploaded)")


def _excluded(name: str, is_dir: bool) -> bool:
    patterns = TRAINING_ONLY_DIRS if is_dir else TRAINING_ONLY_FILES
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def _copy_checkpoint(source: Path, destination: Path) -> None:
    for entry in sorted(source.iterdir()):
        if _excluded(entry.name, entry.is_dir()):
            continue
        target = destination / entry.name
        if entry.is_dir():
            target.mkdir()
            _copy_checkpoint(entry, target)
        else:
            shutil.copy2(entry, target)  # follows symlinks: the upload gets the file content


def folder_kind(folder: str | Path) -> str:
    """The kind of checkpoint `folder` holds: "adapter", "classifier" or "model". Raises a ValueError naming the
    folder and the missing files when it holds no weights."""
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        if not (folder / "adapter_model.safetensors").is_file():
            raise ValueError(
                f"{folder} has adapter_config.json but no adapter_model.safetensors: nothing to push"
            )
        return "adapter"
    weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    missing = [
        name
        for name, ok in (("config.json", (folder / "config.json").is_file()), ("model.safetensors", weights))
        if not ok
    ]
    if missing:
        raise ValueError(
            f"{folder} is not a checkpoint to push: missing {' and '.join(missing)} "
            "(a model needs config.json + model.safetensors, an adapter adapter_config.json + "
            "adapter_model.safetensors)"
        )
    architectures = _read_json(folder / "config.json").get("architectures") or []
    return "classifier" if any(str(a).endswith("ForImageClassification") for a in architectures) else "model"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    # The layout transformers writes its own JSON files in.
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _auto_maps(data: dict) -> list[dict]:
    """The `auto_map` of a saved JSON file and of the parts nested in it (a processor's image processor)."""
    maps = [data["auto_map"]] if isinstance(data.get("auto_map"), dict) else []
    maps += [
        v["auto_map"] for v in data.values() if isinstance(v, dict) and isinstance(v.get("auto_map"), dict)
    ]
    return maps


def _class_refs(value) -> list[str]:
    """The local `module.Class` references of one `auto_map` value (a string, a [slow, fast] pair or a
    {backend: ref} dict); references into another repository (`repo--module.Class`) are not files here."""
    if isinstance(value, str):
        return [] if "--" in value else [value]
    if isinstance(value, (list, tuple)):
        return [ref for item in value for ref in _class_refs(item)]
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in _class_refs(item)]
    return []


def _missing_class(folder: Path, ref: str) -> str | None:
    module, _, name = ref.rpartition(".")
    path = folder / f"{module.replace('.', '/')}.py"
    if not path.is_file():
        return f"{path.name}, which is not in the folder"
    if not re.search(
        _CLASS_DEFINITION.format(re.escape(name)), path.read_text(encoding="utf-8"), re.MULTILINE
    ):
        return f"{path.name}, which defines no class {name}"
    return None


def portability_problems(folder: str | Path) -> list[str]:
    """Why `folder` would not load everywhere it is meant to: `auto_map` entries naming a file or class the folder
    lacks, code files whose relative imports are missing, a classifier without an image processor or without
    class names. Empty when it is self-contained."""
    from transformers.dynamic_module_utils import get_relative_imports

    folder = Path(folder)
    problems = []
    for name in AUTO_MAP_FILES:
        if not (folder / name).is_file():
            continue
        for auto_map in _auto_maps(_read_json(folder / name)):
            for auto_class, value in auto_map.items():
                for ref in _class_refs(value):
                    missing = _missing_class(folder, ref)
                    if missing:
                        problems.append(f"{name}: auto_map {auto_class} names {missing}")
    for code in sorted(folder.glob("*.py")):
        for module in get_relative_imports(str(code)):
            if not (folder / f"{module}.py").is_file():
                problems.append(f"{code.name} imports .{module}, which is not in the folder")
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    classifier = any(str(a).endswith("ForImageClassification") for a in config.get("architectures") or [])
    if classifier and not (folder / "adapter_config.json").is_file():
        if not (
            (folder / "preprocessor_config.json").is_file() or (folder / "processor_config.json").is_file()
        ):
            problems.append(
                "no image processor (preprocessor_config.json): pipeline('image-classification') cannot load it; "
                "save the base checkpoint's image processor into the folder"
            )
    if classifier:
        labels = [str(label) for label in (config.get("id2label") or {}).values()]
        if not labels or all(re.fullmatch(r"LABEL_\d+", label) for label in labels):
            problems.append("config.json has no class names (id2label is LABEL_0, LABEL_1, ...)")
    return problems


def _drop_dangling_image_processor_entries(folder: Path) -> None:
    """An image processor loaded from a processor's files and saved on its own keeps that processor's `auto_map`
    entry (e.g. `AutoProcessor` → processing_maskedclip.py) without the file; loaders then ask to run code that
    is not there. The entry describes nothing in this folder: drop it from the staged copy."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return
    data = _read_json(path)
    auto_map = data.get("auto_map")
    if not isinstance(auto_map, dict):
        return
    kept = {
        key: value
        for key, value in auto_map.items()
        if not any(_missing_class(folder, r) for r in _class_refs(value))
    }
    if kept == auto_map:
        return
    logger.warning(
        "preprocessor_config.json: dropping auto_map entries naming files not in the folder: %s",
        sorted(set(auto_map) - set(kept)),
    )
    if kept:
        data["auto_map"] = kept
    else:
        data.pop("auto_map")
    _write_json(path, data)


def _point_adapter_at(folder: Path, base_model: str | None) -> str:
    """Make the staged adapter name its base by Hub id (`base_model`, else the stored one if it is a Hub id)."""
    path = folder / "adapter_config.json"
    adapter_config = _read_json(path)
    stored = adapter_config.get("base_model_name_or_path")
    target = base_model or stored
    if not is_hub_id(target):
        raise ValueError(
            f"the adapter's base model is {stored!r}, which is not a Hub id: pass base_model= (--base-model), "
            "the Hub id of the checkpoint it adapts"
        )
    if target != stored:
        adapter_config["base_model_name_or_path"] = target
        _write_json(path, adapter_config)
    return target


def _write_card(card: ModelCard | str, destination: Path) -> None:
    (destination / "README.md").write_text(str(card), encoding="utf-8")


def prepare_upload_folder(
    destination: str | Path,
    *,
    model: Any = None,
    processor: Any = None,
    folder: str | Path | None = None,
    card: ModelCard | str | None = None,
    base_model: str | None = None,
    card_kwargs: Mapping[str, Any] | None = None,
    space_app: Mapping[str, Any] | None = None,
) -> Path:
    """Build in `destination` (created; must be empty) exactly the files to upload, and return it.

    Either `model` (saved with `save_pretrained`; a PEFT model saves its adapter) or `folder` (a `final/`-style
    checkpoint, a fine-tuned classifier or a PEFT adapter folder, copied without the training-only files listed
    in the module docstring); `processor`, when given, is saved on top. The folder must hold weights:
    config.json + model.safetensors (or its shard index), or adapter_config.json + adapter_model.safetensors.

    An adapter's `base_model_name_or_path` becomes `base_model` (required unless the stored value is already a
    Hub id). The staged folder is then checked with :func:`portability_problems` (a ValueError lists what is
    wrong); a stale `auto_map` entry of an image processor naming a missing file is dropped first.

    README.md is `card` when given (a `ModelCard` or its text). Otherwise a card is rendered: the adapter card,
    the classifier card, or the family card for MaskedCLIP / KeepFIT checkpoints; `card_kwargs` go to the
    renderer (evaluation, data_provenance, repo_id, ...). Other checkpoints keep the README.md they came with.

    `space_app` (keyword arguments of `evaluation.demo_app.write_space_files`: classes, coverage,
    retvlp_requirement) adds the page's `app.py`, `requirements.txt` and the Space front matter of README.md, so
    the folder runs as a Gradio Space on its own files.
    """
    if (model is None) == (folder is None):
        raise ValueError("pass exactly one of model= or folder=")
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    if any(destination.iterdir()):
        raise ValueError(f"upload staging folder {destination} is not empty")
    try:
        _stage(destination, model, processor, folder, card, base_model, dict(card_kwargs or {}))
        if space_app is not None:
            from .evaluation.demo_app import write_space_files

            write_space_files(destination, **dict(space_app))
    except BaseException:
        # Leave the (then empty) folder reusable: a dry run that failed can be rerun into the same DIR.
        for entry in destination.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        raise
    return destination


def _stage(destination: Path, model, processor, folder, card, base_model, kwargs: dict) -> None:
    source = None
    if folder is not None:
        source = Path(folder)
        if not source.is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {source}")
        folder_kind(source)  # refuse before copying anything
        _copy_checkpoint(source, destination)
    elif hasattr(model, "peft_config"):
        # A live PeftModel: staged as `retvlp evaluate` saves adapters (PEFT files + the classifier's config with
        # the class names, its code and the image processor), not as PEFT's bare files.
        if not (base_model or kwargs.get("base_model")):
            raise ValueError("pushing a PEFT model needs base_model= (the base checkpoint's Hub id)")
        save_finetuned(
            model,
            destination,
            image_processor=getattr(processor, "image_processor", processor),
            base_model=base_model or kwargs.get("base_model"),
        )
        processor = None
    else:
        model.save_pretrained(destination)
    if processor is not None:
        processor.save_pretrained(destination)
    kind = folder_kind(destination)
    base_model = base_model or kwargs.pop("base_model", None)
    if kind == "adapter":
        base_model = _point_adapter_at(destination, base_model)
    _drop_dangling_image_processor_entries(destination)
    problems = portability_problems(destination)
    if problems:
        raise ValueError(
            f"{source or type(model).__name__} would not load from the Hub: " + "; ".join(problems)
        )

    if card is not None:
        _write_card(card, destination)
    elif kind == "adapter":
        _write_card(render_adapter_card(destination, base_model=base_model, **kwargs), destination)
    elif kind == "classifier":
        _write_card(render_classifier_card(destination, base_model=base_model, **kwargs), destination)
    elif _read_json(destination / "config.json").get("model_type") in card_families():
        if source is not None and "run_config" not in kwargs:
            kwargs["run_config"] = find_run_config(source)  # the run directory above a `final/` folder
        _write_card(render_model_card(destination, base_model=base_model, **kwargs), destination)
        if kwargs.get("evaluation") and kwargs.get("evaluated_model"):
            # `retvlp evaluate --maps` wrote evidence maps next to the results: the card shows one
            evidence = Path(kwargs["evaluation"]).parent / "evidence" / str(kwargs["evaluated_model"])
            add_evidence_map(destination, evidence)


EVIDENCE_MAP_FILE = "evidence_map.png"
_OUTCOME = {"correct": "that it classified correctly ", "wrong": "that it got wrong "}


def add_evidence_map(destination: Path, evidence: Path) -> Path | None:
    """Copy one evidence map of `evidence/` (`retvlp evaluate --maps`: `<class>_{correct,wrong}_<i>.png`; the
    first correct one, else the first) into the staged folder as `evidence_map.png` and show it in README.md
    before "## Intended use" (or at the end); returns the copy, None when there is no map."""
    maps = sorted(evidence.glob("*_correct_*.png")) or sorted(evidence.glob("*.png"))
    readme = destination / "README.md"
    if not maps or not readme.is_file():
        return None
    copy = destination / EVIDENCE_MAP_FILE
    shutil.copyfile(maps[0], copy)
    true_class, _, outcome = maps[0].stem.rpartition("_")[0].rpartition("_")
    section = (
        "## Evidence map\n\n"
        f"![evidence map: {maps[0].stem}]({EVIDENCE_MAP_FILE})\n\n"
        f"Where the model's zero-shot evidence lies on one test photograph of *{true_class or maps[0].stem}* "
        f"{_OUTCOME.get(outcome, '')}(`retvlp evaluate --maps`; the title names the true class → the class the "
        "model chose, whose map is drawn): patch-text similarity (MaskedCLIP) or the spatial class map (KeepFIT), "
        "over the photograph. A map shows where the score comes from, not why; the evaluation report holds the "
        "others, wrong answers included.\n\n"
    )
    text = readme.read_text(encoding="utf-8")
    at = text.find("\n## Intended use")
    text = text + "\n" + section if at == -1 else text[: at + 1] + section + text[at + 1 :]
    readme.write_text(text, encoding="utf-8")
    return copy


def _upload(
    api: HfApi,
    staged: Path,
    repo_id: str,
    *,
    private: bool | None,
    revision: str | None,
    commit_message: str,
    repo_type: str = "model",
):
    space = {"space_sdk": "gradio"} if repo_type == "space" else {}
    api.create_repo(repo_id=repo_id, repo_type=repo_type, private=private, exist_ok=True, **space)
    if revision not in (None, "main"):
        api.create_branch(repo_id=repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    return api.upload_folder(
        folder_path=str(staged),
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision,
        commit_message=commit_message,
    )


def push_to_hub(
    repo_id: str,
    *,
    model: Any = None,
    processor: Any = None,
    folder: str | Path | None = None,
    card: ModelCard | str | None = None,
    base_model: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
    card_kwargs: Mapping[str, Any] | None = None,
    dry_run: str | Path | None = None,
    space_app: Mapping[str, Any] | None = None,
):
    """Push a released checkpoint, a fine-tuned classifier or a LoRA adapter (+ processor, remote code and
    model card) to `repo_id` in one commit.

    Stages the upload with :func:`prepare_upload_folder` in a temporary directory, creates the repository if
    needed (`private` applies to a new repository), creates `revision` as a branch when it is not `main`, and
    uploads the staged folder with ONE `upload_folder` call. Returns what `upload_folder` returns (a
    `CommitInfo`). `base_model` is the Hub id of an adapter's base (or of a classifier's, for its card).

    With `dry_run=DIR` the same staging runs into DIR (created, must be empty) and nothing is uploaded; returns
    DIR. `api` replaces `HfApi(token=token)` (tests inject a fake); without it, `HF_HUB_OFFLINE=1` is an error
    raised before anything is staged (a dry run needs no network).

    `space_app` (see :func:`prepare_upload_folder`) stages the page as well and makes `repo_id` a Gradio Space
    (repository type "space", created with the gradio SDK): the Space holds the model and serves the page.
    """
    if dry_run is None:
        _require_online(api)
    kwargs = {"repo_id": repo_id, **(card_kwargs or {})}

    def stage(destination: Path) -> Path:
        return prepare_upload_folder(
            destination,
            model=model,
            processor=processor,
            folder=folder,
            card=card,
            base_model=base_model,
            card_kwargs=kwargs,
            space_app=space_app,
        )

    if dry_run is not None:
        return stage(Path(dry_run))
    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="retvlp-upload-") as tmp:
        staged = stage(Path(tmp) / "upload")
        message = commit_message or _default_message(staged)
        if space_app is not None:
            message = commit_message or message.replace(" (retvlp)", " as a Gradio Space (retvlp)")
        return _upload(
            api,
            staged,
            repo_id,
            private=private,
            revision=revision,
            commit_message=message,
            repo_type="space" if space_app is not None else "model",
        )


def push_adapter_to_hub(
    repo_id: str,
    *,
    adapter_dir: str | Path | None = None,
    peft_model: Any = None,
    processor: Any = None,
    base_model: str | None = None,
    card: ModelCard | str | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
    card_kwargs: Mapping[str, Any] | None = None,
    dry_run: str | Path | None = None,
):
    """Push a PEFT (LoRA) adapter with its adapter card to `repo_id` in one commit: :func:`push_to_hub` for an
    adapter, which it checks first.

    `adapter_dir` is a `PeftModel.save_pretrained` folder (or a retvlp `adapter/` folder), or `peft_model` is
    saved into the staging folder as `retvlp evaluate` saves adapters (with the classifier's config and code, and
    `processor`, the image processor, which a portable adapter needs). `base_model` (the base checkpoint's Hub id; may be left out when the adapter
    already names one) goes into the card and, in the staged copy only, into `adapter_config.json`'s
    `base_model_name_or_path`, so that PEFT finds the base model.
    """
    if dry_run is None:
        _require_online(api)
    if adapter_dir is not None and Path(adapter_dir).is_dir() and folder_kind(adapter_dir) != "adapter":
        raise ValueError(f"{adapter_dir} is not a PEFT adapter (no adapter_config.json)")
    if peft_model is not None and not hasattr(peft_model, "peft_config"):
        raise ValueError(f"peft_model is a {type(peft_model).__name__}, not a PEFT model")
    return push_to_hub(
        repo_id,
        model=peft_model,
        processor=processor,
        folder=adapter_dir,
        card=card,
        base_model=base_model,
        private=private,
        token=token,
        revision=revision,
        commit_message=commit_message,
        api=api,
        card_kwargs=card_kwargs,
        dry_run=dry_run,
    )


def _default_message(staged: Path) -> str:
    kind = folder_kind(staged)
    if kind == "adapter":
        return "Upload LoRA adapter and adapter card (retvlp)"
    model_type = _read_json(staged / "config.json").get("model_type", "")
    family = family_of_model_type(str(model_type))
    what = family.title if family is not None and family.name in card_families() else "model"
    if kind == "classifier":
        return f"Upload fine-tuned {what} classifier + image processor, remote code and model card (retvlp)"
    extra = " + processor" if (staged / "processor_config.json").is_file() else ""
    return f"Upload {what} model{extra}, remote code and model card (retvlp)"


__all__ = [
    "TRAINING_ONLY_PATTERNS",
    "folder_kind",
    "portability_problems",
    "prepare_upload_folder",
    "push_adapter_to_hub",
    "push_to_hub",
]
