"""Collapse guard: is the image–text contrastive branch still learning?

A contrastive pair of towers can fall into a stationary point where every image (or every text) maps to one
embedding. The loss is then exactly ln(global batch) for any targets — with all logits equal, each row's
softmax is uniform — and its gradient with respect to the embeddings vanishes, so nothing pulls the run out
while the masked-modelling terms keep improving and the total loss looks healthy. The guard measures, at every
log step, the spread of the (gathered) embeddings and each contrastive term against ln(B), logs them, and warns
once (or stops the run) when the symptom lasts for a window of log steps.

The sigmoid loss (`contrastive_loss: sigmoid`) of a constant embedding is not ln(B): every logit is then
t·c + b (c the cosine between the one image and the one text embedding), and the loss depends on t, b and the
number of positives. For it the task gives the term's `constant`, the loss of the batch's own mean image and
mean text directions at the step's t and b, and the guard compares against that instead (`<term>/constant`,
`<term>/over_constant`; no ln(B) or label-guided floor figures, which describe the softmax loss only).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)


class ContrastiveCollapseError(RuntimeError):
    """The run stopped because its contrastive embeddings stayed collapsed (`run.collapse_guard: stop`);
    `figures` holds the guard's figures of the step that stopped it."""

    figures: dict[str, float] = {}


def embedding_spread(embeds: torch.Tensor) -> dict[str, float]:
    """Spread of a batch of embeddings `(batch, dim)` (L2-normalised here, whatever they were).

    Returns `mean_cosine` (mean over the off-diagonal pairs of cos(e_i, e_j); 1 for a constant embedding),
    `dim_std` (per-dimension standard deviation over the batch, averaged over dimensions; 0 when constant) and
    `effective_rank` (exp of the entropy of the normalised singular values, RankMe; 1 for a constant embedding,
    at most min(batch, dim)).
    """
    e = torch.nn.functional.normalize(embeds.detach().float(), dim=-1)
    n = e.shape[0]
    if n < 2:
        return {"mean_cosine": float("nan"), "dim_std": float("nan"), "effective_rank": float("nan")}
    total = e.sum(dim=0)
    # Σ_{i≠j} ⟨e_i, e_j⟩ = ‖Σ e_i‖² − Σ ‖e_i‖² (each ‖e_i‖ = 1): no n × n matrix needed.
    mean_cosine = (total.dot(total) - n) / (n * (n - 1))
    singular = torch.linalg.svdvals(e)
    p = singular / singular.sum().clamp_min(1e-12)
    entropy = -(p * p.clamp_min(1e-12).log()).sum()
    return {
        "mean_cosine": float(mean_cosine),
        "dim_std": float(e.std(dim=0).mean()),
        "effective_rank": float(entropy.exp()),
    }


def label_guided_floor(positives: torch.Tensor) -> float:
    """The smallest value a label-guided contrastive term can reach on a batch: the mean entropy of its target
    rows, mean_i ln|P(i)| for the positive mask `(batch, global_batch)` (0 for plain CLIP)."""
    return float(positives.sum(dim=1).float().log().mean())


@dataclass
class ContrastiveTerm:
    """One contrastive loss of a step and the embeddings it compared (already gathered across processes)."""

    name: str  # the loss field, e.g. "loss_clip"
    value: float
    image_embeds: torch.Tensor  # (global_batch, dim)
    text_embeds: torch.Tensor  # (global_batch, dim)
    floor: float | None = None  # label-guided minimum on this batch, when known
    # The loss of a constant embedding, when it is not the softmax loss's ln(global batch) (the sigmoid loss).
    constant: float | None = None


