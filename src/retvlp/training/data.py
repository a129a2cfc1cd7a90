"""From manifests to step batches: validation policy, cached streams, and the per-step batch builder.

Everything random in a batch (which rows, crops, flips, prompt templates, MAE masks) is drawn from
`(seed, micro_step)` for the GLOBAL batch and then sliced per process. So a batch does not depend on
how the run was split into processes or interrupted: 2 processes × b rows see exactly the rows, crops
and masks of 1 process × 2b, and a resumed run rebuilds the batches the straight run would have seen.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.cache import CachedImages, read_pixels
from ..data.loading import cache_records, read_training_manifests
from ..data.manifest import Manifest, ManifestRecord
from ..data.sampler import StepSampler
from ..data.shard_stream import ShardedStepSampler, ShardSet, combine_shard_sets, open_shard_set
from ..data.transforms import augment_and_normalize
from ..data.validation import DataValidationError, ValidationReport, check_records
from .config import DataSection

logger = logging.getLogger(__name__)


@dataclass
class Stream:
    """One data stream (e.g. the paired or the unpaired images) after validation: good rows only.

    Its pixels live in the local image cache (`cache`, the default) or in a prepared shard set read as a
    stream (`shards`, when `data.train` names shard directories); `rows` index the one it has."""

    name: str
    cache: CachedImages | None
    rows: np.ndarray  # indices of the usable rows in `cache.dataset` (or in `shards`)
    texts: list[str | None]  # per usable row
    labels: list[tuple[str, ...]]  # per usable row
    shards: ShardSet | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def pixels(self, positions: np.ndarray) -> np.ndarray:
        """Stream positions → `(len(positions), S, S, 3)` uint8."""
        rows = self.rows[positions]
        if self.shards is not None:
            return self.shards.read_pixels(rows)
        return read_pixels(self.cache.dataset, rows)

    def class_groups(self) -> np.ndarray:
        """One group id per row for class-balanced sampling: rows with the same label set share a group, and
        rows without a label form one group of their own (so a caption-only stream is drawn uniformly)."""
        keys = ["\x1f".join(sorted(labels)) for labels in self.labels]
        names, groups = np.unique(keys, return_inverse=True)
        sizes = {
            (name.replace("\x1f", " + ") or "(no label)"): int(n)
            for name, n in zip(names, np.bincount(groups), strict=True)
        }
        logger.info(
            "Class-balanced sampling of the %r stream over %d groups: %s", self.name, len(names), sizes
        )
        return groups

    def sampler(
        self,
        batch_size: int,
        world_size: int,
        seed: int,
        streaming: StreamingOptions | None = None,
        balance_classes: bool = False,
    ):
        """The step sampler of this stream: `StepSampler` over the cache (class-balanced epochs with
        `balance_classes`), `ShardedStepSampler` (shard order, readers, shuffle windows) over shards."""
        if self.shards is None:
            groups = self.class_groups() if balance_classes else None
            return StepSampler(len(self), batch_size, world_size, seed=seed, groups=groups)
        if balance_classes:
            raise ValueError(
                f"data.balance_classes names the {self.name!r} stream, which is read from shard sets; class-balanced "
                "sampling works on manifests (the local image cache) only. Train from the manifests, or take "
                f"{self.name!r} out of data.balance_classes."
            )
        streaming = streaming or StreamingOptions()
        return ShardedStepSampler(
            self.shards.shard_of[self.rows],
            batch_size,
            world_size,
            seed=seed,
            readers=streaming.readers_of(self.name),
            shuffle_buffer=streaming.shuffle_buffer,
            name=self.name,
        )


@dataclass(frozen=True)
class StreamingOptions:
    """`data.stream_readers` / `data.shuffle_buffer`: how a shard stream is cut into readers and shuffled."""

    readers: int | dict[str, int] | None = None  # one count for every stream, or one per stream name
    shuffle_buffer: int = 1024

    def readers_of(self, stream: str) -> int | None:
        if isinstance(self.readers, dict):
            return self.readers.get(stream)
        return self.readers


def discover_classes(manifests: list[Manifest], configured: list[str] | None) -> list[str]:
    if configured:
        return list(configured)
    return sorted({label for manifest in manifests for record in manifest.records for label in record.labels})


def skipped_entries(manifests: list[Manifest], records, report: ValidationReport) -> list[dict]:
    """One `{source, row, image, problems}` entry per row with an error, in manifest and row order: the
    records that failed a check and the rows that never became records (unparseable, not UTF-8, outside the
    data roots), so the list matches `report.bad_records` (the run summary's `skipped_samples`) one to one."""
    images = {(record.source, record.row): str(record.image) for record in records}
    reasons: dict[tuple[str, int], list[str]] = {}
    for problem in report.errors:
        key = (problem.source, problem.row)
        reasons.setdefault(key, []).append(f"{problem.kind}: {problem.message}")
        images.setdefault(key, problem.image)
    order = {manifest.source: i for i, manifest in enumerate(manifests)}
    keys = sorted(report.bad_records, key=lambda key: (order.get(key[0], len(order)), key[0], key[1]))
    return [
        {
            "source": source,
            "row": row,
            "image": images.get((source, row), ""),
            "problems": reasons[(source, row)],
        }
        for source, row in keys
    ]


def _report_skipped(manifests, records, report: ValidationReport, output_dir: Path, is_main_process: bool):
    """List the rows `on_bad_sample=skip` leaves out in `skipped_samples.jsonl` and log how many."""
    entries = skipped_entries(manifests, records, report)
    path = output_dir / "skipped_samples.jsonl"
    if is_main_process:
        with open(path, "w", encoding="utf-8") as handle:
            for entry in entries:
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
    # rows: the records plus the rows that failed before becoming one (they are rows of the manifests too)
    unread = len(report.bad_records - {(record.source, record.row) for record in records})
    logger.warning(
        "Skipped %d of %d rows with errors (on_bad_sample=skip); listed in %s",
        len(entries),
        len(records) + unread,
        path,
    )


# Which stream each record role feeds (None: the family does not use that role) when the caller names no
# routing; each task names its own (`PretrainTask.routing`, defined in its task file).
DEFAULT_ROUTING = {"paired": "paired", "categorical": "paired", "unpaired": "unpaired"}


def prepare_streams(
    manifests: list[Manifest],
    data: DataSection,
    class_names: list[str],
    output_dir: Path,
    *,
    routing: dict[str, str | None] | None = None,
    required: tuple[str, ...] = ("paired",),
    is_main_process: bool = True,
    show_progress: bool = True,
) -> tuple[dict[str, Stream], ValidationReport]:
    """Validate and cache every record, apply `data.on_bad_sample`, and split rows into streams.

    `routing` maps a record's role to its stream. The default (MaskedCLIP's): paired and categorical records
    form the "paired" stream (categorical labels become prompt texts), unpaired records the "unpaired"
    stream. A role routed to None is not used by the family: those rows are counted and logged, not
    trained on. With `on_bad_sample="error"` any error stops here with the full report
    (`DataValidationError`); with "skip" the bad rows are left out, counted, logged and listed in
    `<output_dir>/skipped_samples.jsonl`. Warnings (e.g. converted colour modes) never drop a row.
    """
    routing = DEFAULT_ROUTING if routing is None else routing
    records = [record for manifest in manifests for record in manifest.records]
    problems = [problem for manifest in manifests for problem in manifest.problems]
    problems += check_records(records, class_names=class_names)
    cache = cache_records(records, data, show_progress)
    report = ValidationReport(problems=problems + cache.problems, num_records=len(records))
    bad = report.bad_records
    if is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if report.problems:
            report.write_jsonl(output_dir / "data_problems.jsonl")
    if report.errors and data.on_bad_sample == "error":
        raise DataValidationError(report)
    if report.warnings:
        logger.warning("%d data warning(s), e.g. %s", len(report.warnings), report.warnings[0].format())

    keep, unused = route_rows(records, bad, routing)
    if bad:
        _report_skipped(manifests, records, report, output_dir, is_main_process)

    streams = _streams(keep, records, cache=cache)
    _require_streams(streams, required, routing)
    report.unused_roles = unused
    return streams, report


def open_training_shards(specs: list[dict], data: DataSection) -> ShardSet:
    """The shard sets of `data.train` (`{shards: URL, storage_options?}` specs) opened and combined, checked
    against the run's image geometry."""
    sets = [
        open_shard_set(
            spec["shards"],
            verify=data.verify_shards,
            on_bad_sample=data.on_bad_sample,
            storage_options=spec.get("storage_options"),
        )
        for spec in specs
    ]
    shards = combine_shard_sets(sets)
    geometry = shards.index["geometry"]
    wanted = {"size": data.image_size, "pad_to_square": data.pad_to_square, "crop_to_fov": data.crop_to_fov}
    found = {key: geometry.get(key) for key in wanted}
    if found != wanted:
        raise ValueError(
            f"{shards.url}: the shards were prepared with {found}, the run asks for {wanted} (data.image_size, "
            "data.pad_to_square, data.crop_to_fov): prepare them again with matching --image-size / --pad-to-square "
            "/ --crop-to-fov, or change the run's data section."
        )
    return shards


def shard_records(shards: ShardSet) -> list[ManifestRecord]:
    """The shard rows as records (image: the shard member), for the record-level checks and the reports."""
    return [
        ManifestRecord(
            image=f"{shards.url}/{posixpath.basename(shards.shard_files[shard])}:{key}.{shards.image_format}",
            text=text,
            labels=tuple(labels),
            group=group,
            source=source,
            row=row,
            role=role,
        )
        for shard, key, text, labels, group, source, row, role in zip(
            shards.shard_of.tolist(),
            shards.keys,
            shards.texts,
            shards.labels,
            shards.groups,
            shards.sources,
            shards.source_rows,
            shards.roles,
            strict=True,
        )
    ]


def prepare_shard_streams(
    shards: ShardSet,
    data: DataSection,
    class_names: list[str],
    output_dir: Path,
    *,
    routing: dict[str, str | None] | None = None,
    required: tuple[str, ...] = ("paired",),
    is_main_process: bool = True,
) -> tuple[dict[str, Stream], ValidationReport]:
    """`prepare_streams` for a shard set: the rows were checked and decoded by `retvlp prepare-data` (its
    problems and skipped rows are reported again here); the run adds its class check and what opening the
    shards left out (`data.on_bad_sample`), and routes the rows into streams read from the shards."""
    routing = DEFAULT_ROUTING if routing is None else routing
    records = shard_records(shards)
    label_problems = [p for p in check_records(records, class_names=class_names) if p.kind != "duplicate-row"]
    problems = shards.preparation_problems + shards.left_out + label_problems
    report = ValidationReport(problems=problems, num_records=int(shards.index["num_records"]))
    if is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if report.problems:
            report.write_jsonl(output_dir / "data_problems.jsonl")
    # Rows prepare-data skipped, and shards / members opening left out (`on_bad_sample: skip` there), are
    # reported as skipped; the run's own policy decides only about what it checks itself: the class names.
    label_errors = [p for p in label_problems if p.severity == "error"]
    if label_errors and data.on_bad_sample == "error":
        raise DataValidationError(ValidationReport(problems=label_problems, num_records=len(records)))
    bad = {(p.source, p.row) for p in label_problems if p.severity == "error"}
    keep, unused = route_rows(records, bad, routing)
    if report.bad_records:
        _report_skipped([], records, report, output_dir, is_main_process)
    streams = _streams(keep, records, shards=shards)
    _require_streams(streams, required, routing)
    report.unused_roles = unused
    return streams, report


def route_rows(records, bad: set[tuple[str, int]], routing: dict[str, str | None]):
    """`({stream: record indices}, {unused role: count})`: each record not in `bad` goes to the stream its role
    is routed to; roles routed to None are counted (and logged), not trained on."""
    keep, unused = {name: [] for name in routing.values() if name}, {}
    for index, record in enumerate(records):
        if (record.source, record.row) in bad:
            continue
        stream = routing.get(record.role)
        if stream is None:
            unused[record.role] = unused.get(record.role, 0) + 1
            continue
        keep[stream].append(index)
    if unused:
        logger.warning("Rows of roles this model family does not train on (not used): %s", unused)
    return keep, unused


def _streams(keep: dict[str, list[int]], records, *, cache=None, shards=None) -> dict[str, Stream]:
    """The non-empty streams of `route_rows`, their pixels in `cache` or `shards`."""
    return {
        name: Stream(
            name=name,
            cache=cache,
            rows=np.asarray(indices, dtype=np.int64),
            texts=[records[i].text for i in indices],
            labels=[records[i].labels for i in indices],
            shards=shards,
        )
        for name, indices in keep.items()
        if indices
    }


def _require_streams(streams: dict[str, Stream], required: tuple[str, ...], routing: dict) -> None:
    missing = [name for name in required if name not in streams]
    if missing:
        feeding = {
            name: sorted(role for role, target in routing.items() if target == name) for name in missing
        }
        raise ValueError(
            f"No usable samples for the stream(s) {missing} (fed by the record roles {feeding}): check the "
            "manifests' text/label columns and roles (and the skipped samples)."
        )


class StepBatches(torch.utils.data.Dataset):
    """Item `i` is this process's complete batch for micro-step `i` (use with `batch_size=None`).

    The base class draws the rows and the augmented images of each stream; each model family's subclass
    (`MaskedCLIPStepBatches`, `KeepFitStepBatches`, `ImageStepBatches`) turns them into its forward's inputs.

    Args:
        streams: the streams the family trains on (a stream with batch size 0 is left out).
        batch_sizes: rows per process per micro-step, per stream.
        rank / world_size: this process and the process count.
        image_mean / image_std: the processor's normalisation (0 / 1 for none).
        balance_classes: names of the streams drawn in class-balanced epochs (`data.balance_classes`).
    """

    def __init__(
        self,
        streams: dict[str, Stream],
        batch_sizes: dict[str, int],
        *,
        rank: int,
        world_size: int,
        seed: int,
        image_mean,
        image_std,
        crop_scale: tuple[float, float],
        horizontal_flip: bool,
        length: int,
        streaming: StreamingOptions | None = None,
        balance_classes: tuple[str, ...] = (),
    ):
        unknown = sorted(set(balance_classes) - set(streams))
        if unknown:
            raise ValueError(
                f"data.balance_classes names {unknown}, which this run has no stream of: its streams are "
                f"{sorted(streams)}. List stream names from those (e.g. [paired] for MaskedCLIP, [categorical] "
                "for KeepFIT)."
            )
        self.streams = {name: s for name, s in streams.items() if batch_sizes.get(name, 0) > 0}
        self.samplers = {
            name: s.sampler(
                batch_sizes[name],
                world_size,
                seed + 7919 * k,
                streaming,
                balance_classes=name in balance_classes,
            )
            for k, (name, s) in enumerate(sorted(self.streams.items()))
        }
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.mean = torch.tensor(image_mean, dtype=torch.float32).expand(3).clone()
        self.std = torch.tensor(image_std, dtype=torch.float32).expand(3).clone()
        self.crop_scale = tuple(crop_scale)
        self.horizontal_flip = horizontal_flip
        self.length = length

    def __len__(self) -> int:
        return self.length

    def epochs(self, micro_step: int) -> dict[str, float]:
        return {name: sampler.epoch(micro_step) for name, sampler in self.samplers.items()}

    def images_per_micro_step(self) -> int:
        """Images in one micro-step over all processes."""
        return sum(sampler.global_batch_size for sampler in self.samplers.values())

    # ------------------------------------------------------------------ what the loop asks of any step batches
    # (`MLMStepBatches` answers the same four questions for a text corpus)
    def samples_per_micro_step(self) -> int:
        return self.images_per_micro_step()

    def micro_steps_per_epoch(self) -> int:
        """One epoch = every row of every stream seen at least once: the slowest stream's micro-steps."""
        return max(
            math.ceil(len(self.streams[name]) / sampler.global_batch_size)
            for name, sampler in self.samplers.items()
        )

    def log_epochs(self, micro_step: int) -> dict[str, float]:
        """The epoch fields of a log line: `epoch` (the slowest stream's passes, docs/training.md) and
        `epoch_<stream>` for each stream."""
        epochs = self.epochs(micro_step)
        return {
            "epoch": round(min(epochs.values()), 4),
            **{f"epoch_{name}": round(value, 4) for name, value in epochs.items()},
        }

    def state_epochs(self, micro_step: int) -> dict:
        """The epoch fields of a checkpoint's trainer state; for shard streams also the stream position
        (per reader its epoch, offset and next shard) and the shard set it reads."""
        state = {"epochs": self.epochs(micro_step)}
        positions = self.stream_positions(micro_step)
        if positions:
            state["stream_positions"] = positions
        return state

    def stream_positions(self, micro_step: int) -> dict:
        """Per shard stream, where it stands before `micro_step` (`ShardedStepSampler.position`) and the
        fingerprint of its shard set; empty for cached streams."""
        return {
            name: {"shard_set": self.streams[name].shards.fingerprint, **sampler.position(micro_step)}
            for name, sampler in self.samplers.items()
            if isinstance(sampler, ShardedStepSampler)
        }

    def check_resume_state(self, checkpoint, state: dict) -> None:
        """Refuse to resume a shard stream from a checkpoint of another shard set or another stream layout:
        the rows it would read would not be those of the straight run."""
        saved = state.get("stream_positions", {})
        expected = self.stream_positions(int(state.get("micro_step", 0)))
        for name in sorted(set(saved) | set(expected)):
            if saved.get(name) != expected.get(name):
                raise ValueError(
                    f"{checkpoint}: the stream {name!r} cannot resume exactly: the checkpoint recorded "
                    f"{saved.get(name)}, this run's data gives {expected.get(name)} (a different shard set, "
                    "data.stream_readers, data.shuffle_buffer or seed). Resume with the data and settings of the "
                    "run that wrote it."
                )

    # ------------------------------------------------------------------ pieces
    def _random_geometry(self, rng: np.random.Generator, count: int):
        crops = flips = None
        if self.crop_scale != (1.0, 1.0):
            area = rng.uniform(self.crop_scale[0], self.crop_scale[1], count)
            side = np.sqrt(area)
            centre = rng.uniform(-1.0, 1.0, (count, 2)) * (1.0 - side)[:, None]
            crops = np.concatenate([side[:, None], centre], axis=1)
        if self.horizontal_flip:
            flips = rng.random(count) < 0.5
        return crops, flips

    def _stream_batch(self, name: str, micro_step: int, stream_id: int, noise_width: int | None = None):
        """One stream's global rows, this process's slice of them, its images and (with `noise_width`) its
        `(local_batch, noise_width)` uniform noise; every per-sample draw is made for the global batch, then
        sliced."""
        sampler, stream = self.samplers[name], self.streams[name]
        rng = np.random.default_rng([self.seed, micro_step, stream_id])
        global_rows = sampler.global_indices(micro_step)
        crops, flips = self._random_geometry(rng, len(global_rows))
        local = slice(self.rank * sampler.batch_size, (self.rank + 1) * sampler.batch_size)
        noise = None
        if noise_width is not None:
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            noise = torch.rand(len(global_rows), noise_width, generator=generator)[local]
        pixels = stream.pixels(global_rows[local])
        images = augment_and_normalize(
            pixels,
            None if crops is None else crops[local],
            None if flips is None else flips[local],
            self.mean,
            self.std,
        )
        return global_rows, local, images, noise

    def _tokenize(self, tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        tokens = {
            key: value
            for key, value in batch.items()
            if key in ("input_ids", "attention_mask", "token_type_ids")
        }
        if "attention_mask" in tokens and bool(tokens["attention_mask"].all()):
            # No padding in this batch: decided here, on the host, so that the model's forward needs no
            # device-to-host check to give SDPA its unmasked kernel.
            del tokens["attention_mask"]
        return tokens

    def __getitem__(self, micro_step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def image_normalization(image_processor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the step batches apply after scaling to [0, 1]: the processor's, or (0, 1) when it does not
    normalise (KeepFIT's reference preprocessing)."""
    if not getattr(image_processor, "do_normalize", True):
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return tuple(image_processor.image_mean), tuple(image_processor.image_std)


def label_tensor(labels_per_row: list[tuple[str, ...]], class_index: dict[str, int], multi_label: bool):
    """Class ids `(rows,)` (−1: no label), or with `multi_label` a multi-hot `(rows, classes)` (a row of −1:
    no label) — the label format of both families' contrastive losses."""
    if not multi_label:
        ids = [class_index[labels[0]] if labels else -1 for labels in labels_per_row]
        return torch.tensor(ids, dtype=torch.long)
    out = torch.zeros(len(labels_per_row), len(class_index), dtype=torch.long)
    for i, labels in enumerate(labels_per_row):
        if not labels:
            out[i] = -1
        for label in labels:
            out[i, class_index[label]] = 1
    return out


__all__ = [
    "DEFAULT_ROUTING",
    "cache_records",
    "label_tensor",
    "read_training_manifests",
    "StepBatches",
    "Stream",
    "StreamingOptions",
    "augment_and_normalize",
    "discover_classes",
    "image_normalization",
    "prepare_streams",
]
