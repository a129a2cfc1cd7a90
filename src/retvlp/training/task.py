"""What the one pretraining loop (`trainer.py`) asks of a model family.

Each family (`maskedclip_task.py`, `keepfit_task.py`, `ibq_task.py`, `text_mlm.py`) subclasses
[`PretrainTask`]. The loop calls, in this order:

1. `prepare_data` → [`RunData`] (image families: validated, cached streams of `data.train`; text: a corpus);
2. `text_corpus`, `load_tokenizer`, `build_processor`, `build_model` (after `torch.manual_seed(run.seed)`),
   `make_batches` (a step-batches dataset: `samples_per_micro_step`, `micro_steps_per_epoch`, `log_epochs`,
   `state_epochs`), `learning_rate`, `parameter_groups`;
3. on resume, `check_resume(checkpoint, state)`;
4. per micro-step `training_forward(model, batch, device)` → `(terms, outputs)`: the step's loss terms,
   already normalised so that `terms["loss"]` is what one process back-propagates (divided by the
   accumulation steps by the loop) — open_clip's `training_forward` pattern —, and, on log steps,
   `contrastive_terms` for the collapse guard;
5. per optimizer step `after_optimizer_step`; per log step `log_values`; per checkpoint `checkpoint_fields`;
6. at the end `training_summary` (the `final/training_summary.json`), and the evaluation hooks with
   `end_of_run_evaluation` / `zero_shot_prompts` / `has_image_encoder`.

The loop itself — accumulation, clipping, mixed precision, checkpoints, exact resume, NaN stops, logs — exists
once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..common.contrastive import label_positive_mask
from ..tokenization import build_wordpiece_tokenizer
from .collapse import ContrastiveTerm, label_guided_floor
from .config import ConfigError, PretrainConfig
from .data import StreamingOptions, image_normalization
from .run_data import RunData, prepare_image_data


def seed_from(*values: int) -> int:
    """A 63-bit seed drawn from a tuple of integers (e.g. `(seed, micro_step, rank)`)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, dtype=np.uint64)[0] % (2**63))


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


