"""The data a pretraining run trains on, as a task's `prepare_data` hands it to the loop: for the image
families, the validated and cached streams of `data.train` (or of the synthetic demo data) and the evaluation
specs; a text corpus task keeps its corpus itself and hands over only the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.manifest import Manifest, with_root_options
from ..data.validation import NoUsableRecordsError, ValidationReport
from ..synthetic import resolve_synthetic_spec
from .config import PretrainConfig
from .data import (
    Stream,
    discover_classes,
    open_training_shards,
    prepare_shard_streams,
    prepare_streams,
    read_training_manifests,
)
from .progress import phase, timed


@dataclass
class RunData:
    """What the loop needs to know about a run's data.

    Attributes:
        report: the validation report (`bad_records` are the skipped samples of the summary and checkpoints).
        class_names: the run's classes (empty for a text corpus).
        evaluation_specs: `run.evaluation` (plus the synthetic split), with the run's data roots.
        streams / manifests: the image families' streams and the manifests they index (None for text).
        held_out: what the evaluation hooks' `hold_out` returned (None: nothing held out).
    """

    report: ValidationReport
    class_names: list[str] = field(default_factory=list)
    evaluation_specs: dict = field(default_factory=dict)
    streams: dict[str, Stream] | None = None
    manifests: list[Manifest] | None = None
    held_out: Any = None

    def rows_per_stream(self) -> dict[str, int]:
        return {name: len(stream) for name, stream in (self.streams or {}).items()}


def synthetic_manifest_specs(config: PretrainConfig) -> tuple[list[dict], dict]:
    """Generate (or reuse) the procedural demo data and return its training manifests + evaluation specs."""
    dataset = resolve_synthetic_spec(config.data.synthetic, config.data.cache_dir or "outputs/cache")
    return dataset.training_specs(), dataset.evaluation_specs()


def with_run_roots(evaluation_specs: dict, data) -> dict:
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


def main_process_first(accelerator, function, *args, **kwargs):
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


def prepare_image_data(
    task, config: PretrainConfig, accelerator, output_dir: Path, show_progress: bool
) -> RunData:
    """Read `data.train` (and the synthetic demo data), discover the classes, validate and cache every image
    and route the records into `task`'s streams (`task.routing`, `task.required_streams`)."""
    data, main = config.data, accelerator.is_main_process
    train_specs, evaluation_specs = list(data.train), dict(config.run.evaluation)
    if train_specs and all("shards" in spec for spec in train_specs):
        return prepare_streamed_data(
            task, config, accelerator, output_dir, with_run_roots(evaluation_specs, data)
        )
    if data.synthetic is not None:
        with timed("synthetic data"):
            synthetic_train, synthetic_eval = main_process_first(
                accelerator, synthetic_manifest_specs, config
            )
        train_specs = synthetic_train + train_specs
        evaluation_specs = {**synthetic_eval, **evaluation_specs}
    evaluation_specs = with_run_roots(evaluation_specs, data)
    manifests = read_training_manifests(
        train_specs, allowed_roots=data.allowed_roots, allow_outside_data_roots=data.allow_outside_data_roots
    )
    require_records(manifests)
    class_names = discover_classes(manifests, data.classes)
    phase(
        "Validating and caching %d images of %d manifest(s) (%s; a first run decodes every image, later ones "
        "reuse the cache).",
        sum(len(m.records) for m in manifests),
        len(manifests),
        data.cache_dir or "outputs/cache",
        enabled=main,
    )
    with timed("image cache"):
        streams, report = main_process_first(
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
    return RunData(report, class_names, evaluation_specs, streams, manifests)


def require_records(manifests: list[Manifest]) -> None:
    """Refuse manifests of which no row became a record (all unparseable, missing columns, outside the data
    roots, ...), listing their first problems with the fix each one names, as `retvlp validate-data` does;
    without this the run would stop later, in the image cache, with no word on why."""
    if any(manifest.records for manifest in manifests):
        return
    problems = [problem for manifest in manifests for problem in manifest.problems]
    raise NoUsableRecordsError(ValidationReport(problems=problems, num_records=0))


def prepare_streamed_data(
    task, config: PretrainConfig, accelerator, output_dir: Path, evaluation_specs
) -> RunData:
    """`prepare_image_data` for `data.train` of shard sets: open them (every process reads the small indexes
    itself; nothing is built, so no process waits for another), check them and route their rows."""
    data, main = config.data, accelerator.is_main_process
    shards = open_training_shards(list(data.train), data)
    class_names = (
        list(data.classes) if data.classes else sorted({lab for labels in shards.labels for lab in labels})
    )
    phase(
        "Streaming %d rows of %d shard(s) from %s.",
        len(shards),
        len(shards.shard_files),
        shards.url,
        enabled=main,
    )
    streams, report = prepare_shard_streams(
        shards,
        data,
        class_names,
        output_dir,
        routing=task.routing,
        required=task.required_streams,
        is_main_process=main,
    )
    return RunData(report, class_names, evaluation_specs, streams, None)


__all__ = [
    "RunData",
    "prepare_streamed_data",
    "main_process_first",
    "prepare_image_data",
    "require_records",
    "synthetic_manifest_specs",
    "with_run_roots",
]
