"""Evaluation during pretraining: every `run.eval_every` optimizer steps (and at the last one), zero-shot and
a linear probe on held-out images, logged like the loss lines (`logs.jsonl`, TensorBoard, the progress bar);
and the end-of-run check (`run.evaluate`). [`PretrainingEvaluation`] hands both to the training loop as its
`EvaluationHooks` (`retvlp.run.pretrain_and_evaluate`).

The held-out data is fixed for the whole run:

- `run.evaluation` (or the synthetic demo's split) when it names a `test` set: the probe is fitted on its
  `probe_train` and scored on `test`; without `probe_train`, `test` is split in two by patient.
- otherwise a patient-disjoint share `run.eval_holdout_fraction` of the run's own single-label rows
  ([`hold_out_eval_rows`], before the tokenizer and the step batches see the streams): every row of those
  patients, labelled or not, leaves the training streams, and their single-label rows are the test set. The
  probe is fitted on the single-label rows that stay in training: a second split of a small held-out share
  would leave the probe a handful of images per class, and a probe fitted on training images and scored on
  unseen patients is still an honest figure (the test images are never trained on).

Each side is capped at `run.eval_max_images` images, drawn once (seeded). An evaluation runs on the main process
in eval mode under `torch.inference_mode`, with features recomputed every time (the weights change between
calls, so nothing is cached), then restores train mode; the other processes wait at a barrier. It draws nothing
from the training's random streams (rows, crops and dropout are seeded per micro-step), so the weights of a run
do not depend on `eval_every` — except through the held-out rows, which are a function of the seed only.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..training.data import Stream
from ..training.hooks import EvaluationHooks
from .data import ImageStore, normalization_of
from .features import class_prototypes, extract_image_features, has_text_tower, logit_scale_of
from .linear_probe import linear_probe_probabilities
from .metrics import classification_metrics
from .quick import cached_labelled_records, evaluate_pretrained
from .splits import group_stratified_split
from .zero_shot import zero_shot_probabilities

logger = logging.getLogger(__name__)

METRICS = ("accuracy", "balanced_accuracy", "roc_auc")
# Mixed into run.seed so that the hold-out, the split of a test-only evaluation and the caps share no draws.
_HOLDOUT_STREAM, _SPLIT_STREAM, _CAP_STREAM = 0xE7A1_0001, 0xE7A1_0002, 0xE7A1_0003


@dataclass
class EvalSplit:
    """One side of the periodic evaluation: image `i` is row `store.rows[i]` of `store.cached`.

    Attributes:
        store: the cached uint8 pixels of the `N` images.
        targets: `(N,)` int64 class ids.
        groups: `(N,)` patient ids (`image:<path>` for a row without one).
    """

    store: ImageStore
    targets: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, keep: np.ndarray) -> EvalSplit:
        return EvalSplit(self.store.narrowed(keep), self.targets[keep], self.groups[keep])


@dataclass
class EvalData:
    """The probe-fitting side, the scored side, where they came from, and (hold-out) the patients left out of
    training."""

    fit: EvalSplit
    test: EvalSplit
    source: str  # "holdout" | "run.evaluation"
    held_out_groups: list[str] = field(default_factory=list)


def group_of(record) -> str:
    """A record's patient id; a record without one is its own patient (as in `evaluation.data`)."""
    return str(record.group) if record.group is not None else f"image:{record.image}"


def _group_split(targets: np.ndarray, groups: np.ndarray, fraction: float, seed: int):
    """`(keep_idx, split_off_idx)`, patient-disjoint: stratified by class where every class allows it, else a
    plain shuffle of the patients (small data: one patient per class). ValueError with fewer than 2 patients."""
    try:
        return group_stratified_split(targets, groups, test_fraction=fraction, seed=seed)
    except ValueError:
        pass
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError(f"{len(unique)} patient(s): nothing to split patient-disjointly.")
    rng = np.random.default_rng([seed, _SPLIT_STREAM])
    count = min(max(round(fraction * len(unique)), 1), len(unique) - 1)
    chosen = np.isin(groups, rng.permutation(unique)[:count])
    return np.flatnonzero(~chosen), np.flatnonzero(chosen)


def _capped(split: EvalSplit, maximum: int, seed: int, side: int) -> EvalSplit:
    if len(split) <= maximum:
        return split
    rng = np.random.default_rng([seed, _CAP_STREAM, side])
    return split.subset(np.sort(rng.choice(len(split), maximum, replace=False)))


