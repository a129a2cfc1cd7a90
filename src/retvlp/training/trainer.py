"""The one pretraining loop behind `accelerate launch training/pretrain.py`, for every model family.

One optimizer step = `gradient_accumulation_steps` micro-steps; micro-step `i` reads batch `i` of the task's
step batches (rows, crops, masks all drawn from `(seed, i)`), and the torch RNG (dropout) is re-seeded
from `(seed, i, rank)` before its forward (before both of its forwards with `optim.contrastive_accumulation`).
A run is therefore a pure function of the config and the step counter: a resumed run continues exactly where
the straight run would be.

What differs between families is the task's (`task.py`: data, models, the step's loss terms, parameter
groups, summaries); evaluations come from above as `EvaluationHooks` (`hooks.py`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpointing import (
    CheckpointError,
    check_resume_length,
    describe_load_error,
    latest_checkpoint,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from .collapse import CollapseGuard, ContrastiveCollapseError
from .config import ConfigError, PretrainConfig, warmup_too_long_message
from .contrastive_accumulation import check_supported, contrastive_accumulation_step
from .family_parts import training_parts
from .hooks import EvaluationHooks
from .preemption import PreemptedError, PreemptionWatch, clear_marker, write_marker
from .progress import PhaseTimes, StepProgress, phase, recording, timed, timed_count
from .run_data import RunData
from .run_lock import run_lock
from .task import PretrainTask, released_model, seed_from

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss or gradient norm became NaN/Inf; the run stopped before the optimizer applied it."""


@dataclass
class PretrainResult:
    output_dir: Path
    final_dir: Path
    steps: int
    last_metrics: dict[str, float]
    evaluation: dict[str, Any] | None = None
    # where the wall time went (stages, data, steps, ...): the last line of training/pretrain.py
    times: PhaseTimes = field(default_factory=PhaseTimes)


