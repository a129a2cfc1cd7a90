"""What the generic pretraining loop (`trainer.py`) asks of a model family.

Each family (`maskedclip_task.py`, `keepfit_task.py`, `ibq_task.py`) subclasses [`PretrainTask`]: which
record roles feed which data stream, how to build the tokenizer, processor, model and step batches, which
output fields are loss terms, and what to do after each optimizer step. The loop itself — accumulation,
clipping, mixed precision, checkpoints, exact resume, NaN stops, logs — is shared.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ConfigError, PretrainConfig


def build_model_config(config_class, kwargs: dict, config: PretrainConfig):
    """`config_class(**kwargs)`, with any rejection (unknown field, failed validation) reported as a
    `ConfigError` naming the run file and `model.config`."""
    try:
        return config_class(**kwargs)
    except Exception as error:  # noqa: BLE001 - strict dataclass errors are not ValueErrors; re-raised as one
        raise ConfigError(
            f"{config.source}: model.config does not make a valid {config_class.__name__}: {error}"
        ) from error


def released_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model a pretraining run publishes: `model.released_model` for the `...ForPreTraining` classes,
    the model itself otherwise (the IBQ tokenizer, the MLM text encoder)."""
    return getattr(model, "released_model", model)


class PretrainTask:
    family: str = ""
    # Output fields logged (and summed across micro-steps); the first one is the loss that is optimised.
    loss_terms: tuple[str, ...] = ("loss",)
    # Record role → stream name (None: the family does not use that role), and the streams it cannot lack.
    routing: dict[str, str | None] = {}
    required_streams: tuple[str, ...] = ()
    uses_text: bool = True
    # The contrastive terms the collapse guard watches: (loss field, image-embedding field, text-embedding
    # field, batch key of the labels that make label-guided positives or None for plain CLIP targets).
    contrastive_fields: tuple[tuple[str, str, str, str | None], ...] = ()
    # What the collapse guard's warning suggests turning, family by family.
    collapse_knobs: str = ""
    # Extra arguments of the training forward: the `...ForPreTraining` models always compute their losses; a
    # model that computes them only when asked (the IBQ tokenizer) sets {"return_loss": True}.
    forward_kwargs: dict = {}

    def batch_sizes(self, config: PretrainConfig) -> dict[str, int]:
        raise NotImplementedError

    def text_corpus(self, streams, class_names: list[str], config: PretrainConfig) -> list[str]:
        """Texts a `tokenizer: build` vocabulary is learnt from."""
        return []

    def load_tokenizer(self, config: PretrainConfig, corpus: list[str], output_dir: Path, accelerator):
        if not self.uses_text:
            return None
        from .maskedclip_task import load_or_build_tokenizer

        return load_or_build_tokenizer(config, corpus, output_dir, accelerator)

    def build_processor(self, config: PretrainConfig, tokenizer):
        raise NotImplementedError

    def build_model(self, config: PretrainConfig, tokenizer) -> torch.nn.Module:
        raise NotImplementedError

    def make_batches(self, streams, tokenizer, class_names, processor, model, config, *, rank, world_size):
        raise NotImplementedError

    @staticmethod
    def common_batch_kwargs(image_processor, config: PretrainConfig, rank: int, world_size: int) -> dict:
        """The `StepBatches` arguments every family passes the same way (process, seed, normalisation,
        augmentation; the length is set by the loop once the step count is known)."""
        from .data import image_normalization

        mean, std = image_normalization(image_processor)
        return dict(
            rank=rank,
            world_size=world_size,
            seed=config.run.seed,
            image_mean=mean,
            image_std=std,
            crop_scale=tuple(config.data.crop_scale),
            horizontal_flip=config.data.horizontal_flip,
            length=0,
        )

    def parameter_groups(self, model: torch.nn.Module, weight_decay: float) -> list[dict]:
        """No weight decay on biases, norms, position tables, cls/mask tokens and the logit scale (every tensor
        with fewer than 2 dims, plus the token/position parameters); frozen tensors are left out."""
        decay, no_decay = [], []
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            skip = parameter.ndim < 2 or name.endswith(
                ("cls_token", "mask_token", "position_embeddings", "pos_embed")
            )
            (no_decay if skip else decay).append(parameter)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def after_optimizer_step(self, model: torch.nn.Module) -> None:
        pass

    def outputs_to_terms(self, outputs) -> dict[str, torch.Tensor]:
        return {
            name: getattr(outputs, name)
            for name in self.loss_terms
            if getattr(outputs, name, None) is not None
        }

    def contrastive_terms(self, outputs, batch: dict, accelerator) -> list:
        """The step's contrastive terms with their embeddings and labels gathered over every process (no
        gradient), for the collapse guard; empty when the family has none or the step computed none."""
        from ..maskedclip.contrastive import label_positive_mask
        from .collapse import ContrastiveTerm, label_guided_floor

        terms = []
        for loss_name, image_name, text_name, label_key in self.contrastive_fields:
            loss = getattr(outputs, loss_name, None)
            image, text = getattr(outputs, image_name, None), getattr(outputs, text_name, None)
            if loss is None or image is None or text is None:
                continue
            image, text = accelerator.gather(image.detach()), accelerator.gather(text.detach())
            labels = batch.get(label_key) if label_key else None
            if labels is not None:
                labels = accelerator.gather(labels.to(image.device))
            n = image.shape[0]
            positives = label_positive_mask(labels, labels, n, n, device=image.device)
            value = accelerator.reduce(loss.detach().float(), "mean").item()
            terms.append(ContrastiveTerm(loss_name, value, image, text, label_guided_floor(positives)))
        return terms

    def log_values(self, model: torch.nn.Module) -> dict[str, float]:
        """Extra per-log-step values (e.g. the contrastive temperature)."""
        scale = getattr(released_model(model), "logit_scale", None)
        return {"logit_scale": round(scale.exp().item(), 4)} if scale is not None else {}

    def evaluate(self, model, processor, specs, config, class_names, show_progress=True) -> dict | None:
        """The end-of-run check on `specs["test"]`; None when the family has none."""
        return None

    # Whether `evaluation.features.encode_images` can embed the family's images (the periodic linear probe).
    has_image_encoder: bool = True

    def zero_shot_prompts(self, config: PretrainConfig, class_names: list[str]) -> list[list[str]] | None:
        """Per class (`C` lists), the prompts whose mean text embedding is its zero-shot prototype in the
        evaluations during pretraining (`training/periodic_eval.py`); None for a family without text."""
        if not self.uses_text:
            return None
        return [[template.format(name) for template in config.data.prompt_templates] for name in class_names]


__all__ = ["PretrainTask"]
