"""A ResNet image tower in transformers' ResNet layout, as our own code.

KeepFIT's image encoder E_v used to be transformers' `ResNetModel`, with its stages class-swapped into a
checkpointing subclass of the private `transformers.models.resnet.modeling_resnet.ResNetStage`. A checkpoint
carries its code and is loaded with whatever transformers release the user has, and private classes change
between minor releases (transformers 5.25 already changed `ResNetConvLayer`'s signature). `ResNetVisionModel` is
the same tower written here, on transformers' public API only, configured by transformers' public `ResNetConfig`
(the `vision_config` of a KeepFIT checkpoint):

- the class and parameter names are those of transformers' ResNet (`embedder.embedder.{convolution,normalization}`,
  `encoder.stages.S.layers.L.layer.J.{convolution,normalization}`, `encoder.stages.S.layers.L.shortcut.*`), so
  `microsoft/resnet-50`-style checkpoints, converted FLAIR / KeepFIT weights and earlier KeepFIT checkpoints load
  unchanged;
- the computation and the initialisation are transformers' (`tests/test_vit_resnet_blocks.py` compares outputs and
  a seeded fresh initialisation with transformers' `ResNetModel`);
- every stage is a `GradientCheckpointingLayer` (transformers' ResNet has none) whose BatchNorm running statistics
  move once per step under activation checkpointing (`frozen_batch_norm_statistics` while it is recomputed).

The single source lives in `retvlp/common/`; the KeepFIT folder holds a generated copy (`utils/check_copies.py`)
that `save_pretrained` writes next to checkpoints. Imports only torch, transformers' public API and its sibling
files.
"""

import math
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from transformers import GradientCheckpointingLayer, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutputWithNoAttention,
    BaseModelOutputWithPoolingAndNoAttention,
)

from .modeling_support import activation_module


@contextmanager
def frozen_batch_norm_statistics(module: nn.Module):
    """While a checkpointed block is recomputed for the backward pass: its BatchNorm layers in training mode
    normalise with the batch statistics exactly as in the forward, but must not update their running
    statistics a second time (momentum 0 leaves them as they are; the batch counter is restored)."""
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    saved = [
        (m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
        for m in norms
    ]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, momentum, tracked in saved:
            norm.momentum = momentum
            if tracked is not None:
                norm.num_batches_tracked.copy_(tracked)


class ResNetConvLayer(nn.Module):
    """Convolution (no bias, "same" padding) → BatchNorm → activation (none when `activation` is None)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        activation: str | None = "relu",
    ):
        super().__init__()
        self.convolution = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        )
        self.normalization = nn.BatchNorm2d(out_channels)
        self.activation = activation_module(activation) if activation is not None else nn.Identity()

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.activation(self.normalization(self.convolution(hidden_state)))


class ResNetEmbeddings(nn.Module):
    """The stem: a 7×7 stride-2 convolution layer, then a 3×3 stride-2 max pool."""

    def __init__(self, config):
        super().__init__()
        self.embedder = ResNetConvLayer(
            config.num_channels, config.embedding_size, kernel_size=7, stride=2, activation=config.hidden_act
        )
        self.pooler = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.num_channels = config.num_channels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                "Make sure that the channel dimension of the pixel values match with the one set in the configuration."
            )
        return self.pooler(self.embedder(pixel_values))


class ResNetShortCut(nn.Module):
    """The residual projection: a 1×1 convolution (stride `stride`) → BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        self.convolution = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
        self.normalization = nn.BatchNorm2d(out_channels)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.normalization(self.convolution(hidden_state))


class ResNetBasicLayer(nn.Module):
    """The classic residual block: two 3×3 convolution layers, plus the shortcut, then the activation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, activation: str = "relu"):
        super().__init__()
        should_apply_shortcut = in_channels != out_channels or stride != 1
        self.shortcut = (
            ResNetShortCut(in_channels, out_channels, stride=stride)
            if should_apply_shortcut
            else nn.Identity()
        )
        self.layer = nn.Sequential(
            ResNetConvLayer(in_channels, out_channels, stride=stride),
            ResNetConvLayer(out_channels, out_channels, activation=None),
        )
        self.activation = activation_module(activation)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        residual = hidden_state
        hidden_state = self.layer(hidden_state)
        residual = self.shortcut(residual)
        hidden_state += residual
        return self.activation(hidden_state)


class ResNetBottleNeckLayer(nn.Module):
    """The bottleneck block: 1×1 reduce (by `reduction`), 3×3, 1×1 expand, plus the shortcut, then the activation.
    The stride sits on the 3×3 convolution, or on the first 1×1 with `downsample_in_bottleneck`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        activation: str = "relu",
        reduction: int = 4,
        downsample_in_bottleneck: bool = False,
    ):
        super().__init__()
        should_apply_shortcut = in_channels != out_channels or stride != 1
        reduces_channels = out_channels // reduction
        self.shortcut = (
            ResNetShortCut(in_channels, out_channels, stride=stride)
            if should_apply_shortcut
            else nn.Identity()
        )
        self.layer = nn.Sequential(
            ResNetConvLayer(
                in_channels, reduces_channels, kernel_size=1, stride=stride if downsample_in_bottleneck else 1
            ),
            ResNetConvLayer(
                reduces_channels, reduces_channels, stride=stride if not downsample_in_bottleneck else 1
            ),
            ResNetConvLayer(reduces_channels, out_channels, kernel_size=1, activation=None),
        )
        self.activation = activation_module(activation)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        residual = hidden_state
        hidden_state = self.layer(hidden_state)
        residual = self.shortcut(residual)
        hidden_state += residual
        return self.activation(hidden_state)