class JsonlLog:
    """Append-only metrics log; on resume, lines past the checkpoint's step are dropped (they are redone)."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= resume_step
            ]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, entry: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")


def build_task(family: str) -> PretrainTask:
    """A fresh `PretrainTask` of a model family (`model.family`, the task its task file registers:
    `training.family_parts.register_training`); one per run (a task may keep run state)."""
    parts = training_parts(family)
    if parts is None or parts.task is None:
        raise ValueError(f"model family {family!r} registers no pretraining task (register_training).")
    return parts.task()


def pretrain(
    config: PretrainConfig,
    *,
    resume: str | None = None,
    show_progress: bool = True,
    stop_after: int | None = None,
    extend: bool = False,
    evaluation_hooks: EvaluationHooks | None = None,
    rerun_stages: list[str] | str | None = None,
) -> PretrainResult:
    """Run (or resume) pretraining as described by `config`; returns where everything was written.

    With `config.stages` (a whole recipe: the IBQ codebook and / or the text MLM this run depends on), each
    stage is first run, resumed or reused (`retvlp/training/stages.py`) under this run's lock, and its `final/`
    wired into this run's config; `resume`, `stop_after` and `extend` apply to this run itself.

    Args:
        resume: "latest" (newest complete checkpoint in `run.output_dir`, or a fresh start when none) or a
            checkpoint directory.
        extend: allow resuming into a longer run than the checkpoint's (a larger `optim.max_steps` or
            `epochs`); see `check_resume_length`.
        stop_after: stop (without the final save) after this many optimizer steps — for tests of resume.
        evaluation_hooks: the evaluations during and after the run (`run.eval_every`, `run.evaluate`);
            `retvlp.run.pretrain_and_evaluate` passes `retvlp.evaluation.periodic.PretrainingEvaluation()`.
            None: train only. The stages run with the same hooks.
        rerun_stages: stage names (or "all", or "a,b") to train again although their output exists
            (`--rerun-stages`); a stage whose config or data changed is refused without it.

    Raises `RunLockedError` when another live run owns `run.output_dir` (see `run_lock`).
    """
    times = PhaseTimes()
    with run_lock(config.run.output_dir), recording(times):
        if config.stages:
            from .stages import run_stages

            def run_stage(stage_config: PretrainConfig, stage_resume: str | None):
                # an ordinary run in its own folder (and lock); the process group stays up for what follows.
                # Its phases are its own: one line "stage <folder>" in this run's times.
                stage_name = f"stage {Path(stage_config.run.output_dir).name}"
                with (
                    times.measure(stage_name),
                    recording(PhaseTimes()),
                    run_lock(stage_config.run.output_dir),
                ):
                    return _pretrain(
                        stage_config,
                        resume=stage_resume,
                        show_progress=show_progress,
                        stop_after=None,
                        extend=False,
                        hooks=evaluation_hooks,
                        keep_process_group=True,
                    )

            config, trained = run_stages(config, run_stage, rerun=rerun_stages)
            if trained and resume is not None and latest_checkpoint(config.run.output_dir) is not None:
                from .config import ConfigError

                raise ConfigError(
                    f"--resume {resume}: the checkpoints of {config.run.output_dir} were trained over the earlier "
                    f"outputs of stages {trained}, which this call trained again; start this run afresh "
                    "(the same command without --resume): the stages are reused now."
                )
        elif rerun_stages:
            from .config import ConfigError

            raise ConfigError(f"--rerun-stages {rerun_stages}: {config.source} declares no stages.")
        result = _pretrain(
            config,
            resume=resume,
            show_progress=show_progress,
            stop_after=stop_after,
            extend=extend,
            hooks=evaluation_hooks,
        )
    result.times = times
    return result


# ------------------------------------------------------------------------------------------------------------
# Set-up


@dataclass
class _Run:
    """One run's objects, as the loop's functions share them."""

    config: PretrainConfig
    task: PretrainTask
    accelerator: Any
    output_dir: Path
    data: RunData
    processor: Any
    model: torch.nn.Module  # as prepared by accelerate
    unwrapped: torch.nn.Module
    batches: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    total_steps: int
    samples_per_step: int
    lr: float
    trackers: list[str] | None = None
    released: torch.nn.Module = field(init=False)

    def __post_init__(self):
        self.released = released_model(self.unwrapped)

    @property
    def accumulation(self) -> int:
        return self.config.optim.gradient_accumulation_steps


def _pretrain(
    config, *, resume, show_progress, stop_after, extend, hooks, keep_process_group=False
) -> PretrainResult:
    task = build_task(config.model.family)
    task.check_model(config)  # e.g. a pretrained tower against model.config: fails before the data is read
    output_dir = Path(config.run.output_dir)
    with timed("accelerator"):
        accelerator, trackers = _start_accelerator(config, output_dir)
    with timed("data (manifests, classes)"):
        data = _prepare_data(task, config, accelerator, output_dir, hooks, show_progress)
    with timed("model and optimizer"):
        r = _build_training(task, config, data, accelerator, output_dir, trackers)
        guard = _collapse_guard(config, task)
        start_step = _resume(r, resume, extend, guard)
    log = _open_logs(r, start_step)  # None: a fresh start, the log is emptied
    start_step = start_step or 0
    main = accelerator.is_main_process
    phase(
        "%s",
        task.describe_training(
            start_step, r.total_steps, r.samples_per_step, accelerator.num_processes, r.lr
        ),
        enabled=main,
    )
    progress = StepProgress(
        r.total_steps, start_step, task.progress_label, show_bar=show_progress, enabled=main
    )
    evaluator = (hooks or EvaluationHooks()).periodic(
        config,
        task,
        r.processor,
        data.class_names,
        data.evaluation_specs,
        data.held_out,
        accelerator,
        log,
        progress,
        r.total_steps,
    )
    with timed("training steps"):
        step, last_metrics = _train(r, start_step, log, progress, guard, evaluator, stop_after)
    progress.close()
    timed_count("training steps", step - start_step)
    evaluation = _finish(r, step, last_metrics, hooks, show_progress)
    if keep_process_group:  # a stage of a recipe: the next run of this process uses the same process group
        for tracker in accelerator.trackers:
            tracker.finish()
    else:
        accelerator.end_training()
    return PretrainResult(output_dir, output_dir / "final", step, last_metrics, evaluation)


def _start_accelerator(config: PretrainConfig, output_dir: Path):
    from accelerate.utils import is_tensorboard_available

    from ..runtime import fresh_accelerator

    run = config.run
    trackers = ["tensorboard"] if run.tensorboard and is_tensorboard_available() else None
    accelerator = fresh_accelerator(
        mixed_precision=run.mixed_precision, log_with=trackers, project_dir=str(output_dir)
    )
    configure_threads(run.num_threads)
    if run.mixed_precision == "bf16" and accelerator.device.type == "cpu" and not cpu_has_native_bf16():
        logger.warning(
            "run.mixed_precision=bf16 on a CPU without native bf16 matrix units (no AVX512-BF16 / AMX; torch "
            "reports %s): torch runs bf16 matmuls through a scalar fallback, about 50x slower than fp32 on such "
            "a CPU (docs/benchmarks.md). Use run.mixed_precision: no here.",
            torch.backends.cpu.get_cpu_capability(),
        )
    return accelerator, trackers


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 path either
        return False


def _prepare_data(task, config, accelerator, output_dir, hooks, show_progress) -> RunData:
    """The task's data, less what the evaluation hooks hold out (e.g. `run.eval_every` without a test set: a
    patient-disjoint share of the labelled rows leaves training)."""
    main = accelerator.is_main_process
    data = task.prepare_data(config, accelerator, output_dir, show_progress=show_progress)
    if hooks is not None and data.streams is not None:
        data.streams, data.held_out = hooks.hold_out(
            data.streams,
            data.manifests,
            data.class_names,
            config,
            data.evaluation_specs,
            task,
            is_main_process=main,
        )
    if hooks is None and main:
        asked = ["run.eval_every"] if config.run.eval_every is not None else []
        if config.run.evaluate and task.end_of_run_evaluation and data.evaluation_specs.get("test"):
            asked.append("run.evaluate")
        if asked:
            logger.warning(
                "%s: retvlp.training.pretrain trains only; retvlp.run.pretrain_and_evaluate (training/pretrain.py) "
                "runs the evaluations.",
                " and ".join(asked),
            )
    return data


def _build_training(task, config, data: RunData, accelerator, output_dir: Path, trackers) -> _Run:
    """Tokenizer, processor, model, step batches, optimizer and schedule (the model seeded by `run.seed`)."""
    from transformers import get_scheduler

    run, optim = config.run, config.optim
    phase(
        "Building the %s model (%s); rows per stream: %s.",
        config.model.family,
        _weights_source(config.model),
        data.rows_per_stream(),
        enabled=accelerator.is_main_process,
    )
    corpus = task.text_corpus(data.streams, data.class_names, config)
    tokenizer = task.load_tokenizer(config, corpus, output_dir, accelerator)
    processor = task.build_processor(config, tokenizer)
    torch.manual_seed(run.seed)
    model = task.build_model(config, tokenizer)
    batches = task.make_batches(
        data.streams,
        tokenizer,
        data.class_names,
        processor,
        model,
        config,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    total_steps = _total_steps(config, batches)
    batches.length = total_steps * optim.gradient_accumulation_steps
    samples_per_step = batches.samples_per_micro_step() * optim.gradient_accumulation_steps
    lr = task.learning_rate(optim, samples_per_step)
    optimizer = torch.optim.AdamW(
        temperature_group(task.parameter_groups(model, optim.weight_decay), model, lr, optim),
        lr=lr,
        betas=tuple(optim.betas),
        eps=optim.eps,
        **_optimizer_kernel(optim.implementation),
    )
    if run.compile:
        # In place (nn.Module.compile), so that parameter names, state dicts and checkpoints stay those of
        # the eager model; DDP wraps the compiled module.
        model.compile(
            backend=run.compile_backend, mode=None if run.compile_mode == "default" else run.compile_mode
        )
    scheduler = get_scheduler(
        optim.schedule,
        optimizer,
        num_warmup_steps=_warmup_steps(config, total_steps),
        num_training_steps=total_steps,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    if optim.contrastive_accumulation:
        check_supported(task, accelerator, config)
    return _Run(
        config,
        task,
        accelerator,
        output_dir,
        data,
        processor,
        model,
        accelerator.unwrap_model(model),
        batches,
        optimizer,
        scheduler,
        total_steps,
        samples_per_step,
        lr,
        trackers,
    )


def temperature_group(groups: list[dict], model: torch.nn.Module, lr: float, optim) -> list[dict]:
    """Move the contrastive temperature (`logit_scale`, and a sigmoid loss's `logit_bias`) into a group of its own
    at `optim.logit_scale_lr_multiplier` × lr (no weight decay). With the multiplier at 1 the groups are returned
    unchanged. The schedule scales every group alike."""
    multiplier = optim.logit_scale_lr_multiplier
    if multiplier == 1.0:
        return groups
    chosen = [
        p
        for n, p in model.named_parameters()
        if p.requires_grad and n.endswith(("logit_scale", "logit_bias"))
    ]
    if not chosen:
        return groups
    ids = {id(p) for p in chosen}
    groups = [{**group, "params": [p for p in group["params"] if id(p) not in ids]} for group in groups]
    return [group for group in groups if group["params"]] + [
        {"params": chosen, "weight_decay": 0.0, "lr": lr * multiplier}
    ]


def _optimizer_kernel(implementation: str) -> dict:
    """AdamW keyword arguments for `optim.implementation`."""
    return {
        "fused": {"fused": True},
        "foreach": {"foreach": True},
        "for-loop": {"foreach": False, "fused": False},
    }[implementation]


def _total_steps(config: PretrainConfig, batches) -> int:
    o = config.optim
    if o.max_steps is not None:
        return int(o.max_steps)
    # One epoch = every row of every stream (every passage of a corpus) seen at least once.
    return max(1, math.ceil(o.epochs * batches.micro_steps_per_epoch() / o.gradient_accumulation_steps))


def _warmup_steps(config: PretrainConfig, total: int) -> int:
    """The warm-up of a run of `total` optimizer steps. One at least as long as the run is refused, not clipped
    (`warmup_too_long_message`); with optim.max_steps and optim.warmup_steps both set, the config check has
    refused it already, the other cases are known only now."""
    o = config.optim
    if o.warmup_steps is not None:
        if o.warmup_steps >= total:
            raise ConfigError(
                f"{config.source}: "
                + warmup_too_long_message(
                    "optim.warmup_steps",
                    o.warmup_steps,
                    "the run's optimizer steps",
                    total,
                    f"the run's {total} optimizer steps (optim.epochs={o.epochs:g})",
                )
            )
        return int(o.warmup_steps)
    if o.epochs:
        if o.warmup_epochs > 0 and o.warmup_epochs >= o.epochs:
            raise ConfigError(
                f"{config.source}: "
                + warmup_too_long_message("optim.warmup_epochs", o.warmup_epochs, "optim.epochs", o.epochs)
            )
        return min(total - 1, round(total * o.warmup_epochs / o.epochs)) if total > 1 else 0
    return 0


def _collapse_guard(config: PretrainConfig, task: PretrainTask) -> CollapseGuard:
    run = config.run
    return CollapseGuard(
        action=run.collapse_guard,
        window=run.collapse_window,
        cosine_threshold=run.collapse_cosine,
        loss_margin=run.collapse_loss_margin,
        grace_steps=run.collapse_grace_steps,
        knobs=task.collapse_knobs,
    )


def _resume(r: _Run, resume: str | None, extend: bool, guard: CollapseGuard) -> int | None:
    """Load the checkpoint `resume` names into the run; its step, or None for a fresh start."""
    unreadable: dict[Path, str] = {}
    checkpoint = resolve_resume(resume, r.output_dir)
    while True:
        if checkpoint is None:
            return None
        try:
            state = load_checkpoint(r.accelerator, checkpoint)
            break
        except CheckpointError as error:
            if resume != "latest":
                raise
            # passed its checksums, failed to load: `latest` falls back as for a corrupt one (all of it is
            # loaded again from the earlier checkpoint, so nothing of the failed one stays)
            cause = error.__cause__
            unreadable[checkpoint] = describe_load_error(cause) if cause else str(error)
            checkpoint = resolve_resume(resume, r.output_dir, unreadable)
    r.task.check_resume(checkpoint, state)
    r.batches.check_resume_state(checkpoint, state)
    check_resume_length(checkpoint, state, r.total_steps, extend=extend)
    r.scheduler.load_state_dict(state["scheduler"])
    guard.load_state_dict(state.get("collapse_guard", {}))
    if r.accelerator.is_main_process:
        logger.info("Resumed from %s at step %d", checkpoint, int(state["step"]))
    return int(state["step"])


def _open_logs(r: _Run, resume_step: int | None) -> JsonlLog:
    main = r.accelerator.is_main_process
    log = JsonlLog(r.output_dir / "logs.jsonl", resume_step, main)
    if r.trackers:
        r.accelerator.init_trackers(
            r.task.tracker_project,
            config={"total_steps": r.total_steps, "lr": r.lr, "world_size": r.accelerator.num_processes},
        )
    if main:
        (r.output_dir / "run_config.yaml").write_text(_to_yaml(r.config))
    return log


# ------------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Window:
    """The loss terms and samples summed since the last log step."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counted: int = 0
    samples: int = 0
    start: float = field(default_factory=time.perf_counter)


def _train(r: _Run, start_step: int, log, progress, guard, evaluator, stop_after) -> tuple[int, dict]:
    """Optimizer steps `start_step + 1 ...` up to the last (or `stop_after`); the step reached and the last
    log entry. A preemption signal (`preemption.py`) ends the loop after the step in progress with a checkpoint
    and `PreemptedError`.

    The loop reads from the device once per optimizer step: one flag vector (a non-finite loss, a non-finite
    gradient norm, a preemption signal on any process; one collective with several processes), checked before
    `optimizer.step()` so that nothing non-finite is ever applied. Loss values are read on log steps only."""
    run, accumulation = r.config.run, r.accumulation
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(r.batches, range(start_step * accumulation, r.total_steps * accumulation)),
        batch_size=None,
        num_workers=r.config.data.num_workers,
        persistent_workers=False,
        prefetch_factor=2 if r.config.data.num_workers else None,
    )
    r.model.train()
    last_metrics: dict[str, Any] = {}
    window = _Window()
    step, micro = start_step, start_step * accumulation
    batch_iter = iter(loader)
    if r.accelerator.is_main_process:
        clear_marker(r.output_dir)
    with PreemptionWatch() as watch:
        while step < r.total_steps:
            log_step = (step + 1) % run.log_every == 0 or step + 1 == r.total_steps
            micro_terms: list[dict] = []
            contrastive = _accumulate(r, batch_iter, step, micro, window, log_step, micro_terms)
            micro += accumulation
            grad_norm, preempted = _clip_and_check(r, step, micro_terms, watch)
            preempted = preempted and step + 1 < r.total_steps  # the last step: finish the run instead
            r.optimizer.step()
            r.scheduler.step()
            r.optimizer.zero_grad(set_to_none=True)
            r.task.after_optimizer_step(r.unwrapped)
            step += 1
            window.samples += r.samples_per_step
            progress.update(1)
            if log_step:
                last_metrics = _log_step(r, step, micro, window, grad_norm, guard, contrastive, log, progress)
                window = _Window()
            saved = step % run.save_every == 0 or step == r.total_steps
            if saved or preempted:
                with timed("checkpoints"):
                    _save(r, step, micro, guard)
            if preempted:
                _stop_preempted(r, step, watch.signal_name or "a preemption signal on another process")
            if evaluator is not None:
                with timed("evaluation during training"):
                    evaluator.maybe_run(step, r.released)
            if stop_after is not None and step >= stop_after:
                break
    return step, last_metrics


