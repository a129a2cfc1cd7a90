"""Manifests from a `datasets.Dataset`: `manifest_from_hf_dataset`.

An `Image`-feature column becomes lazy `HFImageRef`s (nothing is decoded while reading); a string column holds
image paths. Rows are read in Arrow batches; `datasets` is imported only when a dataset is read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .manifest_columns import ManifestColumns, collect_row, resolve_columns
from .manifest_records import (
    DEFAULT_GROUP_COLUMN,
    DEFAULT_IMAGE_COLUMN,
    DEFAULT_LABEL_COLUMN,
    DEFAULT_TEXT_COLUMN,
    HFImageRef,
    Manifest,
    ManifestRecord,
    assign_role,
    check_role,
    parse_group,
    parse_labels,
    parse_text,
    resolve_path,
)
from .problems import DataProblem, make_problem
from .roots import DataRoots, root_list


def _class_names_of(feature: Any) -> list[str] | None:
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.ClassLabel):
        return list(inner.names)
    return None


def _label_names(value: Any, names: list[str] | None) -> Any:
    """ClassLabel ids (or lists of them) to names; -1 (no label) to None."""
    if names is None or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_label_names(v, names) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return names[value] if 0 <= value < len(names) else None
    return value


def _check_dataset(dataset: Any) -> None:
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ValueError(f"pass one split, e.g. dataset['train'], not a {type(dataset).__name__}")
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"expected a datasets.Dataset, got {type(dataset).__name__} (streaming is not supported)"
        )


def _dataset_source(dataset: Any, name: str | None) -> str:
    """`hf:<name>`: the name given, else the dataset's own name, else "dataset"."""
    info = dataset.info
    name = name or getattr(info, "dataset_name", None) or getattr(info, "builder_name", None) or "dataset"
    return f"hf:{name}"


def _image_references(dataset: Any, columns: ManifestColumns, source: str) -> Any:
    """For an `Image`-feature column, the dataset that `HFImageRef`s point into (that column only, undecoded);
    None for a column of path strings. Raises ValueError for any other column type."""
    import datasets

    image_feature = dataset.features[columns.image]
    if isinstance(image_feature, datasets.Image):
        references = dataset.select_columns([columns.image])
        if image_feature.decode:
            references = references.cast_column(columns.image, datasets.Image(decode=False))
        return references
    if isinstance(image_feature, datasets.Value) and image_feature.dtype in ("string", "large_string"):
        return None
    raise ValueError(
        f"dataset {source}: column {columns.image!r} is {image_feature}; expected a datasets.Image feature or "
        "image paths as strings (choose the column with image_column=...)"
    )


