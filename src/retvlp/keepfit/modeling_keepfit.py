"""KeepFIT V2: CLIP-style pretraining that injects knowledge from a small elite image–caption set into
categorical public data (METHODS.md §2; equation numbers of the KeepFIT V2 paper).

Two models, as transformers keeps them (`CLIPModel` vs a `...ForPreTraining` class):

- [`KeepFitModel`], the released dual encoder:

      E_v   image encoder       vision_model            ResNet-50 in transformers' layout (any AutoModel backbone)
      E_t   text encoder        text_model              transformers BertModel
      P_v, P_t  projections     visual_projection, text_projection   normalise → linear → normalise
      τ     logit scale         logit_scale             → L_itc (Eqs. 2–4), only with return_loss=True
      b     logit bias          logit_bias              only with config.contrastive_loss="sigmoid" (SigLIP)

- [`KeepFitForPreTraining`], what the trainer trains: the released model under `keepfit`, plus

      semantic knowledge extraction semantic_attention      cross-attention V_p → (V_m, T_m) = EK_s (Eqs. 5–10)
      appearance tokenisation       appearance_quantizer    1×1 conv + IBQ on the FROZEN codebook (Eqs. 11–15)
      appearance knowledge          appearance_attention    cross-attention Q_p → (Q_m, T_m) = EK_a (Eqs. 16–19)
                                                            → L_EK^s, L_EK^a (Eqs. 20–21), total Eq. 22

  The codebook comes from a trained IBQ tokenizer through `load_codebook` (the pretraining side loads it;
  building a model never reads files).

`base_model_prefix = "keepfit"` lets each class load the other's checkpoint; pre-split checkpoints (every
module at the top level) load into both.

The losses live in `loss_keepfit.py` (and the shared contrastive loss in `contrastive.py`), the ResNet tower
(transformers' layout, our code) in `resnet_blocks.py`. This file is copied next to saved checkpoints for
``trust_remote_code`` loading, so it only imports torch, transformers' public API, huggingface_hub and its sibling
files (`tests/test_checkpoint_code_imports.py`).
"""

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, BertModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import ModelOutput

from .configuration_keepfit import KeepFitConfig

# Imported here too (unused): loading a local folder with remote code, transformers 5.10 (for one) copies only
# the relative imports of the class's own file into its module cache, and the config file needs this one.
from .configuration_support import build_sub_config  # noqa: F401
from .contrastive import distributed_world, gather_with_grad
from .loss_keepfit import image_text_contrastive_loss, knowledge_refinement_loss, total_loss
from .modeling_common import (
    CheckpointLayout,
    PreTrainedModelMixin,
    config_from_pretrained_towers,
    dual_encoder_scores,
    init_logit_parameters,
    logit_parameters,
    reject_return_loss,
    reject_settings_beside_config,
    select_hidden_states,
)
from .modeling_support import can_return_tuple
from .quantization_ibq import ibq_quantize
from .resnet_blocks import ResNetVisionModel

logger = logging.getLogger(__name__)

# Name of the codebook tensor in an IBQ tokenizer checkpoint (`IBQTokenizerModel.quantizer.codebook`).
IBQ_CODEBOOK_KEY = "quantizer.codebook"
# Top-level modules of the released model (at the top of pre-split checkpoints; under `keepfit.` in
# KeepFitForPreTraining).
RELEASED_PREFIXES = ("vision_model.", "text_model.", "visual_projection.", "text_projection.")
PRETRAINING_ONLY_PREFIXES = ("semantic_attention.", "appearance_quantizer.", "appearance_attention.")


LAYOUT = CheckpointLayout("keepfit", RELEASED_PREFIXES, PRETRAINING_ONLY_PREFIXES)
# Reading pre-split checkpoints by hand (e.g. `from_pretrained(hub_id, key_mapping=legacy_key_mapping())`).
legacy_key_mapping = LAYOUT.key_mapping
upgrade_legacy_state_dict = LAYOUT.upgrade