def _stop_preempted(r: _Run, step: int, signal_name: str):
    checkpoint = r.output_dir / f"checkpoint-{step}"
    if r.accelerator.is_main_process:
        write_marker(r.output_dir, step, checkpoint, signal_name)
        logger.warning(
            "%s: checkpoint-%d written; stopping (resume with --resume latest).", signal_name, step
        )
    r.accelerator.wait_for_everyone()
    raise PreemptedError(step, checkpoint, signal_name)


def _accumulate(
    r: _Run, batch_iter, step: int, micro: int, window: _Window, log_step: bool, micro_terms: list
) -> list:
    """The micro-steps of one optimizer step: forward, backward of `loss / accumulation`; each micro-batch's
    detached terms go to `micro_terms` (checked once, before the update: `_clip_and_check`). Returns the
    contrastive terms of the last micro-batch on a log step (for the collapse guard), else []. With
    `optim.contrastive_accumulation`, the contrastive terms span the whole accumulated batch instead."""
    accelerator, task, accumulation = r.accelerator, r.task, r.accumulation
    if r.config.optim.contrastive_accumulation and accumulation > 1:
        return _accumulate_contrastive(r, batch_iter, step, micro, window, log_step, micro_terms)
    contrastive = []
    for k in range(accumulation):
        batch = next(batch_iter)
        torch.manual_seed(seed_from(r.config.run.seed, micro + k, accelerator.process_index))
        sync = k == accumulation - 1
        with accelerator.no_sync(r.model) if not sync else nullcontext():
            terms, outputs = task.training_forward(r.model, batch, accelerator.device)
            if sync and log_step:
                # The guard looks at the last micro-batch of each log step (gathered: collective).
                contrastive = task.contrastive_terms(outputs, batch, accelerator)
            accelerator.backward(terms["loss"] / accumulation)
        detached = {name: value.detach() for name, value in terms.items()}
        micro_terms.append(detached)
        for name, value in detached.items():
            window.sums[name] = window.sums.get(name, 0) + value.float()
        window.counted += 1
    return contrastive


