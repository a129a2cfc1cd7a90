"""Vision-transformer blocks in transformers' ViT-MAE layout, as our own code.

MaskedCLIP's image encoder, bridge and decoders used to subclass or import transformers' private ViT-MAE classes
(`transformers.models.vit_mae.modeling_vit_mae`: `ViTMAEEmbeddings`, `ViTMAELayer`, `ViTMAEDecoder`). A checkpoint
carries its code and is loaded with whatever transformers release the user has, and those classes change between
minor releases (their attention call signature and return tuple, their parameter layout, their initialisation).
These are the same blocks written here, on transformers' public API only:

- the class and parameter names are those of transformers 5.23-5.25 (`embeddings.cls_token`,
  `embeddings.position_embeddings`, `embeddings.patch_embeddings.projection`,
  `layers.N.attention.{q,k,v,o}_proj`, `layers.N.layernorm_{before,after}`, `layers.N.mlp.fc{1,2}`,
  `decoder_embed`, `mask_token`, `decoder_pos_embed`, `decoder_layers.N.*`, `decoder_norm`, `decoder_pred`), so
  ViT-MAE, converted RETFound and earlier MaskedCLIP checkpoints load unchanged, and configs naming the classes
  (FSDP's `fsdp_transformer_layer_cls_to_wrap`, `_no_split_modules`) keep working;
- the computation is transformers' (`tests/test_vit_resnet_blocks.py` copies the weights of transformers'
  classes into these and compares the outputs), plus stochastic depth in `ViTMAELayer` (MAE / BEiT fine-tuning;
  off by default) and the attention weights it hands back.

The single source lives in `retvlp/common/`; the MaskedCLIP folder holds a generated copy (`utils/check_copies.py`)
that `save_pretrained` writes next to checkpoints. Imports only torch, transformers' public API and its sibling
files.
"""

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GradientCheckpointingLayer
from transformers import initialization as init
from transformers.utils import ModelOutput

from .modeling_support import activation_module, attention_function


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, Iterable) else (value, value)


def sincos_position_table(grid_size: int, dim: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position table in MAE's layout: `(grid²[+1], dim)`.

    The first half of the channels encodes the column index, the second half the row index, each as
    [sin | cos] over frequencies 1/10000^(k/(dim/4)) — the layout RETFound and facebook/vit-mae-* were
    trained with. The cls row is zero.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}.")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(
        torch.arange(grid_size, dtype=torch.float64),
        torch.arange(grid_size, dtype=torch.float64),
        indexing="ij",
    )

    def encode(positions):
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(cols), encode(rows)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0)
    return table.float()


def random_masking(
    patch_tokens: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE per-sample masking: keep the N·(1−r) patches with the lowest noise.

    Args:
        patch_tokens: `(batch, num_patches, dim)`, position embeddings already added.
        noise: optional `(batch, num_patches)` uniform noise (for reproducibility).
    Returns:
        kept `(batch, int(num_patches·(1−r)), dim)` in shuffled order, mask `(batch, num_patches)` with 1 for
        removed patches, and `ids_restore` `(batch, num_patches)` such that gathering the shuffled sequence
        (kept + mask tokens) with it restores the original patch order.
    """
    batch, num_patches, dim = patch_tokens.shape
    num_keep = int(num_patches * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(batch, num_patches, device=patch_tokens.device)
    elif noise.shape != (batch, num_patches):
        raise ValueError(f"noise must have shape {(batch, num_patches)}, got {tuple(noise.shape)}.")
    ids_shuffle = torch.argsort(noise.to(patch_tokens.device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :num_keep]
    kept = torch.gather(patch_tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(batch, num_patches, device=patch_tokens.device)
    mask[:, :num_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return kept, mask, ids_restore


def drop_path(hidden_states: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth on a residual branch: in training, zero the whole branch of each sample with
    probability `rate` and scale the surviving samples by 1/(1 − rate); otherwise the identity."""
    if rate == 0.0 or not training:
        return hidden_states
    keep = 1.0 - rate
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.dim() - 1)
    mask = hidden_states.new_empty(shape).bernoulli_(keep)
    # Scale after masking: in bf16 a pre-scaled mask would round 1/keep (a systematic error on every sample).
    return hidden_states * mask / keep


