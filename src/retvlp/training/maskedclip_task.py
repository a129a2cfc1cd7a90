"""What the generic pretraining loop needs to know about MaskedCLIP: how to build it and its processor, its
step batches (pairs + categorical rows with their labels, unpaired images, MAE masking noise), and what to do
after each optimizer step."""

from __future__ import annotations

import numpy as np
import torch

from ..maskedclip import FundusImageProcessor, MaskedCLIPConfig, MaskedCLIPForPreTraining, MaskedCLIPProcessor
from .config import ConfigError, PretrainConfig
from .data import StepBatches, Stream, label_tensor
from .family_parts import register_training
from .maskedclip_section import MaskedCLIPSection  # noqa: F401 (re-exported)
from .task import PretrainTask, pretrained_towers_config, seed_from

# Which stream each record role feeds: paired and categorical records form the "paired" stream (categorical
# labels become prompt texts), unpaired records the "unpaired" stream (MIM only).
MASKEDCLIP_ROUTING = {"paired": "paired", "categorical": "paired", "unpaired": "unpaired"}


def build_processor(config: PretrainConfig, tokenizer) -> MaskedCLIPProcessor:
    image_processor = FundusImageProcessor(
        size=config.data.image_size,
        pad_to_square=config.data.pad_to_square,
        crop_to_fov=config.data.crop_to_fov,
    )
    return MaskedCLIPProcessor(image_processor, tokenizer, max_length=config.model.max_text_length)


def model_config(config: PretrainConfig, vocab_size: int | None) -> MaskedCLIPConfig:
    """The MaskedCLIP config of a run built from `model.config` with, optionally, `model.vision_pretrained` /
    `model.text_pretrained`: `MaskedCLIPForPreTraining.config_from_pretrained_towers`, so a pretrained tower
    takes its size from its checkpoint and a `model.config` that contradicts it is a `ConfigError`. A fresh
    vision tower is built at `data.image_size`, a fresh text tower with the tokenizer's `vocab_size` (None: not
    known yet, as in `check_model`); a pretrained vision tower must have been trained at `data.image_size`."""
    m = config.model
    kwargs = {**(m.config or {}), **m.config_overrides}
    vision = dict(kwargs.pop("vision_config", None) or {})
    text = dict(kwargs.pop("text_config", None) or {})
    if m.vision_pretrained is None:
        vision.setdefault("image_size", config.data.image_size)
        if vision["image_size"] != config.data.image_size:
            raise ConfigError(
                f"{config.source}: model.config.vision_config.image_size={vision['image_size']} differs from "
                f"data.image_size={config.data.image_size}; set them equal."
            )
    if m.text_pretrained is None:
        text.setdefault("model_type", "bert")
        if vocab_size is not None:
            text["vocab_size"] = vocab_size
    built = pretrained_towers_config(
        MaskedCLIPForPreTraining.config_from_pretrained_towers,
        MaskedCLIPConfig,
        config,
        vision_config=vision,
        text_config=text,
        **kwargs,
    )
    if m.vision_pretrained is not None and built.vision_config.image_size != config.data.image_size:
        raise ConfigError(
            f"{config.source}: model.vision_pretrained={m.vision_pretrained!r} is a ViT for "
            f"image_size={built.vision_config.image_size}, but data.image_size={config.data.image_size}; set "
            f"data.image_size: {built.vision_config.image_size} (or leave out model.vision_pretrained to train the "
            "ViT from scratch at this size)."
        )
    return built


def build_model(config: PretrainConfig, tokenizer) -> MaskedCLIPForPreTraining:
    """Initialise the MaskedCLIP pretraining model from `model.pretrained`, or from `model.config` with each
    tower optionally from its own checkpoint (`model.vision_pretrained`, `model.text_pretrained`; see
    ModelSection and `model_config`)."""
    m = config.model
    if m.pretrained is not None:
        model = MaskedCLIPForPreTraining.from_pretrained(m.pretrained, **m.config_overrides)
    else:
        model = MaskedCLIPForPreTraining.from_vision_text_pretrained(
            m.vision_pretrained, m.text_pretrained, config=model_config(config, len(tokenizer))
        )
    vocab = model.config.text_config.vocab_size if model.config.use_clip else None
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the text model's vocabulary has {vocab}: use the "
            "tokenizer the text model was trained with."
        )
    if m.activation_checkpointing:
        model.activation_checkpointing_enable()
    return model


