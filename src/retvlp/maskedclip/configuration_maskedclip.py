"""Configuration of MaskedCLIP (semi-supervised vision-language pretraining, METHODS.md §1).

Defaults reproduce the paper: ViT-L/16 image encoder at 224 px, a "ViT-small" pixel decoder (width 384,
6 heads, depth 8), a 4-block bridge transformer, a 4-block feature decoder, Bio_ClinicalBERT text encoder,
mask ratio 0.75, EMA decay 0.999 and λ_clip = λ_mfd = 0.01.

This file is copied next to saved checkpoints for ``trust_remote_code`` loading: it imports nothing from
``retvlp``, and of transformers only its public API.
"""

import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig, ViTMAEConfig

from .configuration_support import build_sub_config, diff_sub_configs

# `contrastive_loss` values, and the initial log temperature each starts from: CLIP's ln(1/0.07) (the papers),
# SigLIP's ln 10 (Zhai et al. 2023).
CONTRASTIVE_LOSSES = ("softmax", "sigmoid")
LOGIT_SCALE_INIT = {"softmax": math.log(1 / 0.07), "sigmoid": math.log(10.0)}

# Bio_ClinicalBERT (emilyalsentzer/Bio_ClinicalBERT) is a cased BERT-base; these are its sizes so that a
# config built offline matches the checkpoint the paper uses.
BIO_CLINICAL_BERT_KWARGS = {
    "vocab_size": 28996,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}


@strict
class MaskedCLIPVisionConfig(ViTMAEConfig):
    r"""Image encoder E_I (a ViT in transformers' ViT-MAE layout) plus the MAE pixel decoder D_I.

    Inherits every ViT-MAE field (``hidden_size``, ``num_hidden_layers``, ``patch_size``, ``image_size``,
    ``decoder_*`` for the pixel decoder, ``mask_ratio``, ``norm_pix_loss``, ...). Defaults are the paper's:
    ViT-L/16 at 224 px, pixel decoder width 384 / 6 heads / depth 8, mask ratio 0.75, and normalised pixel
    targets (``norm_pix_loss=True``, as MAE and RETFound train; ``False`` is the literal Eq. 1).

    pooling (`str`, defaults to `"mean"`):
        How [`MaskedCLIPVisionModel`] and [`MaskedCLIPForImageClassification`] pool the encoder tokens into one
        vector: `"mean"` averages the patch tokens (MAE/RETFound fine-tuning practice), `"cls"` takes the
        class token.
    classifier_dropout (`float`, defaults to 0.0):
        Dropout before the classification head of [`MaskedCLIPForImageClassification`].
    drop_path_rate (`float`, defaults to 0.0):
        Stochastic depth of the image encoder E_I: the rate of its LAST block. Block i of L drops its attention
        and MLP branches (per sample, in training mode only) with probability drop_path_rate·i/(L−1), a linear
        schedule as in MAE / BEiT fine-tuning. 0 (off) during pretraining; typical fine-tuning values are
        0.1–0.2 (METHODS.md §1 "Downstream"). Must be in [0, 1).
    """

    model_type = "maskedclip_vision_model"
    base_config_key = "vision_config"

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    layer_norm_eps: float = 1e-6
    decoder_hidden_size: int = 384
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 6
    decoder_intermediate_size: int = 1536
    mask_ratio: float | int = 0.75
    norm_pix_loss: bool = True
    pooling: str = "mean"
    classifier_dropout: float | int = 0.0
    drop_path_rate: float | int = 0.0

    @classmethod
    def pixel_decoder_defaults(cls) -> dict:
        """The paper's pixel-decoder sizes (ViT-small: width 384, 6 heads, depth 8)."""
        names = (
            "decoder_hidden_size",
            "decoder_num_hidden_layers",
            "decoder_num_attention_heads",
            "decoder_intermediate_size",
        )
        return {name: cls.__dataclass_fields__[name].default for name in names}

    @property
    def num_patches(self) -> int:
        image_size = _pair(self.image_size)
        patch_size = _pair(self.patch_size)
        return (image_size[0] // patch_size[0]) * (image_size[1] // patch_size[1])

    def validate_architecture(self):
        super().validate_architecture()
        image_size, patch_size = _pair(self.image_size), _pair(self.patch_size)
        if image_size[0] % patch_size[0] or image_size[1] % patch_size[1]:
            raise ValueError(
                f"vision_config.image_size {self.image_size} must be divisible by patch_size {self.patch_size}."
            )
        for width, heads, name in (
            (self.hidden_size, self.num_attention_heads, ""),
            (self.decoder_hidden_size, self.decoder_num_attention_heads, "decoder_"),
        ):
            if width % heads:
                raise ValueError(
                    f"vision_config.{name}hidden_size ({width}) must be divisible by "
                    f"vision_config.{name}num_attention_heads ({heads})."
                )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"vision_config.mask_ratio must be in [0, 1), got {self.mask_ratio}.")
        if int(self.num_patches * (1 - self.mask_ratio)) < 1:
            raise ValueError(
                f"vision_config.mask_ratio={self.mask_ratio} keeps no patch of the {self.num_patches} patches; "
                "lower it."
            )
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f'vision_config.pooling must be "mean" or "cls", got {self.pooling!r}.')
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"vision_config.drop_path_rate must be in [0, 1), got {self.drop_path_rate}.")


