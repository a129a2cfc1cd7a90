"""Manifest columns and rows: which columns hold the image, caption, labels, group and FLAIR attributes (with
the fallback names tried for columns left at their defaults), and `RowReader`, which turns one row's values into
a `ManifestRecord` or a `DataProblem` for the CSV and JSON readers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .manifest_records import (
    ATTRIBUTE_COLUMNS,
    DEFAULT_GROUP_COLUMN,
    DEFAULT_LABEL_COLUMN,
    DEFAULT_TEXT_COLUMN,
    GROUP_FALLBACKS,
    LABEL_FALLBACKS,
    TEXT_FALLBACKS,
    ManifestRecord,
    assign_role,
    is_missing,
    parse_group,
    parse_labels,
    parse_text,
    resolve_path,
)
from .problems import DataProblem, make_problem
from .roots import DataRoots


@dataclass
class ManifestColumns:
    image: str
    text: str | None
    label: str | None
    group: str | None
    attributes: str | None
    # per field, every present column that may hold it, in order of preference (more than one only for
    # columns left at their default names, e.g. JSON lines mixing "label" and "labels" keys)
    candidates: dict[str, tuple[str, ...]] = field(default_factory=dict)


def match_column(columns: Sequence[str], name: str) -> str | None:
    if name in columns:
        return name
    wanted = name.strip().lower()
    for column in columns:
        if column.strip().lower() == wanted:
            return column
    return None


def _find_column(
    columns: Sequence[str], name: str | None, default: str, fallbacks: Sequence[str], what: str, where: str
) -> str | None:
    if not name:
        return None
    found = match_column(columns, name)
    if found is not None:
        return found
    if name == default:
        for fallback in fallbacks:
            found = match_column(columns, fallback)
            if found is not None:
                return found
        return None
    raise ValueError(
        f"{where}: no {what} column {name!r}; columns found: {_list_columns(columns)}. "
        f"Pass the right name with --{what}-column ({what}_column=...)."
    )


def _all_matches(
    columns: Sequence[str], name: str | None, default: str, fallbacks: Sequence[str], found: str | None
) -> tuple[str, ...]:
    if found is None:
        return ()
    if name != default:
        return (found,)
    matches = (match_column(columns, n) for n in (name, *fallbacks))
    return tuple(dict.fromkeys(m for m in matches if m is not None))


def _list_columns(columns: Sequence[str]) -> str:
    return ", ".join(repr(c) for c in columns) if columns else "(none)"


def resolve_columns(
    columns: Sequence[str],
    where: str,
    *,
    image_column: str,
    text_column: str | None,
    label_column: str | None,
    group_column: str | None,
) -> ManifestColumns:
    image = match_column(columns, image_column)
    if image is None:
        candidates = [c for c in columns if any(w in c.lower() for w in ("image", "img", "path", "file"))]
        hint = f" (maybe --image-column {candidates[0]!r}?)" if candidates else ""
        raise ValueError(
            f"{where}: no image column {image_column!r}; columns found: {_list_columns(columns)}. "
            f"Name the column that holds the image paths with --image-column NAME (image_column=...){hint}."
        )
    attributes = tuple(c for c in (match_column(columns, a) for a in ATTRIBUTE_COLUMNS) if c)
    result = ManifestColumns(
        image=image, text=None, label=None, group=None, attributes=attributes[0] if attributes else None
    )
    result.candidates["attributes"] = attributes
    for what, name, default, fallbacks in (
        ("text", text_column, DEFAULT_TEXT_COLUMN, TEXT_FALLBACKS),
        ("label", label_column, DEFAULT_LABEL_COLUMN, LABEL_FALLBACKS),
        ("group", group_column, DEFAULT_GROUP_COLUMN, GROUP_FALLBACKS),
    ):
        found = _find_column(columns, name, default, fallbacks, what, where)
        setattr(result, what, found)
        result.candidates[what] = _all_matches(columns, name, default, fallbacks, found)
    return result


class RowReader:
    """Builds a record (or a problem) from one row's values, for the CSV and JSON readers."""

    def __init__(
        self,
        source: str,
        columns: ManifestColumns,
        base: str,
        role: str | None,
        separator: str | None,
        roots: DataRoots,
    ):
        self.source, self.columns, self.base, self.role, self.separator, self.roots = (
            source,
            columns,
            base,
            role,
            separator,
            roots,
        )

    def _get(self, values: Mapping[str, Any], what: str) -> Any:
        """The first non-blank value among the field's candidate columns, else the first one present."""
        present = [values[name] for name in self.columns.candidates[what] if name in values]
        for value in present:
            if not is_missing(value) and not (isinstance(value, str) and not value.strip()):
                return value
        return present[0] if present else None

    def __call__(self, row: int, values: Mapping[str, Any]) -> ManifestRecord | DataProblem:
        cols = self.columns
        image = values.get(cols.image)
        if is_missing(image) or (isinstance(image, str) and not image.strip()):
            return make_problem(
                self.source,
                row,
                "",
                "missing-image-field",
                f"the row has no image path in column {cols.image!r}; fill it in or remove the row",
            )
        if not isinstance(image, str):
            return make_problem(
                self.source,
                row,
                "",
                "missing-image-field",
                f"the {cols.image!r} field is {type(image).__name__} {image!r}, not an image path; fix the row",
            )
        path = resolve_path(image, self.base)
        outside = self.roots.problem(self.source, row, path)
        if outside is not None:  # never becomes a record, so nothing downstream opens it
            return outside
        try:
            labels = parse_labels(self._get(values, "label"), self.separator)
            attributes = parse_labels(self._get(values, "attributes"), self.separator)
        except ValueError as exc:
            return make_problem(
                self.source, row, path, "unparseable-row", f"{exc}; write labels as ['a', 'b'] or a|b"
            )
        text = parse_text(self._get(values, "text"))
        group = parse_group(self._get(values, "group"))
        text, labels, role = assign_role(text, labels, self.role)
        return ManifestRecord(
            image=path,
            text=text,
            labels=labels,
            group=group,
            source=self.source,
            row=row,
            role=role,
            attributes=attributes,
        )


def collect_row(result: ManifestRecord | DataProblem, records: list, problems: list) -> None:
    (records if isinstance(result, ManifestRecord) else problems).append(result)
