"""What the generic pretraining loop needs to know about the IBQ visual tokenizer (KeepFIT V2's codebook):
one image stream fed by records of every role, no text, pixels scaled to [−1, 1]. Its `final/` directory
is what `KeepFitConfig.ibq_tokenizer_path` points at."""

from __future__ import annotations

from ..common.image_processing_fundus import FundusImageProcessor
from ..ibq import IBQTokenizerConfig, IBQTokenizerModel
from .config import PretrainConfig
from .data import StepBatches
from .family_parts import register_training
from .ibq_section import IBQTokenizerSection  # noqa: F401 (re-exported)
from .task import PretrainTask, build_model_config


class ImageStepBatches(StepBatches):
    """Per micro-step: `{"pixel_values": (local_batch, 3, S, S)}` from the "images" stream."""

    def __getitem__(self, micro_step: int):
        _, _, pixel_values, _ = self._stream_batch("images", micro_step, 0)
        return {"pixel_values": pixel_values}


class IBQTokenizerTask(PretrainTask):
    family = "ibq-tokenizer"
    forward_kwargs = {"return_loss": True}
    # Logged every log step; only `loss` is optimised (usage and perplexity are statistics of the batch).
    loss_terms = (
        "loss",
        "reconstruction_loss",
        "quantization_loss",
        "entropy_loss",
        "codebook_usage",
        "perplexity",
    )
    routing = {"paired": "images", "categorical": "images", "unpaired": "images"}
    required_streams = ("images",)
    uses_text = False
    has_image_encoder = False  # a tokenizer: no pooled features to probe

    def batch_sizes(self, config):
        return {"images": config.family_settings.image_batch_size}

    def build_processor(self, config, tokenizer):
        data = config.data
        # VQGAN-family tokenizers see pixels in [−1, 1].
        return FundusImageProcessor(
            size=data.image_size,
            pad_to_square=data.pad_to_square,
            crop_to_fov=data.crop_to_fov,
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
        )

    def build_model(self, config: PretrainConfig, tokenizer) -> IBQTokenizerModel:
        """From `model.config` (IBQTokenizerConfig kwargs; image_size defaults to data.image_size) or
        `model.pretrained` (a tokenizer checkpoint to continue from)."""
        m = config.model
        if m.vision_pretrained is not None:
            raise ValueError(
                f"{config.source}: the IBQ tokenizer has no pretrained towers; use model.config or model.pretrained."
            )
        if m.pretrained is not None:
            model = IBQTokenizerModel.from_pretrained(m.pretrained, **m.config_overrides)
        else:
            kwargs = {"image_size": config.data.image_size, **(m.config or {}), **m.config_overrides}
            model = IBQTokenizerModel(build_model_config(IBQTokenizerConfig, kwargs, config))
        factor = model.config.downsampling_factor
        if config.data.image_size % factor:
            raise ValueError(
                f"{config.source}: data.image_size={config.data.image_size} must be a multiple of the tokenizer's "
                f"downsampling factor {factor}."
            )
        if m.activation_checkpointing:
            model.activation_checkpointing_enable()
        return model

    def make_batches(self, streams, tokenizer, class_names, processor, model, config, *, rank, world_size):
        return ImageStepBatches(
            streams,
            self.batch_sizes(config),
            **self.common_batch_kwargs(processor, config, rank, world_size),
        )


register_training("ibq-tokenizer", task=IBQTokenizerTask, section=IBQTokenizerSection)


__all__ = ["IBQTokenizerSection", "IBQTokenizerTask", "ImageStepBatches"]