@strict
class MaskedCLIPConfig(PreTrainedConfig):
    r"""Composite configuration of [`MaskedCLIPModel`].

    vision_config (`dict` or [`MaskedCLIPVisionConfig`]):
        Image encoder E_I and pixel decoder D_I (also holds ``mask_ratio`` and ``norm_pix_loss``).
    text_config (`dict` or `BertConfig`):
        Text encoder E_T. Defaults to Bio_ClinicalBERT's sizes (cased BERT-base, vocabulary 28 996).
    bridge_num_hidden_layers (`int`, defaults to 4):
        Transformer blocks of the bridge B, at the encoder's width and head count.
    feature_decoder_hidden_size / feature_decoder_num_hidden_layers / feature_decoder_num_attention_heads /
    feature_decoder_intermediate_size (`int`, defaults to 384 / 4 / 6 / 1536):
        The feature decoder D_F (MAE-decoder shaped) that predicts bridge-space features of every patch.
    projection_dim (`int`, defaults to 512):
        Width of the shared image-text embedding space.
    clip_image_pooling (`str`, defaults to `"cls"`):
        Which token of z = B(E_I(x)) feeds the CLIP image projection: `"cls"` (our decision, METHODS.md §1)
        or `"mean"` over patch tokens (the paper's prose mentions "mean image features").
    text_pooling (`str`, defaults to `"cls"`):
        Which text state feeds the text projection: `"cls"` (BERT's [CLS], the paper's text embedding and the
        right choice for a pretrained text tower) or `"mean"`, the padding-masked mean of the last layer's
        tokens. A BERT initialised from scratch gives the same [CLS] state to every text (mean pairwise cosine
        1.0000 at init: the [CLS] input and position embedding dominate while attention is uniform), a
        stationary point of the contrastive loss; the mean sees every token (docs/real_data.md).
    contrastive_loss (`str`, defaults to `"softmax"`):
        The image-text loss. `"softmax"`: the paper's L_lg_clip (Eqs. 2–4). `"sigmoid"`: beyond both papers,
        SigLIP's pairwise sigmoid loss (Zhai et al. 2023) with the same label-guided positives and a learnable
        bias b, logits t·cos + b (`contrastive.py::label_guided_sigmoid_loss`). Only `"sigmoid"` builds the
        model's `logit_bias` parameter, so softmax checkpoints load unchanged.
    logit_scale_init_value (`float`, *optional*):
        Initial value of the learnable log temperature τ (the scale is exp τ). Left unset it follows
        `contrastive_loss`: ln(1/0.07) = 2.6592 (CLIP, the paper) for `"softmax"`, ln 10 = 2.3026 (SigLIP) for
        `"sigmoid"`; the resolved value is stored, so a saved config states it.
    logit_scale_max (`float`, defaults to ln(100) = 4.6052):
        τ is clamped to at most this value before it is exponentiated.
    logit_bias_init_value (`float`, defaults to −10.0):
        Initial value of the sigmoid loss's learnable bias b (SigLIP's init, which starts every pair near
        "no match"); unused with `"softmax"`.
    lambda_clip / lambda_mfd (`float`, defaults to 0.01 / 0.01):
        Weights of L_lg_clip and L_mfd in Eq. 6 (L_mim has weight 1).
    momentum (`float`, defaults to 0.999):
        EMA decay m of the momentum encoder: θ̂ ← m·θ̂ + (1 − m)·θ after each optimizer step.
    use_mim / use_clip / use_bridge / use_mfd (`bool`, default `True`):
        Ablation switches (Table 2): `use_bridge=False, use_mfd=False` is "MAE+CLIP", `use_mfd=False` is
        "+Bridge Transformer", all on is MaskedCLIP; `use_clip=False, use_mfd=False` is MAE only and
        `use_mim=False, use_mfd=False` is CLIP only. A switched-off part is not built.
    gather_distributed (`bool`, defaults to `True`):
        Under torch.distributed, compute the contrastive loss over the global batch (embeddings and labels
        gathered from every process, with gradients). `False` contrasts within each process only.
    clip_mask_ratio (`float`, defaults to 0.0):
        Beyond both papers (FLIP, Li et al. 2023): the fraction of the paired image's patches left out of the
        contrastive branch's pass (E_I + B on a random subset, MAE masking with its own noise). 0 encodes the
        whole image, as the paper does; 0.5 halves that pass's encoder work. Inference always sees the whole
        image.
    mfd_teacher_mask_ratio (`float`, defaults to 0.0):
        Beyond both papers: the fraction of patches left out of the momentum teacher's pass that makes the
        L_mfd targets; L_mfd is then averaged over the patches the teacher saw. 0 (the paper) gives a target
        for every patch.
    """

    model_type = "maskedclip"
    # The sub-configs, built in `__post_init__` (`configuration_support.py`: public API only, so a checkpoint's
    # config loads on every transformers 5.x that reads `sub_configs`).
    sub_configs = {"vision_config": MaskedCLIPVisionConfig, "text_config": AutoConfig}

    vision_config: dict | MaskedCLIPVisionConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    bridge_num_hidden_layers: int = 4
    feature_decoder_hidden_size: int = 384
    feature_decoder_num_hidden_layers: int = 4
    feature_decoder_num_attention_heads: int = 6
    feature_decoder_intermediate_size: int = 1536
    projection_dim: int = 512
    clip_image_pooling: str = "cls"
    text_pooling: str = "cls"
    contrastive_loss: str = "softmax"
    logit_scale_init_value: float | int | None = None
    logit_scale_max: float | int = math.log(100.0)
    logit_bias_init_value: float | int = -10.0
    lambda_clip: float | int = 0.01
    lambda_mfd: float | int = 0.01
    momentum: float | int = 0.999
    use_mim: bool = True
    use_clip: bool = True
    use_bridge: bool = True
    use_mfd: bool = True
    gather_distributed: bool = True
    clip_mask_ratio: float | int = 0.0
    mfd_teacher_mask_ratio: float | int = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.vision_config = build_sub_config(self.vision_config, MaskedCLIPVisionConfig)
        self.text_config = build_sub_config(self.text_config, "bert", BIO_CLINICAL_BERT_KWARGS)
        # The initial temperature follows the loss unless given; the resolved value is what a saved config holds.
        if self.logit_scale_init_value is None and self.contrastive_loss in LOGIT_SCALE_INIT:
            self.logit_scale_init_value = LOGIT_SCALE_INIT[self.contrastive_loss]
        super().__post_init__(**kwargs)

    def to_diff_dict(self) -> dict:
        # the sub-configs as transformers writes those it builds itself (`configuration_support.diff_sub_configs`)
        return diff_sub_configs(self, super().to_diff_dict())

    def validate_architecture(self):
        super().validate_architecture()
        if self.contrastive_loss not in CONTRASTIVE_LOSSES:
            raise ValueError(
                f"MaskedCLIPConfig.contrastive_loss must be one of {CONTRASTIVE_LOSSES} (softmax: the paper; sigmoid: "
                f"SigLIP), got {self.contrastive_loss!r}."
            )
        if not (self.use_mim or self.use_clip or self.use_mfd):
            raise ValueError(
                "MaskedCLIPConfig: use_mim, use_clip and use_mfd are all False — nothing to train."
            )
        if self.bridge_num_hidden_layers < 1 and self.use_bridge:
            raise ValueError(
                "MaskedCLIPConfig.bridge_num_hidden_layers must be ≥ 1 when use_bridge=True "
                "(set use_bridge=False for the MAE+CLIP ablation)."
            )
        if self.feature_decoder_hidden_size % self.feature_decoder_num_attention_heads:
            raise ValueError(
                f"MaskedCLIPConfig.feature_decoder_hidden_size ({self.feature_decoder_hidden_size}) must be "
                f"divisible by feature_decoder_num_attention_heads ({self.feature_decoder_num_attention_heads})."
            )
        if self.clip_image_pooling not in ("cls", "mean"):
            raise ValueError(f'clip_image_pooling must be "cls" or "mean", got {self.clip_image_pooling!r}.')
        if self.text_pooling not in ("cls", "mean"):
            raise ValueError(f'text_pooling must be "cls" or "mean", got {self.text_pooling!r}.')
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"MaskedCLIPConfig.momentum is an EMA decay in [0, 1], got {self.momentum}.")
        for name in ("lambda_clip", "lambda_mfd"):
            if getattr(self, name) < 0:
                raise ValueError(f"MaskedCLIPConfig.{name} must be ≥ 0, got {getattr(self, name)}.")
        if self.projection_dim < 1:
            raise ValueError(f"MaskedCLIPConfig.projection_dim must be ≥ 1, got {self.projection_dim}.")
        if self.logit_scale_init_value > self.logit_scale_max:
            raise ValueError(
                f"logit_scale_init_value ({self.logit_scale_init_value}) exceeds logit_scale_max "
                f"({self.logit_scale_max}); the clamp would hide the initial temperature."
            )
        for name in ("clip_mask_ratio", "mfd_teacher_mask_ratio"):
            ratio = getattr(self, name)
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"MaskedCLIPConfig.{name} must be in [0, 1) (0: the paper), got {ratio}.")
            if int(self.vision_config.num_patches * (1 - ratio)) < 1:
                raise ValueError(
                    f"MaskedCLIPConfig.{name}={ratio} keeps no patch of the {self.vision_config.num_patches} "
                    "patches; lower it."
                )
        if self.vision_config.mask_ratio == 0.0 and (self.use_mim or self.use_mfd):
            raise ValueError("vision_config.mask_ratio=0 leaves nothing to reconstruct for use_mim/use_mfd.")


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


__all__ = ["MaskedCLIPConfig", "MaskedCLIPVisionConfig"]
