"""What the one pretraining loop (`trainer.py`) asks of a model family.

Each family (`maskedclip_task.py`, `keepfit_task.py`, `ibq_task.py`, `text_mlm_task.py`) subclasses
[`PretrainTask`]. The loop calls, in this order:

1. `prepare_data` → [`RunData`] (image families: validated, cached streams of `data.train`; text: a corpus);
2. `text_corpus`, `load_tokenizer`, `build_processor`, `build_model` (after `torch.manual_seed(run.seed)`),
   `make_batches` (a step-batches dataset: `samples_per_micro_step`, `micro_steps_per_epoch`, `log_epochs`,
   `state_epochs`), `learning_rate`, `parameter_groups`;
3. on resume, `check_resume(checkpoint, state)`;
4. per micro-step `training_forward(model, batch, device)` → `(terms, outputs)`: the step's loss terms,
   already normalised so that `terms["loss"]` is what one process back-propagates (divided by the
   accumulation steps by the loop) — open_clip's `training_forward` pattern —, and, on log steps,
   `contrastive_terms` for the collapse guard; with `optim.contrastive_accumulation`, two forwards per
   micro-step and `loss_weights` (`contrastive_accumulation.py`);
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

from ..common.contrastive import contrastive_loss, label_positive_mask
from ..common.modeling_common import PretrainedTowerError
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


@torch.no_grad()
def constant_embedding_loss(released: torch.nn.Module, image_embeds, text_embeds, labels) -> float:
    """The sigmoid contrastive term a constant embedding would give on this (gathered) batch: every image the
    batch's mean image direction, every text its mean text direction, at the released model's current scale
    and bias. (The softmax term's is ln(B) whatever the embeddings, scale and labels.)"""
    n = image_embeds.shape[0]
    image = torch.nn.functional.normalize(image_embeds.float().mean(dim=0), dim=-1).expand(n, -1)
    text = torch.nn.functional.normalize(text_embeds.float().mean(dim=0), dim=-1).expand(n, -1)
    loss, _, _ = contrastive_loss(
        "sigmoid",
        image,
        text,
        released.clamped_logit_scale().float(),
        released.logit_bias.float(),
        labels=labels,
        gather_distributed=False,
    )
    return float(loss)


def pretrained_towers_config(build, config_class, config: PretrainConfig, **kwargs):
    """`build(model.vision_pretrained, model.text_pretrained, **kwargs)` — a `...ForPreTraining`'s
    `config_from_pretrained_towers` — with what it refuses reported as a `ConfigError` in the run file's words:
    a tower checkpoint that cannot be read, is of the wrong kind or disagrees with `model.config` (the key, both
    values and the fix), or a `model.config` that `config_class` rejects."""
    m = config.model
    try:
        return build(m.vision_pretrained, m.text_pretrained, **kwargs)
    except PretrainedTowerError as error:
        message = error.describe("model.config", f"model.{error.tower}_pretrained")
        raise ConfigError(f"{config.source}: {message}") from error
    except Exception as error:  # noqa: BLE001 - strict dataclass errors are not ValueErrors; re-raised as one
        raise ConfigError(
            f"{config.source}: model.config does not make a valid {config_class.__name__}: {error}"
        ) from error


# Files one of which a folder holding a tokenizer has (fast, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")


def tokenizer_source(config: PretrainConfig) -> str:
    """Where the run's tokenizer comes from: `model.tokenizer` (a directory, a Hub id or `build`), else the text
    checkpoint's — `model.text_pretrained`, else `model.pretrained`. Raises a `ConfigError` when there is none,
    or when that checkpoint is a local folder without a tokenizer."""
    m = config.model
    if m.tokenizer is not None:
        return m.tokenizer
    for key in ("text_pretrained", "pretrained"):
        source = getattr(m, key)
        if source is None:
            continue
        folder = Path(source)
        if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise ConfigError(
                f"{config.source}: model.tokenizer is not set, so the tokenizer would come from model.{key}="
                f"{source!r}, but that folder holds none (no {' / '.join(TOKENIZER_FILES)}); set "
                "model.tokenizer to the tokenizer its text tower was trained with (a folder or Hub id)."
            )
        return source
    raise ConfigError(
        f"{config.source}: model.tokenizer is not set and there is no pretrained text model to take it "
        "from; set model.tokenizer to a directory / Hub id (e.g. emilyalsentzer/Bio_ClinicalBERT) or "
        "'build'."
    )


def load_or_build_tokenizer(config: PretrainConfig, corpus: list[str], output_dir: Path, accelerator):
    """The run's tokenizer (`tokenizer_source`): `model.tokenizer` (a directory or Hub id), the pretrained text
    tower's, or — with `tokenizer: build` — a WordPiece vocabulary trained on the run's texts, built once on
    the main process and saved in `<output_dir>/tokenizer` so every process and every resume use the same
    one."""
    from transformers import AutoTokenizer

    source = tokenizer_source(config)
    if source != "build":
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
    # The released model the guard's figures describe (set by `watch_contrastive_model`; None: softmax figures).
    contrastive_model: torch.nn.Module | None = None
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
    def check_model(self, config: PretrainConfig) -> None:
        """The model settings checked before any data is read (the loop calls it first), so that a bad one
        fails in seconds: here, where the tokenizer comes from; the dual encoders also build their model
        config, checking each pretrained tower's checkpoint against `model.config`."""
        if self.uses_text:
            tokenizer_source(config)

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
            balance_classes=tuple(config.data.balance_classes),
        )

    def learning_rate(self, optim, samples_per_step: int) -> float:
        """`optim.lr`, else the MAE rule `base_lr × samples per optimizer step / 256`."""
        return optim.lr if optim.lr is not None else optim.base_lr * samples_per_step / 256

    def parameter_groups(self, model: torch.nn.Module, weight_decay: float) -> list[dict]:
        """No weight decay on biases, norms, position tables, cls/mask tokens, the logit scale and the sigmoid
        loss's logit bias (every tensor with fewer than 2 dims, plus the token/position parameters); frozen
        tensors are left out."""
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

    def watch_contrastive_model(self, model: torch.nn.Module) -> None:
        """Keep the released model whose contrastive loss the collapse guard describes (its
        `config.contrastive_loss`, scale and bias): the families with contrastive terms call it from
        `make_batches`, which is handed the model the run trains."""
        self.contrastive_model = released_model(model)

    def loss_weights(self, model: torch.nn.Module) -> dict[str, float]:
        """Each logged term's weight in `loss` (`loss = Σ weight · term`), for `optim.contrastive_accumulation`,
        which back-propagates the contrastive terms (`contrastive_fields`) over the accumulated batch and the
        others per micro-batch. Families with a contrastive term implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not split its loss into weighted terms.")

    def contrastive_terms(self, outputs, batch: dict, accelerator) -> list:
        """The step's contrastive terms with their embeddings and labels gathered over every process (no
        gradient), for the collapse guard; empty when the family has none or the step computed none. A sigmoid
        term carries its constant-embedding value (`constant_embedding_loss`) instead of a label-guided floor."""
        released = self.contrastive_model
        sigmoid = getattr(getattr(released, "config", None), "contrastive_loss", "softmax") == "sigmoid"
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
            if sigmoid:
                constant = constant_embedding_loss(released, image, text, labels)
                terms.append(ContrastiveTerm(loss_name, value, image, text, constant=constant))
            else:
                terms.append(ContrastiveTerm(loss_name, value, image, text, label_guided_floor(positives)))
        return terms

    def after_optimizer_step(self, model: torch.nn.Module) -> None:
        pass

    def log_values(self, model: torch.nn.Module) -> dict[str, float]:
        """Extra per-log-step values (the contrastive scale exp τ, and the sigmoid loss's bias)."""
        released = released_model(model)
        scale, bias = getattr(released, "logit_scale", None), getattr(released, "logit_bias", None)
        values = {"logit_scale": round(scale.exp().item(), 4)} if scale is not None else {}
        if isinstance(bias, torch.Tensor):
            values["logit_bias"] = round(bias.item(), 4)
        return values

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
    "pretrained_towers_config",
    "released_model",
    "seed_from",
    "tokenizer_source",
]
