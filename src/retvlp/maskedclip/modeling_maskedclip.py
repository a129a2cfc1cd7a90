"""MaskedCLIP: masked image modelling + label-guided CLIP bridged by a transformer (METHODS.md §1).

Two models, as transformers keeps them (`ViTMAEModel` / `ViTMAEForPreTraining`, `CLIPModel`):

- [`MaskedCLIPModel`], the released dual encoder: E_I `vision_model`, the bridge B `bridge`, E_T
  `text_model`, `visual_projection`, `text_projection`, `logit_scale` (and `logit_bias` with
  `config.contrastive_loss="sigmoid"`). CLIP semantics: embeddings and similarities, the label-guided
  contrastive loss (Eqs. 2–4, or its sigmoid variant) only with `return_loss=True`.
- [`MaskedCLIPForPreTraining`], what the trainer trains: the released model under `maskedclip`, plus

      D_I  pixel decoder       pixel_decoder           an MAE decoder (ViTMAEDecoder)           → L_mim (Eq. 1)
      D_F  feature decoder     feature_decoder         ViTMAEDecoder predicting bridge features → L_mfd (Eq. 5)
      M̂    momentum encoder    momentum_vision_model, momentum_bridge  (EMA of E_I and B, no gradients)

  and its forward returns every term of Eq. 6.

`base_model_prefix = "maskedclip"` lets each class load the other's checkpoint (the parts a class lacks are
initialised and reported, or left behind). Checkpoints of the single-class layout used before the split
(`vision_model.*`, `pixel_decoder.*`, ... at the top level) load into both.

The losses live in `loss_maskedclip.py`; the ViT blocks (transformers' ViT-MAE layout, our code) in
`vit_blocks.py`. This file is copied next to saved checkpoints for ``trust_remote_code`` loading, so it only
imports torch, transformers' public API and its sibling files (`tests/test_checkpoint_code_imports.py`).
"""

import copy
import importlib
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import ModelOutput

from .configuration_maskedclip import MaskedCLIPConfig, MaskedCLIPVisionConfig

# Imported here too (unused): loading a local folder with remote code, transformers 5.10 (for one) copies only
# the relative imports of the class's own file into its module cache, and the config file needs this one.
from .configuration_support import build_sub_config  # noqa: F401
from .contrastive import contrastive_loss as scored_contrastive_loss
from .loss_maskedclip import (
    masked_feature_distillation_loss,
    masked_image_modeling_loss,
    patchify,
)
from .modeling_common import (
    CheckpointLayout,
    PreTrainedModelMixin,
    config_from_pretrained_towers,
    dual_encoder_scores,
    init_logit_parameters,
    logit_parameters,
    pretrained_tower_config,
    reject_return_loss,
    reject_settings_beside_config,
    select_hidden_states,
    tower_checkpoint_config,
    tower_settings,
)
from .modeling_support import can_return_tuple
from .vit_blocks import (
    ViTMAEDecoder,
    ViTMAEEmbeddings,
    ViTMAELayer,
    drop_path,
    random_masking,
    sincos_position_table,
)

MOMENTUM_PREFIXES = ("momentum_vision_model.", "momentum_bridge.")
# Top-level modules of the released model. In the pre-split single-class layout they sat at the top of
# every checkpoint; MaskedCLIPForPreTraining holds them under `maskedclip.`.
RELEASED_PREFIXES = ("vision_model.", "bridge.", "text_model.", "visual_projection.", "text_projection.")
PRETRAINING_ONLY_PREFIXES = ("pixel_decoder.", "feature_decoder.") + MOMENTUM_PREFIXES


LAYOUT = CheckpointLayout("maskedclip", RELEASED_PREFIXES, PRETRAINING_ONLY_PREFIXES)
# Reading pre-split checkpoints by hand (e.g. `from_pretrained(hub_id, key_mapping=legacy_key_mapping())`).
legacy_key_mapping = LAYOUT.key_mapping
upgrade_legacy_state_dict = LAYOUT.upgrade