def _single_label_rows(streams: dict[str, Stream], records, class_names: list[str]):
    """`(rows, targets, groups)` of every single-label row of a known class in `streams` (rows index
    `records`)."""
    index = {name: i for i, name in enumerate(class_names)}
    rows, targets, groups = [], [], []
    for stream in streams.values():
        for row, labels in zip(stream.rows.tolist(), stream.labels, strict=True):
            if records[row].labels != labels:
                raise RuntimeError("Stream rows no longer index the manifests' records in order.")
            if len(labels) == 1 and labels[0] in index:
                rows.append(row)
                targets.append(index[labels[0]])
                groups.append(group_of(records[row]))
    return rows, targets, groups


def _streams_without(streams: dict[str, Stream], left_in) -> tuple[dict[str, Stream], int]:
    """The streams with only the rows `left_in(row)` keeps (a stream left empty is dropped), and how many
    rows left."""
    trained: dict[str, Stream] = {}
    removed = 0
    for name, stream in streams.items():
        keep = np.asarray([left_in(row) for row in stream.rows.tolist()], dtype=bool)
        removed += int((~keep).sum())
        if keep.any():
            trained[name] = Stream(
                name=name,
                cache=stream.cache,
                rows=stream.rows[keep],
                texts=[t for t, k in zip(stream.texts, keep, strict=True) if k],
                labels=[lab for lab, k in zip(stream.labels, keep, strict=True) if k],
            )
    return trained, removed


def hold_out_eval_rows(
    streams: dict[str, Stream],
    manifests,
    class_names: list[str],
    config,
    evaluation_specs: dict,
    task,
    *,
    is_main_process: bool = True,
) -> tuple[dict[str, Stream], EvalData | None]:
    """Take a patient-disjoint share of the run's own single-label rows out of `streams` for the evaluations
    during pretraining.

    Returns `(streams, None)` unchanged unless `run.eval_every` is set, `evaluation_specs` names no `test` set
    and the family can be probed. Otherwise new streams without any row of the held-out patients (labelled or
    not, in every stream), and `EvalData` whose test side is their single-label rows and whose fit side is the
    single-label rows that stay in training, both capped at `run.eval_max_images`. Deterministic in
    `run.seed`, so every process and every resume hold out the same rows. `streams` must come from
    `prepare_streams(manifests, ...)`: their `rows` index the manifests' records, in order.
    """
    run = config.run
    if run.eval_every is None or evaluation_specs.get("test") or not task.has_image_encoder:
        return streams, None
    warn = logger.warning if is_main_process else logger.debug
    if manifests is None or any(stream.cache is None for stream in streams.values()):
        warn(
            "run.eval_every is set and run.evaluation names no test set, but the run streams shard sets: holding "
            "out rows of a stream is not supported; name a test manifest in run.evaluation.test to evaluate "
            "during pretraining. No evaluation during pretraining."
        )
        return streams, None
    records = [record for manifest in manifests for record in manifest.records]
    caches = {id(stream.cache) for stream in streams.values()}
    if len(caches) != 1:
        raise RuntimeError("hold_out_eval_rows expects every stream to share one image cache.")
    cache = next(iter(streams.values())).cache

    rows, targets, groups = _single_label_rows(streams, records, class_names)
    if not rows:
        warn(
            "run.eval_every is set, but run.evaluation names no test set and the training data has no "
            "single-label rows to hold out: no evaluation during pretraining."
        )
        return streams, None
    rows, targets = np.asarray(rows, dtype=np.int64), np.asarray(targets, dtype=np.int64)
    groups = np.asarray(groups, dtype=object)
    try:
        kept, held = _group_split(targets, groups, run.eval_holdout_fraction, run.seed + _HOLDOUT_STREAM)
    except ValueError as error:
        warn("Cannot hold out patients for the evaluation during pretraining (%s): it is off.", error)
        return streams, None

    held_groups = set(groups[held].tolist())
    # The same image may sit in two manifests under different (or no) patient ids: it leaves with either.
    held_images = {str(records[row].image) for row in rows[held]}

    def left_in(row: int) -> bool:
        return group_of(records[row]) not in held_groups and str(records[row].image) not in held_images

    trained, removed = _streams_without(streams, left_in)
    empty = [name for name in task.required_streams if name not in trained]
    if empty:
        raise ValueError(
            f"Holding out {len(held_groups)} patients for the evaluation during pretraining leaves no rows for "
            f"the stream(s) {empty}: lower run.eval_holdout_fraction or give run.evaluation a test set."
        )
    kept = kept[np.asarray([left_in(row) for row in rows[kept].tolist()], dtype=bool)]

    def side(chosen: np.ndarray) -> EvalSplit:
        store = ImageStore(cached=cache, rows=rows[chosen], ok=np.ones(len(chosen), dtype=bool))
        return EvalSplit(store, targets[chosen], groups[chosen])

    data = EvalData(
        fit=_capped(side(kept), run.eval_max_images, run.seed, 0),
        test=_capped(side(held), run.eval_max_images, run.seed, 1),
        source="holdout",
        held_out_groups=sorted(held_groups),
    )
    if is_main_process:
        logger.info(
            "Evaluation during pretraining: %d patients (%d rows) held out of training; probe fitted on %d "
            "training images, scored on %d held-out images.",
            len(held_groups),
            removed,
            len(data.fit),
            len(data.test),
        )
    return trained, data


