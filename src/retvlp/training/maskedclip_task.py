"""What the generic pretraining loop needs to know about MaskedCLIP: how to build it and its processor, how
to turn a step batch into the loss terms, and what to do after each optimizer step."""

from __future__ import annotations

from pathlib import Path

import torch

from ..maskedclip import FundusImageProcessor, MaskedCLIPConfig, MaskedCLIPModel, MaskedCLIPProcessor
from ..tokenization import build_wordpiece_tokenizer
from .config import PretrainConfig

LOSS_TERMS = ("loss", "loss_mim", "loss_clip", "loss_mfd")


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


def build_processor(config: PretrainConfig, tokenizer) -> MaskedCLIPProcessor:
    image_processor = FundusImageProcessor(
        size=config.data.image_size,
        pad_to_square=config.data.pad_to_square,
        crop_to_fov=config.data.crop_to_fov,
    )
    return MaskedCLIPProcessor(image_processor, tokenizer, max_length=config.model.max_text_length)


def build_model(config: PretrainConfig, tokenizer) -> MaskedCLIPModel:
    """Initialise MaskedCLIP from `model.config`, `model.pretrained` or pretrained towers (see ModelSection)."""
    m = config.model
    overrides = dict(m.config_overrides)
    if m.pretrained is not None:
        model = MaskedCLIPModel.from_pretrained(m.pretrained, **overrides)
    elif m.vision_pretrained is not None:
        model = MaskedCLIPModel.from_vision_text_pretrained(
            m.vision_pretrained, m.text_pretrained, **overrides
        )
    else:
        kwargs = dict(m.config or {})
        kwargs.update(overrides)
        vision = dict(kwargs.pop("vision_config", {}) or {})
        vision.setdefault("image_size", config.data.image_size)
        if vision["image_size"] != config.data.image_size:
            raise ValueError(
                f"{config.source}: model.config.vision_config.image_size={vision['image_size']} differs from "
                f"data.image_size={config.data.image_size}; set them equal."
            )
        text = dict(kwargs.pop("text_config", {}) or {})
        text.setdefault("model_type", "bert")
        text["vocab_size"] = len(tokenizer)
        model = MaskedCLIPModel(MaskedCLIPConfig(vision_config=vision, text_config=text, **kwargs))
    vocab = model.config.text_config.vocab_size if model.config.use_clip else None
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the text model's vocabulary has {vocab}: use the "
            "tokenizer the text model was trained with."
        )
    if m.activation_checkpointing:
        model.activation_checkpointing_enable()
    return model


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """MAE practice: no weight decay on biases, norms, position tables, cls/mask tokens and the logit scale
    (every tensor with fewer than 2 dims, plus the token/position parameters)."""
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


def after_optimizer_step(model: MaskedCLIPModel) -> None:
    """M̂ ← EMA(E_I, B) once per optimizer step, and keep τ inside [0, ln 100] so it cannot drift where its
    gradient (zero beyond the clamp) would never bring it back."""
    model.update_momentum_encoder()
    with torch.no_grad():
        model.logit_scale.clamp_(0.0, model.config.logit_scale_max)


def loss_terms(outputs) -> dict[str, torch.Tensor]:
    return {name: getattr(outputs, name) for name in LOSS_TERMS if getattr(outputs, name, None) is not None}


def images_per_micro_step(config: PretrainConfig, world_size: int, has_unpaired: bool) -> int:
    per_process = config.data.paired_batch_size + (config.data.unpaired_batch_size if has_unpaired else 0)
    return per_process * world_size