def _accumulate_contrastive(
    r: _Run, batch_iter, step, micro, window: _Window, log_step: bool, micro_terms: list
) -> list:
    """`_accumulate` with every contrastive term over the accumulated (and gathered) batch
    (`contrastive_accumulation.py`); the logged contrastive terms and the collapse guard's embeddings are the
    full batch's."""
    accelerator = r.accelerator
    batches = [next(batch_iter) for _ in range(r.accumulation)]
    seeds = [
        seed_from(r.config.run.seed, micro + k, accelerator.process_index) for k in range(r.accumulation)
    ]
    result = contrastive_accumulation_step(
        r.model, r.task, batches, seeds, accelerator, check=micro_terms.append, guard=log_step
    )
    for terms in result.micro_terms:
        for name, value in terms.items():
            window.sums[name] = window.sums.get(name, 0) + value.float()
        window.counted += 1
    return result.contrastive


def _clip_and_check(r: _Run, step: int, micro_terms: list[dict], watch: PreemptionWatch):
    """Clip to `optim.max_grad_norm` (or only measure the norm) and read the step's flags from the device in
    one go; raises `NonFiniteLossError` before anything is applied when a loss or the gradient is NaN / Inf
    on any process. Returns (the clipped norm or None, whether a preemption signal reached any process)."""
    accelerator, parameters = r.accelerator, r.model.parameters()
    max_norm = r.config.optim.max_grad_norm
    # Without clipping the gradients are still checked before the update: an infinite max_norm gives the total
    # norm and scales by exactly 1 (nothing changes), so a NaN / Inf gradient stops the run before
    # optimizer.step() applies it.
    norm = accelerator.clip_grad_norm_(parameters, max_norm if max_norm else float("inf"))
    device = norm.device if isinstance(norm, torch.Tensor) else accelerator.device
    losses = torch.stack([terms["loss"].float().reshape(()) for terms in micro_terms]).to(device)
    flags = torch.stack(
        [
            (~torch.isfinite(losses)).any().float(),
            (~torch.isfinite(torch.as_tensor(norm, device=device).float())).float(),
            torch.tensor(float(watch.requested), device=device),
        ]
    )
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, "sum")
    nonfinite_loss, nonfinite_grad, preempted = flags.tolist()  # the step's one read from the device
    if nonfinite_loss or nonfinite_grad:
        if nonfinite_loss:
            shown = next(
                (t for t in micro_terms if not torch.isfinite(t["loss"]).all()), micro_terms[-1]
            )  # this process's bad micro-batch, or (the NaN was elsewhere) its last one
        else:
            shown = {"grad_norm": norm}
        _raise_nonfinite(r, step, shown)
    return (norm if max_norm else None), preempted > 0