def _labelled_split(specs, class_names, config, show_progress) -> EvalSplit:
    labelled, store, ok = cached_labelled_records(specs, class_names, config, show_progress)
    return EvalSplit(store, labelled.targets[ok], np.asarray([str(g) for g in labelled.groups[ok]], object))


def evaluation_data(specs: dict, class_names: list[str], config, show_progress: bool = True) -> EvalData:
    """`EvalData` of a `run.evaluation` dict (`test`, optional `probe_train` manifest specs), each side capped
    at `run.eval_max_images`."""
    run = config.run
    test = _labelled_split(specs["test"], class_names, config, show_progress)
    if specs.get("probe_train"):
        fit = _labelled_split(specs["probe_train"], class_names, config, show_progress)
    else:
        kept, split_off = _group_split(test.targets, test.groups, 0.5, run.seed + _SPLIT_STREAM)
        fit, test = test.subset(kept), test.subset(split_off)
    return EvalData(
        fit=_capped(fit, run.eval_max_images, run.seed, 0),
        test=_capped(test, run.eval_max_images, run.seed, 1),
        source="run.evaluation",
    )


class PeriodicEvaluator:
    """Zero-shot + linear probe every `run.eval_every` optimizer steps and at the last one.

    Built once before the training loop on every process: whether it is active depends on the config and the
    launch only, so every process meets the same barriers; only the main process reads images and evaluates.
    `held_out` is what [`hold_out_eval_rows`] returned (None: use `evaluation_specs`, or nothing to score);
    `log` the run's `JsonlLog`, `progress` its `StepProgress` (or None).
    """

    def __init__(
        self,
        config,
        task,
        processor,
        class_names: list[str],
        evaluation_specs: dict,
        held_out: EvalData | None,
        accelerator,
        log,
        progress,
        total_steps: int,
    ):
        run = config.run
        self.every, self.total_steps, self.seed = run.eval_every, total_steps, run.seed
        self.accelerator, self.log, self.progress = accelerator, log, progress
        show_progress = progress is not None and not getattr(progress, "disable", True)
        self.class_names = list(class_names)
        self.processor = processor
        self.data: EvalData | None = None
        self.active = self._can_run(task, evaluation_specs, held_out, accelerator)
        if not self.active:
            return
        self.prompts = task.zero_shot_prompts(config, self.class_names)
        self.mean, self.std = normalization_of(processor.image_processor)
        if accelerator.is_main_process:
            self.data = held_out
            if held_out is None:
                try:
                    self.data = evaluation_data(evaluation_specs, self.class_names, config, show_progress)
                except ValueError as error:
                    logger.warning(
                        "No evaluation during pretraining: run.evaluation is not usable (%s).", error
                    )
            if self.data is not None and len(np.unique(self.data.fit.targets)) < 2:
                logger.warning(
                    "No evaluation during pretraining: its probe-fitting images hold fewer than 2 classes."
                )
                self.data = None
            if self.data is not None:
                self._write_split(Path(run.output_dir) / "eval_split.json")
        accelerator.wait_for_everyone()

    def _can_run(self, task, evaluation_specs, held_out, accelerator) -> bool:
        if self.every is None:
            return False
        main = accelerator.is_main_process
        if not task.has_image_encoder:
            if main:
                logger.warning(
                    "run.eval_every: model.family=%s has no image encoder to probe; skipped.", task.family
                )
            return False
        if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
            # Evaluating on the main process alone needs the whole weights there.
            if main:
                logger.warning(
                    "run.eval_every is not supported with FSDP / DeepSpeed (sharded weights); skipped."
                )
            return False
        return held_out is not None or bool(evaluation_specs.get("test"))

    def _write_split(self, path: Path) -> None:
        data = self.data
        summary = {
            "source": data.source,
            "probe_fit_images": len(data.fit),
            "test_images": len(data.test),
            "probe_fit_patients": sorted(set(data.fit.groups.tolist())),
            "test_patients": sorted(set(data.test.groups.tolist())),
            "held_out_of_training": data.held_out_groups,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1))

    def due(self, step: int) -> bool:
        return self.active and (step % self.every == 0 or step == self.total_steps)

    def maybe_run(self, step: int, model: torch.nn.Module) -> dict | None:
        """After optimizer step `step`: evaluate `model` (unwrapped) when due; returns the logged entry on the main
        process (None elsewhere, when not due, or when the evaluation failed: a failure is logged and
        training goes on)."""
        if not self.due(step):
            return None
        entry = None
        if self.data is not None:
            try:
                entry = {"step": step, **self.evaluate(model)}
            except Exception:  # noqa: BLE001 - a failed evaluation must not end a long pretraining run
                logger.warning("Evaluation at step %d failed; training goes on.", step, exc_info=True)
        self.accelerator.wait_for_everyone()
        if entry is not None:
            self.log.write(entry)
            # A no-op without trackers (run.tensorboard off or not installed).
            self.accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=step)
            if self.progress is not None:
                self.progress.log_evaluation(entry)
        return entry

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """The figures of `model` now: `eval/linear_probe_*` and (dual encoders) `eval/zero_shot_*` accuracy,
        balanced accuracy and macro ROC-AUC on the test side, plus `eval/seconds`."""
        start = time.perf_counter()
        data, classes = self.data, len(self.class_names)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                fit = self._features(model, data.fit)
                test = self._features(model, data.test)
                probabilities = linear_probe_probabilities(
                    fit.probe, data.fit.targets, test.probe, classes, seed=self.seed
                )
                figures = {
                    f"eval/linear_probe_{k}": v
                    for k, v in classification_metrics(
                        data.test.targets, probabilities, names=METRICS
                    ).items()
                }
                if self.prompts is not None and test.embeds is not None and has_text_tower(model):
                    prototypes = class_prototypes(
                        model,
                        self.processor.tokenizer,
                        self.prompts,
                        max_length=getattr(self.processor, "max_length", 77),
                    )
                    scores = zero_shot_probabilities(test.embeds, prototypes, logit_scale_of(model))
                    zero_shot = classification_metrics(data.test.targets, scores, names=METRICS)
                    figures.update({f"eval/zero_shot_{k}": v for k, v in zero_shot.items()})
        finally:
            model.train(was_training)
        ordered = sorted(figures, key=lambda k: not k.startswith("eval/zero_shot"))
        out = {k: round(float(figures[k]), 6) for k in ordered}
        out["eval/seconds"] = round(time.perf_counter() - start, 3)
        return out

    def _features(self, model, split: EvalSplit):
        return extract_image_features(
            model, split.store, self.mean, self.std, cache=False, show_progress=False, description="eval"
        )


class PretrainingEvaluation(EvaluationHooks):
    """The evaluations of a pretraining run, as the loop's hooks: the patient hold-out of `run.eval_every`
    ([`hold_out_eval_rows`]), the periodic [`PeriodicEvaluator`] and the end-of-run zero-shot + linear probe
    against random init (`evaluation.quick.evaluate_pretrained`, with the task's zero-shot prompts)."""

    def hold_out(self, streams, manifests, class_names, config, evaluation_specs, task, *, is_main_process):
        return hold_out_eval_rows(
            streams, manifests, class_names, config, evaluation_specs, task, is_main_process=is_main_process
        )

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
    ):
        return PeriodicEvaluator(
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

    def final(self, model, processor, evaluation_specs, config, class_names, task, *, show_progress):
        prompts = dict(zip(class_names, task.zero_shot_prompts(config, class_names) or [], strict=False))
        return evaluate_pretrained(
            model,
            processor,
            evaluation_specs,
            config,
            class_names,
            show_progress=show_progress,
            prompts_for=prompts.__getitem__ if prompts else None,
        )


__all__ = [
    "EvalData",
    "EvalSplit",
    "PeriodicEvaluator",
    "PretrainingEvaluation",
    "evaluation_data",
    "hold_out_eval_rows",
]
