"""Publishing retvlp checkpoints and LoRA adapters on the Hugging Face Hub in one commit.

`model.push_to_hub` uploads the weights with a generic README and the processor separately; here the upload
folder is staged first (weights, config with `auto_map`, the modelling code for `trust_remote_code`, processor
and tokenizer files, training summary, and our model card as README.md), then sent with a single
`HfApi.upload_folder` call.

Files of a training run that never go to the Hub (:data:`TRAINING_ONLY_PATTERNS`): `checkpoint-*` and
`.staging-checkpoint-*` directories, `runs/` (TensorBoard), `__pycache__/`, `.git/`, `.cache/`; optimizer and
scheduler states (`optimizer*.bin|.pt`, `scheduler*.bin|.pt`, `scaler*.pt`), RNG states (`rng_state*`,
`random_states_*`), `trainer_state.json`, `training_args.bin`, TensorBoard event files, and any pickle-based
file (`*.pth`, `*.pkl`, `*.pyc`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import OfflineModeIsEnabled

from .model_card import SUPPORTED_MODEL_TYPES, find_run_config, render_adapter_card, render_model_card

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


def _folder_kind(folder: Path) -> str:
    """Return "model" or "adapter"; raise a ValueError naming the folder and the missing files otherwise."""
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
    return "model"


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
) -> Path:
    """Build in `destination` (created; must be empty) exactly the files to upload, and return it.

    Either `model` (saved with `save_pretrained`; a PEFT model saves its adapter) or `folder` (a `final/`-style
    checkpoint or a PEFT adapter folder, copied without the training-only files listed in the module
    docstring); `processor`, when given, is saved on top. The folder must hold weights: config.json +
    model.safetensors (or its shard index), or adapter_config.json + adapter_model.safetensors.

    README.md is `card` when given (a `ModelCard` or its text). Otherwise a card is rendered: the adapter card
    for adapters (`base_model`, default the adapter config's `base_model_name_or_path`), the family card for
    MaskedCLIP / KeepFIT checkpoints; `card_kwargs` go to the renderer (evaluation, data_provenance, repo_id,
    ...). Other checkpoints keep the README.md they came with, if any.
    """
    if (model is None) == (folder is None):
        raise ValueError("pass exactly one of model= or folder=")
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    if any(destination.iterdir()):
        raise ValueError(f"upload staging folder {destination} is not empty")
    source = None
    if folder is not None:
        source = Path(folder)
        if not source.is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {source}")
        _folder_kind(source)  # refuse before copying anything
        _copy_checkpoint(source, destination)
    else:
        model.save_pretrained(destination)
    if processor is not None:
        processor.save_pretrained(destination)
    kind = _folder_kind(destination)

    if card is not None:
        _write_card(card, destination)
        return destination
    kwargs = dict(card_kwargs or {})
    base_model = base_model or kwargs.pop("base_model", None)
    if kind == "adapter":
        rendered = render_adapter_card(destination, base_model=base_model, **kwargs)
        _write_card(rendered, destination)
        return destination
    config = json.loads((destination / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") in SUPPORTED_MODEL_TYPES:
        if source is not None and "run_config" not in kwargs:
            kwargs["run_config"] = find_run_config(source)  # the run directory above a `final/` folder
        _write_card(render_model_card(destination, base_model=base_model, **kwargs), destination)
    return destination


def _upload(
    api: HfApi,
    staged: Path,
    repo_id: str,
    *,
    private: bool | None,
    revision: str | None,
    commit_message: str,
):
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    if revision not in (None, "main"):
        api.create_branch(repo_id=repo_id, branch=revision, repo_type="model", exist_ok=True)
    return api.upload_folder(
        folder_path=str(staged),
        repo_id=repo_id,
        repo_type="model",
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
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
    card_kwargs: Mapping[str, Any] | None = None,
):
    """Push a model (+ processor, remote code and model card) to `repo_id` in one commit.

    Stages the upload with :func:`prepare_upload_folder` in a temporary directory, creates the repository if
    needed (`private` applies to a new repository), creates `revision` as a branch when it is not `main`, and
    uploads the staged folder with ONE `upload_folder` call. Returns what `upload_folder` returns (a
    `CommitInfo`). `api` replaces `HfApi(token=token)` (tests inject a fake); without it, `HF_HUB_OFFLINE=1`
    is an error raised before anything is staged.
    """
    _require_online(api)
    api = api or HfApi(token=token)
    kwargs = {"repo_id": repo_id, **(card_kwargs or {})}
    with tempfile.TemporaryDirectory(prefix="retvlp-upload-") as tmp:
        staged = prepare_upload_folder(
            Path(tmp) / "upload",
            model=model,
            processor=processor,
            folder=folder,
            card=card,
            card_kwargs=kwargs,
        )
        message = commit_message or _default_message(staged, "model")
        return _upload(api, staged, repo_id, private=private, revision=revision, commit_message=message)


def push_adapter_to_hub(
    repo_id: str,
    *,
    adapter_dir: str | Path | None = None,
    peft_model: Any = None,
    base_model: str,
    card: ModelCard | str | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
    card_kwargs: Mapping[str, Any] | None = None,
):
    """Push a PEFT (LoRA) adapter with its adapter card to `repo_id` in one commit.

    `adapter_dir` is a `PeftModel.save_pretrained` folder, or `peft_model` is saved into the staging folder.
    `base_model` (the base checkpoint's Hub id) goes into the card and, in the staged copy only, into
    `adapter_config.json`'s `base_model_name_or_path`, so that `AutoPeftModel` finds the base model.
    Same repository, branch, offline and return-value behaviour as :func:`push_to_hub`.
    """
    _require_online(api)
    if not base_model:
        raise ValueError("base_model= (the Hub id of the base checkpoint) is required for an adapter")
    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="retvlp-upload-") as tmp:
        staged = Path(tmp) / "upload"
        # stage without a card first, point the adapter at its base model, then write the card
        prepare_upload_folder(staged, model=peft_model, folder=adapter_dir, card="")
        if _folder_kind(staged) != "adapter":
            raise ValueError(f"{adapter_dir or 'peft_model'} is not a PEFT adapter (no adapter_config.json)")
        config_path = staged / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
        adapter_config["base_model_name_or_path"] = base_model
        config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if card is None:
            kwargs = {"repo_id": repo_id, **(card_kwargs or {})}
            card = render_adapter_card(staged, base_model=base_model, **kwargs)
        _write_card(card, staged)
        message = commit_message or _default_message(staged, "adapter")
        return _upload(api, staged, repo_id, private=private, revision=revision, commit_message=message)


def _default_message(staged: Path, kind: str) -> str:
    if kind == "adapter":
        return "Upload LoRA adapter and adapter card (retvlp)"
    model_type = None
    config_path = staged / "config.json"
    if config_path.is_file():
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    what = {"maskedclip": "MaskedCLIP", "keepfit": "KeepFIT V2"}.get(model_type, "model")
    extra = " + processor" if (staged / "processor_config.json").is_file() else ""
    return f"Upload {what} model{extra}, remote code and model card (retvlp)"


__all__ = [
    "TRAINING_ONLY_PATTERNS",
    "prepare_upload_folder",
    "push_adapter_to_hub",
    "push_to_hub",
]