@dataclass
class MaskedCLIPOutput(ModelOutput):
    r"""Output of [`MaskedCLIPModel`] (transformers' `CLIPOutput` fields).

    loss (`()`): the label-guided contrastive loss L_lg_clip (plain CLIP without labels); only with
        `return_loss=True`.
    logits_per_image (`(image_batch, text_batch)`), logits_per_text (`(text_batch, image_batch)`): scaled
        image-text similarities.
    text_embeds (`(text_batch, projection_dim)`), image_embeds (`(image_batch, projection_dim)`): L2-normalised
        embeddings in the shared space.
    text_model_output: E_T's [`BaseModelOutputWithPooling`] (`pooler_output`: the pooled, unprojected text).
    vision_model_output: E_I's [`BaseModelOutputWithPooling`]; its `pooler_output` `(image_batch, hidden)` is the
        frozen-encoder image feature (mean of the patch tokens after E_I's LayerNorm, or the cls token with
        `vision_config.pooling="cls"`) that linear probes read.
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
class MaskedCLIPForPreTrainingOutput(ModelOutput):
    r"""Output of [`MaskedCLIPForPreTraining`].

    loss (`()`): L_mim + λ_clip·L_lg_clip + λ_mfd·L_mfd (Eq. 6) over the terms that are switched on and have
        data (L_lg_clip needs pairs).
    loss_mim, loss_clip, loss_mfd (`()`): the unweighted terms.
    pixel_predictions (`(all_images, num_patches, patch_size**2 * channels)`): D_I's output (paired images
        first, then unpaired).
    mask (`(all_images, num_patches)`): 1 for masked patches, 0 for visible ones.
    logits_per_image (`(paired_batch, text_batch)`): scaled similarities (under torch.distributed: local images
        against the global batch of texts); logits_per_text the transpose view.
    image_embeds, text_embeds (`(paired_batch, projection_dim)`): L2-normalised embeddings of the pairs.
    hidden_states, attentions: those of E_I's masked pass (as `ViTMAEForPreTraining`), with the output flags.
    """

    loss: torch.FloatTensor | None = None
    loss_mim: torch.FloatTensor | None = None
    loss_clip: torch.FloatTensor | None = None
    loss_mfd: torch.FloatTensor | None = None
    pixel_predictions: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MaskedCLIPEncoderOutput(ModelOutput):
    """What [`MaskedCLIPVisionTransformer`] returns: tokens `(batch, 1 + kept_patches, hidden)` (cls first),
    `mask` / `ids_restore` `(batch, num_patches)` (None without masking), and with the flags the input of every
    block plus the last block's output (`hidden_states`, before the final LayerNorm) and the per-block
    attention weights `(batch, heads, tokens, tokens)` (None under SDPA / flash kernels)."""

    last_hidden_state: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class _ContrastiveTerm(NamedTuple):
    """The contrastive term of a pretraining forward: loss `()`, `logits_per_image` `(paired_batch, text_batch)`,
    `logits_per_text`, and the L2-normalised `image_embeds` / `text_embeds` `(paired_batch, projection_dim)`
    (all None when the term is not computed)."""

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None


class MaskedCLIPLayer(ViTMAELayer):
    """A block of E_I, of its momentum copy and of the bridge B: `ViTMAELayer` (`vit_blocks.py`), our ViT block in
    transformers' ViT-MAE layout (same submodules, hence the same parameter names as transformers' `ViTMAELayer`:
    ViT-MAE, RETFound and earlier MaskedCLIP checkpoints load unchanged), with stochastic depth at
    `drop_path_rate` (0 or eval mode: the stock computation) and handing back its attention weights. Its own
    class name is what FSDP wrapping and `_no_split_modules` name."""


def run_blocks(
    layers: nn.ModuleList,
    hidden_states: torch.Tensor,
    output_hidden_states: bool | list[int] = False,
    output_attentions: bool = False,
) -> BaseModelOutput:
    """Run `MaskedCLIPLayer` blocks; collect the input of every block plus the last output (or, for a list of
    indices, those entries of that sequence), and the attention weights."""
    requested = output_hidden_states
    output_hidden_states = bool(output_hidden_states)
    all_hidden = [hidden_states] if output_hidden_states else None
    all_attentions = [] if output_attentions else None
    for layer in layers:
        hidden_states, weights = layer(hidden_states)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        if output_attentions:
            all_attentions.append(weights)
    return BaseModelOutput(
        last_hidden_state=hidden_states,
        hidden_states=select_hidden_states(all_hidden, requested),
        attentions=tuple(all_attentions) if output_attentions else None,
    )


def drop_path_schedule(rate: float, num_layers: int) -> list[float]:
    """Per-block stochastic-depth rates rising linearly from 0 (first block) to `rate` (last block)."""
    if not 0.0 <= rate < 1.0:
        # The config validates this too, but `from_pretrained(..., drop_path_rate=...)` sets it afterwards.
        raise ValueError(f"vision_config.drop_path_rate must be in [0, 1), got {rate}.")
    if num_layers <= 1:
        return [0.0] * num_layers
    return [rate * index / (num_layers - 1) for index in range(num_layers)]


class MaskedCLIPVisionTransformer(nn.Module):
    """E_I: a ViT whose parameter names are those of transformers' `ViTMAEModel` (so ViT-MAE and converted
    RETFound weights load as they are), with masking done here so that one module serves both the masked
    pass (visible patches only) and the full-image pass."""

    # Its attention layers (`vit_blocks.ViTMAEAttention`) dispatch through the sub-config's implementation.
    _supports_sdpa = True

    def __init__(self, config: MaskedCLIPVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = ViTMAEEmbeddings(config)
        rates = drop_path_schedule(config.drop_path_rate, config.num_hidden_layers)
        self.layers = nn.ModuleList([MaskedCLIPLayer(config, drop_path_rate=rate) for rate in rates])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        pixel_values: torch.Tensor,
        mask_ratio: float = 0.0,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        apply_layernorm: bool = True,
        output_hidden_states: bool | list[int] = False,
        output_attentions: bool = False,
    ) -> MaskedCLIPEncoderOutput:
        """Encode `(batch, channels, height, width)` images; `mask_ratio > 0` keeps a random subset of patches
        (MAE masking, `noise` `(batch, num_patches)` fixes it)."""
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width), got {tuple(pixel_values.shape)}."
            )
        patch_tokens, cls_token = self.embeddings(pixel_values, interpolate_pos_encoding)
        mask = ids_restore = None
        if mask_ratio > 0:
            patch_tokens, mask, ids_restore = random_masking(patch_tokens, mask_ratio, noise)
        hidden = torch.cat([cls_token.expand(patch_tokens.shape[0], -1, -1), patch_tokens], dim=1)
        blocks = run_blocks(self.layers, hidden, output_hidden_states, output_attentions)
        hidden = blocks.last_hidden_state
        return MaskedCLIPEncoderOutput(
            last_hidden_state=self.layernorm(hidden) if apply_layernorm else hidden,
            mask=mask,
            ids_restore=ids_restore,
            hidden_states=blocks.hidden_states,
            attentions=blocks.attentions,
        )


class MaskedCLIPBridge(nn.Module):
    """B: transformer blocks at the encoder width mapping masked-space tokens into the CLIP space."""

    def __init__(self, vision_config: MaskedCLIPVisionConfig, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList([MaskedCLIPLayer(vision_config) for _ in range(num_layers)])
        self.layernorm = nn.LayerNorm(vision_config.hidden_size, eps=vision_config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch, tokens, hidden)` → `(batch, tokens, hidden)`, ending with the bridge's LayerNorm."""
        return self.layernorm(run_blocks(self.layers, hidden_states).last_hidden_state)


class MaskedCLIPFeatureDecoder(ViTMAEDecoder):
    """D_F: an MAE decoder (own mask token and sin-cos positions) whose head predicts a bridge-width feature
    for every patch instead of pixels. Output `.logits`: `(batch, num_patches, vision hidden_size)`."""

    def __init__(self, config: MaskedCLIPConfig):
        vision_config = config.vision_config
        decoder_config = copy.deepcopy(vision_config)
        decoder_config.decoder_hidden_size = config.feature_decoder_hidden_size
        decoder_config.decoder_num_hidden_layers = config.feature_decoder_num_hidden_layers
        decoder_config.decoder_num_attention_heads = config.feature_decoder_num_attention_heads
        decoder_config.decoder_intermediate_size = config.feature_decoder_intermediate_size
        super().__init__(decoder_config, num_patches=vision_config.num_patches)
        self.decoder_pred = nn.Linear(config.feature_decoder_hidden_size, vision_config.hidden_size)


