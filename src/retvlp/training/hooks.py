"""The evaluations a pretraining run hands to the loop from above (layers point down: training never imports
`retvlp.evaluation`). `retvlp.evaluation.periodic.PretrainingEvaluation` implements them;
`retvlp.run.pretrain_and_evaluate` (and `training/pretrain.py`) pass it to `pretrain(..., evaluation_hooks=)`.

Without hooks, `pretrain` trains only: `run.eval_every` and `run.evaluate` are then not acted on (a warning
says so)."""

from __future__ import annotations

from typing import Any, Protocol


class PeriodicEvaluation(Protocol):
    """What `EvaluationHooks.periodic` returns: called after every optimizer step (on every process)."""

    def maybe_run(self, step: int, model) -> dict | None: ...


class EvaluationHooks:
    """The loop's three evaluation points; this base class does nothing at any of them.

    * `hold_out(streams, manifests, class_names, config, evaluation_specs, task, is_main_process=)` → `(streams,
      held_out)`: before the model is built, may take rows out of the training streams (image families only);
    * `periodic(config, task, processor, class_names, evaluation_specs, held_out, accelerator, log, progress,
      total_steps)` → a `PeriodicEvaluation` or None: built once before the first step, on every process;
    * `final(model, processor, evaluation_specs, config, class_names, task, show_progress=)` → the results dict
      (written to `final/eval_results.json`) or None: on the main process after the final save, when
      `run.evaluate`, `task.end_of_run_evaluation` and a `test` set.
    """

    def hold_out(
        self, streams, manifests, class_names, config, evaluation_specs, task, *, is_main_process: bool
    ):
        return streams, None

    def periodic(
        self,
        config,
        task,
        processor,
        class_names,
        evaluation_specs,
        held_out,
        accelerator,
        log,
        progress,
        total_steps,
    ) -> PeriodicEvaluation | None:
        return None

    def final(
        self, model, processor, evaluation_specs, config, class_names, task, *, show_progress: bool
    ) -> dict[str, Any] | None:
        return None


__all__ = ["EvaluationHooks", "PeriodicEvaluation"]
