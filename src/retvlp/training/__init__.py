"""Pretraining: run configuration, data streams, atomic checkpoints and the Accelerate loop, with one
`PretrainTask` per model family (MaskedCLIP, KeepFIT V2, IBQ tokenizer) and the text-MLM loop."""

from .collapse import ContrastiveCollapseError
from .config import ConfigError, PretrainConfig
from .text_mlm import pretrain_text_mlm
from .trainer import NonFiniteLossError, PretrainResult, pretrain

__all__ = [
    "ConfigError",
    "ContrastiveCollapseError",
    "NonFiniteLossError",
    "PretrainConfig",
    "PretrainResult",
    "pretrain",
    "pretrain_text_mlm",
]
