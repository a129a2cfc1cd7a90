"""Pretraining: run configuration, data streams, atomic checkpoints and the Accelerate loop."""

from .config import ConfigError, PretrainConfig
from .trainer import NonFiniteLossError, PretrainResult, pretrain

__all__ = ["ConfigError", "NonFiniteLossError", "PretrainConfig", "PretrainResult", "pretrain"]
