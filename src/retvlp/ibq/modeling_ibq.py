"""IBQ visual tokenizer: the convolutional autoencoder that learns KeepFIT V2's appearance codebook
(METHODS.md §2, "The codebook").

Module map (attribute of [`IBQTokenizerModel`]):

    encoder          conv_in → per level: residual blocks (GroupNorm + SiLU + 3×3 conv), stride-2 conv
                     between levels → residual blocks at the lowest resolution → GroupNorm + SiLU
    quant_conv       1×1 conv, encoder width → code_dim D                          z  (B, D, h, w)
    quantizer        the codebook C (K × D) and IBQ quantisation (`quantization_ibq.py`)   q, indices
    post_quant_conv  1×1 conv, D → decoder width
    decoder          conv_in → residual blocks → per level (mirrored): residual blocks, nearest 2×
                     upsampling + 3×3 conv between levels → GroupNorm + SiLU → conv_out to image channels

Loss (training forward): reconstruction (L1 or L2) + w_q·(‖q−z‖² + ‖sg(q_hard)−z‖² + β‖q_hard−sg(z)‖²)
+ w_e·entropy. KeepFIT reads the trained codebook with [`IBQTokenizerModel.get_codebook`].

This file is copied next to saved checkpoints for ``trust_remote_code`` loading, so it only imports torch,
transformers' public API and its sibling files (`tests/test_checkpoint_code_imports.py`).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GradientCheckpointingLayer, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_ibq import IBQTokenizerConfig
from .modeling_support import can_return_tuple
from .quantization_ibq import (
    IBQQuantization,
    entropy_loss,
    ibq_losses,
    ibq_quantize,
    perplexity_from_histogram,
    usage_from_histogram,
)


@dataclass
class IBQTokenizerOutput(ModelOutput):
    r"""Output of [`IBQTokenizerModel`].

    loss (`torch.FloatTensor` of shape `()`): reconstruction_loss + quantization_loss_weight ·
        quantization_loss + entropy_loss_weight · entropy_loss; only when the loss is computed.
    reconstruction_loss (`()`): L1 or L2 between `pixel_values` and `reconstruction` (mean over elements).
    quantization_loss (`()`): ‖q−z‖² + ‖sg(q_hard)−z‖² + β‖q_hard−sg(z)‖² (unweighted).
    entropy_loss (`()`): per-sample entropy − batch entropy of the code assignment; only when
        `entropy_loss_weight > 0`.
    reconstruction (`(batch, in_channels, height, width)`): the decoded image.
    indices (`(batch, height / f, width / f)`, int64): the code of every position (f = downsampling factor).
    codebook_usage (`()`): fraction of the K codes used in this batch (at most batch·h·w / K).
    perplexity (`()`): exp(entropy of this batch's code histogram), the effective number of codes used.
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    quantization_loss: torch.FloatTensor | None = None
    entropy_loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    indices: torch.LongTensor | None = None
    codebook_usage: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None


class IBQResidualBlock(GradientCheckpointingLayer):
    """GroupNorm → SiLU → 3×3 conv, twice, plus a skip (1×1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, config: IBQTokenizerConfig):
        super().__init__()
        groups, eps = config.norm_num_groups, config.norm_eps
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = self.conv1(F.silu(self.norm1(hidden_states)))
        residual = self.conv2(F.silu(self.norm2(residual)))
        return self.shortcut(hidden_states) + residual


class IBQDownsample(nn.Module):
    """2× downsampling by a stride-2 3×3 conv (halves even sizes exactly)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(hidden_states)


class IBQUpsample(nn.Module):
    """2× upsampling: nearest-neighbour interpolation then a 3×3 conv (no checkerboard artefacts)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(hidden_states, scale_factor=2.0, mode="nearest"))


class IBQLevel(nn.Module):
    """One resolution level: residual blocks, then an optional resampling to the next level."""

    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            hidden_states = block(hidden_states)
        return hidden_states if self.resample is None else self.resample(hidden_states)


class IBQEncoder(nn.Module):
    """`(B, in_channels, H, W)` → `(B, widest level width, H/f, W/f)`, ending with GroupNorm + SiLU."""

    def __init__(self, config: IBQTokenizerConfig):
        super().__init__()
        widths = config.level_channels
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], kernel_size=3, padding=1)
        levels, current = [], widths[0]
        for level, width in enumerate(widths):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(IBQResidualBlock(current, width, config))
                current = width
            downsample = IBQDownsample(current) if level < len(widths) - 1 else None
            levels.append(IBQLevel(blocks, downsample))
        self.levels = nn.ModuleList(levels)
        self.mid_blocks = nn.ModuleList(
            [IBQResidualBlock(current, current, config) for _ in range(config.num_mid_res_blocks)]
        )
        self.norm_out = nn.GroupNorm(config.norm_num_groups, current, eps=config.norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv_in(pixel_values)
        for level in self.levels:
            hidden_states = level(hidden_states)
        for block in self.mid_blocks:
            hidden_states = block(hidden_states)
        return F.silu(self.norm_out(hidden_states))


class IBQDecoder(nn.Module):
    """`(B, widest level width, h, w)` → `(B, in_channels, h·f, w·f)`; the encoder's mirror image."""

    def __init__(self, config: IBQTokenizerConfig):
        super().__init__()
        widths = config.level_channels
        current = widths[-1]
        self.conv_in = nn.Conv2d(current, current, kernel_size=3, padding=1)
        self.mid_blocks = nn.ModuleList(
            [IBQResidualBlock(current, current, config) for _ in range(config.num_mid_res_blocks)]
        )
        levels = []  # lowest resolution first, in the order they run
        for level in reversed(range(len(widths))):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(IBQResidualBlock(current, widths[level], config))
                current = widths[level]
            upsample = IBQUpsample(current) if level > 0 else None
            levels.append(IBQLevel(blocks, upsample))
        self.levels = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(config.norm_num_groups, current, eps=config.norm_eps)
        self.conv_out = nn.Conv2d(current, config.in_channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv_in(hidden_states)
        for block in self.mid_blocks:
            hidden_states = block(hidden_states)
        for level in self.levels:
            hidden_states = level(hidden_states)
        return self.conv_out(F.silu(self.norm_out(hidden_states)))


class IBQQuantizer(nn.Module):
    """Holds the codebook C `(K, D)` (parameter `codebook`) and quantises channels-last features with IBQ.

    Freeze it with `quantizer.codebook.requires_grad_(False)`; the straight-through gradient still reaches
    the features through the soft assignment.
    """

    def __init__(self, config: IBQTokenizerConfig):
        super().__init__()
        self.codebook = nn.Parameter(torch.empty(config.codebook_size, config.code_dim))
        self.temperature = config.quantizer_temperature

    def forward(self, features: torch.Tensor) -> IBQQuantization:
        """`features` `(..., D)` → [`IBQQuantization`] (quantized `(..., D)`, indices `(...)`, ...)."""
        return ibq_quantize(features, self.codebook, self.temperature)


class IBQTokenizerPreTrainedModel(PreTrainedModel):
    config: IBQTokenizerConfig
    base_model_prefix = "ibq"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _can_compile_fullgraph = True
    _no_split_modules = ["IBQResidualBlock"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, nn.Conv2d):
            # PyTorch's default conv initialisation (Kaiming-uniform, a = √5), which VQGAN-family tokenizers
            # train from; the library default N(0, 0.02) shrinks activations through the deep conv stack.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, IBQQuantizer):
            num_codes, code_dim = module.codebook.shape
            if self.config.codebook_init == "uniform":
                init.uniform_(module.codebook, -1.0 / num_codes, 1.0 / num_codes)
            else:
                init.normal_(module.codebook, mean=0.0, std=code_dim**-0.5)


class IBQTokenizerModel(IBQTokenizerPreTrainedModel):
    """IBQ visual tokenizer: image → grid of codebook indices → image.

    A forward in training mode (or with `return_loss=True`) also computes the training loss; in eval mode it
    reconstructs and reports codebook statistics only. [`encode`] and [`decode_indices`] tokenise and
    detokenise; [`get_codebook`] returns C `(K, D)` for KeepFIT's appearance knowledge injection.
    """

    def __init__(self, config: IBQTokenizerConfig):
        super().__init__(config)
        widest = config.level_channels[-1]
        self.encoder = IBQEncoder(config)
        self.quant_conv = nn.Conv2d(widest, config.code_dim, kernel_size=1)
        self.quantizer = IBQQuantizer(config)
        self.post_quant_conv = nn.Conv2d(config.code_dim, widest, kernel_size=1)
        self.decoder = IBQDecoder(config)
        self.post_init()

    # ------------------------------------------------------------------ checks
    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        channels, factor, size = (
            self.config.in_channels,
            self.config.downsampling_factor,
            self.config.image_size,
        )
        expected = (
            f"(batch, {channels}, height, width) with height and width multiples of {factor} "
            f"(trained at (batch, {channels}, {size}, {size}))"
        )
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be {expected}, got shape {tuple(pixel_values.shape)}.")
        if pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels but the model expects {channels}: "
                f"shape must be {expected}, got {tuple(pixel_values.shape)}."
            )
        if pixel_values.shape[2] % factor or pixel_values.shape[3] % factor:
            raise ValueError(
                f"pixel_values height and width must be multiples of the downsampling factor {factor}: "
                f"shape must be {expected}, got {tuple(pixel_values.shape)}."
            )

    # ------------------------------------------------------------------ pieces
    def get_codebook(self) -> torch.Tensor:
        """The codebook C `(codebook_size, code_dim)` (the parameter itself; `.detach()` it to freeze a copy)."""
        return self.quantizer.codebook

    def encode_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Continuous features z before quantisation: `(B, in_channels, H, W)` → `(B, D, H/f, W/f)`."""
        self._check_pixel_values(pixel_values)
        weight = self.encoder.conv_in.weight
        return self.quant_conv(self.encoder(pixel_values.to(device=weight.device, dtype=weight.dtype)))

    def encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise images `(B, in_channels, H, W)`.

        Returns `(quantized, indices)`: quantized `(B, D, H/f, W/f)` (value = codebook[indices]; with
        straight-through gradients when grad is enabled) and indices `(B, H/f, W/f)` int64.
        """
        features = self.encode_features(pixel_values)
        quantization = self.quantizer(features.permute(0, 2, 3, 1))
        return quantization.quantized.permute(0, 3, 1, 2), quantization.indices

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """Decode quantised features `(B, D, h, w)` into images `(B, in_channels, h·f, w·f)`."""
        if quantized.dim() != 4 or quantized.shape[1] != self.config.code_dim:
            raise ValueError(
                f"quantized must have shape (batch, {self.config.code_dim}, h, w), got {tuple(quantized.shape)}."
            )
        return self.decoder(self.post_quant_conv(quantized))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Detokenise a grid of code indices `(B, h, w)` (integers in [0, K)) into images `(B, C, h·f, w·f)`."""
        num_codes = self.config.codebook_size
        if indices.dim() != 3 or indices.is_floating_point() or indices.is_complex():
            raise ValueError(
                f"indices must be an integer tensor of shape (batch, h, w), got {indices.dtype} "
                f"of shape {tuple(indices.shape)}."
            )
        if indices.numel() and (indices.min() < 0 or indices.max() >= num_codes):
            raise ValueError(
                f"indices must lie in [0, {num_codes}), got values in [{indices.min()}, {indices.max()}]."
            )
        codes = F.embedding(indices.long().to(self.quantizer.codebook.device), self.quantizer.codebook)
        return self.decode(codes.permute(0, 3, 1, 2))

    # ------------------------------------------------------------------ forward
    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        return_loss: bool | None = None,
        **kwargs,
    ) -> IBQTokenizerOutput:
        r"""Reconstruct `pixel_values` `(batch, in_channels, height, width)` through the codebook.

        return_loss (`bool`, *optional*): compute the losses; defaults to `self.training`.
        """
        config = self.config
        return_loss = self.training if return_loss is None else return_loss
        features = self.encode_features(pixel_values).permute(0, 2, 3, 1)  # (B, h, w, D) channels-last
        quantization = self.quantizer(features)
        reconstruction = self.decode(quantization.quantized.permute(0, 3, 1, 2))

        with torch.no_grad():
            # Arg-max indices lie in [0, K) by construction: no range check (a data-dependent branch, which
            # would stop torch.export / torch.compile(fullgraph=True)).
            counts = torch.bincount(quantization.indices.reshape(-1), minlength=config.codebook_size)
            usage, perplexity = usage_from_histogram(counts), perplexity_from_histogram(counts)

        loss = reconstruction_loss = quantization_loss = entropy = None
        if return_loss:
            target = pixel_values.to(device=reconstruction.device, dtype=reconstruction.dtype)
            if config.reconstruction_loss == "l1":
                reconstruction_loss = F.l1_loss(reconstruction, target)
            else:
                reconstruction_loss = F.mse_loss(reconstruction, target)
            quantization_loss = ibq_losses(
                features, quantization.quantized, quantization.hard_quantized, beta=config.beta
            ).total
            loss = reconstruction_loss + config.quantization_loss_weight * quantization_loss
            if config.entropy_loss_weight > 0:
                entropy = entropy_loss(quantization.logits, temperature=config.entropy_temperature)
                loss = loss + config.entropy_loss_weight * entropy

        return IBQTokenizerOutput(
            loss=loss,
            reconstruction_loss=reconstruction_loss,
            quantization_loss=quantization_loss,
            entropy_loss=entropy,
            reconstruction=reconstruction,
            indices=quantization.indices,
            codebook_usage=usage,
            perplexity=perplexity,
        )


__all__ = [
    "IBQDecoder",
    "IBQEncoder",
    "IBQQuantizer",
    "IBQResidualBlock",
    "IBQTokenizerModel",
    "IBQTokenizerOutput",
    "IBQTokenizerPreTrainedModel",
]