def _raise_nonfinite(r: _Run, step: int, terms: dict) -> None:
    shown = {k: float(torch.as_tensor(v).detach().float().mean()) for k, v in terms.items()}
    last = latest_checkpoint(r.output_dir)
    raise NonFiniteLossError(
        f"Non-finite value at optimizer step {step + 1}: {shown}. Nothing was applied; the last good "
        f"checkpoint is {last or '(none yet)'}. Lower the learning rate, check the data, or try "
        "run.mixed_precision=no; then resume with --resume latest."
    )


def _log_step(r: _Run, step, micro, window: _Window, grad_norm, guard, contrastive, log, progress) -> dict:
    """One `logs.jsonl` line (and TensorBoard, the progress bar): the window's mean terms over processes."""
    accelerator = r.accelerator
    means = {
        name: accelerator.reduce(total / window.counted, "mean").item() for name, total in window.sums.items()
    }
    elapsed = time.perf_counter() - window.start
    entry = {
        "step": step,
        **r.batches.log_epochs(micro),
        **{name: round(v, 6) for name, v in means.items()},
        "lr": r.scheduler.get_last_lr()[0],
        **r.task.log_values(r.unwrapped),
        "samples_per_s": round(window.samples / elapsed, 2),
    }
    if grad_norm is not None:
        entry["grad_norm"] = round(float(grad_norm), 6)
    try:
        entry.update(guard.update(step, contrastive))
    except ContrastiveCollapseError as error:
        log.write({**entry, **error.figures})  # the figures that stopped the run stay in the log
        raise
    log.write(entry)
    if r.trackers:
        accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=step)
    progress.log_step(entry)
    return entry


