"""What the generic pretraining loop needs to know about KeepFIT V2: two streams read 1:1 every step — the
categorical public data p (labels → prompts with expert-knowledge label augmentation) and the elite
image–caption pairs m — the model built from a config, a checkpoint or pretrained towers (ImageNet ResNet-50,
Bio_ClinicalBERT or the MLM text-pretraining output), and the frozen IBQ codebook."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..keepfit import KeepFitConfig, KeepFitForPreTraining, KeepFitProcessor, keepfit_image_processor
from ..prompts import ExpertKnowledge, class_prompts, prompt_for_labels
from .config import PretrainConfig
from .data import StepBatches, label_tensor
from .family_parts import register_training
from .keepfit_section import MODALITIES, KeepFitSection  # noqa: F401 (re-exported)
from .task import PretrainTask, pretrained_towers_config

logger = logging.getLogger(__name__)


# Which stream each record role feeds (KeepFIT trains on no unpaired images).
KEEPFIT_ROUTING = {"categorical": "categorical", "paired": "paired", "unpaired": None}


def load_knowledge(config: PretrainConfig) -> ExpertKnowledge:
    """The shipped expert-knowledge dictionary, extended/overridden by `keepfit.expert_knowledge` if given."""
    knowledge = ExpertKnowledge.load()
    if config.family_settings.expert_knowledge:
        knowledge = knowledge.merged(config.family_settings.expert_knowledge)
    return knowledge


class KeepFitStepBatches(StepBatches):
    """Per micro-step: the categorical batch (`pixel_values`, prompt `input_ids`..., `labels`) and the elite
    batch (`elite_pixel_values`, caption `elite_input_ids`...). Prompts, templates and label augmentation are
    drawn for the global batch from `(seed, micro_step)`, then sliced, like the rows and the crops."""

    def __init__(
        self,
        streams,
        batch_sizes,
        *,
        tokenizer,
        class_names,
        max_length,
        knowledge: ExpertKnowledge,
        modality: str,
        label_augmentation: float,
        **kw,
    ):
        super().__init__(streams, batch_sizes, **kw)
        self.tokenizer = tokenizer
        self.class_index = {name: i for i, name in enumerate(class_names)}
        self.multi_label = any(len(labels) > 1 for labels in streams["categorical"].labels)
        self.max_length = max_length
        self.knowledge = knowledge
        self.modality = modality
        self.label_augmentation = label_augmentation

    def __getitem__(self, micro_step: int) -> dict[str, torch.Tensor]:
        categorical, elite = self.streams["categorical"], self.streams["paired"]
        global_rows, local, pixel_values, _ = self._stream_batch("categorical", micro_step, 0)
        prompt_rng = np.random.default_rng([self.seed, micro_step, 200])
        prompts = [
            prompt_for_labels(
                categorical.labels[row],
                prompt_rng,
                modality=self.modality,
                knowledge=self.knowledge,
                augment_probability=self.label_augmentation,
            )
            for row in global_rows
        ][local]
        batch = self._tokenize(self.tokenizer, prompts, self.max_length)
        batch["pixel_values"] = pixel_values
        batch["labels"] = label_tensor(
            [categorical.labels[row] for row in global_rows[local]], self.class_index, self.multi_label
        )

        elite_rows, elite_local, elite_pixels, _ = self._stream_batch("paired", micro_step, 1)
        captions = [elite.texts[row] for row in elite_rows[elite_local]]
        for key, value in self._tokenize(self.tokenizer, captions, self.max_length).items():
            batch[f"elite_{key}"] = value
        batch["elite_pixel_values"] = elite_pixels
        return batch


class KeepFitTask(PretrainTask):
    family = "keepfit"
    loss_terms = ("loss", "loss_itc_categorical", "loss_itc_elite", "loss_semantic", "loss_appearance")
    contrastive_fields = (
        ("loss_itc_categorical", "image_embeds", "text_embeds", "labels"),
        ("loss_itc_elite", "elite_image_embeds", "elite_text_embeds", None),
    )
    collapse_knobs = (
        "smaller model.config.lambda_semantic / lambda_appearance (the knowledge MSE can pull every prompt "
        "embedding to one vector); a lower optim.lr or a longer optim.warmup_steps; an MLM-pretrained text "
        "tower (model.text_pretrained) (docs/real_data.md)."
    )
    routing = KEEPFIT_ROUTING
    required_streams = ("categorical", "paired")
    end_of_run_evaluation = True

    def batch_sizes(self, config):
        settings = config.family_settings
        return {"categorical": settings.categorical_batch_size, "paired": settings.paired_batch_size}

    def text_corpus(self, streams, class_names, config):
        knowledge = load_knowledge(config)
        prompts = [
            p
            for name in class_names
            for p in class_prompts(name, modality=config.family_settings.modality, knowledge=knowledge)
        ]
        return [t for t in streams["paired"].texts if t] + prompts

    def build_processor(self, config, tokenizer):
        data = config.data
        image_processor = keepfit_image_processor(
            size=data.image_size, pad_to_square=data.pad_to_square, crop_to_fov=data.crop_to_fov
        )
        return KeepFitProcessor(image_processor, tokenizer, max_length=config.model.max_text_length)

    def model_config(self, config: PretrainConfig, vocab_size: int | None) -> KeepFitConfig:
        """The KeepFIT config of a run built from `model.config` (KeepFitConfig kwargs, e.g.
        `ibq_tokenizer_path`) with, optionally, `model.vision_pretrained` / `model.text_pretrained`:
        `KeepFitForPreTraining.config_from_pretrained_towers`, so a pretrained tower takes its size from its
        checkpoint and a `model.config` that contradicts it is a `ConfigError`. A fresh text tower gets the
        tokenizer's `vocab_size` (None: not known yet, as in `check_model`)."""
        m = config.model
        kwargs = {**(m.config or {}), **m.config_overrides}
        if m.text_pretrained is None:
            text = dict(kwargs.pop("text_config", None) or {})
            text.setdefault("model_type", "bert")
            if vocab_size is not None:
                text["vocab_size"] = vocab_size
            kwargs["text_config"] = text
        return pretrained_towers_config(
            KeepFitForPreTraining.config_from_pretrained_towers, KeepFitConfig, config, **kwargs
        )

    def check_model(self, config: PretrainConfig) -> None:
        super().check_model(config)
        if config.model.pretrained is None:
            self.model_config(config, vocab_size=None)

    def build_model(self, config: PretrainConfig, tokenizer) -> KeepFitForPreTraining:
        """From `model.pretrained` (a KeepFIT checkpoint), or from `model.config` (`model_config`) where
        `model.vision_pretrained` / `model.text_pretrained`, when set, supply a tower with its weights: an image
        backbone (e.g. microsoft/resnet-50, ImageNet) and a BERT (e.g. emilyalsentzer/Bio_ClinicalBERT, or the
        `--model text-mlm` output: the textual-pretraining init; pointing it at the plain BERT instead is the
        Table VII "no textual pretraining" ablation). The frozen codebook comes from
        `model.config.ibq_tokenizer_path`."""
        m = config.model
        if m.pretrained is not None:
            model, info = KeepFitForPreTraining.from_pretrained(
                m.pretrained, output_loading_info=True, **m.config_overrides
            )
            if (
                model.appearance_quantizer is not None
                and "appearance_quantizer.codebook" in info["missing_keys"]
            ):
                # The pretraining side loads the frozen codebook (a model's construction never reads files).
                if model.config.ibq_tokenizer_path:
                    model.load_codebook(model.config.ibq_tokenizer_path)
                else:
                    logger.warning(
                        "%s: appearance knowledge injection uses a RANDOM codebook; set "
                        "model.config.ibq_tokenizer_path to a trained IBQ tokenizer (--model ibq-tokenizer).",
                        config.source,
                    )
        else:
            model = KeepFitForPreTraining.from_vision_text_pretrained(
                m.vision_pretrained, m.text_pretrained, config=self.model_config(config, len(tokenizer))
            )
        vocab = model.config.text_config.vocab_size
        if len(tokenizer) > vocab:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the text model's vocabulary has {vocab}: use the "
                "tokenizer the text model was trained with."
            )
        if m.activation_checkpointing:
            model.activation_checkpointing_enable()
        return model

    def make_batches(self, streams, tokenizer, class_names, processor, model, config, *, rank, world_size):
        self.watch_contrastive_model(model)
        return KeepFitStepBatches(
            streams,
            self.batch_sizes(config),
            tokenizer=tokenizer,
            class_names=class_names,
            max_length=config.model.max_text_length,
            knowledge=load_knowledge(config),
            modality=config.family_settings.modality,
            label_augmentation=config.family_settings.label_augmentation,
            **self.common_batch_kwargs(processor.image_processor, config, rank, world_size),
        )

    def loss_weights(self, model: KeepFitForPreTraining) -> dict[str, float]:
        """Eq. 22: L_itc^p + L_itc^m + λ1·L_EK^s + λ2·L_EK^a."""
        config = model.config
        return {
            "loss_itc_categorical": 1.0,
            "loss_itc_elite": 1.0,
            "loss_semantic": config.lambda_semantic,
            "loss_appearance": config.lambda_appearance,
        }

    def after_optimizer_step(self, model: KeepFitForPreTraining) -> None:
        model.clamp_logit_scale_()

    def zero_shot_prompts(self, config, class_names):
        """The expert-knowledge prompt ensembles (the evaluations during pretraining and at its end)."""
        knowledge = load_knowledge(config)
        return [
            class_prompts(name, modality=config.family_settings.modality, knowledge=knowledge)
            for name in class_names
        ]


register_training("keepfit", task=KeepFitTask, section=KeepFitSection)


__all__ = [
    "KeepFitSection",
    "MODALITIES",
    "KEEPFIT_ROUTING",
    "KeepFitStepBatches",
    "KeepFitTask",
    "load_knowledge",
]