@dataclass
class KeepFitOutput(ModelOutput):
    r"""Output of [`KeepFitModel`] (transformers' `CLIPOutput` fields).

    loss (`()`): the image-text contrastive loss (label-guided with `labels`); only with `return_loss=True`.
    logits_per_image (`(image_batch, text_batch)`), logits_per_text: scaled similarities.
    text_embeds, image_embeds (`(batch, projection_dim)`): L2-normalised T and V.
    text_model_output: E_t's output (`pooler_output`: the pooled, unprojected text, see `text_pooling`).
    vision_model_output: E_v's output; `pooler_output` `(image_batch, C)` is the pooled last feature map (global
        average for ResNet), the frozen-encoder feature linear probes read; `last_hidden_state` the map.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            v.to_tuple() if isinstance(v, ModelOutput) else v for v in (self[k] for k in self.keys())
        )


@dataclass
class KeepFitForPreTrainingOutput(ModelOutput):
    r"""Output of [`KeepFitForPreTraining`].

    loss (`()`): Eq. 22 over the terms computed.
    loss_itc_categorical, loss_itc_elite (`()`): L_itc^p and L_itc^m, unweighted.
    loss_semantic, loss_appearance (`()`): L_EK^s and L_EK^a, unweighted (λ1, λ2 are applied in `loss`).
    logits_per_image (`(batch, text_batch)`), logits_per_text: scaled similarities of the public samples.
    image_embeds, text_embeds (`(batch, projection_dim)`): L2-normalised V_p and T_p.
    elite_image_embeds, elite_text_embeds (`(elite_batch, projection_dim)`): V_m and T_m.
    semantic_knowledge, appearance_knowledge (`(batch, projection_dim)`): EK_s and EK_a.
    semantic_attention, appearance_attention (`(batch, heads, global_elite_batch)`): attention weights.
    appearance_indices (`(batch + elite_batch, h, w)`): codebook index of every feature-map position (public
        images first).
    hidden_states: with `output_hidden_states`, E_v's feature maps of the public images (from the joint public +
        elite pass).
    attentions: with `output_attentions`, E_t's attention weights over the public prompts.
    """

    loss: torch.FloatTensor | None = None
    loss_itc_categorical: torch.FloatTensor | None = None
    loss_itc_elite: torch.FloatTensor | None = None
    loss_semantic: torch.FloatTensor | None = None
    loss_appearance: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    elite_image_embeds: torch.FloatTensor | None = None
    elite_text_embeds: torch.FloatTensor | None = None
    semantic_knowledge: torch.FloatTensor | None = None
    appearance_knowledge: torch.FloatTensor | None = None
    semantic_attention: torch.FloatTensor | None = None
    appearance_attention: torch.FloatTensor | None = None
    appearance_indices: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# `torch.nn.Module`, not `nn.Module`: transformers decides whether a model file supports
# `set_attn_implementation` by looking for `class *Attention*(nn.Module)` layers that do not dispatch through
# ALL_ATTENTION_FUNCTIONS. This cross-attention over sets of vectors is not a sequence attention: it has one
# fixed computation (softmax over keys or heads, weights returned) under every implementation, and must not
# block switching the towers' attention.
class KeepFitKnowledgeAttention(torch.nn.Module):
    r"""Multi-head cross-attention that reads elite texts through image matching (Eqs. 5–10 and 16–19):

        Q^h = query·W_Q^h,  K^h = key·W_K^h,  V^h = value·W_V^h
        Ψ^h = softmax(scale · Q^h K^hᵀ)          over the keys (the elite samples)
        EK  = concat_h(dropout(Ψ^h) V^h) · W_O

    The inputs are sets of vectors, not sequences: query `(num_queries, query_dim)`, key `(num_keys, key_dim)`,
    value `(num_keys, value_dim)`. `softmax_over="heads"` normalises across heads instead, reproducing the
    KeepFIT V1 reference code (METHODS §2 records it as a bug).
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        value_dim: int,
        attention_dim: int,
        output_dim: int,
        num_heads: int,
        scale: float,
        dropout: float = 0.0,
        bias: bool = False,
        softmax_over: str = "keys",
    ):
        super().__init__()
        if attention_dim % num_heads or output_dim % num_heads:
            raise ValueError(
                f"attention_dim {attention_dim} and output_dim {output_dim} need {num_heads} | both."
            )
        self.num_heads = num_heads
        self.scale = scale
        self.softmax_over = softmax_over
        self.q_proj = nn.Linear(query_dim, attention_dim, bias=bias)
        self.k_proj = nn.Linear(key_dim, attention_dim, bias=bias)
        self.v_proj = nn.Linear(value_dim, output_dim, bias=bias)
        self.o_proj = nn.Linear(output_dim, output_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.num_heads, -1).transpose(0, 1)  # (heads, n, dim / heads)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `(knowledge (num_queries, output_dim), weights (num_queries, heads, num_keys))`; the weights
        are those before dropout."""
        if key.shape[0] != value.shape[0]:
            raise ValueError(f"{key.shape[0]} keys (elite images) but {value.shape[0]} values (elite texts).")
        q, k, v = (
            self._heads(self.q_proj(query)),
            self._heads(self.k_proj(key)),
            self._heads(self.v_proj(value)),
        )
        scores = self.scale * (q @ k.transpose(-1, -2))  # (heads, queries, keys)
        weights = scores.float().softmax(dim=-1 if self.softmax_over == "keys" else 0).to(v.dtype)
        mixed = self.dropout(weights) @ v  # (heads, queries, output_dim / heads)
        knowledge = self.o_proj(mixed.transpose(0, 1).reshape(query.shape[0], -1))
        return knowledge, weights.transpose(0, 1)


def stand_in_codebook(codebook_size: int, code_dim: int) -> torch.Tensor:
    """The codebook until a trained one is loaded (`load_codebook`): codes of about unit norm, the same on every
    build (a fixed seed, independent of the global RNG)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(codebook_size, code_dim, generator=generator) * code_dim**-0.5