def _save(r: _Run, step: int, micro: int, guard: CollapseGuard) -> None:
    state = {
        "step": step,
        "micro_step": micro,
        "total_steps": r.total_steps,
        **r.batches.state_epochs(micro),
        **r.task.checkpoint_fields(),
        "scheduler": r.scheduler.state_dict(),
        "world_size": r.accelerator.num_processes,
        "skipped_samples": len(r.data.report.bad_records),
        "collapse_guard": guard.state_dict(),
        "config": r.config.to_dict(),
    }
    save_checkpoint(
        r.accelerator,
        r.output_dir,
        step,
        state,
        keep=r.config.run.keep_checkpoints,
        models=[r.unwrapped],
        optimizers=[r.optimizer],
    )


# ------------------------------------------------------------------------------------------------------------
# The end of the run


def _finish(r: _Run, step: int, last_metrics: dict, hooks, show_progress: bool) -> dict | None:
    """After the last step: `final/` (the released model, the processor, `training_summary.json`) and the
    end-of-run evaluation of the hooks (`final/eval_results.json`); nothing after a `stop_after` stop."""
    if step != r.total_steps:
        return None
    accelerator, task, data = r.accelerator, r.task, r.data
    final_dir = r.output_dir / "final"
    evaluation = None
    accelerator.wait_for_everyone()
    full_state = accelerator.get_state_dict(r.model)  # collective: gathers FSDP / DeepSpeed shards
    main = accelerator.is_main_process
    if main:
        with timed("final model"):
            _save_final(r, step, last_metrics, final_dir, full_state)
    wanted = r.config.run.evaluate and task.end_of_run_evaluation and data.evaluation_specs.get("test")
    if hooks is not None and main and wanted:
        with timed("evaluation"):
            evaluation = hooks.final(
                r.released,
                r.processor,
                data.evaluation_specs,
                r.config,
                data.class_names,
                task,
                show_progress=show_progress,
            )
        if evaluation is not None:
            (final_dir / "eval_results.json").write_text(json.dumps(evaluation, indent=2))
    accelerator.wait_for_everyone()
    return evaluation