class _HFRows:
    """Reads a dataset's rows batch by batch into records and problems."""

    def __init__(
        self,
        dataset: Any,
        source: str,
        columns: ManifestColumns,
        references: Any,
        base: str,
        roots: DataRoots,
        role: str | None,
        separator: str | None,
    ):
        self.source, self.columns, self.references = source, columns, references
        self.base, self.roots, self.role, self.separator = base, roots, role, separator
        self.names = {
            column: _class_names_of(dataset.features[column])
            for column in (columns.label, columns.attributes)
            if column is not None
        }
        self.wanted = [
            c
            for c in dict.fromkeys(
                (columns.image, columns.text, columns.label, columns.group, columns.attributes)
            )
            if c
        ]
        self.table = dataset.select_columns(self.wanted).with_format("arrow")
        self.records: list[ManifestRecord] = []
        self.problems: list[DataProblem] = []

    def read_batch(self, start: int, batch_size: int) -> None:
        batch = self.table[start : start + batch_size]
        images = batch.column(self.columns.image).combine_chunks()
        has_data, image_values = self._images(images, start)
        values = {c: batch.column(c).to_pylist() for c in self.wanted if c != self.columns.image}
        for i in range(len(images)):
            result = self._row(start + i + 1, has_data[i], image_values[i], values, i)
            collect_row(result, self.records, self.problems)

    def _images(self, images: Any, start: int) -> tuple[list[bool], list[Any]]:
        """Per row of the batch: whether it has an image, and the image (an `HFImageRef` or a resolved path)."""
        if self.references is not None:
            present = images.is_valid().to_pylist()
            has_bytes = images.field("bytes").is_valid().to_pylist()
            has_path = images.field("path").is_valid().to_pylist()
            has_data = [v and (b or p) for v, b, p in zip(present, has_bytes, has_path, strict=True)]
            image_values: list[Any] = [
                HFImageRef(self.references, start + i, self.columns.image) for i in range(len(images))
            ]
        else:
            paths = images.to_pylist()
            has_data = [bool(p and p.strip()) for p in paths]
            image_values = [
                resolve_path(p, self.base) if ok else None for p, ok in zip(paths, has_data, strict=True)
            ]
        return has_data, image_values

    def _labels(self, column: str | None, values: dict[str, list], i: int) -> tuple[str, ...]:
        if not column:
            return ()
        return parse_labels(_label_names(values[column][i], self.names[column]), self.separator)

    def _row(
        self, row: int, has_data: bool, image: Any, values: dict[str, list], i: int
    ) -> ManifestRecord | DataProblem:
        cols = self.columns
        if not has_data:
            return make_problem(
                self.source,
                row,
                "",
                "missing-image-field",
                f"the row has no image in column {cols.image!r}; fill it in or drop the row",
            )
        outside = None if self.references is not None else self.roots.problem(self.source, row, image)
        if outside is not None:
            return outside
        try:
            labels = self._labels(cols.label, values, i)
            attributes = self._labels(cols.attributes, values, i)
        except ValueError as exc:
            return make_problem(self.source, row, str(image), "unparseable-row", str(exc))
        text = parse_text(values[cols.text][i]) if cols.text else None
        group = parse_group(values[cols.group][i]) if cols.group else None
        text, labels, record_role = assign_role(text, labels, self.role)
        return ManifestRecord(
            image=image,
            text=text,
            labels=labels,
            group=group,
            source=self.source,
            row=row,
            role=record_role,
            attributes=attributes,
        )


def manifest_from_hf_dataset(
    dataset: Any,
    *,
    image_column: str = DEFAULT_IMAGE_COLUMN,
    text_column: str | None = DEFAULT_TEXT_COLUMN,
    label_column: str | None = DEFAULT_LABEL_COLUMN,
    group_column: str | None = DEFAULT_GROUP_COLUMN,
    role: str | None = None,
    name: str | None = None,
    image_root: str | os.PathLike | None = None,
    label_separator: str | None = "|",
    batch_size: int = 1000,
    allowed_roots: Sequence[str | os.PathLike] | None = None,
    allow_outside_data_roots: bool = False,
) -> Manifest:
    """Records for a `datasets.Dataset`: rows are index + 1, the source is "hf:<name>". An `Image`-feature
    column becomes lazy `HFImageRef`s (nothing is decoded while reading); a string column holds paths, resolved
    against `image_root` (else the working directory). `ClassLabel` ids (also in lists) become class names.

    Paths of a string column must resolve inside `image_root` (else the working directory) or one of
    `allowed_roots`, unless `allow_outside_data_roots`; others become `outside-data-root` problems. Images held
    by an `Image` feature are the dataset's own data, not files the manifest points to, and are not checked."""
    check_role(role)
    _check_dataset(dataset)
    source = _dataset_source(dataset, name)
    columns = resolve_columns(
        list(dataset.column_names),
        f"dataset {source}",
        image_column=image_column,
        text_column=text_column,
        label_column=label_column,
        group_column=group_column,
    )
    references = _image_references(dataset, columns, source)
    base = (
        os.path.abspath(os.path.expanduser(os.fspath(image_root))) if image_root is not None else os.getcwd()
    )
    roots = DataRoots((base, *root_list(allowed_roots)), allow_outside=allow_outside_data_roots)
    rows = _HFRows(dataset, source, columns, references, base, roots, role, label_separator)
    for start in range(0, len(dataset), batch_size):
        rows.read_batch(start, batch_size)
    return Manifest(rows.records, rows.problems, source, "hf")