class MaskedCLIPStepBatches(StepBatches):
    """Paired stream (captions, or prompts of categorical labels, with label ids for L_lg_clip), optional
    unpaired stream, and the MAE masking noise of every image (paired first)."""

    def __init__(
        self,
        streams,
        batch_sizes,
        *,
        tokenizer,
        class_names,
        num_patches,
        max_length,
        prompt_templates,
        clip_noise: bool = False,
        teacher_noise: bool = False,
        **kw,
    ):
        super().__init__(streams, batch_sizes, **kw)
        # Noise of the FLIP-style contrastive pass / the masked teacher pass (config.clip_mask_ratio,
        # config.mfd_teacher_mask_ratio): drawn here, like the MAE noise, so a step's subsets depend only on
        # the seed and the step, not on the rank or on a resume.
        self.clip_noise, self.teacher_noise = clip_noise, teacher_noise
        self.tokenizer = tokenizer
        self.class_index = {name: i for i, name in enumerate(class_names)}
        self.multi_label = any(len(labels) > 1 for labels in streams["paired"].labels)
        self.num_patches = num_patches
        self.max_length = max_length
        self.prompt_templates = list(prompt_templates)

    def _text(self, row: int, stream: Stream, rng: np.random.Generator) -> str:
        text = stream.texts[row]
        if text is not None:
            return text
        template = self.prompt_templates[int(rng.integers(len(self.prompt_templates)))]
        return template.format(", ".join(stream.labels[row]))

    def __getitem__(self, micro_step: int) -> dict[str, torch.Tensor]:
        paired = self.streams["paired"]
        global_rows, local, pixel_values, noise = self._stream_batch(
            "paired", micro_step, 0, self.num_patches
        )
        rows = global_rows[local]
        # Prompt templates are drawn for the global batch too, so the rows' texts do not depend on the rank.
        template_rng = np.random.default_rng([self.seed, micro_step, 100])
        texts = [self._text(int(r), paired, template_rng) for r in global_rows][local]
        batch = self._tokenize(self.tokenizer, texts, self.max_length)
        batch["pixel_values"] = pixel_values
        batch["labels"] = label_tensor([paired.labels[r] for r in rows], self.class_index, self.multi_label)
        noises = [noise]
        if "unpaired" in self.samplers:
            _, _, unpaired_pixels, unpaired_noise = self._stream_batch(
                "unpaired", micro_step, 1, self.num_patches
            )
            batch["unpaired_pixel_values"] = unpaired_pixels
            noises.append(unpaired_noise)
        batch["noise"] = torch.cat(noises)
        if self.clip_noise:
            batch["clip_noise"] = self._noise(micro_step, 2, "paired")
        if self.teacher_noise:
            batch["teacher_noise"] = torch.cat(
                [
                    self._noise(micro_step, 3 + k, name)
                    for k, name in enumerate(("paired", "unpaired"))
                    if name in self.samplers
                ]
            )
        return batch

    def _noise(self, micro_step: int, stream_id: int, name: str) -> torch.Tensor:
        """`(local batch of stream name, num_patches)` uniform noise, drawn for the global batch and sliced."""
        sampler = self.samplers[name]
        generator = torch.Generator().manual_seed(seed_from(self.seed, micro_step, 1000 + stream_id))
        noise = torch.rand(sampler.global_batch_size, self.num_patches, generator=generator)
        return noise[self.rank * sampler.batch_size : (self.rank + 1) * sampler.batch_size]


class MaskedCLIPTask(PretrainTask):
    family = "maskedclip"
    loss_terms = ("loss", "loss_mim", "loss_clip", "loss_mfd")
    routing = MASKEDCLIP_ROUTING
    required_streams = ("paired",)
    end_of_run_evaluation = True
    contrastive_fields = (("loss_clip", "image_embeds", "text_embeds", "labels"),)
    collapse_knobs = (
        "a lower optim.lr or a longer optim.warmup_steps; model.config.text_pooling: mean for a text tower "
        "trained from scratch; model.config.lambda_clip; data.crop_to_fov: true for photographs with a black "
        "border (docs/real_data.md)."
    )

    def batch_sizes(self, config):
        settings = config.family_settings
        return {"paired": settings.paired_batch_size, "unpaired": settings.unpaired_batch_size}

    def text_corpus(self, streams, class_names, config):
        return [t for t in streams["paired"].texts if t] + [
            template.format(name)
            for template in config.family_settings.prompt_templates
            for name in class_names
        ]

    def build_processor(self, config, tokenizer):
        return build_processor(config, tokenizer)

    def check_model(self, config):
        super().check_model(config)
        if config.model.pretrained is None:
            model_config(config, vocab_size=None)

    def build_model(self, config, tokenizer):
        return build_model(config, tokenizer)

    def make_batches(self, streams, tokenizer, class_names, processor, model, config, *, rank, world_size):
        self.watch_contrastive_model(model)
        return MaskedCLIPStepBatches(
            streams,
            self.batch_sizes(config),
            tokenizer=tokenizer,
            class_names=class_names,
            num_patches=model.config.vision_config.num_patches,
            max_length=config.model.max_text_length,
            prompt_templates=config.family_settings.prompt_templates,
            clip_noise=model.config.clip_mask_ratio > 0,
            teacher_noise=model.config.mfd_teacher_mask_ratio > 0 and model.config.use_mfd,
            **self.common_batch_kwargs(processor.image_processor, config, rank, world_size),
        )

    def loss_weights(self, model: MaskedCLIPForPreTraining) -> dict[str, float]:
        """Eq. 6: L_mim + λ_clip·L_lg_clip + λ_mfd·L_mfd."""
        config = model.config
        return {"loss_mim": 1.0, "loss_clip": config.lambda_clip, "loss_mfd": config.lambda_mfd}

    def after_optimizer_step(self, model: MaskedCLIPForPreTraining) -> None:
        """M̂ ← EMA(E_I, B) once per optimizer step, and keep τ inside [0, ln 100] so it cannot drift where its
        gradient (zero beyond the clamp) would never bring it back."""
        model.update_momentum_encoder()
        with torch.no_grad():
            model.released_model.logit_scale.clamp_(0.0, model.config.logit_scale_max)

    def zero_shot_prompts(self, config, class_names):
        """`maskedclip.prompt_templates` filled with each class name."""
        templates = config.family_settings.prompt_templates
        return [[template.format(name) for template in templates] for name in class_names]


register_training("maskedclip", task=MaskedCLIPTask, section=MaskedCLIPSection)
