"""Labelled evaluation images: manifests → records with targets and patient groups → a cached uint8 store per
image geometry, read back as normalised batches.

Images are decoded, checked and resized once per (records, geometry) into the same Arrow store pretraining
uses (`retvlp.data.cache`), so a second evaluation of the same data costs no decoding. Nothing is dropped
silently: every left-out record is counted by reason and listed (`LabelledRecords.excluded`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.cache import CachedImages, ImageGeometry, build_image_cache, read_pixels
from ..data.manifest import ManifestRecord

logger = logging.getLogger(__name__)

MAX_LISTED_EXCLUSIONS = 50


@dataclass
class LabelledRecords:
    """The labelled records of an evaluation data set.

    Attributes:
        records: kept records, in manifest order.
        class_names: class `c` is `class_names[c]`.
        targets: `(N,)` int64 class ids, or `(N, C)` float32 multi-hot when `multi_label`.
        groups: `(N,)` patient ids (a record without one is its own group: its image path).
        excluded: left-out records per reason (`unparseable_rows`, `unlabelled`, `unknown_label`,
            `several_labels`, `bad_image`).
        excluded_examples: up to 50 `{"source", "row", "reason", ...}` entries naming what was left out.
    """

    records: list[ManifestRecord]
    class_names: list[str]
    targets: np.ndarray
    groups: np.ndarray
    multi_label: bool
    name: str
    excluded: dict[str, int] = field(default_factory=dict)
    excluded_examples: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def _exclude(self, reason: str, example: dict) -> None:
        self.excluded[reason] = self.excluded.get(reason, 0) + 1
        if len(self.excluded_examples) < MAX_LISTED_EXCLUSIONS:
            self.excluded_examples.append({**example, "reason": reason})

    def subset(self, keep: np.ndarray) -> LabelledRecords:
        """The records where `keep` (a boolean mask) is true; exclusions carry over."""
        keep = np.asarray(keep, dtype=bool)
        return LabelledRecords(
            records=[r for r, k in zip(self.records, keep, strict=True) if k],
            class_names=self.class_names,
            targets=self.targets[keep],
            groups=self.groups[keep],
            multi_label=self.multi_label,
            name=self.name,
            excluded=dict(self.excluded),
            excluded_examples=list(self.excluded_examples),
        )


def _as_specs(data) -> list[dict]:
    if isinstance(data, (str, Path, dict)):
        data = [data]
    return [dict(item) if isinstance(item, dict) else {"path": str(item)} for item in data]


def read_labelled_records(
    data,
    class_names: Sequence[str] | None = None,
    *,
    multi_label: bool | None = None,
    name: str | None = None,
) -> LabelledRecords:
    """Read manifests (paths, `read_manifest` option dicts or `{"hf_dataset": ...}` specs) into labelled records.

    Args:
        class_names: the classes, in order; labels outside them are left out (counted as `unknown_label`).
            Default: every label found, sorted.
        multi_label: treat the data as multi-label (multi-hot targets). Default: multi-label when any record
            carries more than one label. With `multi_label=False`, records with several labels are left out.
        name: how the data set is called in reports (default: the first manifest's file name).
    """
    from ..training.data import read_training_manifests

    specs = _as_specs(data)
    if not specs:
        raise ValueError("No evaluation data: give at least one manifest (--data).")
    manifests = read_training_manifests(specs)
    found = sorted({label for m in manifests for r in m.records for label in r.labels})
    if class_names is None:
        class_names = found
    class_names = [str(c) for c in class_names]
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"Class names must be unique, got {class_names}.")
    if len(class_names) < 2:
        raise ValueError(
            f"Evaluation needs at least 2 classes, found {class_names} in {[s.get('path', s) for s in specs]}: "
            "check the label column (--label-column) or pass --classes."
        )
    if multi_label is None:
        multi_label = any(len(r.labels) > 1 for m in manifests for r in m.records)
    index = {c: i for i, c in enumerate(class_names)}
    result = LabelledRecords(
        records=[],
        class_names=class_names,
        targets=np.zeros(0),
        groups=np.zeros(0),
        multi_label=multi_label,
        name=name or Path(str(specs[0].get("path", specs[0].get("hf_dataset", "data")))).stem,
    )
    targets, groups = [], []
    for manifest in manifests:
        for problem in manifest.problems:
            if problem.severity != "error":
                continue
            result._exclude(
                "unparseable_rows", {"source": problem.source, "row": problem.row, "message": problem.message}
            )
        for record in manifest.records:
            where = {"source": record.source, "row": record.row, "image": str(record.image)}
            if not record.labels:
                result._exclude("unlabelled", where)
                continue
            unknown = [label for label in record.labels if label not in index]
            if unknown:
                result._exclude("unknown_label", {**where, "labels": unknown})
                continue
            if not multi_label and len(record.labels) > 1:
                result._exclude("several_labels", {**where, "labels": list(record.labels)})
                continue
            result.records.append(record)
            if multi_label:
                row = np.zeros(len(class_names), dtype=np.float32)
                row[[index[label] for label in record.labels]] = 1.0
                targets.append(row)
            else:
                targets.append(index[record.labels[0]])
            groups.append(record.group if record.group is not None else f"image:{record.image}")
    if not result.records:
        raise ValueError(
            f"No usable labelled records in {[s.get('path', s) for s in specs]} "
            f"(left out: {result.excluded}); first problems: {result.excluded_examples[:5]}"
        )
    result.targets = (
        np.stack(targets).astype(np.float32) if multi_label else np.asarray(targets, dtype=np.int64)
    )
    result.groups = np.asarray(groups, dtype=object)
    if result.excluded:
        logger.warning(
            "%s: left out %s (listed in the report's `excluded_examples`)", result.name, result.excluded
        )
    return result


def geometry_of(image_processor) -> ImageGeometry:
    """The stored geometry for a model's image processor: `FundusImageProcessor`'s exactly; for other
    processors (e.g. CLIP's) a plain square resize to their crop / target size — their resize-shortest-side +
    centre-crop is not reproduced (fundus photographs are close to square; stated in docs/evaluation.md)."""
    if hasattr(image_processor, "pad_to_square"):
        return ImageGeometry.from_image_processor(image_processor)
    size = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None)
    if isinstance(size, dict) or hasattr(size, "get"):
        size = size.get("height") or size.get("shortest_edge") or size.get("width")
    if not size:
        raise ValueError(
            f"Cannot tell the input size of {type(image_processor).__name__}: it has no size / crop_size."
        )
    return ImageGeometry(size=int(size))


def normalization_of(image_processor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) `(3,)` applied after scaling to [0, 1] ((0, 1) when the processor does not normalise)."""
    if not getattr(image_processor, "do_normalize", True):
        return torch.zeros(3), torch.ones(3)
    mean = torch.as_tensor(image_processor.image_mean, dtype=torch.float32).expand(3).clone()
    std = torch.as_tensor(image_processor.image_std, dtype=torch.float32).expand(3).clone()
    return mean, std


@dataclass
class ImageStore:
    """The cached pixels of `LabelledRecords` at one geometry: record `i` is row `rows[i]` of the store
    (`ok[i]` False: its image failed the checks)."""

    cached: CachedImages
    rows: np.ndarray
    ok: np.ndarray

    @property
    def key(self) -> str:
        return self.cached.path.name

    def pixels(self, indices: np.ndarray) -> np.ndarray:
        """`(len(indices), S, S, 3)` uint8 of the given record indices."""
        return read_pixels(self.cached.dataset, self.rows[np.asarray(indices, dtype=np.int64)])

    def narrowed(self, keep: np.ndarray) -> ImageStore:
        return ImageStore(cached=self.cached, rows=self.rows[keep], ok=self.ok[keep])


def cache_images(
    labelled: LabelledRecords,
    geometry: ImageGeometry,
    *,
    cache_dir: str | None = None,
    num_proc: int | None = None,
    show_progress: bool = True,
) -> ImageStore:
    """Decode, check and resize every record once (reused across calls with the same records + geometry)."""
    cached = build_image_cache(
        labelled.records, geometry, cache_dir, num_proc=num_proc, show_progress=show_progress
    )
    ok = np.asarray(cached.dataset["ok"], dtype=bool)
    return ImageStore(cached=cached, rows=np.arange(len(ok)), ok=ok)


def drop_bad_images(
    labelled: LabelledRecords, stores: Sequence[ImageStore]
) -> tuple[LabelledRecords, list[ImageStore]]:
    """Leave out records whose image failed in any store (counted as `bad_image`, listed with the problem)."""
    ok = np.logical_and.reduce([s.ok for s in stores]) if stores else np.ones(len(labelled), bool)
    if ok.all():
        return labelled, list(stores)
    messages = {}
    for store in stores:
        for problem in store.cached.problems:
            messages.setdefault((problem.source, problem.row), problem.message)
    kept = labelled.subset(ok)
    for i in np.flatnonzero(~ok):
        record = labelled.records[i]
        kept._exclude(
            "bad_image",
            {
                "source": record.source,
                "row": record.row,
                "image": str(record.image),
                "message": messages.get((record.source, record.row), "image failed its checks"),
            },
        )
    logger.warning("%s: %d image(s) could not be used and are left out", labelled.name, int((~ok).sum()))
    return kept, [store.narrowed(ok) for store in stores]


def to_model_input(pixels: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """`(B, S, S, 3)` uint8 → `(B, 3, S, S)` float32 scaled to [0, 1] and normalised."""
    # One float copy (Arrow buffers are read-only, so converting in place is not an option anyway).
    images = torch.from_numpy(pixels.astype(np.float32)).permute(0, 3, 1, 2).div_(255.0)
    return images.sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))


def prefetched_batches(
    store: ImageStore,
    indices: np.ndarray,
    batch_size: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    depth: int = 2,
) -> Iterator[torch.Tensor]:
    """Normalised `(B, 3, S, S)` batches of `indices`, prepared by a background thread `depth` batches ahead
    so that reading and normalising overlap the model's forward pass."""
    starts = range(0, len(indices), batch_size)
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for start in starts:
                if stop.is_set():
                    return
                ready.put(to_model_input(store.pixels(indices[start : start + batch_size]), mean, std))
        except BaseException as exc:  # handed to the consumer, raised there
            ready.put(exc)
        ready.put(None)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                ready.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.01)


def summarize_counts(labelled: LabelledRecords, indices: np.ndarray) -> dict[str, int]:
    """Images per class among `indices` (multi-label: positives per class)."""
    if labelled.multi_label:
        counts = labelled.targets[indices].sum(axis=0)
        return {c: int(n) for c, n in zip(labelled.class_names, counts, strict=True)}
    counted = Counter(labelled.targets[indices].tolist())
    return {c: int(counted.get(i, 0)) for i, c in enumerate(labelled.class_names)}