class ResNetStage(GradientCheckpointingLayer):
    """`depth` residual blocks, the first one changing the width (and downsampling with `stride`).

    Under `activation_checkpointing_enable()` in training the stage's activations are recomputed in the backward
    pass, and its BatchNorm running statistics still move once per step (`frozen_batch_norm_statistics` during
    the recomputation)."""

    def __init__(self, config, in_channels: int, out_channels: int, stride: int = 2, depth: int = 2):
        super().__init__()
        layer = ResNetBottleNeckLayer if config.layer_type == "bottleneck" else ResNetBasicLayer
        if config.layer_type == "bottleneck":
            first_layer = layer(
                in_channels,
                out_channels,
                stride=stride,
                activation=config.hidden_act,
                downsample_in_bottleneck=config.downsample_in_bottleneck,
            )
        else:
            first_layer = layer(in_channels, out_channels, stride=stride, activation=config.hidden_act)
        self.layers = nn.Sequential(
            first_layer,
            *[layer(out_channels, out_channels, activation=config.hidden_act) for _ in range(depth - 1)],
        )

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_state = layer(hidden_state)
        return hidden_state

    # transformers' activation checkpointing sets `_gradient_checkpointing_func` (torch's checkpoint with the
    # caller's options) and calls it around `forward`; this property wraps it so that the recomputation runs with
    # frozen BatchNorm statistics.
    @property
    def _gradient_checkpointing_func(self):
        if "_checkpoint_function" not in self.__dict__:
            raise AttributeError("_gradient_checkpointing_func")  # not enabled (yet)
        checkpoint = self.__dict__["_checkpoint_function"]

        def checkpoint_once_per_statistics(function, *args, **kwargs):
            calls = 0

            def run(*inputs):
                nonlocal calls
                calls += 1  # the first call is the forward, a later one the recomputation
                with frozen_batch_norm_statistics(self) if calls > 1 else nullcontext():
                    return function(*inputs)

            return checkpoint(run, *args, **kwargs)

        return checkpoint_once_per_statistics

    @_gradient_checkpointing_func.setter
    def _gradient_checkpointing_func(self, function) -> None:
        self.__dict__["_checkpoint_function"] = function

    @_gradient_checkpointing_func.deleter
    def _gradient_checkpointing_func(self) -> None:
        self.__dict__.pop("_checkpoint_function", None)


class ResNetEncoder(nn.Module):
    """The stages: `config.depths[i]` blocks of width `config.hidden_sizes[i]`; every stage but the first halves
    the resolution (the first too with `config.downsample_in_first_stage`)."""

    def __init__(self, config):
        super().__init__()
        self.stages = nn.ModuleList([])
        self.stages.append(
            ResNetStage(
                config,
                config.embedding_size,
                config.hidden_sizes[0],
                stride=2 if config.downsample_in_first_stage else 1,
                depth=config.depths[0],
            )
        )
        in_out_channels = zip(config.hidden_sizes, config.hidden_sizes[1:], strict=False)
        for (in_channels, out_channels), depth in zip(in_out_channels, config.depths[1:], strict=False):
            self.stages.append(ResNetStage(config, in_channels, out_channels, depth=depth))

    def forward(
        self, hidden_state: torch.Tensor, output_hidden_states: bool = False
    ) -> BaseModelOutputWithNoAttention:
        hidden_states = () if output_hidden_states else None
        for stage in self.stages:
            if output_hidden_states:
                hidden_states = hidden_states + (hidden_state,)
            hidden_state = stage(hidden_state)
        if output_hidden_states:
            hidden_states = hidden_states + (hidden_state,)
        return BaseModelOutputWithNoAttention(last_hidden_state=hidden_state, hidden_states=hidden_states)


class ResNetVisionModel(PreTrainedModel):
    """The ResNet image tower (transformers' `ResNetModel`, its layout and outputs) for a `ResNetConfig`:
    `(batch, channels, H, W)` → `last_hidden_state` `(batch, hidden_sizes[-1], h, w)`, `pooler_output`
    `(batch, hidden_sizes[-1], 1, 1)` (global average), `hidden_states` (the stem's output and every stage's) with
    `output_hidden_states`.

    A `PreTrainedModel` like transformers' tower, so that a composite model initialises it with this class's own
    `_init_weights` (transformers' ResNet initialisation) and sees the same class attributes."""

    config: PreTrainedConfig
    base_model_prefix = "resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["ResNetConvLayer", "ResNetShortCut"]

    def __init__(self, config):
        super().__init__(config)
        self.config = config
        self.embedder = ResNetEmbeddings(config)
        self.encoder = ResNetEncoder(config)
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):  # torch's `Linear.reset_parameters`
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif "BatchNorm" in module.__class__.__name__:
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            if getattr(module, "num_batches_tracked", None) is not None:
                init.zeros_(module.num_batches_tracked)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention:
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        encoder_outputs = self.encoder(self.embedder(pixel_values), output_hidden_states=output_hidden_states)
        last_hidden_state = encoder_outputs.last_hidden_state
        pooled_output = self.pooler(last_hidden_state)
        if not return_dict:
            return tuple(
                v for v in (last_hidden_state, pooled_output, encoder_outputs.hidden_states) if v is not None
            )
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            hidden_states=encoder_outputs.hidden_states,
        )


__all__ = [
    "ResNetBasicLayer",
    "ResNetBottleNeckLayer",
    "ResNetConvLayer",
    "ResNetEmbeddings",
    "ResNetEncoder",
    "ResNetShortCut",
    "ResNetStage",
    "ResNetVisionModel",
    "frozen_batch_norm_statistics",
]
