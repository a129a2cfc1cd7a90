"""Labelled evaluation images: manifests → records with targets and patient groups → a cached uint8 store per
image geometry, read back as normalised batches.

Images are decoded, checked and resized once per (records, geometry) into the same Arrow store pretraining
uses (`retvlp.data.cache`), so a second evaluation of the same data costs no decoding. Nothing is dropped
silently: every left-out record is counted by reason and listed (`LabelledRecords.excluded`).

Data can be given as manifest files (CSV/TSV/JSONL/ImageFolder), `datasets.save_to_disk` folders, in-memory
`datasets.Dataset` objects or spec dicts (`{"path": ...}`, `{"hf_dataset": dir_or_hub_id, "split": ...}`,
`{"dataset": Dataset}`, each with `read_manifest` / `manifest_from_hf_dataset` options).

Class order (class `c` is `class_names[c]`, for every metric): the `class_names` given, else the names of the
label column's `ClassLabel` feature (Hugging Face datasets), else every label found, sorted as strings.
`LabelledRecords.class_order` says which one applied.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.cache import CachedImages, ImageGeometry, build_image_cache, read_pixels
from ..data.loading import read_training_manifests
from ..data.manifest import LABEL_FALLBACKS, Manifest, ManifestRecord, manifest_from_hf_dataset

logger = logging.getLogger(__name__)

MAX_LISTED_EXCLUSIONS = 50
# Exclusion reasons that are data errors, not the caller's choice of classes: rows that could not be read, images
# outside the allowed data roots, images that failed to decode or their checks. `on_bad_sample="error"` refuses
# data with any of them (the `retvlp evaluate` default).
UNUSABLE_REASONS = ("unparseable_rows", "outside_data_root", "bad_image")
CLASS_ORDER_GIVEN = "given"
CLASS_ORDER_SORTED = "sorted"
CLASS_ORDER_CLASS_LABEL = "ClassLabel"


@dataclass
class LabelledRecords:
    """The labelled records of an evaluation data set.

    Attributes:
        records: kept records, in manifest order.
        class_names: class `c` is `class_names[c]`.
        targets: `(N,)` int64 class ids, or `(N, C)` float32 multi-hot when `multi_label`.
        groups: `(N,)` patient ids (a record without one is its own group: its image path).
        excluded: left-out records per reason (`unparseable_rows`, `outside_data_root`, `unlabelled`,
            `unknown_label`, `several_labels`, `bad_image`).
        excluded_examples: up to 50 `{"source", "row", "reason", ...}` entries naming what was left out.
        class_order: where the order of `class_names` comes from: "given" (the caller's list), "ClassLabel"
            (the data's `ClassLabel` feature) or "sorted" (the labels found, sorted as strings).
    """

    records: list[ManifestRecord]
    class_names: list[str]
    targets: np.ndarray
    groups: np.ndarray
    multi_label: bool
    name: str
    excluded: dict[str, int] = field(default_factory=dict)
    excluded_examples: list[dict] = field(default_factory=list)
    class_order: str = CLASS_ORDER_GIVEN

    def __len__(self) -> int:
        return len(self.records)

    def _exclude(self, reason: str, example: dict) -> None:
        self.excluded[reason] = self.excluded.get(reason, 0) + 1
        if len(self.excluded_examples) < MAX_LISTED_EXCLUSIONS:
            self.excluded_examples.append({**example, "reason": reason})

    def unusable(self) -> tuple[int, list[dict]]:
        """(how many rows or images could not be used, the listed ones): the exclusions of `UNUSABLE_REASONS`."""
        count = sum(self.excluded.get(reason, 0) for reason in UNUSABLE_REASONS)
        return count, [e for e in self.excluded_examples if e["reason"] in UNUSABLE_REASONS]

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
            class_order=self.class_order,
        )


class UnusableImagesError(ValueError):
    """Evaluation data with rows or images that could not be used, under `on_bad_sample="error"`: `count` of
    them, `examples` the listed ones (`LabelledRecords.unusable`); the message lists them."""

    def __init__(self, message: str, count: int = 0, examples: Sequence[dict] = ()):
        super().__init__(message)
        self.count, self.examples = count, list(examples)

    @classmethod
    def of(cls, labelled: LabelledRecords) -> UnusableImagesError:
        count, examples = labelled.unusable()
        return cls(
            f"{count} row(s) or image(s) of {labelled.name} could not be used:\n"
            f"{format_unusable(count, examples)}\n"
            "Fix or remove them (`retvlp validate-data MANIFEST ...` checks every row and image), or evaluate "
            "without them: --on-bad-sample skip (`on_bad_sample='skip'`).",
            count,
            examples,
        )

    def __reduce__(self):  # picklable across processes despite the extra arguments
        return (type(self), (str(self), self.count, self.examples))


def format_unusable(count: int, examples: list[dict]) -> str:
    """One line per listed row or image that could not be used (`source:row: image: reason: message`), and how
    many more there are."""
    lines = [
        "  "
        + ": ".join(
            str(part)
            for part in (
                f"{e.get('source')}:{e.get('row')}",
                e.get("image"),
                e["reason"],
                e.get("message"),
            )
            if part
        )
        for e in examples
    ]
    if count > len(examples):
        lines.append(
            f"  ... and {count - len(examples)} more (results.json lists the first {MAX_LISTED_EXCLUSIONS})"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- data specs
def _is_dataset_object(value) -> bool:
    """A `datasets` object (`Dataset`, `DatasetDict`, ...), told by its module so plain paths need no import."""
    return type(value).__module__.split(".")[0] == "datasets"


def _saved_dataset_kind(path: str) -> str | None:
    """What `save_to_disk` wrote at `path`: "dataset", "dataset_dict", or None (not such a folder)."""
    if not os.path.isdir(path):
        return None
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        return "dataset_dict"
    if all(os.path.isfile(os.path.join(path, name)) for name in ("state.json", "dataset_info.json")):
        return "dataset"
    return None


def _saved_dataset_spec(spec: dict) -> dict:
    """A `{"path": <save_to_disk folder>}` spec as an `hf_dataset` spec (other specs unchanged)."""
    path = spec.get("path")
    kind = _saved_dataset_kind(str(path)) if path is not None else None
    if kind is None:
        return spec
    options = {k: v for k, v in spec.items() if k not in ("path", "format")}
    if kind == "dataset_dict" and "split" not in options:
        splits = _saved_splits(str(path))
        if len(splits) != 1:
            raise ValueError(
                f"{path} is a DatasetDict saved with save_to_disk (splits: {', '.join(splits)}): give one "
                f"split's folder, e.g. {Path(path) / splits[0]} (and the test split as the test data)."
            )
        options["split"] = splits[0]
    return {"hf_dataset": str(path), **options}


def _saved_splits(path: str) -> list[str]:
    with open(os.path.join(path, "dataset_dict.json"), encoding="utf-8") as handle:
        return [str(split) for split in json.load(handle).get("splits", [])]


def _as_spec(item) -> dict:
    """One data item as a spec dict (see the module docstring for what is accepted)."""
    if _is_dataset_object(item):
        return _dataset_object_spec({"dataset": item})
    if isinstance(item, dict):
        spec = dict(item)
        if _is_dataset_object(spec.get("hf_dataset")):
            # `hf_dataset` names a folder or a Hub id; an in-memory dataset given there is what `dataset` takes
            # (as a string it would be looked up on the Hub and fail with a misleading connection error).
            spec["dataset"] = spec.pop("hf_dataset")
        if "dataset" in spec:
            return _dataset_object_spec(spec)
        return _saved_dataset_spec(spec)
    if isinstance(item, (str, os.PathLike)):
        return _saved_dataset_spec({"path": os.fspath(item)})
    raise ValueError(
        f"Cannot read evaluation data of type {type(item).__name__}: give a manifest path, a save_to_disk "
        "folder, a datasets.Dataset or a spec dict ({'path': ...} / {'hf_dataset': ...} / {'dataset': ...})."
    )


def _dataset_object_spec(spec: dict) -> dict:
    """A `{"dataset": <in-memory dataset>}` spec, with one split picked from a `DatasetDict`."""
    dataset = spec["dataset"]
    if type(dataset).__name__ in ("DatasetDict", "IterableDatasetDict"):
        split = spec.pop("split", None)
        if split is None:
            raise ValueError(
                f"Got a DatasetDict (splits: {', '.join(dataset)}): pass one split, e.g. data['test'], or "
                "{'dataset': data, 'split': 'test'}."
            )
        spec["dataset"] = dataset[split]
    elif type(dataset).__name__ == "IterableDataset":
        raise ValueError(
            "A streaming (Iterable) dataset cannot be evaluated: load it without streaming=True."
        )
    return spec


def _as_specs(data) -> list[dict]:
    """Normalise `data` (one item or a list of them) to spec dicts."""
    if isinstance(data, (str, os.PathLike, dict)) or _is_dataset_object(data):
        data = [data]
    return [_as_spec(item) for item in data]


def _spec_name(spec: dict) -> str:
    """What a spec is called in reports and error messages."""
    if "dataset" in spec:
        info = getattr(spec["dataset"], "info", None)
        return str(spec.get("name") or getattr(info, "dataset_name", None) or "dataset")
    return str(spec.get("path", spec.get("hf_dataset", "data")))


def _load_hf_dataset(spec: dict):
    """The `datasets.Dataset` of an `hf_dataset` spec (a `save_to_disk` folder or a Hub id; `split` defaults
    to "train", as for pretraining data) and the remaining `manifest_from_hf_dataset` options."""
    import datasets

    options = dict(spec)
    source, split = options.pop("hf_dataset"), options.pop("split", None)
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            f"hf_dataset must be a save_to_disk folder or a Hub dataset id, got a {type(source).__name__}: pass a "
            "datasets.Dataset itself as the data (or {'dataset': ds})."
        )
    source = os.fspath(source)
    if Path(source).is_dir():
        loaded = datasets.load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            split = split or "train"
            if split not in loaded:
                raise ValueError(f"{source} has no split {split!r} (splits: {', '.join(loaded)}).")
            loaded = loaded[split]
    else:
        split = split or "train"
        loaded = datasets.load_dataset(source, split=split)
    options.setdefault("name", f"{source}:{split}" if split else source)
    return loaded, options


def _class_label_names(dataset, label_column: str | None) -> list[str] | None:
    """The names of the label column's `ClassLabel` feature (also inside a list feature), or None."""
    import datasets

    candidates = [label_column] if label_column not in (None, "label") else ["label", *LABEL_FALLBACKS]
    for column in candidates:
        feature = dataset.features.get(column)
        inner = getattr(feature, "feature", None)
        for candidate in (feature, inner):
            if isinstance(candidate, datasets.ClassLabel):
                return [str(name) for name in candidate.names]
    return None


def _read_manifests(specs: list[dict]) -> tuple[list[Manifest], list[tuple[str, list[str]]]]:
    """Manifests of every spec, and `(spec name, ClassLabel names)` of the Hugging Face datasets that declare
    their classes."""

    manifests, declared = [], []
    for spec in specs:
        if "dataset" not in spec and "hf_dataset" not in spec:
            manifests.extend(read_training_manifests([spec]))
            continue
        if "dataset" in spec:
            options = {k: v for k, v in spec.items() if k != "dataset"}
            dataset = spec["dataset"]
        else:
            dataset, options = _load_hf_dataset(spec)
        names = _class_label_names(dataset, options.get("label_column", "label"))
        if names is not None:
            declared.append((_spec_name({"dataset": dataset, **options}), names))
        manifests.append(manifest_from_hf_dataset(dataset, **options))
    return manifests, declared


def _class_order(
    class_names: Sequence[str] | None, found: list[str], declared: list[tuple[str, list[str]]]
) -> tuple[list[str], str]:
    """(class names in order, where the order comes from): given > ClassLabel > sorted labels found."""
    if class_names is not None:
        return [str(c) for c in class_names], CLASS_ORDER_GIVEN
    if not declared:
        return found, CLASS_ORDER_SORTED
    source, names = declared[0]
    for other, other_names in declared[1:]:
        if other_names != names:
            raise ValueError(
                f"The ClassLabel features of {source} ({names}) and {other} ({other_names}) disagree: pass "
                "the class order explicitly (--classes)."
            )
    undeclared = sorted(set(found) - set(names))
    if undeclared:
        raise ValueError(
            f"Labels {undeclared[:10]} are not among the ClassLabel names of {source} ({names}): pass the "
            "class order explicitly (--classes)."
        )
    return names, CLASS_ORDER_CLASS_LABEL


def _unread_rows_note(manifests: list[Manifest]) -> str:
    """A sentence for the "at least 2 classes" error when rows failed before becoming records (e.g. every
    image outside the allowed data roots): how many, by problem kind, and the first one; else ""."""
    errors = [p for m in manifests for p in m.problems if p.severity == "error"]
    if not errors:
        return ""
    kinds: dict[str, int] = {}
    for problem in errors:
        kinds[problem.kind] = kinds.get(problem.kind, 0) + 1
    return f" {len(errors)} row(s) were not read ({kinds}), e.g. {errors[0].format()}"


def read_labelled_records(
    data,
    class_names: Sequence[str] | None = None,
    *,
    multi_label: bool | None = None,
    name: str | None = None,
) -> LabelledRecords:
    """Read manifests (paths, `save_to_disk` folders, `datasets.Dataset` objects or spec dicts; see the module
    docstring) into labelled records.

    Args:
        class_names: the classes, in order; labels outside them are left out (counted as `unknown_label`).
            Default: the `ClassLabel` names of a Hugging Face dataset's label column, else every label found,
            sorted as strings.
        multi_label: treat the data as multi-label (multi-hot targets). Default: multi-label when any record
            carries more than one label. With `multi_label=False`, records with several labels are left out.
        name: how the data set is called in reports (default: the first manifest's file name).
    """
    specs = _as_specs(data)
    if not specs:
        raise ValueError("No evaluation data: give at least one manifest (--data).")
    manifests, declared = _read_manifests(specs)
    class_names, class_order = _checked_class_names(specs, manifests, class_names, declared)
    if multi_label is None:
        multi_label = any(len(r.labels) > 1 for m in manifests for r in m.records)
    result = LabelledRecords(
        records=[],
        class_names=class_names,
        targets=np.zeros(0),
        groups=np.zeros(0),
        multi_label=multi_label,
        name=name or Path(_spec_name(specs[0])).stem,
        class_order=class_order,
    )
    targets, groups = _keep_labelled(result, manifests)
    if not result.records:
        raise ValueError(
            f"No usable labelled records in {[_spec_name(s) for s in specs]} "
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


def _checked_class_names(
    specs: list[dict],
    manifests: list[Manifest],
    class_names: Sequence[str] | None,
    declared: list[tuple[str, list[str]]],
) -> tuple[list[str], str]:
    """`(class names in order, where the order comes from)` (see `_class_order`), refused unless they are
    unique and at least two. Data whose every row failed to read is refused first, naming why: its "found"
    classes would otherwise be reported as the problem."""
    if not any(m.records for m in manifests) and _unread_rows_note(manifests):
        raise ValueError(
            f"No row of {[_spec_name(s) for s in specs]} could be read." + _unread_rows_note(manifests)
        )
    found = sorted({label for m in manifests for r in m.records for label in r.labels})
    class_names, class_order = _class_order(class_names, found, declared)
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"Class names must be unique, got {class_names}.")
    if len(class_names) < 2:
        raise ValueError(
            f"Evaluation needs at least 2 classes, found {class_names} in {[_spec_name(s) for s in specs]}: "
            "check the label column (--label-column) or pass --classes." + _unread_rows_note(manifests)
        )
    return class_names, class_order


def _keep_labelled(result: LabelledRecords, manifests: list[Manifest]) -> tuple[list, list]:
    """Append the usable records of `manifests` to `result.records` (counting every row left out, in manifest
    order: its unread rows, then its records) and return their `(targets, groups)`, one entry per kept record."""
    index = {c: i for i, c in enumerate(result.class_names)}
    targets, groups = [], []
    for manifest in manifests:
        for problem in manifest.problems:
            if problem.severity != "error":
                continue
            reason = "outside_data_root" if problem.kind == "outside-data-root" else "unparseable_rows"
            result._exclude(
                reason, {"source": problem.source, "row": problem.row, "message": problem.message}
            )
        for record in manifest.records:
            left_out = _why_left_out(record, index, result.multi_label)
            if left_out is not None:
                result._exclude(*left_out)
                continue
            result.records.append(record)
            targets.append(_target_of(record, index, result.multi_label))
            groups.append(record.group if record.group is not None else f"image:{record.image}")
    return targets, groups


def _why_left_out(
    record: ManifestRecord, index: dict[str, int], multi_label: bool
) -> tuple[str, dict] | None:
    """`(reason, example)` when `record` cannot be scored (no label, a label outside the classes, several
    labels in single-label data); None when it is kept."""
    where = {"source": record.source, "row": record.row, "image": str(record.image)}
    if not record.labels:
        return "unlabelled", where
    unknown = [label for label in record.labels if label not in index]
    if unknown:
        return "unknown_label", {**where, "labels": unknown}
    if not multi_label and len(record.labels) > 1:
        return "several_labels", {**where, "labels": list(record.labels)}
    return None


def _target_of(record: ManifestRecord, index: dict[str, int], multi_label: bool):
    """The class id of a kept record, or its `(C,)` float32 multi-hot row."""
    if not multi_label:
        return index[record.labels[0]]
    row = np.zeros(len(index), dtype=np.float32)
    row[[index[label] for label in record.labels]] = 1.0
    return row


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
        # what the view holds (its pool and every record's image), not the pool directory it reads from
        return self.cached.key

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


def positive_class_of(labelled: LabelledRecords) -> str | None:
    """The positive class of the binary metrics (PR-AUC scores column 1): `class_names[1]` for binary
    single-label data, None otherwise (macro one-vs-rest over every class)."""
    if labelled.multi_label or len(labelled.class_names) != 2:
        return None
    return labelled.class_names[1]


def with_positive_class(labelled: LabelledRecords, positive_class: str) -> LabelledRecords:
    """The same records with `positive_class` as class 1 of a binary single-label task (targets flipped when
    it was class 0). Raises `ValueError` for other tasks or an unknown class name."""
    if labelled.multi_label or len(labelled.class_names) != 2:
        raise ValueError(
            f"A positive class only applies to binary single-label tasks; {labelled.name} has "
            f"{len(labelled.class_names)} classes ({', '.join(labelled.class_names)})"
            f"{' and is multi-label' if labelled.multi_label else ''}: leave out --positive-class."
        )
    if positive_class not in labelled.class_names:
        raise ValueError(
            f"Positive class {positive_class!r} is not one of the classes {labelled.class_names}."
        )
    if labelled.class_names[1] == positive_class:
        return labelled
    flipped = labelled.subset(np.ones(len(labelled), dtype=bool))
    flipped.class_names = labelled.class_names[::-1]
    flipped.targets = 1 - labelled.targets
    flipped.class_order = f"{labelled.class_order}, positive class last"
    return flipped