def load_or_build_tokenizer(config: PretrainConfig, corpus: list[str], output_dir: Path, accelerator):
    """The run's tokenizer: `model.tokenizer` (a directory or Hub id), the pretrained text tower's, or —
    with `tokenizer: build` — a WordPiece vocabulary trained on the run's texts, built once on the main
    process and saved in `<output_dir>/tokenizer` so every process and every resume use the same one."""
    from transformers import AutoTokenizer

    source = config.model.tokenizer or config.model.text_pretrained or config.model.pretrained
    if source != "build":
        if source is None:
            raise ValueError(
                f"{config.source}: model.tokenizer is not set and there is no pretrained text model to take it "
                "from; set model.tokenizer to a directory / Hub id (e.g. emilyalsentzer/Bio_ClinicalBERT) or "
                "'build'."
            )
        return AutoTokenizer.from_pretrained(source)
    saved = output_dir / "tokenizer"
    if accelerator.is_main_process and not (saved / "tokenizer.json").exists():
        build_wordpiece_tokenizer(corpus, vocab_size=config.model.tokenizer_vocab_size).save_pretrained(saved)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(saved)


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
    # Whether `evaluation.features.encode_images` can embed the family's images (the periodic linear probe).
    has_image_encoder: bool = True
    # Whether the end-of-run zero-shot + linear-probe check (`run.evaluate`) applies to the family.
    end_of_run_evaluation: bool = False
    # The TensorBoard project name and the progress bar's label.
    tracker_project: str = "pretrain"
    progress_label: str = "pretrain"

    # ------------------------------------------------------------------ data
    def prepare_data(
        self, config: PretrainConfig, accelerator, output_dir: Path, *, show_progress: bool
    ) -> RunData:
        """The run's data; the image families' default reads, validates and caches `data.train`."""
        return prepare_image_data(self, config, accelerator, output_dir, show_progress)

    def batch_sizes(self, config: PretrainConfig) -> dict[str, int]:
        raise NotImplementedError

    def text_corpus(self, streams, class_names: list[str], config: PretrainConfig) -> list[str]:
        """Texts a `tokenizer: build` vocabulary is learnt from."""
        return []

    # ------------------------------------------------------------------ models and batches
    def load_tokenizer(self, config: PretrainConfig, corpus: list[str], output_dir: Path, accelerator):
        if not self.uses_text:
            return None
        return load_or_build_tokenizer(config, corpus, output_dir, accelerator)

    def build_processor(self, config: PretrainConfig, tokenizer):
        """What `final/` saves next to the model (`save_pretrained`), or None."""
        raise NotImplementedError

    def build_model(self, config: PretrainConfig, tokenizer) -> torch.nn.Module:
        raise NotImplementedError

    def make_batches(self, streams, tokenizer, class_names, processor, model, config, *, rank, world_size):
        raise NotImplementedError

    @staticmethod
    def common_batch_kwargs(image_processor, config: PretrainConfig, rank: int, world_size: int) -> dict:
        """The `StepBatches` arguments every family passes the same way (process, seed, normalisation,
        augmentation; the length is set by the loop once the step count is known)."""
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
            streaming=StreamingOptions(config.data.stream_readers, config.data.shuffle_buffer),
        )

    def learning_rate(self, optim, samples_per_step: int) -> float:
        """`optim.lr`, else the MAE rule `base_lr × samples per optimizer step / 256`."""
        return optim.lr if optim.lr is not None else optim.base_lr * samples_per_step / 256

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

    # ------------------------------------------------------------------ the step
    def training_forward(self, model, batch: dict, device) -> tuple[dict[str, torch.Tensor], object]:
        """One micro-step's forward: `(terms, outputs)`, `terms["loss"]` the loss this process back-propagates
        (before the loop's division by the accumulation steps), the other terms logged."""
        outputs = model(**batch, **self.forward_kwargs)
        return self.outputs_to_terms(outputs), outputs

    def outputs_to_terms(self, outputs) -> dict[str, torch.Tensor]:
        return {
            name: getattr(outputs, name)
            for name in self.loss_terms
            if getattr(outputs, name, None) is not None
        }

    def contrastive_terms(self, outputs, batch: dict, accelerator) -> list:
        """The step's contrastive terms with their embeddings and labels gathered over every process (no
        gradient), for the collapse guard; empty when the family has none or the step computed none."""
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

    def after_optimizer_step(self, model: torch.nn.Module) -> None:
        pass

    def log_values(self, model: torch.nn.Module) -> dict[str, float]:
        """Extra per-log-step values (e.g. the contrastive temperature)."""
        scale = getattr(released_model(model), "logit_scale", None)
        return {"logit_scale": round(scale.exp().item(), 4)} if scale is not None else {}

    def describe_training(
        self, start_step: int, total_steps: int, samples_per_step: int, world: int, lr: float
    ):
        """The start-up line before the first step."""
        return (
            f"Training steps {start_step + 1}-{total_steps} of {total_steps}: {samples_per_step} images per step "
            f"on {world} process(es), lr {lr:.2e}."
        )

    # ------------------------------------------------------------------ checkpoints and the end of the run
    def check_resume(self, checkpoint: Path, state: dict) -> None:
        """Refuse a checkpoint this run cannot continue (beyond the loop's own length check)."""

    def checkpoint_fields(self) -> dict:
        """Task-specific entries of a checkpoint's trainer state."""
        return {}

    def training_summary(
        self, *, steps, last_metrics, data: RunData, world_size, model, batches, config
    ) -> dict:
        """`final/training_summary.json`."""
        return {
            "steps": steps,
            "last_metrics": last_metrics,
            "classes": data.class_names,
            "skipped_samples": len(data.report.bad_records),
            "data_warnings": len(data.report.warnings),
            "unused_rows_by_role": data.report.unused_roles,
            "world_size": world_size,
        }

    def zero_shot_prompts(self, config: PretrainConfig, class_names: list[str]) -> list[list[str]] | None:
        """Per class (`C` lists), the prompts whose mean text embedding is its zero-shot prototype in the
        evaluations during pretraining and at its end; None for a family without text."""
        return None


__all__ = [
    "PretrainTask",
    "RunData",
    "build_model_config",
    "load_or_build_tokenizer",
    "released_model",
    "seed_from",
]
