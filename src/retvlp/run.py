"""Pretraining with the configured evaluations: the one function above `retvlp.training` and
`retvlp.evaluation` that joins them (layers point down: training never imports evaluation, so the entry point
hands the evaluations to the loop)."""

from __future__ import annotations

from .evaluation.periodic import PretrainingEvaluation
from .training import PretrainConfig, PretrainResult, pretrain


def pretrain_and_evaluate(
    config: PretrainConfig,
    *,
    resume: str | None = None,
    show_progress: bool = True,
    stop_after: int | None = None,
    extend: bool = False,
    rerun_stages: list[str] | str | None = None,
) -> PretrainResult:
    """`retvlp.training.pretrain` with the evaluations the run file asks for: `run.eval_every` (zero-shot and a
    linear probe during pretraining, `retvlp.evaluation.periodic`) and `run.evaluate` (the end-of-run check
    against random init; `result.evaluation`, `final/eval_results.json`). The arguments are `pretrain`'s (with
    `config.stages`, the stages of a whole recipe run first: `retvlp/training/stages.py`);
    `accelerate launch training/pretrain.py` calls this."""
    return pretrain(
        config,
        resume=resume,
        show_progress=show_progress,
        stop_after=stop_after,
        extend=extend,
        evaluation_hooks=PretrainingEvaluation(),
        rerun_stages=rerun_stages,
    )


__all__ = ["pretrain_and_evaluate"]
