"""The KeepFIT V2 losses (METHODS.md §2; equation numbers of the KeepFIT V2 paper).

    L = L_itc^p + L_itc^m + λ1·L_EK^s + λ2·L_EK^a                                         (Eq. 22)

* L_itc (Eqs. 2–4): [`image_text_contrastive_loss`] — symmetric cross-entropy against soft targets, "same
  category" rows normalised for the categorical public data p, the identity for the elite pairs m. It is the
  label-guided contrastive loss MaskedCLIP uses too (`contrastive.py`, shared by both families); with
  `config.contrastive_loss="sigmoid"` (beyond both papers) SigLIP's pairwise sigmoid loss with the same positives.
* L_EK^s, L_EK^a (Eqs. 20, 21): [`knowledge_refinement_loss`] — the MSE between the knowledge extracted
  from the elite set for each public image and that image's prompt embedding T_p.

Pure tensor math, so the tests check each function against a plain re-implementation. This file is copied
next to saved checkpoints for ``trust_remote_code`` loading: it imports nothing from ``retvlp``.
"""

import torch

from .contrastive import contrastive_loss


def image_text_contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor | None = None,
    gather_distributed: bool = True,
    *,
    kind: str = "softmax",
    logit_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_itc, Eqs. 2–4: ½·CE(softmax_j s_ij, G_i·) + ½·CE(softmax_i s_ij, G_·j) with G the row-normalised
    matching matrix and s_ij = exp(τ)·⟨v_i, t_j⟩.

    With `kind="sigmoid"` (beyond both papers): SigLIP's −(1/B) Σ_ij log σ(±(s_ij + b)), + where G_ij > 0
    (`contrastive.py::label_guided_sigmoid_loss`), `logit_bias` b.

    Args:
        image_embeds, text_embeds: `(batch, dim)` L2-normalised.
        logit_scale: scalar exp(τ), clamped.
        labels: `(batch,)` category ids (−1: none) or `(batch, num_classes)` multi-hot (a row of −1: none) for
            the categorical data — G_ij = 1/n_i when i and j share the category; `None` for image-caption
            pairs — G = I.
    Returns `(loss, logits_per_image, logits_per_text)`, logits `(batch, global_batch)`.
    """
    return contrastive_loss(
        kind,
        image_embeds,
        text_embeds,
        logit_scale,
        logit_bias,
        labels=labels,
        gather_distributed=gather_distributed,
    )


def knowledge_refinement_loss(
    knowledge: torch.Tensor, text_embeds: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """L_EK (Eqs. 20, 21): squared error between extracted knowledge EK `(batch, d)` and the public prompts'
    text embeddings T_p `(batch, d)`. Gradients reach both (no stop-gradient, METHODS §2).

    reduction: `"mean"` over every element (torch's MSELoss, the reference code) or `"sum_per_sample"`
        (Eq. 20 as written: summed over d, averaged over the batch).
    """
    if knowledge.shape != text_embeds.shape:
        raise ValueError(
            f"Knowledge {tuple(knowledge.shape)} and public text embeddings {tuple(text_embeds.shape)} must "
            "have the same shape (one row per public image)."
        )
    squared = (knowledge.float() - text_embeds.float()).pow(2)
    if reduction == "mean":
        return squared.mean()
    if reduction == "sum_per_sample":
        return squared.sum(dim=-1).mean()
    raise ValueError(f'reduction must be "mean" or "sum_per_sample", got {reduction!r}.')


def total_loss(
    terms: dict[str, torch.Tensor], lambda_semantic: float, lambda_appearance: float
) -> torch.Tensor:
    """Eq. 22 over the terms present (`itc_categorical`, `itc_elite`, `semantic`, `appearance`)."""
    weights = {
        "itc_categorical": 1.0,
        "itc_elite": 1.0,
        "semantic": lambda_semantic,
        "appearance": lambda_appearance,
    }
    unknown = set(terms) - set(weights)
    if unknown:
        raise ValueError(f"Unknown KeepFIT loss terms {sorted(unknown)}; known: {sorted(weights)}.")
    return sum(weights[name] * value for name, value in terms.items())


__all__ = ["image_text_contrastive_loss", "knowledge_refinement_loss", "total_loss"]
