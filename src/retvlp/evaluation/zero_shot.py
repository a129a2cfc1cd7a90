"""Zero-shot classification (METHODS §3): each class's prototype is the mean text embedding of its prompt
ensemble (the class name and its expert descriptions in every template of the modality, `retvlp.prompts`);
an image's class probabilities are softmax(exp(τ)·⟨image, prototype⟩) over the classes.

Multi-label data: the same probabilities score every label for ROC-AUC / PR-AUC; a label is predicted present
when its probability exceeds the uniform 1/C (our choice for the threshold metrics; a CLIP-style softmax has no
natural per-label 0.5).
"""

from __future__ import annotations

import numpy as np

from ..prompts import ExpertKnowledge, class_prompts


def prompt_ensembles(
    class_names: list[str],
    *,
    modality: str = "CFP",
    knowledge: ExpertKnowledge | None = None,
    include_descriptions: bool = True,
    templates: list[str] | None = None,
) -> list[list[str]]:
    """The prompts of each class: `retvlp.prompts.class_prompts`, or with `templates` given each template
    (holding one `{}`) filled with the class name only."""
    if templates is not None:
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise ValueError(f"Every zero-shot template must hold exactly one {{}}, got {templates}.")
        return [[template.format(name) for template in templates] for name in class_names]
    return [
        class_prompts(name, modality=modality, knowledge=knowledge, include_descriptions=include_descriptions)
        for name in class_names
    ]


def zero_shot_probabilities(
    image_embeds: np.ndarray, prototypes: np.ndarray, logit_scale: float
) -> np.ndarray:
    """`(N, P)` normalised image embeddings × `(C, P)` prototypes → `(N, C)` class probabilities."""
    if image_embeds.ndim != 2 or prototypes.ndim != 2 or image_embeds.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"Image embeddings {image_embeds.shape} and class prototypes {prototypes.shape} must be (N, P) and "
            "(C, P) with the same P."
        )
    logits = logit_scale * (image_embeds.astype(np.float64) @ prototypes.astype(np.float64).T)
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def multi_label_threshold(num_classes: int) -> float:
    return 1.0 / num_classes
