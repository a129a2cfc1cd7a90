"""Pretraining: run configuration, data streams, atomic checkpoints and the one Accelerate loop, with one
`PretrainTask` per model family (MaskedCLIP, KeepFIT V2, IBQ tokenizer, text MLM). Evaluations are handed in
from above (`EvaluationHooks`; `retvlp.run.pretrain_and_evaluate`)."""

from .collapse import ContrastiveCollapseError
from .config import ConfigError, PretrainConfig
from .hooks import EvaluationHooks
from .task import PretrainTask
from .trainer import NonFiniteLossError, PretrainResult, build_task, pretrain

__all__ = [
    "ConfigError",
    "ContrastiveCollapseError",
    "EvaluationHooks",
    "NonFiniteLossError",
    "PretrainConfig",
    "PretrainResult",
    "PretrainTask",
    "build_task",
    "pretrain",
]
