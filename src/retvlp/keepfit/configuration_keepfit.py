"""Configuration of KeepFIT V2 (knowledge-enhanced vision-language pretraining, METHODS.md §2).

Defaults reproduce the paper: ResNet-50 image encoder (512 px inputs), Bio_ClinicalBERT text encoder (256
tokens), 512-d projections, semantic and appearance knowledge injection with 2-head cross-attention, a
frozen IBQ codebook of 16384 × 256, and the loss weights λ1 = 100, λ2 = 1e4 of Eq. 22.

This file is copied next to saved checkpoints for ``trust_remote_code`` loading: it imports nothing from
``retvlp``, and of transformers only its public API.
"""

import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig

from .configuration_support import build_sub_config, diff_sub_configs

# `contrastive_loss` values, and the initial log temperature each starts from: CLIP's ln(1/0.07) (the papers),
# SigLIP's ln 10 (Zhai et al. 2023).
CONTRASTIVE_LOSSES = ("softmax", "sigmoid")
LOGIT_SCALE_INIT = {"softmax": math.log(1 / 0.07), "sigmoid": math.log(10.0)}

# torchvision's / microsoft/resnet-50's ResNet-50 in transformers' ResNetConfig terms (also ResNetConfig's
# defaults; spelled out so the checkpoint's config says what it is).
RESNET50_KWARGS = {
    "num_channels": 3,
    "embedding_size": 64,
    "hidden_sizes": [256, 512, 1024, 2048],
    "depths": [3, 4, 6, 3],
    "layer_type": "bottleneck",
    "hidden_act": "relu",
    "downsample_in_first_stage": False,
    "downsample_in_bottleneck": False,
}

# Bio_ClinicalBERT (emilyalsentzer/Bio_ClinicalBERT): a cased BERT-base, vocabulary 28 996.
BIO_CLINICAL_BERT_KWARGS = {
    "vocab_size": 28996,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}

TEXT_POOLING = ("layers_mean", "reference", "cls")
SOFTMAX_OVER = ("keys", "heads")
KNOWLEDGE_LOSS_REDUCTION = ("mean", "sum_per_sample")


