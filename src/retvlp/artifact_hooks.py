"""What the layers above evaluation add to a saved fine-tuned artifact: the model card (`retvlp.model_card`) and
the portability check (`retvlp.hub`).

The hooks live here, in the foundation layer, so that the package root can install them at ``import retvlp``
without importing the evaluation code that reads them (`retvlp.evaluation.finetune`); evaluation never imports
the card or hub layer either."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ArtifactHooks:
    """The card renderer and the portability check of saved fine-tuned artifacts (None: not installed)."""

    render_card: Callable[[Path], object] | None = None
    portability_problems: Callable[[Path], list[str]] | None = None


ARTIFACT_HOOKS = ArtifactHooks()


def install_artifact_hooks(render_card, portability_problems) -> None:
    ARTIFACT_HOOKS.render_card = render_card
    ARTIFACT_HOOKS.portability_problems = portability_problems


__all__ = ["ARTIFACT_HOOKS", "ArtifactHooks", "install_artifact_hooks"]