class KeepFitAppearanceQuantizer(nn.Module):
    """The image encoder's last feature map → 1×1 conv to the code dimension → IBQ quantisation against the
    frozen codebook C (Eqs. 11–15; straight-through: value C[argmax], gradient to the conv through the soft
    assignment) → mean over positions: one code-space descriptor per image (our decision; the paper does not
    say how a map becomes a query).

    `codebook` `(K, D)` is a persistent buffer: saved with the model, never trained, never in an optimizer.
    """

    def __init__(self, in_channels: int, codebook_size: int, code_dim: int, temperature: float):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, code_dim, kernel_size=1)
        self.register_buffer("codebook", stand_in_codebook(codebook_size, code_dim))
        self.temperature = temperature

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(batch, channels, h, w)` → `(descriptor (batch, code_dim), indices (batch, h, w))`."""
        features = self.proj(feature_map).permute(0, 2, 3, 1).float()
        # The code assignment stays in float32 under bf16 autocast: bf16 logits change the arg-max code of a
        # few percent of positions (measured 2.4 % on random features; benchmarks/train_step_benchmark.py).
        dtype = feature_map.dtype
        with torch.autocast(device_type=features.device.type, enabled=False):
            quantization = ibq_quantize(features, self.codebook.float(), self.temperature)
        # Back to the model's dtype (fp16 / bf16 weights) for the attention that reads the descriptor.
        return quantization.quantized.mean(dim=(1, 2)).to(dtype), quantization.indices


def encode_images(
    vision_model: nn.Module, pixel_values: torch.Tensor, channels_last: bool, **kwargs
) -> BaseModelOutputWithPooling:
    """Run the image encoder E_v on `(batch, 3, H, W)` images (in channels-last memory format when asked);
    returns the backbone's output (`last_hidden_state` `(batch, C, h, w)`, `pooler_output`)."""
    if pixel_values.dim() != 4:
        raise ValueError(
            f"pixel_values must be (batch, channels, height, width), got {tuple(pixel_values.shape)}."
        )
    if channels_last:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    return vision_model(pixel_values=pixel_values, **kwargs)


def checkpoint_file(path_or_repo_id: str, filename: str, **hub_kwargs) -> str:
    """The local path of `filename` in a checkpoint directory, or in a Hub repository (downloaded into the Hub
    cache with huggingface_hub; `hub_kwargs` as `hf_hub_download` takes them: `revision`, `token`, `cache_dir`,
    `subfolder`, `local_files_only`, ...). Raises OSError when it cannot be found."""
    if os.path.isdir(path_or_repo_id):
        candidate = os.path.join(path_or_repo_id, hub_kwargs.get("subfolder") or "", filename)
        if not os.path.isfile(candidate):
            raise OSError(f"{candidate} does not exist.")
        return candidate
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(path_or_repo_id, filename, **hub_kwargs)
    except (OSError, ValueError, EntryNotFoundError) as error:  # not found, not a repo id, offline
        raise OSError(f"{filename} not found in {path_or_repo_id!r}: {error}") from error


def build_vision_tower(vision_config: PreTrainedConfig) -> nn.Module:
    """E_v for `config.vision_config`: for a ResNet config our `ResNetVisionModel` (`resnet_blocks.py`:
    transformers' ResNet layout and computation, stages with BatchNorm-safe activation checkpointing); for any
    other vision backbone config transformers' own model for it (`AutoModel.from_config`)."""
    if vision_config.model_type == "resnet":
        return ResNetVisionModel(vision_config)
    return AutoModel.from_config(vision_config)


class KeepFitPreTrainedModel(PreTrainedModelMixin, PreTrainedModel):
    config: KeepFitConfig
    base_model_prefix = "keepfit"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    # Activation checkpointing: BERT's layers (transformers') and the ResNet stages (ours, BatchNorm-safe).
    supports_gradient_checkpointing = True
    _no_split_modules = ["BertLayer", "ResNetStage"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    # The Auto classes a saved checkpoint of the dual-encoder config resolves with trust_remote_code (each
    # class writes its own `_auto_class` entry; these complete the set, so either checkpoint kind loads with
    # AutoModel and AutoModelForPreTraining).
    _remote_auto_map = {
        "AutoModel": "modeling_keepfit.KeepFitModel",
        "AutoModelForPreTraining": "modeling_keepfit.KeepFitForPreTraining",
        "AutoModelForZeroShotImageClassification": "modeling_keepfit.KeepFitModel",
        "AutoModelForImageClassification": "modeling_keepfit.KeepFitForImageClassification",
    }

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, KeepFitAppearanceQuantizer):
            init.copy_(module.codebook, stand_in_codebook(*module.codebook.shape))
        elif isinstance(module, KeepFitModel):
            init_logit_parameters(module, self.config)


class KeepFitModel(KeepFitPreTrainedModel):
    """The released KeepFIT V2 model: a CLIP-style dual encoder (E_v, E_t, projections, logit scale) for
    zero-shot classification, retrieval and feature extraction.

    `forward` embeds the given images and/or texts and returns their similarities; with `return_loss=True`
    also the (label-guided, with `labels`) image-text contrastive loss. The linear-probe feature is
    `vision_model_output.pooler_output`. Pretrain with [`KeepFitForPreTraining`].
    """

    _keys_to_ignore_on_load_unexpected = [
        r"^(semantic_attention|appearance_quantizer|appearance_attention)\."
    ]

    def __init__(self, config: KeepFitConfig):
        super().__init__(config)
        self.vision_model = build_vision_tower(config.vision_config)
        self.text_model = BertModel(config.text_config, add_pooling_layer=False)
        self.visual_projection = nn.Linear(config.image_feature_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale, self.logit_bias = logit_parameters(config)  # the bias only for the sigmoid loss
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    has_text_tower = True

    # ------------------------------------------------------------------ encoders
    @staticmethod
    def project(features: torch.Tensor, projection: nn.Linear) -> torch.Tensor:
        """P: L2-normalise → linear; the caller normalises the result (METHODS §2)."""
        return projection(F.normalize(features, dim=-1))

    def _vision_outputs(self, pixel_values, output_hidden_states: bool) -> BaseModelOutputWithPooling:
        """E_v's output: `last_hidden_state` the last feature map `(batch, C, h, w)`, `pooler_output` the pooled
        features `(batch, C)`."""
        extra = {"output_hidden_states": True} if output_hidden_states else {}
        outputs = encode_images(self.vision_model, pixel_values, self.config.vision_channels_last, **extra)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=outputs.pooler_output.flatten(1),
            hidden_states=select_hidden_states(outputs.hidden_states, output_hidden_states),
        )

    def _text_outputs(
        self, input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, output_attentions
    ) -> BaseModelOutputWithPooling:
        """E_t's output with `pooler_output` = one unprojected vector per text (see `config.text_pooling`)."""
        if input_ids is None or input_ids.numel() == 0:
            raise ValueError(
                "The text encoder needs a non-empty input_ids batch (tokenised captions or prompts)."
            )
        pooling = self.config.text_pooling
        layer_pooling = pooling != "cls"  # needs every layer, whatever the caller asked for
        # The mask goes to BERT as given: its mask preparation already drops an all-ones mask for SDPA's
        # unmasked kernel (without a host sync when compiled or exported).
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_hidden_states=True if layer_pooling else output_hidden_states,
            output_attentions=output_attentions,
        )
        last = outputs.last_hidden_state
        if pooling == "cls":
            pooled = last[:, 0]
        else:
            layers = torch.stack([outputs.hidden_states[i] for i in self.config.text_pooling_layers])
            if pooling == "reference" or attention_mask is None:
                pooled = layers.mean(dim=2).mean(dim=0)
            else:
                weights = attention_mask.to(layers.dtype)[None, :, :, None]  # (1, batch, seq, 1)
                pooled = ((layers * weights).sum(dim=2) / weights.sum(dim=2).clamp_min(1.0)).mean(dim=0)
        hidden_states = outputs.hidden_states
        if layer_pooling:  # BERT returned every layer for the pooling: keep what was asked for
            hidden_states = select_hidden_states(hidden_states, output_hidden_states)
        return BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=pooled,
            hidden_states=hidden_states,
            attentions=outputs.attentions,
        )

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """`pooler_output`: the projected, not yet normalised image embedding `(batch, projection_dim)`;
        `last_hidden_state`: the encoder's last feature map `(batch, C, h, w)`."""
        hidden, _ = self._output_flags(output_hidden_states, False)
        output = self._vision_outputs(pixel_values, hidden)
        output.pooler_output = self.project(output.pooler_output, self.visual_projection)
        return output

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """`pooler_output`: the projected, not yet normalised text embedding `(batch, projection_dim)`."""
        hidden, attentions = self._output_flags(output_hidden_states, output_attentions)
        output = self._text_outputs(
            input_ids, attention_mask, token_type_ids, position_ids, hidden, attentions
        )
        output.pooler_output = self.project(output.pooler_output, self.text_projection)
        return output

    def clamped_logit_scale(self) -> torch.Tensor:
        """exp(τ) with τ clamped to [0, `config.logit_scale_max`]."""
        return self.logit_scale.clamp(0.0, self.config.logit_scale_max).exp()

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep τ inside [0, ln 100] after an optimizer step (outside it the clamp's gradient is zero)."""
        self.logit_scale.clamp_(0.0, self.config.logit_scale_max)

    def contrastive_loss(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L_itc of `config.contrastive_loss` (the paper's softmax, or the sigmoid variant with `logit_bias`) at
        this model's clamped scale, for L2-normalised `(batch, dim)` embeddings of image-text pairs and optional
        category `labels` (see `forward`); over the global batch under torch.distributed when
        `config.gather_distributed`. Returns `(loss, logits_per_image, logits_per_text)`."""
        return image_text_contrastive_loss(
            image_embeds,
            text_embeds,
            self.clamped_logit_scale(),
            labels=None if labels is None else labels.to(image_embeds.device),
            gather_distributed=self.config.gather_distributed,
            kind=self.config.contrastive_loss,
            logit_bias=self.logit_bias,
        )

    # ------------------------------------------------------------------ forward
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> KeepFitOutput:
        r"""
        input_ids, attention_mask, token_type_ids (`(text_batch, seq_len)`): tokenised texts.
        pixel_values (`(image_batch, 3, H, W)`): images.
        labels (`(batch,)` category ids, −1 for none, or `(batch, num_classes)` multi-hot): with
            `return_loss=True`, samples of one category are positives of each other.
        return_loss (`bool`, default False): compute the contrastive loss (one text per image).
        """
        hidden, attentions = self._output_flags(output_hidden_states, output_attentions)
        image_embeds = text_embeds = vision_output = text_output = None
        if pixel_values is not None:
            vision_output = self._vision_outputs(pixel_values, hidden)
            image_embeds = F.normalize(
                self.project(vision_output.pooler_output, self.visual_projection), dim=-1
            )
        if input_ids is not None:
            text_output = self._text_outputs(
                input_ids, attention_mask, token_type_ids, position_ids, hidden, attentions
            )
            text_embeds = F.normalize(self.project(text_output.pooler_output, self.text_projection), dim=-1)
        loss, logits_per_image, logits_per_text = dual_encoder_scores(
            image_embeds,
            text_embeds,
            self.clamped_logit_scale(),
            logit_bias=self.logit_bias,
            kind=self.config.contrastive_loss,
            labels=labels,
            return_loss=bool(return_loss),
        )
        return KeepFitOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_output,
            vision_model_output=vision_output,
        )


class _PretrainingEmbeddings(NamedTuple):
    """What `KeepFitForPreTraining._embed` returns (see there for the shapes)."""

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    elite_image_embeds: torch.Tensor | None
    elite_text_embeds: torch.Tensor | None
    feature_maps: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None


class _KnowledgeTerm(NamedTuple):
    """A knowledge injection of a pretraining forward: the knowledge `(batch, projection_dim)`, the attention
    weights `(batch, heads, global_elite_batch)`, the loss `()`, and for appearance knowledge the code indices
    `(batch + elite_batch, h, w)` (all None when the injection is switched off)."""

    knowledge: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    indices: torch.Tensor | None = None


@dataclass
class _TextImageBatch:
    """The image and text tensors of one data source, checked for matching sizes."""

    name: str
    pixel_values: torch.Tensor | None
    input_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    token_type_ids: torch.Tensor | None

    @property
    def size(self) -> int:
        return 0 if self.pixel_values is None else int(self.pixel_values.shape[0])

    def check(self, required: bool, why: str = "") -> None:
        prefix = "" if self.name == "public" else "elite_"
        if (self.pixel_values is None) != (self.input_ids is None):
            raise ValueError(
                f"The {self.name} batch needs both {prefix}pixel_values and {prefix}input_ids (got only "
                f"{prefix + 'pixel_values' if self.input_ids is None else prefix + 'input_ids'})."
            )
        if self.pixel_values is None or self.size == 0:
            if required:
                reason = f" ({why})" if why else ""
                raise ValueError(
                    f"The pretraining forward needs a non-empty {self.name} batch: pass {prefix}pixel_values and "
                    f"{prefix}input_ids{reason}."
                )
            return
        if self.input_ids.shape[0] != self.size:
            raise ValueError(
                f"{self.name} batch mismatch: {self.size} images ({prefix}pixel_values) but "
                f"{self.input_ids.shape[0]} texts ({prefix}input_ids); pass one text per image."
            )

    def text_inputs(self) -> dict:
        return dict(
            input_ids=self.input_ids, attention_mask=self.attention_mask, token_type_ids=self.token_type_ids
        )


class KeepFitForPreTraining(KeepFitPreTrainedModel):
    """KeepFIT V2 pretraining (Eq. 22): the released [`KeepFitModel`] (`keepfit`) plus the semantic and
    appearance knowledge attentions and the appearance quantiser with its frozen IBQ codebook.

    A forward takes a batch of the categorical public data p (`pixel_values`, prompt `input_ids`, category
    `labels`) and a batch of elite pairs m (`elite_*`) and computes every term of Eq. 22. Load the trained IBQ
    codebook with [`load_codebook`] before training; call `clamp_logit_scale_()` after optimizer steps.
    """

    main_input_name = "pixel_values"

    def __init__(self, config: KeepFitConfig):
        super().__init__(config)
        self.keepfit = KeepFitModel(config)
        attention_kwargs = dict(
            num_heads=config.knowledge_num_heads,
            dropout=config.knowledge_attention_dropout,
            bias=config.knowledge_attention_bias,
        )
        d = config.projection_dim
        self.semantic_attention = (
            KeepFitKnowledgeAttention(
                d, d, d, d, d,
                scale=1.0 / math.sqrt(d / config.knowledge_num_heads),
                softmax_over=config.semantic_softmax_over,
                **attention_kwargs,
            )
            if config.use_semantic_injection
            else None
        )  # fmt: skip
        if config.use_appearance_injection:
            self.appearance_quantizer = KeepFitAppearanceQuantizer(
                config.image_feature_size, config.codebook_size, config.code_dim, config.quantizer_temperature
            )
            c = config.code_dim
            self.appearance_attention = KeepFitKnowledgeAttention(
                c, c, d, c, d, scale=1.0 / config.appearance_temperature, **attention_kwargs
            )
        else:
            self.appearance_quantizer = self.appearance_attention = None
        self.post_init()
        self.register_load_state_dict_pre_hook(LAYOUT.load_state_dict_pre_hook)

    @property
    def released_model(self) -> KeepFitModel:
        """The model a pretraining run publishes (shares its parameters with this one)."""
        return self.keepfit

    def get_input_embeddings(self) -> nn.Module:
        return self.keepfit.get_input_embeddings()

    def clamp_logit_scale_(self) -> None:
        self.keepfit.clamp_logit_scale_()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`, reading pre-split checkpoints too."""
        return super().from_pretrained(*args, **LAYOUT.from_pretrained_kwargs(args, kwargs))

    @torch.no_grad()
    def load_codebook(self, tokenizer_path: str, **hub_kwargs) -> torch.Tensor:
        """Copy the codebook C `(K, D)` of a trained IBQ tokenizer (a directory or Hub id holding
        `model.safetensors`) into the frozen appearance quantizer; returns it. Raises when the shapes differ."""
        if self.appearance_quantizer is None:
            raise ValueError("load_codebook: this model was built with use_appearance_injection=False.")
        from safetensors import safe_open

        try:
            weights_file = checkpoint_file(tokenizer_path, "model.safetensors", **hub_kwargs)
        except OSError as error:
            raise FileNotFoundError(
                f"No IBQ tokenizer weights (model.safetensors) at {tokenizer_path!r}: train one with "
                "`training/pretrain.py --model ibq-tokenizer` and point ibq_tokenizer_path at its final/ "
                f"directory. ({error})"
            ) from error
        with safe_open(weights_file, framework="pt") as handle:
            if IBQ_CODEBOOK_KEY not in handle.keys():
                raise ValueError(
                    f"{weights_file} has no {IBQ_CODEBOOK_KEY!r}: it is not an IBQ tokenizer checkpoint."
                )
            codebook = handle.get_tensor(IBQ_CODEBOOK_KEY)
        target = self.appearance_quantizer.codebook
        if codebook.shape != target.shape:
            raise ValueError(
                f"The IBQ codebook at {tokenizer_path} is {tuple(codebook.shape)} (K × D) but this KeepFIT config "
                f"expects {tuple(target.shape)}: set codebook_size / code_dim to the tokenizer's."
            )
        target.copy_(codebook.to(target.dtype))
        self.config.ibq_tokenizer_path = str(tokenizer_path)
        return target

    @classmethod
    def config_from_pretrained_towers(
        cls,
        vision_model_name_or_path: str | None = None,
        text_model_name_or_path: str | None = None,
        **config_kwargs,
    ) -> KeepFitConfig:
        """The `KeepFitConfig` that `from_vision_text_pretrained` builds, without loading any weights.

        `config_kwargs` are `KeepFitConfig` keyword arguments: they describe what is built fresh, including a
        tower given no checkpoint (`vision_config` / `text_config` dicts). A tower with a checkpoint takes its
        size from the checkpoint's config; its `vision_config` / `text_config` may restate the checkpoint's
        values or set dropout, and any other disagreement raises `PretrainedTowerError` naming the key and both
        values. The text checkpoint must be a BERT (`bert`: Bio_ClinicalBERT, a `text-mlm` output).
        """
        return config_from_pretrained_towers(
            KeepFitConfig, vision_model_name_or_path, text_model_name_or_path, config_kwargs
        )

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str | None = None,
        text_model_name_or_path: str | None = None,
        ibq_tokenizer_path: str | None = None,
        *,
        config: KeepFitConfig | None = None,
        **config_kwargs,
    ) -> "KeepFitForPreTraining":
        """Build KeepFIT for pretraining with each tower from where it is given: both, one or neither from a
        checkpoint. E_v from an image backbone checkpoint (e.g. `microsoft/resnet-50`, ImageNet weights), E_t
        from a BERT checkpoint — `emilyalsentzer/Bio_ClinicalBERT`, or the directory written by the MLM text
        pretraining (`--model text-mlm`; its `BertForMaskedLM` weights load into E_t). Using the plain BERT
        instead of the MLM output is the "no textual pretraining" ablation. A tower given as `None` is built
        fresh from `config_kwargs` (`vision_config=` / `text_config=` dicts, `KeepFitConfig` keyword arguments);
        a pretrained tower's size comes from its checkpoint, and settings that disagree with it raise
        `PretrainedTowerError` (see `config_from_pretrained_towers`, which builds the config; or pass that
        config as `config=`). `ibq_tokenizer_path` (a trained IBQ tokenizer; else the config's) supplies the
        appearance codebook.
        """
        vision_path, text_path = vision_model_name_or_path, text_model_name_or_path
        reject_settings_beside_config(config, config_kwargs)
        if config is None:
            config = cls.config_from_pretrained_towers(vision_path, text_path, **config_kwargs)
        model = cls(config)
        if vision_path is not None:
            vision = AutoModel.from_pretrained(vision_path)
            model.keepfit.vision_model.load_state_dict(vision.state_dict())
        if text_path is not None:
            text = BertModel.from_pretrained(text_path, add_pooling_layer=False)
            model.keepfit.text_model.load_state_dict(text.state_dict())
        ibq_tokenizer_path = ibq_tokenizer_path or model.config.ibq_tokenizer_path
        if model.appearance_quantizer is not None:
            if ibq_tokenizer_path:
                model.load_codebook(ibq_tokenizer_path)
            else:
                logger.warning(
                    "KeepFitForPreTraining: appearance knowledge injection uses a RANDOM codebook; pass "
                    "ibq_tokenizer_path (in a run file: model.config.ibq_tokenizer_path), a trained IBQ "
                    "tokenizer (--model ibq-tokenizer), or call load_codebook."
                )
        return model

    # ------------------------------------------------------------------ forward
    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        elite_pixel_values: torch.FloatTensor | None = None,
        elite_input_ids: torch.LongTensor | None = None,
        elite_attention_mask: torch.Tensor | None = None,
        elite_token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> KeepFitForPreTrainingOutput:
        r"""
        pixel_values (`(batch, 3, H, W)`), input_ids / attention_mask / token_type_ids (`(batch, seq_len)`): the
            public images and their category prompts.
        labels (`(batch,)` category ids, −1 for none, or `(batch, num_classes)` multi-hot): categories of the
            public samples; samples of one category are positives of each other in L_itc^p. Without labels
            L_itc^p is plain CLIP.
        elite_pixel_values (`(elite_batch, 3, H, W)`), elite_input_ids / elite_attention_mask /
            elite_token_type_ids (`(elite_batch, seq_len)`): the elite image-caption pairs.
        """
        reject_return_loss(self, kwargs)
        public, elite = self._pretraining_batches(
            _TextImageBatch("public", pixel_values, input_ids, attention_mask, token_type_ids),
            _TextImageBatch(
                "elite", elite_pixel_values, elite_input_ids, elite_attention_mask, elite_token_type_ids
            ),
            labels,
        )
        embeddings = self._embed(public, elite, output_hidden_states, output_attentions)
        terms, logits_per_image, logits_per_text = self._contrastive_terms(embeddings, labels)

        # The knowledge source is the GLOBAL elite batch under torch.distributed (gathered with gradients).
        elite_values = self._global_elite(embeddings.elite_text_embeds) if elite.size > 0 else None
        semantic = appearance = _KnowledgeTerm()
        if self.config.use_semantic_injection:
            semantic = self._semantic_knowledge(embeddings, elite_values)
            terms["semantic"] = semantic.loss
        if self.config.use_appearance_injection:
            appearance = self._appearance_knowledge(embeddings, elite_values)
            terms["appearance"] = appearance.loss

        return KeepFitForPreTrainingOutput(
            loss=total_loss(terms, self.config.lambda_semantic, self.config.lambda_appearance),
            loss_itc_categorical=terms["itc_categorical"],
            loss_itc_elite=terms.get("itc_elite"),
            loss_semantic=semantic.loss,
            loss_appearance=appearance.loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            image_embeds=embeddings.image_embeds,
            text_embeds=embeddings.text_embeds,
            elite_image_embeds=embeddings.elite_image_embeds,
            elite_text_embeds=embeddings.elite_text_embeds,
            semantic_knowledge=semantic.knowledge,
            appearance_knowledge=appearance.knowledge,
            semantic_attention=semantic.weights,
            appearance_attention=appearance.weights,
            appearance_indices=appearance.indices,
            hidden_states=embeddings.hidden_states,
            attentions=embeddings.attentions,
        )

    def _pretraining_batches(
        self, public: _TextImageBatch, elite: _TextImageBatch, labels: torch.Tensor | None
    ) -> tuple[_TextImageBatch, _TextImageBatch]:
        """Check the forward's two data sources and return them: the public batch p (images `(batch, 3, H, W)`,
        prompts `(batch, seq_len)`, never empty) and the elite batch m (`(elite_batch, ...)`; needed when a
        knowledge injection is on), and `labels` `(batch,)` or `(batch, num_classes)` against p."""
        public.check(required=True)
        injection = self.config.use_semantic_injection or self.config.use_appearance_injection
        elite.check(required=injection, why="knowledge injection reads the elite set")
        if labels is not None and labels.shape[0] != public.size:
            raise ValueError(f"labels has {labels.shape[0]} rows for {public.size} public samples.")
        return public, elite

    def _embed(
        self,
        public: _TextImageBatch,
        elite: _TextImageBatch,
        output_hidden_states: bool | list[int] | None,
        output_attentions: bool | None,
    ) -> _PretrainingEmbeddings:
        """Embed both sources: one pass of E_v over the public and elite images together (BatchNorm statistics
        over both), then E_t over the public prompts and the elite captions. Returns the L2-normalised
        `image_embeds` / `text_embeds` `(batch, projection_dim)` (V_p, T_p) and `elite_image_embeds` /
        `elite_text_embeds` `(elite_batch, projection_dim)` (V_m, T_m; None without elite pairs), E_v's last
        feature maps `(batch + elite_batch, C, h, w)` (public images first), and with the output flags E_v's
        feature maps of the public images (`hidden_states`) and E_t's attention weights over the prompts."""
        released, has_elite = self.keepfit, elite.size > 0
        images = torch.cat([public.pixel_values, elite.pixel_values]) if has_elite else public.pixel_values
        vision_output = released._vision_outputs(images, self._output_flags(output_hidden_states, False)[0])
        image_embeds_all = F.normalize(
            released.project(vision_output.pooler_output, released.visual_projection), dim=-1
        )
        public_text = released.get_text_features(
            **public.text_inputs(),
            output_attentions=self._output_flags(None, output_attentions)[1],
            return_dict=True,
        )
        text_embeds = F.normalize(public_text.pooler_output, dim=-1)
        elite_text_embeds = None
        if has_elite:
            elite_text_embeds = F.normalize(
                released.get_text_features(**elite.text_inputs(), return_dict=True).pooler_output, dim=-1
            )
        hidden_states = vision_output.hidden_states
        if hidden_states is not None:  # rows of the public images only: row i belongs to sample i
            hidden_states = tuple(None if state is None else state[: public.size] for state in hidden_states)
        return _PretrainingEmbeddings(
            image_embeds=image_embeds_all[: public.size],
            text_embeds=text_embeds,
            elite_image_embeds=image_embeds_all[public.size :] if has_elite else None,
            elite_text_embeds=elite_text_embeds,
            feature_maps=vision_output.last_hidden_state,
            hidden_states=hidden_states,
            attentions=public_text.attentions,
        )

    def _contrastive_terms(
        self, embeddings: _PretrainingEmbeddings, labels: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """L_itc^p (Eqs. 2–4) of the public samples, label-guided with `labels`, and L_itc^m of the elite pairs
        (when there are any), from the embeddings of `_embed`. Returns `(terms, logits_per_image (batch,
        text_batch), logits_per_text)`, `terms` the losses `()` by name (`itc_categorical`, `itc_elite`)."""
        contrastive_loss = self.keepfit.contrastive_loss
        terms: dict[str, torch.Tensor] = {}
        terms["itc_categorical"], logits_per_image, logits_per_text = contrastive_loss(
            embeddings.image_embeds, embeddings.text_embeds, labels
        )
        if embeddings.elite_text_embeds is not None:
            terms["itc_elite"], _, _ = contrastive_loss(
                embeddings.elite_image_embeds, embeddings.elite_text_embeds
            )
        return terms, logits_per_image, logits_per_text

    def _global_elite(self, tensor: torch.Tensor) -> torch.Tensor:
        """An elite-batch tensor `(elite_batch, ...)` from every process, `(global_elite_batch, ...)` (gathered
        with gradients), under torch.distributed with `config.gather_distributed`; else as it is."""
        if self.config.gather_distributed and distributed_world()[0] > 1:
            return gather_with_grad(tensor)
        return tensor

    def _semantic_knowledge(
        self, embeddings: _PretrainingEmbeddings, elite_values: torch.Tensor
    ) -> _KnowledgeTerm:
        """Semantic knowledge extraction and its loss (Eqs. 5–10, 20): each public image V_p `(batch, d)` reads
        the elite captions `elite_values` T_m `(global_elite_batch, d)` through its similarity to the elite
        images V_m (gathered here to `(global_elite_batch, d)`); L_EK^s pulls the knowledge EK_s `(batch, d)`
        towards the public prompts T_p `(batch, d)`. Returns EK_s, the attention weights
        `(batch, heads, global_elite_batch)` and the loss `()`."""
        knowledge, weights = self.semantic_attention(
            embeddings.image_embeds, self._global_elite(embeddings.elite_image_embeds), elite_values
        )
        loss = knowledge_refinement_loss(
            knowledge, embeddings.text_embeds, self.config.knowledge_loss_reduction
        )
        return _KnowledgeTerm(knowledge, weights, loss)

    def _appearance_knowledge(
        self, embeddings: _PretrainingEmbeddings, elite_values: torch.Tensor
    ) -> _KnowledgeTerm:
        """Appearance knowledge and its loss (Eqs. 11–19, 21): every image's last feature map
        `(batch + elite_batch, C, h, w)` is quantised on the frozen IBQ codebook to a descriptor `(code_dim,)`
        (and a code index per position, `(batch + elite_batch, h, w)`); each public descriptor Q_p reads the
        elite captions `elite_values` `(global_elite_batch, d)` through its similarity to the elite descriptors
        Q_m (gathered here); L_EK^a pulls the knowledge EK_a `(batch, d)` towards the public prompts
        `(batch, d)`. Returns EK_a, the attention weights `(batch, heads, global_elite_batch)`, the loss `()` and
        the code indices."""
        size = embeddings.image_embeds.shape[0]
        descriptors, indices = self.appearance_quantizer(embeddings.feature_maps)
        knowledge, weights = self.appearance_attention(
            descriptors[:size], self._global_elite(descriptors[size:]), elite_values
        )
        loss = knowledge_refinement_loss(
            knowledge, embeddings.text_embeds, self.config.knowledge_loss_reduction
        )
        return _KnowledgeTerm(knowledge, weights, loss, indices)


class KeepFitVisionModel(KeepFitPreTrainedModel):
    """E_v alone, for feature extraction and linear probing. Loads from a KeepFIT checkpoint directory: takes
    the `vision_model.*` weights and leaves the text tower, projections, knowledge modules and IBQ codebook
    behind. `last_hidden_state` is the last feature map `(batch, C, h, w)`, `pooler_output` the backbone's pooled
    features `(batch, C)` (the global average for ResNet) — what `KeepFitModel` projects into the shared space
    (and its `vision_model_output.pooler_output`)."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # Loading from a full KeepFIT checkpoint: everything but E_v is expected to be left behind.
    _keys_to_ignore_on_load_unexpected = [r"^(?!vision_model\.)"]

    def __init__(self, config: KeepFitConfig):
        super().__init__(config)
        self.vision_model = build_vision_tower(config.vision_config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        output_hidden_states, _ = self._output_flags(output_hidden_states, False)
        extra = {"output_hidden_states": True} if output_hidden_states else {}
        outputs = encode_images(self.vision_model, pixel_values, self.config.vision_channels_last, **extra)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=outputs.pooler_output.flatten(1),
            hidden_states=select_hidden_states(outputs.hidden_states, output_hidden_states),
        )


class KeepFitForImageClassification(KeepFitPreTrainedModel):
    """E_v + a linear head for fine-tuning: pooled last feature map (global average for ResNet) → dropout
    (`config.classifier_dropout`) → linear. Loads the image encoder of a KeepFIT checkpoint:
    `KeepFitForImageClassification.from_pretrained(dir, num_labels=5)` (or `AutoModelForImageClassification`).
    Single-label, multi-label (`config.problem_type = "multi_label_classification"`) and regression
    (`num_labels=1`) losses follow transformers' image-classification convention."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _keys_to_ignore_on_load_unexpected = [r"^(?!vision_model\.)"]

    def __init__(self, config: KeepFitConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = build_vision_tower(config.vision_config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = (
            nn.Linear(config.image_feature_size, config.num_labels) if config.num_labels else nn.Identity()
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        r"""labels: `(batch,)` class ids (single-label), `(batch, num_labels)` floats (multi-label), or floats
        for regression when `num_labels == 1`."""
        output_hidden_states, _ = self._output_flags(output_hidden_states, False)
        extra = {"output_hidden_states": True} if output_hidden_states else {}
        outputs = encode_images(self.vision_model, pixel_values, self.config.vision_channels_last, **extra)
        logits = self.classifier(self.dropout(outputs.pooler_output.flatten(1)))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=select_hidden_states(outputs.hidden_states, output_hidden_states),
        )


__all__ = [
    "KeepFitAppearanceQuantizer",
    "KeepFitForImageClassification",
    "KeepFitForPreTraining",
    "KeepFitForPreTrainingOutput",
    "KeepFitKnowledgeAttention",
    "KeepFitModel",
    "KeepFitOutput",
    "KeepFitPreTrainedModel",
    "KeepFitVisionModel",
    "encode_images",
    "legacy_key_mapping",
    "upgrade_legacy_state_dict",
]