@strict
class KeepFitConfig(PreTrainedConfig):
    r"""Composite configuration of [`KeepFitModel`].

    vision_config (`dict` or `PreTrainedConfig`, defaults to a ResNet-50 `ResNetConfig`):
        Image encoder E_v, built with `AutoModel.from_config`, so any transformers vision backbone whose output
        has a `(batch, channels, h, w)` `last_hidden_state` and a pooled `pooler_output` works (ResNet,
        ConvNeXt, RegNet, ...). Its last feature map feeds the appearance branch.
    text_config (`dict` or `BertConfig`, defaults to Bio_ClinicalBERT's sizes):
        Text encoder E_t.
    projection_dim (`int`, defaults to 512):
        Width d of the shared space; projections P_v, P_t are L2-normalise → linear (no bias) → L2-normalise.
    contrastive_loss (`str`, defaults to `"softmax"`):
        The image-text loss of L_itc^p and L_itc^m. `"softmax"`: the paper's (Eqs. 2–4). `"sigmoid"`: beyond both
        papers, SigLIP's pairwise sigmoid loss (Zhai et al. 2023) with the same label-guided positives and a
        learnable bias b, logits t·cos + b (`contrastive.py::label_guided_sigmoid_loss`). Only `"sigmoid"` builds
        the model's `logit_bias` parameter, so softmax checkpoints load unchanged.
    logit_scale_init_value (`float`, *optional*) / logit_scale_max (defaults to ln 100):
        Initial value and clamp [0, max] of the learnable log temperature τ (the scale is exp τ). Left unset the
        initial value follows `contrastive_loss`: ln(1/0.07) = 2.6592 (CLIP, the paper) for `"softmax"`, ln 10 =
        2.3026 (SigLIP) for `"sigmoid"`; the resolved value is stored, so a saved config states it.
    logit_bias_init_value (`float`, defaults to −10.0):
        Initial value of the sigmoid loss's learnable bias b (SigLIP's init); unused with `"softmax"`.
    text_pooling (`str`, defaults to `"layers_mean"`):
        How a text becomes one vector before P_t. `"layers_mean"`: the hidden states of `text_pooling_layers`
        each averaged over the REAL tokens (padding masked out), then averaged over the layers (our decision,
        METHODS §2). `"reference"`: the FLAIR / KeepFIT reference code's average over ALL positions including
        padding (a text's embedding then depends on its batch); use it with converted reference checkpoints.
        `"cls"`: the last layer's [CLS] state.
    text_pooling_layers (`list[int]`, defaults to `[1, 2, -1]`):
        Indices into BERT's `hidden_states` (0 = embeddings, 1 = first layer, -1 = last layer).
    use_semantic_injection / use_appearance_injection (`bool`, default `True`):
        Table VII ablation switches: the semantic (Eqs. 5–10, 20) and appearance (Eqs. 11–19, 21) knowledge
        injection with its refinement loss. A switched-off branch is not built. (The third ablation,
        textual pretraining, is the choice of text weights: see `KeepFitModel.from_vision_text_pretrained`.)
    knowledge_num_heads (`int`, defaults to 2) / knowledge_attention_dropout (`float`, defaults to 0.5) /
    knowledge_attention_bias (`bool`, defaults to `False`):
        The knowledge cross-attentions (reference code values).
    semantic_softmax_over (`str`, defaults to `"keys"`):
        `"keys"`: softmax over the elite samples (Eq. 7). `"heads"`: the KeepFIT V1 reference code's
        normalisation across heads (a bug, kept to reproduce converted checkpoints' behaviour).
    codebook_size (`int`, defaults to 16384) / code_dim (`int`, defaults to 256):
        K × D of the frozen IBQ codebook.
    ibq_tokenizer_path (`str`, *optional*):
        Directory (or Hub id) of a trained [`IBQTokenizerModel`]; its codebook is copied into the model when it
        is built (`KeepFitModel(config)`), then saved with every checkpoint.
    quantizer_temperature (`float`, defaults to 1.0):
        T of the IBQ logits z·Cᵀ / T when quantising the appearance features.
    appearance_temperature (`float`, defaults to 1.0):
        τ_a of Eq. 18: the appearance attention weights are softmax(Q·Kᵀ / τ_a) (no 1/√d, as written).
    lambda_semantic / lambda_appearance (`float`, defaults to 100 / 1e4):
        λ1, λ2 of Eq. 22.
    knowledge_loss_reduction (`str`, defaults to `"mean"`):
        `"mean"`: MSE averaged over every element (torch's MSELoss, as the reference code). `"sum_per_sample"`:
        Eq. 20 literally, squared error summed over the d dimensions and averaged over the batch (d× larger).
    gather_distributed (`bool`, defaults to `True`):
        Under torch.distributed, contrast against the global batch and attend over the global elite batch
        (gathered with gradients). `False` reproduces the reference code's per-GPU losses.
    vision_channels_last (`bool`, defaults to `True`):
        Run the image encoder in channels-last memory format (faster convolutions on CPU and GPU).
    classifier_dropout (`float`, defaults to 0.0):
        Dropout on the pooled image features before the linear head of [`KeepFitForImageClassification`]
        (fine-tuning only; the pretraining model does not use it). Must be in [0, 1).
    """

    model_type = "keepfit"
    # The sub-configs, built in `__post_init__` (`configuration_support.py`: public API only, so a checkpoint's
    # config loads on every transformers 5.x that reads `sub_configs`).
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 512
    contrastive_loss: str = "softmax"
    logit_scale_init_value: float | int | None = None
    logit_scale_max: float | int = math.log(100.0)
    logit_bias_init_value: float | int = -10.0
    text_pooling: str = "layers_mean"
    text_pooling_layers: list[int] | tuple[int, ...] = (1, 2, -1)
    use_semantic_injection: bool = True
    use_appearance_injection: bool = True
    knowledge_num_heads: int = 2
    knowledge_attention_dropout: float | int = 0.5
    knowledge_attention_bias: bool = False
    semantic_softmax_over: str = "keys"
    codebook_size: int = 16384
    code_dim: int = 256
    ibq_tokenizer_path: str | None = None
    quantizer_temperature: float | int = 1.0
    appearance_temperature: float | int = 1.0
    lambda_semantic: float | int = 100.0
    lambda_appearance: float | int = 1e4
    knowledge_loss_reduction: str = "mean"
    gather_distributed: bool = True
    vision_channels_last: bool = True
    classifier_dropout: float | int = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.vision_config = build_sub_config(self.vision_config, "resnet", RESNET50_KWARGS)
        self.text_config = build_sub_config(self.text_config, "bert", BIO_CLINICAL_BERT_KWARGS)
        # The initial temperature follows the loss unless given; the resolved value is what a saved config holds.
        if self.logit_scale_init_value is None and self.contrastive_loss in LOGIT_SCALE_INIT:
            self.logit_scale_init_value = LOGIT_SCALE_INIT[self.contrastive_loss]
        super().__post_init__(**kwargs)

    def to_diff_dict(self) -> dict:
        # the sub-configs as transformers writes those it builds itself (`configuration_support.diff_sub_configs`)
        return diff_sub_configs(self, super().to_diff_dict())

    @property
    def image_feature_size(self) -> int:
        """Channels of the image encoder's last feature map (2048 for ResNet-50)."""
        sizes = getattr(self.vision_config, "hidden_sizes", None)
        if sizes:
            return int(sizes[-1])
        return int(self.vision_config.hidden_size)

    def validate_architecture(self):
        super().validate_architecture()

        def fail(message):
            raise ValueError(f"KeepFitConfig: {message}")

        if self.contrastive_loss not in CONTRASTIVE_LOSSES:
            fail(
                f"contrastive_loss must be one of {CONTRASTIVE_LOSSES} (softmax: the paper; sigmoid: SigLIP), "
                f"got {self.contrastive_loss!r}."
            )
        if self.text_pooling not in TEXT_POOLING:
            fail(f"text_pooling must be one of {TEXT_POOLING}, got {self.text_pooling!r}.")
        layers = list(self.text_pooling_layers)
        num_states = self.text_config.num_hidden_layers + 1
        if not layers or any(not -num_states <= i < num_states for i in layers):
            fail(
                f"text_pooling_layers {layers} must be non-empty indices into the text encoder's "
                f"{num_states} hidden states (0 = embeddings, -1 = last layer)."
            )
        if self.semantic_softmax_over not in SOFTMAX_OVER:
            fail(f"semantic_softmax_over must be one of {SOFTMAX_OVER}, got {self.semantic_softmax_over!r}.")
        if self.knowledge_loss_reduction not in KNOWLEDGE_LOSS_REDUCTION:
            fail(
                f"knowledge_loss_reduction must be one of {KNOWLEDGE_LOSS_REDUCTION}, "
                f"got {self.knowledge_loss_reduction!r}."
            )
        for name, width in (("projection_dim", self.projection_dim), ("code_dim", self.code_dim)):
            if width < 1 or width % self.knowledge_num_heads:
                fail(f"{name} ({width}) must be positive and divisible by knowledge_num_heads.")
        if self.knowledge_num_heads < 1:
            fail(f"knowledge_num_heads must be ≥ 1, got {self.knowledge_num_heads}.")
        if not 0.0 <= self.knowledge_attention_dropout < 1.0:
            fail(f"knowledge_attention_dropout must be in [0, 1), got {self.knowledge_attention_dropout}.")
        if not 0.0 <= self.classifier_dropout < 1.0:
            fail(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}.")
        if self.codebook_size < 1:
            fail(f"codebook_size must be ≥ 1, got {self.codebook_size}.")
        for name in ("quantizer_temperature", "appearance_temperature"):
            if getattr(self, name) <= 0:
                fail(f"{name} must be > 0, got {getattr(self, name)}.")
        for name in ("lambda_semantic", "lambda_appearance"):
            if getattr(self, name) < 0:
                fail(f"{name} must be ≥ 0, got {getattr(self, name)}.")
        if self.logit_scale_init_value > self.logit_scale_max:
            fail(
                f"logit_scale_init_value ({self.logit_scale_init_value}) exceeds logit_scale_max "
                f"({self.logit_scale_max}); the clamp would hide the initial temperature."
            )


__all__ = ["KeepFitConfig"]
