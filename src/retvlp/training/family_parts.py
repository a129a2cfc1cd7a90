"""The training layer's part of each model family: its `PretrainTask` and its run-config section (the dataclass
of the run file's `<family>:` section, with its `batch_keys`).

Each task file registers its own family at its end (`register_training("maskedclip", task=MaskedCLIPTask,
section=MaskedCLIPSection)`), next to the task and the stream routing it defines; the model facts (classes,
Auto registration, remote code) stay in `retvlp.families`. This module imports nothing of the package, so the
run config (`training/config.py`) and the loop (`training/trainer.py`) look a family up here by name without
importing the task files. The built-in task files (every `retvlp.training` module whose name ends in `_task`:
found, not listed) are imported on the first look-up through a loader that `retvlp.training` (the package,
above them all) hands down (`set_builtin_loader`); a family defined elsewhere (the toy family of
`tests/test_family_registry.py`) calls `register_training` itself.

A section may also live in its own light module (`<name>_section.py`, calling `register_section`): reading a
run file then needs only those (`section_of`), not the task files, which import torch and the models — a typo
in a run file is reported in a second. A family whose section is only in its task file still works: its task
files are imported then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainingParts:
    """One family's training parts: `task`, a `PretrainTask` subclass (the loop makes one per run), and
    `section`, the `training.config.FamilySection` dataclass of its run-config section (None: the family reads
    nothing beyond the common sections)."""

    family: str
    task: Any
    section: Any = None


_PARTS: dict[str, TrainingParts] = {}
_SECTIONS: dict[str, Any] = {}
_BUILTIN_LOADER: list[Callable[[], None]] = []
_SECTION_LOADER: list[Callable[[], None]] = []


def set_builtin_loader(loader: Callable[[], None], section_loader: Callable[[], None] | None = None) -> None:
    """Install the function that imports the built-in task files (each registers its family) and, optionally,
    the one that imports the built-in section files; each runs once, on the first look-up that needs it."""
    _BUILTIN_LOADER[:] = [loader]
    _SECTION_LOADER[:] = [section_loader] if section_loader is not None else []


def _load_sections() -> None:
    while _SECTION_LOADER:
        _SECTION_LOADER.pop()()


def register_section(family: str, section: Any) -> None:
    """Register `family`'s run-config section from a light module (no torch): `section_of` finds it without
    importing the family's task file."""
    if _SECTIONS.get(family, section) is not section:
        raise ValueError(f"the run-config section of model family {family!r} is already registered.")
    _SECTIONS[family] = section


def section_of(family: str) -> Any:
    """`family`'s run-config section dataclass (None: it reads nothing beyond the common sections), importing
    the task files only for a family whose section is registered nowhere else."""
    _load_sections()
    if family in _SECTIONS:
        return _SECTIONS[family]
    parts = training_parts(family)
    return None if parts is None else parts.section


def _load_builtins() -> None:
    while _BUILTIN_LOADER:
        _BUILTIN_LOADER.pop()()


def register_training(
    family: str, *, task: Any, section: Any = None, exist_ok: bool = False
) -> TrainingParts:
    """Register `family`'s pretraining task and run-config section; a second registration of a name is an
    error unless `exist_ok`."""
    if family in _PARTS and not exist_ok:
        raise ValueError(f"the training parts of model family {family!r} are already registered.")
    parts = _PARTS[family] = TrainingParts(
        family, task, section if section is not None else _SECTIONS.get(family)
    )
    return parts


def unregister_training(family: str) -> None:
    _PARTS.pop(family, None)


def training_parts(family: str) -> TrainingParts | None:
    """`family`'s training parts; None when it registers none."""
    _load_builtins()
    return _PARTS.get(family)


__all__ = [
    "TrainingParts",
    "register_section",
    "register_training",
    "section_of",
    "set_builtin_loader",
    "training_parts",
    "unregister_training",
]