@dataclass
class CollapseGuard:
    """Watches the contrastive terms at each log step; see `run.collapse_*` in the run config.

    A log step is *collapsed* when, for some term, the image or text embeddings have a mean pairwise cosine of
    at least `cosine_threshold`, or the term is within `loss_margin` nats of ln(B) on either side (of the term's
    `constant`, when it has one: the sigmoid loss). When `window`
    consecutive log steps are collapsed (and at least `grace_steps` optimizer steps have run), `action` decides:
    "warn" logs one warning for the run, "stop" raises `ContrastiveCollapseError`, "off" only records figures.
    """

    action: str = "warn"
    window: int = 5
    cosine_threshold: float = 0.99
    loss_margin: float = 0.01
    grace_steps: int = 0
    knobs: str = ""
    streak: list[int] = field(default_factory=list)
    warned: bool = False

    def state_dict(self) -> dict:
        """What a resumed run needs to continue the window exactly (kept in training checkpoints)."""
        return {"streak": list(self.streak), "warned": self.warned}

    def load_state_dict(self, state: dict) -> None:
        self.streak = [int(step) for step in state.get("streak", [])]
        self.warned = bool(state.get("warned", False))

    def measure(self, terms: list[ContrastiveTerm]) -> dict[str, float]:
        """The figures logged for each term: `<term>/ln_batch`, `<term>/over_ln_batch` (or, for a term with a
        `constant`, `<term>/constant`, `<term>/over_constant`), `<term>/floor`, and the image / text embeddings'
        `mean_cosine`, `dim_std`, `effective_rank`."""
        figures: dict[str, float] = {}
        for term in terms:
            if term.constant is not None:
                figures[f"{term.name}/constant"] = round(term.constant, 6)
                figures[f"{term.name}/over_constant"] = (
                    round(term.value / term.constant, 6) if term.constant else 1.0
                )
            else:
                ln_batch = math.log(term.image_embeds.shape[0])
                figures[f"{term.name}/ln_batch"] = round(ln_batch, 6)
                figures[f"{term.name}/over_ln_batch"] = round(term.value / ln_batch, 6) if ln_batch else 1.0
            if term.floor is not None:
                figures[f"{term.name}/floor"] = round(term.floor, 6)
            for side, embeds in (("image", term.image_embeds), ("text", term.text_embeds)):
                for key, value in embedding_spread(embeds).items():
                    figures[f"{term.name}/{side}_{key}"] = round(value, 6)
        return figures

    def collapsed(self, terms: list[ContrastiveTerm], figures: dict[str, float]) -> list[str]:
        """The symptoms seen at this log step (empty: healthy)."""
        symptoms = []
        for term in terms:
            cosines = {side: figures[f"{term.name}/{side}_mean_cosine"] for side in ("image", "text")}
            for side, cosine in cosines.items():
                if cosine >= self.cosine_threshold:
                    rank = figures[f"{term.name}/{side}_effective_rank"]
                    symptoms.append(
                        f"{term.name}: {side} embeddings nearly constant (mean pairwise cosine {cosine:.4f}, "
                        f"effective rank {rank:.2f})"
                    )
            if term.constant is not None:
                if abs(term.value - term.constant) <= self.loss_margin:
                    symptoms.append(
                        f"{term.name} = {term.value:.4f} ≈ {term.constant:.4f}, the value of a constant embedding "
                        "at this step's logit scale and bias"
                    )
                continue
            ln_batch = figures[f"{term.name}/ln_batch"]
            if ln_batch and abs(term.value - ln_batch) <= self.loss_margin:
                symptoms.append(
                    f"{term.name} = {term.value:.4f} ≈ ln(B = {term.image_embeds.shape[0]}) = {ln_batch:.4f}, "
                    "the value of a constant embedding"
                )
        return symptoms

    def update(self, step: int, terms: list[ContrastiveTerm]) -> dict[str, float]:
        """Record one log step; returns the figures to log. Warns or raises when the window is full."""
        if not terms:
            return {}
        figures = self.measure(terms)
        symptoms = self.collapsed(terms, figures)
        self.streak = self.streak + [step] if symptoms else []
        figures["collapse/streak"] = len(self.streak)
        if (
            self.action != "off"
            and len(self.streak) >= self.window
            and step >= self.grace_steps
            and not (self.warned and self.action == "warn")
        ):
            message = (
                f"Contrastive collapse: for {len(self.streak)} log steps (optimizer steps "
                f"{self.streak[0]}–{step}) " + "; ".join(symptoms) + ". The image–text branch has stopped "
                "learning (its gradient vanishes at a constant embedding) even if the other losses improve."
                + (f" Knobs to turn: {self.knobs}" if self.knobs else "")
            )
            if self.action == "stop":
                error = ContrastiveCollapseError(message + " (run.collapse_guard: stop)")
                error.figures = figures  # the caller logs them before the run ends
                raise error
            logger.warning(message)
            self.warned = True
            figures["collapse/warned"] = 1
        return figures


__all__ = [
    "CollapseGuard",
    "ContrastiveCollapseError",
    "ContrastiveTerm",
    "embedding_spread",
    "label_guided_floor",
]
