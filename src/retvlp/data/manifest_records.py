"""Manifest records and the field parsing every manifest reader shares.

`ManifestRecord` is one image with its caption, labels, group and role; `Manifest` is a reader's result (its
records plus the `DataProblem`s of the rows it could not read); `HFImageRef` points lazily at one image of a
`datasets.Dataset`. The helpers below turn one raw field (a CSV cell, a JSON value, an Arrow value) into a
record's text, labels or group, and give a record its role.
"""

from __future__ import annotations

import ast
import io
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .problems import DataProblem

ROLES = ("paired", "categorical", "unpaired")

# When a column argument is left at its default and that column is absent, these names are tried in turn.
DEFAULT_IMAGE_COLUMN = "image"
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_LABEL_COLUMN = "label"
DEFAULT_GROUP_COLUMN = "patient_id"
TEXT_FALLBACKS = ("caption",)
LABEL_FALLBACKS = ("labels", "categories")
GROUP_FALLBACKS = ("group", "patient")
ATTRIBUTE_COLUMNS = ("atributes", "attributes")  # FLAIR spells it `atributes`


@dataclass(frozen=True, eq=False)
class HFImageRef:
    """A lazy reference to one image of a `datasets.Dataset` (row `index`, column `column`).

    Two references are equal when they point at the same row and column of the same dataset object."""

    dataset: Any = field(repr=False)
    index: int
    column: str

    def raw(self) -> Any:
        """The stored value without decoding: an Image-feature dict `{"bytes", "path"}`, a path string, or a PIL
        image (when the dataset decodes images itself)."""
        return self.dataset[self.index][self.column]

    def load(self) -> Image.Image:
        """Decode the image fully (its mode as stored; `validation.to_rgb` converts it to RGB)."""
        value = self.raw()
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, Image.Image):
            value.load()
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            image = Image.open(io.BytesIO(bytes(value)))
        elif isinstance(value, (str, os.PathLike)):
            with open(value, "rb") as handle:
                image = Image.open(io.BytesIO(handle.read()))
        else:
            raise ValueError(f"{self}: no image data (value {value!r})")
        image.load()
        return image

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HFImageRef):
            return NotImplemented
        return self.dataset is other.dataset and self.index == other.index and self.column == other.column

    def __hash__(self) -> int:
        return hash((id(self.dataset), self.index, self.column))

    def __str__(self) -> str:
        return f"{self.column}[{self.index}]"


@dataclass(frozen=True)
class ManifestRecord:
    image: str | HFImageRef
    text: str | None
    labels: tuple[str, ...]
    group: str | None
    source: str
    row: int
    role: str
    attributes: tuple[str, ...] = ()


@dataclass
class Manifest:
    records: list[ManifestRecord]
    problems: list[DataProblem]
    source: str
    format: str = ""

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(sorted({label for record in self.records for label in record.labels}))

    def role_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(ROLES, 0)
        for record in self.records:
            counts[record.role] += 1
        return counts

    def __len__(self) -> int:
        return len(self.records)


# --------------------------------------------------------------------------------------------------------------
# Field parsing


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _scalar_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_labels(value: Any, separator: str | None = "|") -> tuple[str, ...]:
    """Labels from a manifest field: a list, a JSON or Python list written as a string ("['a', 'b']"), a string
    split on `separator`, or one scalar. Blank entries are dropped, repeats removed. Raises ValueError for a
    string that looks like a list but cannot be parsed."""
    if is_missing(value):
        return ()
    if isinstance(value, (list, tuple)):
        items: Iterable[Any] = value
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return ()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                try:
                    parsed = ast.literal_eval(text)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    raise ValueError(f"cannot parse the list {text!r}") from None
            if not isinstance(parsed, (list, tuple)):
                raise ValueError(f"cannot parse the list {text!r}")
            items = parsed
        elif separator and separator in text:
            items = text.split(separator)
        else:
            items = [text]
    else:
        items = [value]
    labels: list[str] = []
    for item in items:
        if is_missing(item):
            continue
        label = _scalar_text(item)
        if label and label not in labels:
            labels.append(label)
    return tuple(labels)


def parse_text(value: Any) -> str | None:
    if is_missing(value):
        return None
    return value.strip() if isinstance(value, str) else _scalar_text(value)


def parse_group(value: Any) -> str | None:
    if is_missing(value):
        return None
    group = _scalar_text(value)
    return group or None


def resolve_path(value: str, base: str) -> str:
    path = os.path.expanduser(value.strip())
    if not os.path.isabs(path):
        path = os.path.join(base, path)
    return os.path.abspath(path)


def assign_role(text: str | None, labels: tuple[str, ...], role: str | None):
    """(text, labels, role): the role from the content, or the forced role with the fields it ignores cleared
    (a forced `paired` row without a caption gets text "" so validation reports it)."""
    if role is None:
        return text, labels, "paired" if text is not None else "categorical" if labels else "unpaired"
    if role == "paired":
        return ("" if text is None else text), labels, role
    if role == "categorical":
        return None, labels, role
    return None, (), role


def check_role(role: str | None) -> None:
    if role is not None and role not in ROLES:
        raise ValueError(
            f"unknown role {role!r}; expected one of {', '.join(ROLES)} (or None to decide per row)"
        )