def _save_final(r: _Run, step: int, last_metrics: dict, final_dir: Path, full_state: dict) -> None:
    """final/ holds the released model (+ processor and `training_summary.json`); the training checkpoints keep
    everything."""
    r.released.save_pretrained(final_dir, state_dict=released_state_dict(r.unwrapped, full_state))
    if r.processor is not None:
        r.processor.save_pretrained(final_dir)
    summary = r.task.training_summary(
        steps=step,
        last_metrics=last_metrics,
        data=r.data,
        world_size=r.accelerator.num_processes,
        model=r.unwrapped,
        batches=r.batches,
        config=r.config,
    )
    (final_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))


def released_state_dict(model: torch.nn.Module, state_dict: dict) -> dict:
    """The released model's part of a pretraining model's (gathered) state dict, with its own key names."""
    if released_model(model) is model:
        return state_dict
    prefix = model.base_model_prefix + "."
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


# ------------------------------------------------------------------------------------------------------------
# Helpers


def _weights_source(model_section) -> str:
    """Where a run's initial weights come from, for the start-up line."""
    sources = {
        name: getattr(model_section, name, None)
        for name in ("pretrained", "vision_pretrained", "text_pretrained")
    }
    given = [f"{name} {value}" for name, value in sources.items() if value]
    return ", ".join(given) if given else "new weights"


