"""The pretraining loop behind `accelerate launch training/pretrain.py`.

One optimizer step = `gradient_accumulation_steps` micro-steps; micro-step `i` reads batch `i` of
`StepBatches` (rows, crops, masks all drawn from `(seed, i)`), and the torch RNG (dropout) is re-seeded
from `(seed, i, rank)` before its forward. A run is therefore a pure function of the config and the
step counter: a resumed run continues exactly where the straight run would be.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.manifest import with_root_options
from ..data.synthetic import generate_synthetic_dataset
from .checkpointing import check_resume_length, load_checkpoint, resolve_resume, save_checkpoint
from .collapse import CollapseGuard, ContrastiveCollapseError
from .config import PretrainConfig
from .data import StepBatches, discover_classes, prepare_streams, read_training_manifests
from .periodic_eval import PeriodicEvaluator, hold_out_eval_rows
from .progress import StepProgress, phase
from .run_lock import run_lock
from .task import PretrainTask, released_model

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


def _seed_from(*values: int) -> int:
    return int(np.random.SeedSequence(list(values)).generate_state(1, dtype=np.uint64)[0] % (2**63))


def synthetic_manifest_specs(config: PretrainConfig) -> tuple[list[dict], dict]:
    """Generate (or reuse) the procedural demo data and return its training manifests + evaluation specs."""
    options = dict(config.data.synthetic or {})
    root = options.pop("output_dir", None) or str(
        Path(config.data.cache_dir or "outputs/cache") / "synthetic"
    )
    dataset = generate_synthetic_dataset(root, **options)
    train = [
        {"path": str(dataset.paired)},
        {"path": str(dataset.categorical)},
        {"path": str(dataset.unpaired)},
    ]
    evaluation = {
        "probe_train": [{"path": str(dataset.paired)}, {"path": str(dataset.categorical)}],
        "test": [{"path": str(dataset.test)}],
        "classes": list(dataset.classes),
    }
    return train, evaluation


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


def _total_steps(config: PretrainConfig, batches: StepBatches) -> int:
    o = config.optim
    if o.max_steps is not None:
        return int(o.max_steps)
    # One epoch = every row of every stream seen at least once.
    micro_per_epoch = max(
        math.ceil(len(batches.streams[name]) / sampler.global_batch_size)
        for name, sampler in batches.samplers.items()
    )
    return max(1, math.ceil(o.epochs * micro_per_epoch / o.gradient_accumulation_steps))


def _warmup_steps(config: PretrainConfig, total: int) -> int:
    o = config.optim
    if o.warmup_steps is not None:
        return min(int(o.warmup_steps), total)
    if o.epochs:
        return min(total, round(total * o.warmup_epochs / o.epochs))
    return 0


def get_task(family: str) -> PretrainTask:
    """The `PretrainTask` of a model family (`model.family`)."""
    if family == "maskedclip":
        from .maskedclip_task import MaskedCLIPTask

        return MaskedCLIPTask()
    if family == "keepfit":
        from .keepfit_task import KeepFitTask

        return KeepFitTask()
    if family == "ibq-tokenizer":
        from .ibq_task import IBQTokenizerTask

        return IBQTokenizerTask()
    raise ValueError(f"No image pretraining task for model.family={family!r} (text-mlm has its own loop).")


def pretrain(
    config: PretrainConfig,
    *,
    resume: str | None = None,
    show_progress: bool = True,
    stop_after: int | None = None,
    extend: bool = False,
) -> PretrainResult:
    """Run (or resume) pretraining as described by `config`; returns where everything was written.

    Args:
        resume: "latest" (newest complete checkpoint in `run.output_dir`, or a fresh start when none) or a
            checkpoint directory.
        extend: allow resuming into a longer run than the checkpoint's (a larger `optim.max_steps` or
            `epochs`); see `check_resume_length`.
        stop_after: stop (without the final save) after this many optimizer steps — for tests of resume.

    Raises `RunLockedError` when another live run owns `run.output_dir` (see `run_lock`).
    """
    with run_lock(config.run.output_dir):
        if config.model.family == "text-mlm":
            from .text_mlm import pretrain_text_mlm

            return pretrain_text_mlm(
                config, resume=resume, show_progress=show_progress, stop_after=stop_after, extend=extend
            )
        return _pretrain(
            config, resume=resume, show_progress=show_progress, stop_after=stop_after, extend=extend
        )


def _pretrain(
    config: PretrainConfig,
    *,
    resume: str | None,
    show_progress: bool,
    stop_after: int | None,
    extend: bool = False,
) -> PretrainResult:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import is_tensorboard_available
    from transformers import get_scheduler

    task = get_task(config.model.family)
    run, data, optim = config.run, config.data, config.optim
    output_dir = Path(run.output_dir)
    trackers = ["tensorboard"] if run.tensorboard and is_tensorboard_available() else None
    # accelerate keeps one process-wide state and refuses a second Accelerator with other settings (e.g. a
    # bf16 run after an fp32 one in the same notebook); forget the previous run's, keep the process group.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        mixed_precision=run.mixed_precision, log_with=trackers, project_dir=str(output_dir)
    )
    configure_threads(run.num_threads)
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes

    # ---------------------------------------------------------------- data
    train_specs, evaluation_specs = list(data.train), dict(run.evaluation)
    if data.synthetic is not None:
        synthetic_train, synthetic_eval = _main_process_first(accelerator, synthetic_manifest_specs, config)
        train_specs = synthetic_train + train_specs
        evaluation_specs = {**synthetic_eval, **evaluation_specs}
    evaluation_specs = _with_run_roots(evaluation_specs, data)
    manifests = read_training_manifests(
        train_specs, allowed_roots=data.allowed_roots, allow_outside_data_roots=data.allow_outside_data_roots
    )
    class_names = discover_classes(manifests, data.classes)
    phase(
        "Validating and caching %d images of %d manifest(s) (%s; a first run decodes every image, later ones "
        "reuse the cache).",
        sum(len(m.records) for m in manifests),
        len(manifests),
        data.cache_dir or "outputs/cache",
        enabled=main,
    )
    streams, report = _main_process_first(
        accelerator,
        prepare_streams,
        manifests,
        data,
        class_names,
        output_dir,
        routing=task.routing,
        required=task.required_streams,
        is_main_process=main,
        show_progress=show_progress and main,
    )
    # run.eval_every without a test set: a patient-disjoint share of the labelled rows leaves training.
    streams, held_out = hold_out_eval_rows(
        streams, manifests, class_names, config, evaluation_specs, task, is_main_process=main
    )

    # ---------------------------------------------------------------- model
    phase(
        "Building the %s model (%s); rows per stream: %s.",
        config.model.family,
        _weights_source(config.model),
        {name: len(stream) for name, stream in streams.items()},
        enabled=main,
    )
    corpus = task.text_corpus(streams, class_names, config)
    tokenizer = task.load_tokenizer(config, corpus, output_dir, accelerator)
    processor = task.build_processor(config, tokenizer)
    torch.manual_seed(run.seed)
    model = task.build_model(config, tokenizer)
    batches = task.make_batches(
        streams, tokenizer, class_names, processor, model, config, rank=rank, world_size=world
    )
    total_steps = _total_steps(config, batches)
    accumulation = optim.gradient_accumulation_steps
    batches.length = total_steps * accumulation
    images_per_step = batches.images_per_micro_step() * accumulation
    lr = optim.lr if optim.lr is not None else optim.base_lr * images_per_step / 256

    optimizer = torch.optim.AdamW(
        task.parameter_groups(model, optim.weight_decay), lr=lr, betas=tuple(optim.betas), eps=optim.eps
    )
    scheduler = get_scheduler(
        optim.schedule,
        optimizer,
        num_warmup_steps=_warmup_steps(config, total_steps),
        num_training_steps=total_steps,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    released = released_model(unwrapped)

    # ---------------------------------------------------------------- resume
    start_step = 0
    checkpoint = resolve_resume(resume, output_dir)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint)
        check_resume_length(checkpoint, state, total_steps, extend=extend)
        start_step = int(state["step"])
        scheduler.load_state_dict(state["scheduler"])
        if main:
            logger.info("Resumed from %s at step %d", checkpoint, start_step)
    log = JsonlLog(output_dir / "logs.jsonl", start_step if checkpoint else None, main)
    if trackers:
        accelerator.init_trackers(
            "pretrain", config={"total_steps": total_steps, "lr": lr, "world_size": world}
        )
    if main:
        (output_dir / "run_config.yaml").write_text(_to_yaml(config))

    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(batches, range(start_step * accumulation, total_steps * accumulation)),
        batch_size=None,
        num_workers=data.num_workers,
        persistent_workers=False,
        prefetch_factor=2 if data.num_workers else None,
    )
    phase(
        "Training steps %d-%d of %d: %d images per step on %d process(es), lr %.2e.",
        start_step + 1,
        total_steps,
        total_steps,
        images_per_step,
        world,
        lr,
        enabled=main,
    )
    progress = StepProgress(total_steps, start_step, "pretrain", show_bar=show_progress, enabled=main)

    guard = CollapseGuard(
        action=run.collapse_guard,
        window=run.collapse_window,
        cosine_threshold=run.collapse_cosine,
        loss_margin=run.collapse_loss_margin,
        grace_steps=run.collapse_grace_steps,
        knobs=task.collapse_knobs,
    )
    if checkpoint is not None:
        guard.load_state_dict(state.get("collapse_guard", {}))
    contrastive = []
    periodic_eval = PeriodicEvaluator(
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
    )
    model.train()
    last_metrics: dict[str, float] = {}
    sums: dict[str, torch.Tensor] = {}
    window_start, window_images, counted = time.perf_counter(), 0, 0
    step = start_step
    micro = start_step * accumulation
    batch_iter = iter(loader)
    while step < total_steps:
        for k in range(accumulation):
            batch = next(batch_iter)
            torch.manual_seed(_seed_from(run.seed, micro, rank))
            sync = k == accumulation - 1
            with accelerator.no_sync(model) if not sync else nullcontext():
                outputs = model(**batch, **task.forward_kwargs)
                terms = task.outputs_to_terms(outputs)
                if sync and ((step + 1) % run.log_every == 0 or step + 1 == total_steps):
                    # The guard looks at the last micro-batch of each log step (gathered: collective).
                    contrastive = task.contrastive_terms(outputs, batch, accelerator)
                _stop_if_nonfinite(accelerator, terms["loss"], step, terms, output_dir)
                accelerator.backward(terms["loss"] / accumulation)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0) + value.detach().float()
            counted += 1
            micro += 1
        grad_norm = None
        if optim.max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
            _stop_if_nonfinite(accelerator, grad_norm, step, {"grad_norm": grad_norm}, output_dir)
        else:
            # Without clipping the gradients are still checked before the update: an infinite max_norm gives the
            # total norm and scales by exactly 1 (nothing changes), so a NaN / Inf gradient stops the run before
            # optimizer.step() applies it.
            unclipped = accelerator.clip_grad_norm_(model.parameters(), float("inf"))
            _stop_if_nonfinite(accelerator, unclipped, step, {"grad_norm": unclipped}, output_dir)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        task.after_optimizer_step(unwrapped)
        step += 1
        window_images += images_per_step
        progress.update(1)

        if step % run.log_every == 0 or step == total_steps:
            means = {name: accelerator.reduce(total / counted, "mean").item() for name, total in sums.items()}
            elapsed = time.perf_counter() - window_start
            epochs = batches.epochs(micro)
            entry = {
                "step": step,
                # one epoch = every row of every stream seen once (docs/training.md): the slowest stream's passes
                "epoch": round(min(epochs.values()), 4),
                **{f"epoch_{name}": round(value, 4) for name, value in epochs.items()},
                **{name: round(v, 6) for name, v in means.items()},
                "lr": scheduler.get_last_lr()[0],
                **task.log_values(unwrapped),
                "samples_per_s": round(window_images / elapsed, 2),
            }
            if grad_norm is not None:
                entry["grad_norm"] = round(float(grad_norm), 6)
            try:
                entry.update(guard.update(step, contrastive))
            except ContrastiveCollapseError as error:
                log.write({**entry, **error.figures})  # the figures that stopped the run stay in the log
                raise
            log.write(entry)
            if trackers:
                accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=step)
            progress.log_step(entry)
            last_metrics = entry
            sums, counted, window_images, window_start = {}, 0, 0, time.perf_counter()

        if step % run.save_every == 0 or step == total_steps:
            state = {
                "step": step,
                "micro_step": micro,
                "total_steps": total_steps,
                "epochs": batches.epochs(micro),
                "scheduler": scheduler.state_dict(),
                "world_size": world,
                "skipped_samples": len(report.bad_records),
                "collapse_guard": guard.state_dict(),
                "config": config.to_dict(),
            }
            save_checkpoint(
                accelerator,
                output_dir,
                step,
                state,
                keep=run.keep_checkpoints,
                models=[unwrapped],
                optimizers=[optimizer],
            )
        periodic_eval.maybe_run(step, released)
        if stop_after is not None and step >= stop_after:
            break
    progress.close()

    final_dir = output_dir / "final"
    evaluation = None
    if step == total_steps:
        accelerator.wait_for_everyone()
        full_state = accelerator.get_state_dict(model)  # collective: gathers FSDP / DeepSpeed shards
        if main:
            # final/ holds the released model (+ processor); the training checkpoints keep everything.
            released.save_pretrained(final_dir, state_dict=released_state_dict(unwrapped, full_state))
            if processor is not None:
                processor.save_pretrained(final_dir)
            summary = {
                "steps": step,
                "last_metrics": last_metrics,
                "classes": class_names,
                "skipped_samples": len(report.bad_records),
                "data_warnings": len(report.warnings),
                "unused_rows_by_role": report.unused_roles,
                "world_size": world,
            }
            (final_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
        if run.evaluate and main and evaluation_specs.get("test"):
            evaluation = task.evaluate(
                released, processor, evaluation_specs, config, class_names, show_progress=show_progress
            )
            if evaluation is not None:
                (final_dir / "eval_results.json").write_text(json.dumps(evaluation, indent=2))
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return PretrainResult(output_dir, final_dir, step, last_metrics, evaluation)


def released_state_dict(model: torch.nn.Module, state_dict: dict) -> dict:
    """The released model's part of a pretraining model's (gathered) state dict, with its own key names."""
    if released_model(model) is model:
        return state_dict
    prefix = model.base_model_prefix + "."
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _with_run_roots(evaluation_specs: dict, data) -> dict:
    """`run.evaluation` with the run's `data.allowed_roots` / `allow_outside_data_roots` added to each manifest
    spec (`test`, `probe_train`: one spec or a list), so evaluation data obey the same containment."""

    def add(spec):
        return with_root_options(spec, data.allowed_roots, data.allow_outside_data_roots)

    out = dict(evaluation_specs)
    for side in ("test", "probe_train"):
        specs = out.get(side)
        if isinstance(specs, dict):
            out[side] = add(specs)
        elif isinstance(specs, (list, tuple)):
            out[side] = [add(spec) if isinstance(spec, dict) else spec for spec in specs]
    return out


def _weights_source(model_section) -> str:
    """Where a run's initial weights come from, for the start-up line."""
    sources = {
        name: getattr(model_section, name, None)
        for name in ("pretrained", "vision_pretrained", "text_pretrained")
    }
    given = [f"{name} {value}" for name, value in sources.items() if value]
    return ", ".join(given) if given else "new weights"


