"""Pretraining: run configuration, data streams, atomic checkpoints and the one Accelerate loop, with one
`PretrainTask` per model family (MaskedCLIP, KeepFIT V2, IBQ tokenizer, text MLM). Evaluations are handed in
from above (`EvaluationHooks`; `retvlp.run.pretrain_and_evaluate`)."""

import importlib
import pkgutil

from ..lazy import lazy_package
from .family_parts import set_builtin_loader


def _import_modules_ending(suffix: str) -> None:
    found = pkgutil.iter_modules(__path__, __name__ + ".")
    for module in sorted(found, key=lambda m: m.name):
        if module.name.endswith(suffix):
            importlib.import_module(module.name)


def _import_builtin_families() -> None:
    """Import the built-in task files: every module of this package whose name ends in `_task`
    (`maskedclip_task.py`, ...; found, not listed); each registers its family's training parts
    (`family_parts.register_training`)."""
    _import_modules_ending("_task")


def _import_builtin_sections() -> None:
    """Import the built-in run-config sections: every module whose name ends in `_section` (light: no torch)."""
    _import_modules_ending("_section")


set_builtin_loader(_import_builtin_families, _import_builtin_sections)

# name → module, imported on first use (`retvlp.lazy.lazy_package`): `from retvlp.training import
# PretrainConfig` reads a run file without loading torch, accelerate or the models.
lazy_package(
    __name__,
    {
        "ContrastiveCollapseError": ".collapse",
        "ConfigError": ".config",
        "PretrainConfig": ".config",
        "EvaluationHooks": ".hooks",
        "PREEMPTED_EXIT_CODE": ".preemption",
        "PreemptedError": ".preemption",
        "PretrainTask": ".task",
        "NonFiniteLossError": ".trainer",
        "PretrainResult": ".trainer",
        "build_task": ".trainer",
        "pretrain": ".trainer",
    },
)

__all__ = [
    "ConfigError",
    "ContrastiveCollapseError",
    "EvaluationHooks",
    "NonFiniteLossError",
    "PREEMPTED_EXIT_CODE",
    "PreemptedError",
    "PretrainConfig",
    "PretrainResult",
    "PretrainTask",
    "build_task",
    "pretrain",
]