def configure_threads(num_threads: int | None) -> None:
    """torch's intra-op threads: `run.num_threads` when set; else OMP_NUM_THREADS when the user set it; else the
    cores shared among this machine's processes.

    `accelerate launch` without `--cpu` or `--num_cpu_threads_per_process` puts OMP_NUM_THREADS=1 into its
    workers' environment whatever the machine: the README's demo trained on one of two cores (0.85 s a step
    instead of 0.63 s). That default is told from a user's own setting by the launcher's environment."""
    if num_threads:
        torch.set_num_threads(num_threads)
        return
    if "OMP_NUM_THREADS" in os.environ and not omp_threads_from_accelerate_default():
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = max(1, (os.cpu_count() or 1) // local)
    if threads != torch.get_num_threads():
        logger.info(
            "Using %d CPU threads per process (%d cores, %d process(es) here); set run.num_threads or "
            "OMP_NUM_THREADS to choose.",
            threads,
            os.cpu_count() or 1,
            local,
        )
    torch.set_num_threads(threads)


def omp_threads_from_accelerate_default() -> bool:
    """Whether OMP_NUM_THREADS=1 here is `accelerate launch`'s default rather than the user's: the worker runs
    under accelerate (its ACCELERATE_* variables) and its launcher was started without OMP_NUM_THREADS. Linux
    shows the launcher's environment in /proc; elsewhere (or unreadable) the setting is respected."""
    if os.environ.get("OMP_NUM_THREADS") != "1" or "ACCELERATE_MIXED_PRECISION" not in os.environ:
        return False
    try:
        launcher = Path(f"/proc/{os.getppid()}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return not any(entry.startswith(b"OMP_NUM_THREADS=") for entry in launcher)


def _to_yaml(config: PretrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


__all__ = ["NonFiniteLossError", "PreemptedError", "PretrainResult", "build_task", "pretrain"]