def configure_threads(num_threads: int | None) -> None:
    if num_threads:
        torch.set_num_threads(num_threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        # accelerate launch sets OMP_NUM_THREADS=1 for several processes unless asked; share the cores.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def _main_process_first(accelerator, function, *args, **kwargs):
    """Run `function` on the main process first (it builds shared caches), then on the others.

    An exception on the main process is re-raised only after the barrier, so the other processes are
    released, run the same deterministic step, meet the same error and stop too instead of waiting forever.
    """
    error = result = None
    with accelerator.main_process_first():
        try:
            result = function(*args, **kwargs)
        except Exception as caught:  # noqa: BLE001 - re-raised below, after the barrier
            if not accelerator.is_main_process or accelerator.num_processes == 1:
                raise
            error = caught
    if error is not None:
        raise error
    return result


def _stop_if_nonfinite(accelerator, value: torch.Tensor, step: int, terms: dict, output_dir: Path) -> None:
    """Stop every process together when any of them sees a NaN/Inf (before anything is applied)."""
    bad = torch.tensor(0.0 if torch.isfinite(value.detach()).all() else 1.0, device=value.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    if bad.item() > 0:
        from .checkpointing import latest_checkpoint

        shown = {k: float(v.detach().float().mean()) for k, v in terms.items()}
        last = latest_checkpoint(output_dir)
        raise NonFiniteLossError(
            f"Non-finite value at optimizer step {step + 1}: {shown}. Nothing was applied; the last good "
            f"checkpoint is {last or '(none yet)'}. Lower the learning rate, check the data, or try "
            "run.mixed_precision=no; then resume with --resume latest."
        )


def _to_yaml(config: PretrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


__all__ = ["NonFiniteLossError", "PretrainResult", "pretrain"]