def pool_image_tokens(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """`(batch, 1 + patches, hidden)` → `(batch, hidden)`: the cls token (`"cls"`) or the mean of the patches."""
    return tokens[:, 0] if pooling == "cls" else tokens[:, 1:].mean(dim=1)


class MaskedCLIPPreTrainedModel(PreTrainedModelMixin, PreTrainedModel):
    config: MaskedCLIPConfig
    base_model_prefix = "maskedclip"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MaskedCLIPLayer", "ViTMAELayer", "BertLayer", "ViTMAEEmbeddings"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def post_init(self):
        super().post_init()
        # Parameters frozen by construction: the fixed sin-cos position tables, the momentum encoder, the
        # classifier's unused final LayerNorm. `from_pretrained` restores these flags after loading.
        self._frozen_parameter_names = {n for n, p in self.named_parameters() if not p.requires_grad}

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`, keeping the parameters that the model freezes at construction
        frozen (transformers' loading replaces every loaded or missing parameter with a new, trainable one)."""
        model = super().from_pretrained(*args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        for name, parameter in loaded.named_parameters():
            if name in loaded._frozen_parameter_names:
                parameter.requires_grad_(False)
        return model

    def set_attn_implementation(self, attn_implementation):
        super().set_attn_implementation(attn_implementation)
        if not isinstance(attn_implementation, str):
            return  # per-sub-config choices: transformers has set each sub-config already
        # The ViT towers and the MAE decoders are plain modules reading the implementation from the sub-config
        # (or the decoder's private copy of it) they were built with: switch those too.
        for module in self.modules():
            config = getattr(module, "config", None)
            if not isinstance(module, PreTrainedModel) and hasattr(config, "_attn_implementation_internal"):
                config._attn_implementation_internal = self.config._attn_implementation

    # The Auto classes a saved checkpoint of the dual-encoder config resolves with trust_remote_code (each
    # class writes its own `_auto_class` entry; these complete the set, so either checkpoint kind loads with
    # AutoModel and AutoModelForPreTraining).
    _remote_auto_map = {
        "AutoModel": "modeling_maskedclip.MaskedCLIPModel",
        "AutoModelForPreTraining": "modeling_maskedclip.MaskedCLIPForPreTraining",
        "AutoModelForZeroShotImageClassification": "modeling_maskedclip.MaskedCLIPModel",
        "AutoModelForImageClassification": "modeling_maskedclip.MaskedCLIPImageClassificationLoader",
    }

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, ViTMAEEmbeddings):
            grid = int(round(module.patch_embeddings.num_patches**0.5))
            table = sincos_position_table(grid, module.position_embeddings.shape[-1])
            init.copy_(module.position_embeddings, table.unsqueeze(0))
            weight = module.patch_embeddings.projection.weight
            # MAE initialises the patch projection like a Linear layer over the flattened patch.
            bound = math.sqrt(6.0 / (weight.shape[0] + weight[0].numel()))
            init.uniform_(weight, -bound, bound)
            init.normal_(module.cls_token, std=std)
        elif isinstance(module, ViTMAEDecoder):
            grid = int(round((module.decoder_pos_embed.shape[1] - 1) ** 0.5))
            table = sincos_position_table(grid, module.decoder_pos_embed.shape[-1])
            init.copy_(module.decoder_pos_embed, table.unsqueeze(0))
            init.normal_(module.mask_token, std=std)
        elif isinstance(module, MaskedCLIPModel):
            init_logit_parameters(module, self.config)


class MaskedCLIPModel(MaskedCLIPPreTrainedModel):
    """The released MaskedCLIP model: a CLIP-style dual encoder (E_I + bridge B + projection, E_T + projection,
    logit scale) for zero-shot classification, retrieval and feature extraction.

    `forward` embeds the given images and/or texts and returns their similarities; with `return_loss=True`
    (and, optionally, categorical `labels`) also the label-guided contrastive loss L_lg_clip. The image feature
    for linear probes is `vision_model_output.pooler_output`. With `use_clip=False` (the MAE-only ablation) the
    model is E_I alone. Pretrain with [`MaskedCLIPForPreTraining`].
    """

    # A pretraining checkpoint also holds the decoders and the momentum encoder: left behind on purpose.
    _keys_to_ignore_on_load_unexpected = [
        r"^(pixel_decoder|feature_decoder|momentum_vision_model|momentum_bridge)\."
    ]

    def __init__(self, config: MaskedCLIPConfig):
        super().__init__(config)
        vision_config, text_config = config.vision_config, config.text_config
        if vision_config._attn_implementation is None:
            # Only PreTrainedModel children receive the resolved implementation; our vision towers are plain
            # modules reading it from this sub-config, which would otherwise fall back to eager attention.
            vision_config._attn_implementation_internal = config._attn_implementation
        self.vision_model = MaskedCLIPVisionTransformer(vision_config)
        self.bridge = (
            MaskedCLIPBridge(vision_config, config.bridge_num_hidden_layers) if config.use_bridge else None
        )
        if config.use_clip:
            self.text_model = BertModel(text_config, add_pooling_layer=False)
            self.visual_projection = nn.Linear(vision_config.hidden_size, config.projection_dim, bias=False)
            self.text_projection = nn.Linear(text_config.hidden_size, config.projection_dim, bias=False)
        else:
            self.text_model = self.visual_projection = self.text_projection = None
        self.logit_scale, self.logit_bias = logit_parameters(config)  # the bias only for the sigmoid loss
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The text tower's word embeddings (`input_ids` is the main input); the patch embedding for the
        image-only ablation (`use_clip=False`)."""
        if self.text_model is None:
            return self.vision_model.embeddings.patch_embeddings
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self._require_clip("set_input_embeddings")
        self.text_model.set_input_embeddings(value)

    @property
    def has_text_tower(self) -> bool:
        """Whether this model embeds text (False for the MAE-only ablation, `use_clip=False`)."""
        return self.text_model is not None

    def _require_clip(self, what: str):
        if self.text_model is None:
            raise ValueError(f"{what} needs the CLIP branch, but this model was built with use_clip=False.")

    # ------------------------------------------------------------------ towers
    def _vision_outputs(
        self,
        pixel_values,
        interpolate_pos_encoding,
        output_hidden_states,
        output_attentions,
        mask_ratio: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
        """E_I's output (pooled: the probe feature) and the CLIP-space tokens z = B(E_I(x)); `mask_ratio > 0`
        encodes a random subset of the patches (the FLIP-style pretraining pass, `noise` fixes it)."""
        encoded = self.vision_model(
            pixel_values,
            mask_ratio=mask_ratio,
            noise=noise,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        tokens = encoded.last_hidden_state
        vision_output = BaseModelOutputWithPooling(
            last_hidden_state=tokens,
            pooler_output=pool_image_tokens(tokens, self.config.vision_config.pooling),
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return vision_output, self.bridge(tokens) if self.bridge is not None else tokens

    def _text_outputs(
        self, input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, output_attentions
    ) -> BaseModelOutputWithPooling:
        """E_T's output with `pooler_output` = the pooled, unprojected text (see `config.text_pooling`)."""
        if input_ids is None or input_ids.numel() == 0:
            raise ValueError("The text encoder needs a non-empty input_ids batch (tokenised texts).")
        # The mask goes to BERT as given: its mask preparation already drops an all-ones mask for SDPA's
        # unmasked kernel (without a host sync when compiled or exported). Collators that know a batch has no
        # padding can leave attention_mask out.
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        hidden = outputs.last_hidden_state
        if self.config.text_pooling == "mean":
            if attention_mask is None:
                pooled = hidden.mean(dim=1)
            else:
                weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        else:
            pooled = hidden[:, 0]
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden,
            pooler_output=pooled,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """`pooler_output`: the projected, not yet normalised image embedding `(batch, projection_dim)`;
        `last_hidden_state`: z = B(E_I(x)) `(batch, 1 + num_patches, hidden)`; `hidden_states` / `attentions`
        those of E_I."""
        self._require_clip("get_image_features")
        hidden, attentions = self._output_flags(output_hidden_states, output_attentions)
        vision_output, tokens = self._vision_outputs(
            pixel_values, interpolate_pos_encoding, hidden, attentions
        )
        projected = self.visual_projection(pool_image_tokens(tokens, self.config.clip_image_pooling))
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens,
            pooler_output=projected,
            hidden_states=vision_output.hidden_states,
            attentions=vision_output.attentions,
        )

    def masked_image_features(
        self, pixel_values: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """FLIP-style projected (not normalised) image embedding `(batch, projection_dim)` from a random
        `1 − mask_ratio` share of each image's patches (`noise` `(batch, num_patches)` fixes the subset, as in
        MAE masking); `mask_ratio=0` equals `get_image_features(...).pooler_output`. Pretraining only
        (`config.clip_mask_ratio`)."""
        self._require_clip("masked_image_features")
        _, tokens = self._vision_outputs(
            pixel_values, False, False, False, mask_ratio=mask_ratio, noise=noise
        )
        return self.visual_projection(pool_image_tokens(tokens, self.config.clip_image_pooling))

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
        """`pooler_output`: the projected, not yet normalised text embedding `(batch, projection_dim)` of the
        [CLS] state (or, with `text_pooling="mean"`, of the padding-masked token mean)."""
        self._require_clip("get_text_features")
        hidden, attentions = self._output_flags(output_hidden_states, output_attentions)
        output = self._text_outputs(
            input_ids, attention_mask, token_type_ids, position_ids, hidden, attentions
        )
        output.pooler_output = self.text_projection(output.pooler_output)
        return output

    def clamped_logit_scale(self) -> torch.Tensor:
        """exp(τ) with τ clamped to ≤ `config.logit_scale_max` (ln 100)."""
        return self.logit_scale.clamp(max=self.config.logit_scale_max).exp()

    def contrastive_loss(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The contrastive term of `config.contrastive_loss` (L_lg_clip, or its sigmoid variant with
        `logit_bias`) at this model's clamped scale, for L2-normalised `(batch, dim)` embeddings of image-text
        pairs and optional `labels` (see `forward`); over the global batch under torch.distributed when
        `config.gather_distributed`. Returns `(loss, logits_per_image, logits_per_text)`."""
        return scored_contrastive_loss(
            self.config.contrastive_loss,
            image_embeds,
            text_embeds,
            self.clamped_logit_scale(),
            self.logit_bias,
            labels=None if labels is None else labels.to(image_embeds.device),
            gather_distributed=self.config.gather_distributed,
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
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> MaskedCLIPOutput:
        r"""
        input_ids, attention_mask, token_type_ids, position_ids (`(text_batch, seq_len)`): tokenised texts.
        pixel_values (`(image_batch, 3, H, W)`): images.
        labels (`(batch,)` int, −1 for none, or `(batch, num_classes)` multi-hot with a row of −1 for none):
            categories of image-text pairs; with `return_loss=True` pairs of one category are positives of each
            other (L_lg_clip). Without labels the loss is plain CLIP.
        return_loss (`bool`, default False): compute the contrastive loss (needs as many texts as images).
        """
        hidden, attentions = self._output_flags(output_hidden_states, output_attentions)
        image_embeds = text_embeds = vision_output = text_output = None
        if pixel_values is not None:
            vision_output, tokens = self._vision_outputs(
                pixel_values, interpolate_pos_encoding, hidden, attentions
            )
            if self.text_model is not None:
                image_embeds = F.normalize(
                    self.visual_projection(pool_image_tokens(tokens, self.config.clip_image_pooling)), dim=-1
                )
        if input_ids is not None:
            self._require_clip("Embedding texts")
            text_output = self._text_outputs(
                input_ids, attention_mask, token_type_ids, position_ids, hidden, attentions
            )
            text_embeds = F.normalize(self.text_projection(text_output.pooler_output), dim=-1)

        loss, logits_per_image, logits_per_text = dual_encoder_scores(
            image_embeds,
            text_embeds,
            self.clamped_logit_scale(),
            logit_bias=self.logit_bias,
            kind=self.config.contrastive_loss,
            labels=labels,
            return_loss=bool(return_loss),
        )
        return MaskedCLIPOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_output,
            vision_model_output=vision_output,
        )


class MaskedCLIPForPreTraining(MaskedCLIPPreTrainedModel):
    """MaskedCLIP pretraining (Eq. 6): the released [`MaskedCLIPModel`] (`maskedclip`) plus the pixel decoder
    D_I, the feature decoder D_F and the momentum encoder M̂.

    One forward runs the whole method: one masked pass of E_I over paired + unpaired images feeding D_I
    (L_mim) and D_F (L_mfd, against M̂ on the full images), and one full pass of the paired images through E_I
    and B for L_lg_clip. Call [`update_momentum_encoder`] after every optimizer step. `save_pretrained` keeps
    everything (the momentum encoder included, so pretraining continues where it stopped); `released_model`
    is what a run publishes.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    # A released checkpoint (or one saved before the momentum encoder was kept) has no M̂: `from_pretrained`
    # reports it missing and rebuilds it as a copy of E_I and B.

    def __init__(self, config: MaskedCLIPConfig):
        super().__init__(config)
        self.maskedclip = MaskedCLIPModel(config)
        vision_config = config.vision_config
        self.pixel_decoder = (
            ViTMAEDecoder(vision_config, vision_config.num_patches) if config.use_mim else None
        )
        self.feature_decoder = MaskedCLIPFeatureDecoder(config) if config.use_mfd else None
        if config.use_mfd:
            self.momentum_vision_model = MaskedCLIPVisionTransformer(vision_config)
            self.momentum_bridge = (
                MaskedCLIPBridge(vision_config, config.bridge_num_hidden_layers)
                if config.use_bridge
                else None
            )
            for parameter in self._momentum_parameters():
                parameter.requires_grad_(False)
        else:
            self.momentum_vision_model = self.momentum_bridge = None
        self.post_init()
        self.reset_momentum_encoder()
        # Training checkpoints written before the split (accelerate's load_state reads a plain state dict).
        self.register_load_state_dict_pre_hook(LAYOUT.load_state_dict_pre_hook)

    @property
    def released_model(self) -> MaskedCLIPModel:
        """The model a pretraining run publishes (shares its parameters with this one)."""
        return self.maskedclip

    def get_input_embeddings(self) -> nn.Module:
        return self.maskedclip.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.maskedclip.set_input_embeddings(value)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`; reads pre-split checkpoints too, and rebuilds the momentum
        encoder as a copy of the loaded E_I and B when the checkpoint has none."""
        want_info = kwargs.pop("output_loading_info", False)
        kwargs = LAYOUT.from_pretrained_kwargs(args, kwargs)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        if any(key.startswith(MOMENTUM_PREFIXES) for key in info["missing_keys"]):
            model.reset_momentum_encoder()
        return (model, info) if want_info else model

    # ------------------------------------------------------------------ momentum encoder M̂ = EMA(B ∘ E_I)
    def _online_and_momentum_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        online = self.maskedclip
        pairs = list(
            zip(online.vision_model.parameters(), self.momentum_vision_model.parameters(), strict=True)
        )
        if online.bridge is not None:
            pairs += list(zip(online.bridge.parameters(), self.momentum_bridge.parameters(), strict=True))
        return pairs

    def _momentum_parameters(self):
        for module in (self.momentum_vision_model, self.momentum_bridge):
            if module is not None:
                yield from module.parameters()

    @torch.no_grad()
    def reset_momentum_encoder(self) -> None:
        """Make M̂ an exact copy of E_I (and B): its state at the start of training."""
        if self.momentum_vision_model is None:
            return
        for online, momentum in self._online_and_momentum_pairs():
            momentum.copy_(online.detach())

    @torch.no_grad()
    def update_momentum_encoder(self, momentum: float | None = None) -> None:
        """EMA step θ̂ ← m·θ̂ + (1 − m)·θ, with m = `config.momentum` unless given. Call after each
        optimizer step (not after each micro-batch of gradient accumulation)."""
        if self.momentum_vision_model is None:
            return
        m = self.config.momentum if momentum is None else momentum
        pairs = self._online_and_momentum_pairs()
        targets = [target for _, target in pairs]
        sources = [online.detach().to(target.dtype) for online, target in pairs]
        torch._foreach_mul_(targets, m)
        torch._foreach_add_(targets, sources, alpha=1.0 - m)

    def train(self, mode: bool = True):
        super().train(mode)
        # M̂ provides targets: never dropout / drop-path in it.
        for module in (self.momentum_vision_model, self.momentum_bridge):
            if module is not None:
                module.eval()
        return self

    # Vision settings that may differ from a pretrained ViT-MAE's config: the pixel decoder is built at the
    # paper's size (its MAE weights load only when the sizes match), and masking / targets / pooling are
    # training choices (dropout and drop-path keys are free as well).
    PRETRAINED_VISION_FREE_KEYS = (
        "decoder_hidden_size",
        "decoder_num_hidden_layers",
        "decoder_num_attention_heads",
        "decoder_intermediate_size",
        "mask_ratio",
        "norm_pix_loss",
        "pooling",
    )

    @classmethod
    def config_from_pretrained_towers(
        cls,
        vision_model_name_or_path: str | None = None,
        text_model_name_or_path: str | None = None,
        vision_config_overrides: dict | None = None,
        **config_kwargs,
    ) -> MaskedCLIPConfig:
        """The `MaskedCLIPConfig` that `from_vision_text_pretrained` builds, without loading any weights.

        `config_kwargs` are `MaskedCLIPConfig` keyword arguments: they describe what is built fresh, including
        a tower given no checkpoint (`vision_config` / `text_config` dicts). A tower with a checkpoint takes
        its size from the checkpoint's config; its `vision_config` / `text_config` may restate the
        checkpoint's values or set what does not shape the weights (dropout, drop path, the pixel decoder,
        `mask_ratio`, `norm_pix_loss`, `pooling`), and any other disagreement raises `PretrainedTowerError`
        naming the key and both values. A vision checkpoint must be a ViT-MAE (`vit_mae`: an MAE or a
        converted RETFound directory), a text checkpoint a BERT (`bert`, e.g. a `text-mlm` output).
        """
        if vision_config_overrides:
            given = tower_settings(config_kwargs.get("vision_config"))
            config_kwargs["vision_config"] = {**given, **vision_config_overrides}
        return config_from_pretrained_towers(
            MaskedCLIPConfig,
            vision_model_name_or_path,
            text_model_name_or_path,
            config_kwargs,
            vision_tower_config=cls._pretrained_vision_config,
        )

    @classmethod
    def _pretrained_vision_config(cls, source: str, given) -> dict:
        """E_I's config from the ViT-MAE checkpoint `source`: its `MaskedCLIPVisionConfig` fields, the pixel
        decoder at the paper's size, and the settings `given` (a dict or a config) applied where they may differ
        (`PRETRAINED_VISION_FREE_KEYS`)."""
        fields = MaskedCLIPVisionConfig.__dataclass_fields__
        source_config = tower_checkpoint_config("vision", source, ("vit_mae",))
        checkpoint = {k: v for k, v in source_config.items() if k in fields and k != "model_type"}
        checkpoint.update(MaskedCLIPVisionConfig.pixel_decoder_defaults())
        given = {k: v for k, v in tower_settings(given).items() if k != "model_type"}
        return pretrained_tower_config(
            "vision", source, checkpoint, given, free=cls.PRETRAINED_VISION_FREE_KEYS
        )

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str | None = None,
        text_model_name_or_path: str | None = None,
        vision_config_overrides: dict | None = None,
        *,
        config: MaskedCLIPConfig | None = None,
        **config_kwargs,
    ) -> "MaskedCLIPForPreTraining":
        """Build MaskedCLIP for pretraining with each tower from where it is given, like transformers'
        dual-encoder constructors: both, one or neither tower from a checkpoint.

        E_I takes the encoder weights of a ViT-MAE checkpoint (e.g. `facebook/vit-mae-large`, a local
        directory, or a converted RETFound directory); E_T takes a BERT checkpoint (e.g.
        `emilyalsentzer/Bio_ClinicalBERT`, or a `text-mlm` run's `final/`: its `BertForMaskedLM` weights
        without the MLM head). A tower given as `None` is built fresh from `config_kwargs`
        (`vision_config=` / `text_config=` dicts, `MaskedCLIPConfig` keyword arguments); a pretrained tower's
        size comes from its checkpoint, and settings that disagree with it raise `PretrainedTowerError`
        (see `config_from_pretrained_towers`, which builds the config; or pass that config as `config=`).
        The pixel decoder keeps the paper's ViT-small size unless `vision_config_overrides` (or
        `vision_config`) asks for the checkpoint's own decoder sizes, in which case the MAE decoder weights are
        loaded too. Everything else is freshly initialised; the momentum encoder starts as a copy.

        Examples: `from_vision_text_pretrained("facebook/vit-mae-large", "emilyalsentzer/Bio_ClinicalBERT")`;
        the paper's setting, a ViT-L/16 from scratch and Bio_ClinicalBERT:
        `from_vision_text_pretrained(None, "emilyalsentzer/Bio_ClinicalBERT")`.
        """
        from transformers import ViTMAEForPreTraining

        vision_path, text_path = vision_model_name_or_path, text_model_name_or_path
        reject_settings_beside_config(config, vision_config_overrides, config_kwargs)
        if config is None:
            config = cls.config_from_pretrained_towers(
                vision_path, text_path, vision_config_overrides, **config_kwargs
            )
        model = cls(config)
        if vision_path is not None:
            mae = ViTMAEForPreTraining.from_pretrained(vision_path)
            report = model.maskedclip.vision_model.load_state_dict(mae.vit.state_dict(), strict=False)
            if report.missing_keys or report.unexpected_keys:
                raise ValueError(
                    f"{vision_path} does not fit the image encoder: missing {report.missing_keys}, "
                    f"unexpected {report.unexpected_keys}."
                )
            if model.pixel_decoder is not None:
                mae_decoder_state = mae.decoder.state_dict()
                own_state = model.pixel_decoder.state_dict()
                if all(own_state[k].shape == v.shape for k, v in mae_decoder_state.items() if k in own_state):
                    model.pixel_decoder.load_state_dict(mae_decoder_state)
            model.reset_momentum_encoder()
        if text_path is not None and model.maskedclip.text_model is not None:
            bert = BertModel.from_pretrained(text_path, add_pooling_layer=False)
            model.maskedclip.text_model.load_state_dict(bert.state_dict())
        return model

    def load_retfound_weights(self, checkpoint_path: str, **convert_kwargs) -> dict:
        """Load RETFound's MAE ViT weights (`.pth`, timm names, read with `weights_only=True`) into E_I and
        restart the momentum encoder from them. Returns the converter's report (unused decoder/head keys).
        Needs the retvlp package (the converter is not part of a checkpoint's code)."""
        # Imported by name, not with a `from .` statement: transformers' scan of relative imports would
        # otherwise copy the converter into every saved checkpoint.
        convert_retfound = importlib.import_module(f"{__package__}.convert_retfound")
        info = convert_retfound.load_retfound_into(
            self.maskedclip.vision_model, checkpoint_path, **convert_kwargs
        )
        self.reset_momentum_encoder()
        return info

    # ------------------------------------------------------------------ forward
    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        unpaired_pixel_values: torch.FloatTensor | None = None,
        labels: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        clip_noise: torch.Tensor | None = None,
        teacher_noise: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> MaskedCLIPForPreTrainingOutput:
        r"""
        pixel_values (`(paired_batch, 3, H, W)`): images of the image-text pairs.
        input_ids, attention_mask, token_type_ids (`(paired_batch, seq_len)`): tokenised texts of the pairs.
        unpaired_pixel_values (`(unpaired_batch, 3, H, W)`): image-only samples; they enter L_mim and L_mfd,
            never the contrastive loss.
        labels (`(paired_batch,)` int, −1 for none, or `(paired_batch, num_classes)` multi-hot with a row of −1
            for none): optional categorical labels of the pairs; pairs with equal labels are positives in
            L_lg_clip.
        noise (`(paired_batch + unpaired_batch, num_patches)`): masking noise, for reproducible masks.
        clip_noise (`(paired_batch, num_patches)`): with `config.clip_mask_ratio > 0`, the noise that picks the
            paired images' patches the contrastive pass sees (drawn here when not given).
        teacher_noise (`(paired_batch + unpaired_batch, num_patches)`): with `config.mfd_teacher_mask_ratio > 0`,
            the noise that picks the patches the momentum teacher sees (drawn here when not given).
        """
        reject_return_loss(self, kwargs)
        all_pixels = self._pretraining_images(pixel_values, input_ids, unpaired_pixel_values, kwargs)
        hidden, attentions = self._output_flags(output_hidden_states, output_attentions)
        config = self.config
        terms: dict[str, torch.Tensor] = {}
        encoded = pixel_predictions = None
        if config.use_mim or config.use_mfd:
            # One masked pass of E_I over the paired and unpaired images feeds both decoders.
            encoded = self.maskedclip.vision_model(
                all_pixels,
                mask_ratio=config.vision_config.mask_ratio,
                noise=noise,
                output_hidden_states=hidden,
                output_attentions=attentions,
            )
            if config.use_mim:
                pixel_predictions, terms["mim"] = self._masked_image_modeling(all_pixels, encoded)
            if config.use_mfd:
                terms["mfd"] = self._masked_feature_distillation(all_pixels, encoded, teacher_noise)
        contrastive = _ContrastiveTerm()
        if config.use_clip and pixel_values is not None and pixel_values.shape[0] > 0:
            contrastive = self._label_guided_contrastive(
                pixel_values, input_ids, attention_mask, token_type_ids, position_ids, labels, clip_noise
            )
            terms["clip"] = contrastive.loss

        return MaskedCLIPForPreTrainingOutput(
            loss=self._weighted_loss(terms),
            loss_mim=terms.get("mim"),
            loss_clip=terms.get("clip"),
            loss_mfd=terms.get("mfd"),
            pixel_predictions=pixel_predictions,
            mask=encoded.mask if encoded is not None else None,
            logits_per_image=contrastive.logits_per_image,
            logits_per_text=contrastive.logits_per_text,
            image_embeds=contrastive.image_embeds,
            text_embeds=contrastive.text_embeds,
            hidden_states=encoded.hidden_states if encoded is not None else None,
            attentions=encoded.attentions if encoded is not None else None,
        )

    def _pretraining_images(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        unpaired_pixel_values: torch.Tensor | None,
        kwargs: dict,
    ) -> torch.Tensor:
        """Check the forward's inputs (`kwargs`: its extra keyword arguments) and return every image of the
        batch, `(paired_batch + unpaired_batch, 3, H, W)`: the paired images `(paired_batch, 3, H, W)` first,
        then the unpaired ones `(unpaired_batch, 3, H, W)`."""
        if pixel_values is not None and input_ids is not None and pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"Paired batch mismatch: {pixel_values.shape[0]} images (pixel_values) but "
                f"{input_ids.shape[0]} texts (input_ids). Put image-only samples in unpaired_pixel_values."
            )
        if kwargs.get("interpolate_pos_encoding"):
            raise ValueError(
                "Pretraining runs at the configured image_size; interpolate_pos_encoding is for inference."
            )
        images = [x for x in (pixel_values, unpaired_pixel_values) if x is not None and x.shape[0] > 0]
        if not images:
            raise ValueError(
                "The pretraining forward needs images: pass pixel_values and/or unpaired_pixel_values."
            )
        return torch.cat(images, dim=0) if len(images) > 1 else images[0]

    def _masked_image_modeling(
        self, pixel_values: torch.Tensor, encoded: MaskedCLIPEncoderOutput
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L_mim (Eq. 1): D_I reconstructs the images' masked patches from E_I's masked pass over them.

        pixel_values `(batch, 3, H, W)`; encoded: the masked pass (`last_hidden_state`
        `(batch, 1 + kept_patches, hidden)`, `mask` and `ids_restore` `(batch, num_patches)`). Returns
        `(pixel_predictions (batch, num_patches, patch_size**2 * 3), loss ())`."""
        predictions = self.pixel_decoder(encoded.last_hidden_state, encoded.ids_restore).logits
        patch_size = self.maskedclip.vision_model.embeddings.patch_embeddings.patch_size[0]
        loss = masked_image_modeling_loss(
            predictions,
            patchify(pixel_values, patch_size),
            encoded.mask,
            norm_pix_loss=self.config.vision_config.norm_pix_loss,
        )
        return predictions, loss

    def _masked_feature_distillation(
        self, pixel_values: torch.Tensor, encoded: MaskedCLIPEncoderOutput, teacher_noise: torch.Tensor | None
    ) -> torch.Tensor:
        """L_mfd (Eq. 5): D_F predicts, from E_I's masked pass, the momentum teacher M̂'s features of the images.

        pixel_values `(batch, 3, H, W)`; encoded: E_I's masked pass over them (as in `_masked_image_modeling`);
        teacher_noise `(batch, num_patches)` or None: the patches M̂ sees with `config.mfd_teacher_mask_ratio`
        (see `_momentum_targets`). D_F predicts `(batch, num_patches, hidden)`; the loss `()` is taken over the
        patches M̂ gave a target for."""
        predicted = self.feature_decoder(encoded.last_hidden_state, encoded.ids_restore).logits
        targets, kept = self._momentum_targets(pixel_values, teacher_noise)
        if kept is not None:  # the teacher saw a subset: distil only where it gave a target
            predicted = torch.gather(predicted, 1, kept.unsqueeze(-1).expand(-1, -1, predicted.shape[-1]))
        return masked_feature_distillation_loss(predicted, targets)

    def _label_guided_contrastive(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        labels: torch.Tensor | None,
        clip_noise: torch.Tensor | None,
    ) -> _ContrastiveTerm:
        """L_lg_clip (Eqs. 2–4) of the image-text pairs: the images `(paired_batch, 3, H, W)` through E_I and B
        (whole, or with `config.clip_mask_ratio > 0` the share of patches `clip_noise` `(paired_batch,
        num_patches)` picks), the texts `(paired_batch, seq_len)` through E_T, both projected and L2-normalised
        to `(paired_batch, projection_dim)`; `labels` as in `forward`. Returns the loss `()`, `logits_per_image`
        `(paired_batch, text_batch)` (the global batch of texts under torch.distributed), `logits_per_text`, and
        the embeddings."""
        if input_ids is None:
            raise ValueError(
                "pixel_values are the paired images and need their texts (input_ids); pass image-only "
                "samples as unpaired_pixel_values."
            )
        released, ratio = self.maskedclip, self.config.clip_mask_ratio
        if ratio > 0:
            image_features = released.masked_image_features(pixel_values, ratio, clip_noise)
        else:
            image_features = released.get_image_features(pixel_values, return_dict=True).pooler_output
        image_embeds = F.normalize(image_features, dim=-1)
        text_features = released.get_text_features(
            input_ids, attention_mask, token_type_ids, position_ids, return_dict=True
        ).pooler_output
        text_embeds = F.normalize(text_features, dim=-1)
        loss, logits_per_image, logits_per_text = released.contrastive_loss(image_embeds, text_embeds, labels)
        return _ContrastiveTerm(loss, logits_per_image, logits_per_text, image_embeds, text_embeds)

    def _weighted_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Eq. 6, L_mim + λ_clip·L_lg_clip + λ_mfd·L_mfd, over the terms computed (`()` tensors named `mim`,
        `mfd`, `clip`, summed in that order); None when there is none."""
        weights = {"mim": 1.0, "clip": self.config.lambda_clip, "mfd": self.config.lambda_mfd}
        return sum(weights[name] * value for name, value in terms.items()) if terms else None

    @torch.no_grad()
    def _momentum_targets(
        self, pixel_values: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """M̂(x): momentum E_I (+ B) patch tokens after the last LayerNorm, and which patches they are.

        On the whole image (the paper): `((B, N, D), None)`. With `config.mfd_teacher_mask_ratio > 0` the
        teacher sees a random `N' = N·(1 − ratio)` patches: `((B, N', D), (B, N') patch indices)`, the tokens in
        the order of the indices."""
        ratio = self.config.mfd_teacher_mask_ratio
        kept = None
        if ratio > 0:
            num_patches = self.config.vision_config.num_patches
            if noise is None:
                noise = torch.rand(pixel_values.shape[0], num_patches, device=pixel_values.device)
            noise = noise.to(pixel_values.device)
            # random_masking keeps the lowest-noise patches in this order (the same argsort).
            kept = torch.argsort(noise, dim=1)[:, : int(num_patches * (1 - ratio))]
        tokens = self.momentum_vision_model(pixel_values, mask_ratio=ratio, noise=noise).last_hidden_state
        if self.momentum_bridge is not None:
            tokens = self.momentum_bridge(tokens)
        return tokens[:, 1:], kept


class MaskedCLIPVisionModel(MaskedCLIPPreTrainedModel):
    """E_I alone, for feature extraction. Loads from a MaskedCLIP checkpoint directory (takes the
    `vision_config` and the `vision_model.*` weights). `pooler_output` follows `config.pooling`: mean of the
    patch tokens (default) or the cls token, both after the encoder's final LayerNorm — the same feature as
    `MaskedCLIPModel`'s `vision_model_output.pooler_output`."""

    config: MaskedCLIPVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # Loading from a full MaskedCLIP checkpoint: everything but E_I is expected to be left behind.
    _remote_auto_map = {}  # a vision-config checkpoint: only its own class's entry
    _keys_to_ignore_on_load_unexpected = [r"^(?!vision_model\.)"]

    def __init__(self, config: MaskedCLIPVisionConfig):
        super().__init__(config)
        self.vision_model = MaskedCLIPVisionTransformer(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embeddings

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        hidden, attentions = self._output_flags(output_hidden_states, output_attentions)
        encoded = self.vision_model(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=hidden,
            output_attentions=attentions,
        )
        tokens = encoded.last_hidden_state
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens,
            pooler_output=pool_image_tokens(tokens, self.config.pooling),
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )


class MaskedCLIPForImageClassification(MaskedCLIPPreTrainedModel):
    """E_I + a classification head for fine-tuning (MAE practice): mean of the patch tokens → LayerNorm →
    dropout → linear, or with `pooling="cls"` the final-LayerNorm cls token → dropout → linear. Loads from a
    MaskedCLIP checkpoint directory: `MaskedCLIPForImageClassification.from_pretrained(dir, num_labels=5)`, or
    `AutoModelForImageClassification.from_pretrained(dir, num_labels=5)` after `import retvlp`."""

    config: MaskedCLIPVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _remote_auto_map = {}  # a vision-config checkpoint: only its own class's entry
    _keys_to_ignore_on_load_unexpected = [r"^(?!vision_model\.)"]

    def __init__(self, config: MaskedCLIPVisionConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = MaskedCLIPVisionTransformer(config)
        self.fc_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            if config.pooling == "mean"
            else nn.Identity()
        )
        if config.pooling == "mean":
            # The global-pool head normalises the pooled vector with fc_norm and never calls the encoder's final
            # LayerNorm: frozen, so that DDP (find_unused_parameters=False) does not fail on parameters that get
            # no gradient. The weights stay, so checkpoints load and save unchanged.
            self.vision_model.layernorm.requires_grad_(False)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = (
            nn.Linear(config.hidden_size, config.num_labels) if config.num_labels else nn.Identity()
        )
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`; also takes a full `MaskedCLIPConfig` as `config=` (what
        `AutoModelForImageClassification` passes for a MaskedCLIP checkpoint) and uses its vision part, with the
        label fields set on it."""
        config = kwargs.get("config")
        if isinstance(config, PreTrainedConfig) and hasattr(config, "vision_config"):
            vision_config = copy.deepcopy(config.vision_config)
            for field in ("id2label", "label2id", "problem_type"):
                if getattr(config, field, None) is not None:
                    setattr(vision_config, field, getattr(config, field))
            # Vision settings the full config did not take (drop_path_rate=, pooling=, ...) belong here.
            for field in list(kwargs):
                if field in MaskedCLIPVisionConfig.__dataclass_fields__:
                    setattr(vision_config, field, kwargs.pop(field))
            kwargs["config"] = vision_config
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embeddings

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        r"""labels: `(batch,)` class ids (single-label), `(batch, num_labels)` floats (multi-label), or floats
        for regression when `num_labels == 1`."""
        hidden, attentions = self._output_flags(output_hidden_states, output_attentions)
        use_cls = self.config.pooling == "cls"
        # MAE's global-pool head skips the encoder's final norm and normalises the pooled vector instead.
        encoded = self.vision_model(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            apply_layernorm=use_cls,
            output_hidden_states=hidden,
            output_attentions=attentions,
        )
        tokens = encoded.last_hidden_state
        pooled = tokens[:, 0] if use_cls else self.fc_norm(tokens[:, 1:].mean(dim=1))
        logits = self.classifier(self.dropout(pooled))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=encoded.hidden_states, attentions=encoded.attentions
        )


class MaskedCLIPImageClassificationLoader(MaskedCLIPPreTrainedModel):
    """What `AutoModelForImageClassification` resolves a MaskedCLIP (dual-encoder) checkpoint to: it builds a
    [`MaskedCLIPForImageClassification`] from the checkpoint's vision part and E_I weights, and is never an
    instance itself.

    transformers' Auto classes require the class they resolve to to declare the checkpoint's config class
    (`MaskedCLIPConfig`), also when they load it as remote code; the classifier itself is configured by the
    vision config (what a fine-tuned classifier saves). This class bridges the two, in the installed package and
    under `trust_remote_code` alike.
    """

    _remote_auto_map = {}

    def __init__(self, config: MaskedCLIPConfig):
        raise TypeError(
            "MaskedCLIPImageClassificationLoader only loads: use "
            "MaskedCLIPForImageClassification(config.vision_config) to build a classifier."
        )

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> "MaskedCLIPForImageClassification":
        return MaskedCLIPForImageClassification.from_pretrained(*args, **kwargs)

    @classmethod
    def _from_config(cls, config: MaskedCLIPConfig, **kwargs) -> "MaskedCLIPForImageClassification":
        return MaskedCLIPForImageClassification._from_config(config.vision_config, **kwargs)


__all__ = [
    "MaskedCLIPForImageClassification",
    "MaskedCLIPForPreTraining",
    "MaskedCLIPForPreTrainingOutput",
    "MaskedCLIPImageClassificationLoader",
    "MaskedCLIPLayer",
    "MaskedCLIPModel",
    "MaskedCLIPOutput",
    "MaskedCLIPPreTrainedModel",
    "MaskedCLIPVisionModel",
    "drop_path",
    "legacy_key_mapping",
    "random_masking",
    "sincos_position_table",
    "upgrade_legacy_state_dict",
]