class ViTMAEPatchEmbeddings(nn.Module):
    """`(batch, channels, height, width)` images → `(batch, patches, hidden)` patch tokens (one strided conv)."""

    def __init__(self, config):
        super().__init__()
        image_size, patch_size = _pair(config.image_size), _pair(config.patch_size)
        self.num_patches = (image_size[1] // patch_size[1]) * (image_size[0] // patch_size[0])
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = config.num_channels
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=patch_size, stride=patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        num_channels = pixel_values.shape[1]
        if num_channels != self.num_channels:
            raise ValueError(
                "Make sure that the channel dimension of the pixel values match with the one set in the configuration."
                f" Expected {self.num_channels} but got {num_channels}."
            )
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class ViTMAEEmbeddings(nn.Module):
    """The cls token, the patch embedding and the fixed (non-trainable) sin-cos position table
    `(1, 1 + patches, hidden)`. Masking is left to the caller (`random_masking`), so one module serves both the
    masked pass and the full-image pass."""

    def __init__(self, config):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embeddings = ViTMAEPatchEmbeddings(config)
        num_patches = self.patch_embeddings.num_patches
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, num_patches + 1, config.hidden_size), requires_grad=False
        )
        self.patch_size = config.patch_size
        self.image_size = self.patch_embeddings.image_size
        self.config = config

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The position table resized (bicubic) to the patch grid of a `height` × `width` image, for inputs of
        another size than the model's (DINO's interpolation). `embeddings`: `(batch, 1 + patches, hidden)`."""
        num_patches = embeddings.shape[1] - 1
        num_positions = self.position_embeddings.shape[1] - 1
        # always interpolate when tracing, so that an exported model accepts dynamic input shapes
        if not torch.jit.is_tracing() and num_patches == num_positions and height == width:
            return self.position_embeddings
        class_pos_embed = self.position_embeddings[:, :1]
        patch_pos_embed = self.position_embeddings[:, 1:]
        dim = embeddings.shape[-1]
        new_height = height // _pair(self.patch_size)[0]
        new_width = width // _pair(self.patch_size)[1]
        side = int(num_positions**0.5)
        patch_pos_embed = patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        patch_pos_embed = nn.functional.interpolate(
            patch_pos_embed, size=(new_height, new_width), mode="bicubic", align_corners=False
        )
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed, patch_pos_embed), dim=1)

    def forward(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(batch, channels, height, width)` → the patch tokens with their positions added `(batch, patches,
        hidden)`, and the cls token with its position `(1, 1, hidden)` (both in the patch tokens' dtype)."""
        height, width = pixel_values.shape[-2:]
        patch_tokens = self.patch_embeddings(pixel_values)
        if interpolate_pos_encoding:
            positions = self.interpolate_pos_encoding(patch_tokens, height, width)
        else:
            if (height, width) != tuple(self.image_size):
                raise ValueError(
                    f"Input image size {height}x{width} does not match the model's {tuple(self.image_size)}; "
                    "resize with the processor or pass interpolate_pos_encoding=True."
                )
            positions = self.position_embeddings
        patch_tokens = patch_tokens + positions[:, 1:].to(patch_tokens.dtype)
        cls_token = (self.cls_token + positions[:, :1]).to(patch_tokens.dtype)
        return patch_tokens, cls_token


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention on `(batch, heads, tokens, head_dim)` tensors → `(batch, tokens, heads, head_dim)` and the
    weights `(batch, heads, tokens, tokens)` (the softmax in float32, as transformers' eager kernels)."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class ViTMAEAttention(nn.Module):
    """Multi-head self-attention with separate query / key / value / output projections; the kernel is the one
    `config._attn_implementation` names (eager, SDPA, flash, flex, or a registered one)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
        self.attention_dropout = config.attention_probs_dropout_prob
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        width = config.num_attention_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, width, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, width, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, width, bias=config.qkv_bias)
        self.o_proj = nn.Linear(width, config.hidden_size, bias=True)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(batch, tokens, hidden)` → `(batch, tokens, hidden)` and the attention weights `(batch, heads, tokens,
        tokens)` (None when the kernel does not form them, e.g. SDPA)."""
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        attention = attention_function(self.config._attn_implementation, eager_attention_forward)
        attn_output, attn_weights = attention(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class ViTMAEMLP(nn.Module):
    """The block's feed-forward part: `fc1` → `config.hidden_act` → `fc2`."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.activation_fn = activation_module(config.hidden_act)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class ViTMAELayer(GradientCheckpointingLayer):
    """A pre-norm ViT block (attention and MLP branches, each with a residual), optionally with stochastic depth
    on both branches (MAE / BEiT fine-tuning), that hands back its attention weights.

    With `drop_path_rate == 0` or in eval mode the computation is transformers' `ViTMAELayer`; in training each
    sample's attention branch, then its MLP branch, is dropped with probability `drop_path_rate` (one Bernoulli
    draw per sample and branch, in that order). A `GradientCheckpointingLayer`: under
    `activation_checkpointing_enable()` its activations are recomputed in the backward pass.
    """

    def __init__(self, config, drop_path_rate: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}.")
        self.attention = ViTMAEAttention(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMAEMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path_rate = float(drop_path_rate)

    def extra_repr(self) -> str:
        return f"drop_path_rate={self.drop_path_rate}"

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(batch, tokens, hidden)` → the block's output and its attention weights `(batch, heads, tokens,
        tokens)` (None when the attention kernel does not form them, e.g. SDPA)."""
        rate = self.drop_path_rate if self.training else 0.0
        residual = hidden_states
        hidden_states, attention_weights = self.attention(
            self.layernorm_before(hidden_states), attention_mask, **kwargs
        )
        hidden_states = drop_path(self.dropout(hidden_states), rate, self.training) + residual

        residual = hidden_states
        hidden_states = self.mlp(self.layernorm_after(hidden_states))
        hidden_states = drop_path(self.dropout(hidden_states), rate, self.training) + residual
        return hidden_states, attention_weights


@dataclass
class ViTMAEDecoderOutput(ModelOutput):
    r"""Output of [`ViTMAEDecoder`].

    logits (`(batch, patches, prediction width)`): the prediction for every patch (the cls token removed).
    """

    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class ViTMAEDecoder(nn.Module):
    """MAE's decoder: embeds the encoder's visible tokens at the decoder width, fills the masked places with a
    learned mask token, restores the patch order, adds its own fixed sin-cos positions, runs its blocks and
    predicts `patch_size² · channels` values per patch (`decoder_pred`; a subclass may predict something else).

    The decoder sizes come from `config.decoder_hidden_size`, `decoder_num_hidden_layers`,
    `decoder_num_attention_heads` and `decoder_intermediate_size`; its blocks read a copy of `config` with those
    sizes (`self.config`)."""

    def __init__(self, config, num_patches: int):
        super().__init__()
        self.decoder_embed = nn.Linear(config.hidden_size, config.decoder_hidden_size, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, config.decoder_hidden_size), requires_grad=False
        )
        decoder_config = copy.deepcopy(config)
        decoder_config.hidden_size = config.decoder_hidden_size
        decoder_config.num_hidden_layers = config.decoder_num_hidden_layers
        decoder_config.num_attention_heads = config.decoder_num_attention_heads
        decoder_config.intermediate_size = config.decoder_intermediate_size
        self.decoder_layers = nn.ModuleList(
            [ViTMAELayer(decoder_config) for _ in range(config.decoder_num_hidden_layers)]
        )
        self.decoder_norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(
            config.decoder_hidden_size, _pair(config.patch_size)[0] ** 2 * config.num_channels, bias=True
        )
        self.gradient_checkpointing = False
        self.config = decoder_config
        # As transformers' decoder: the position table and the mask token are filled at construction (the model's
        # `_init_weights` fills them again; drawing the mask token here keeps the random stream of a fresh model
        # the same as with transformers' class).
        self.initialize_weights(num_patches)

    def initialize_weights(self, num_patches: int) -> None:
        grid_size = int(num_patches**0.5)
        table = sincos_position_table(grid_size, self.decoder_pos_embed.shape[-1])
        init.copy_(self.decoder_pos_embed, table.unsqueeze(0))
        init.normal_(self.mask_token, std=self.config.initializer_range)

    def interpolate_pos_encoding(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The decoder's position table stretched (bicubic) to the `embeddings.shape[1] − 1` patches of an input
        of another size than the model's."""
        embeddings_positions = embeddings.shape[1] - 1
        class_pos_embed = self.decoder_pos_embed[:, :1]
        patch_pos_embed = self.decoder_pos_embed[:, 1:]
        dim = self.decoder_pos_embed.shape[-1]
        patch_pos_embed = patch_pos_embed.reshape(1, 1, -1, dim).permute(0, 3, 1, 2)
        patch_pos_embed = nn.functional.interpolate(
            patch_pos_embed,
            size=(patch_pos_embed.shape[-2], embeddings_positions),
            mode="bicubic",
            align_corners=False,
        )
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed, patch_pos_embed), dim=1)

    def forward(
        self, hidden_states: torch.Tensor, ids_restore: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> ViTMAEDecoderOutput:
        """`hidden_states` `(batch, 1 + kept, encoder hidden)`: the encoder's cls + visible tokens (shuffled order);
        `ids_restore` `(batch, patches)` from the masking. Returns `.logits` `(batch, patches, prediction width)`."""
        hidden_states = self.decoder_embed(hidden_states)
        mask_tokens = self.mask_token.repeat(
            hidden_states.shape[0], ids_restore.shape[1] + 1 - hidden_states.shape[1], 1
        )
        unmasked_tokens = torch.cat([hidden_states[:, 1:, :], mask_tokens], dim=1)
        unmasked_tokens = torch.gather(
            unmasked_tokens,
            dim=1,
            index=ids_restore.unsqueeze(-1).repeat(1, 1, hidden_states.shape[2]).to(unmasked_tokens.device),
        )
        hidden_states = torch.cat([hidden_states[:, :1, :], unmasked_tokens], dim=1)
        if interpolate_pos_encoding:
            decoder_pos_embed = self.interpolate_pos_encoding(hidden_states)
        else:
            decoder_pos_embed = self.decoder_pos_embed
        hidden_states = hidden_states + decoder_pos_embed
        for layer in self.decoder_layers:
            hidden_states, _ = layer(hidden_states)
        hidden_states = self.decoder_norm(hidden_states)
        logits = self.decoder_pred(hidden_states)
        return ViTMAEDecoderOutput(logits=logits[:, 1:, :])


__all__ = [
    "ViTMAEAttention",
    "ViTMAEDecoder",
    "ViTMAEDecoderOutput",
    "ViTMAEEmbeddings",
    "ViTMAELayer",
    "ViTMAEMLP",
    "ViTMAEPatchEmbeddings",
    "drop_path",
    "eager_attention_forward",
    "random_masking",
    "sincos_position_table",
]
