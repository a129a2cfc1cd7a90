"""Manifest readers: turn the files users already have into `ManifestRecord`s.

Supported sources:

* CSV / TSV with an image column plus `text` and/or `label` / `labels` (and optionally `patient_id`);
* FLAIR-style CSV (`image`, `atributes`, `categories`, the last two stringified Python lists);
* JSON lines (one object per line; a `.json` file may also hold one list of objects);
* ImageFolder trees (`root/<class name>/<image files>`; images directly under `root` are unpaired);
* any `datasets.Dataset` with an image column (`datasets.Image` feature or path strings), via
  `manifest_from_hf_dataset`.

Every record gets a role: `paired` (has a caption), `categorical` (labels, no caption) or `unpaired` (image
only), unless a manifest-level `role=` forces one. Rows that cannot be read (malformed JSON, not UTF-8, no image
path, broken CSV quoting) never crash the reader and are never dropped silently: they become `DataProblem`s in
`Manifest.problems`, each naming the file and the row.
"""

from __future__ import annotations

import ast
import codecs
import csv
import errno
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .roots import DataRoots, manifest_roots, root_list
from .validation import DataProblem, make_problem

ROLES = ("paired", "categorical", "unpaired")
FORMATS = ("csv", "tsv", "flair", "jsonl", "json", "imagefolder")
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jfif",
        ".png",
        ".bmp",
        ".tif",
        ".tiff",
        ".webp",
        ".gif",
        ".ppm",
        ".pgm",
        ".pbm",
        ".jp2",
    }
)

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


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _scalar_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_labels(value: Any, separator: str | None = "|") -> tuple[str, ...]:
    """Labels from a manifest field: a list, a JSON or Python list written as a string ("['a', 'b']"), a string
    split on `separator`, or one scalar. Blank entries are dropped, repeats removed. Raises ValueError for a
    string that looks like a list but cannot be parsed."""
    if _is_missing(value):
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
        if _is_missing(item):
            continue
        label = _scalar_text(item)
        if label and label not in labels:
            labels.append(label)
    return tuple(labels)


def _parse_text(value: Any) -> str | None:
    if _is_missing(value):
        return None
    return value.strip() if isinstance(value, str) else _scalar_text(value)


def _parse_group(value: Any) -> str | None:
    if _is_missing(value):
        return None
    group = _scalar_text(value)
    return group or None


def _resolve_path(value: str, base: str) -> str:
    path = os.path.expanduser(value.strip())
    if not os.path.isabs(path):
        path = os.path.join(base, path)
    return os.path.abspath(path)


def _assign_role(text: str | None, labels: tuple[str, ...], role: str | None):
    """(text, labels, role): the role from the content, or the forced role with the fields it ignores cleared
    (a forced `paired` row without a caption gets text "" so validation reports it)."""
    if role is None:
        return text, labels, "paired" if text is not None else "categorical" if labels else "unpaired"
    if role == "paired":
        return ("" if text is None else text), labels, role
    if role == "categorical":
        return None, labels, role
    return None, (), role


def _check_role(role: str | None) -> None:
    if role is not None and role not in ROLES:
        raise ValueError(
            f"unknown role {role!r}; expected one of {', '.join(ROLES)} (or None to decide per row)"
        )


# --------------------------------------------------------------------------------------------------------------
# Columns


@dataclass
class _Columns:
    image: str
    text: str | None
    label: str | None
    group: str | None
    attributes: str | None
    # per field, every present column that may hold it, in order of preference (more than one only for
    # columns left at their default names, e.g. JSON lines mixing "label" and "labels" keys)
    candidates: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _match_column(columns: Sequence[str], name: str) -> str | None:
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
    found = _match_column(columns, name)
    if found is not None:
        return found
    if name == default:
        for fallback in fallbacks:
            found = _match_column(columns, fallback)
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
    matches = (_match_column(columns, n) for n in (name, *fallbacks))
    return tuple(dict.fromkeys(m for m in matches if m is not None))


def _list_columns(columns: Sequence[str]) -> str:
    return ", ".join(repr(c) for c in columns) if columns else "(none)"


def _resolve_columns(
    columns: Sequence[str],
    where: str,
    *,
    image_column: str,
    text_column: str | None,
    label_column: str | None,
    group_column: str | None,
) -> _Columns:
    image = _match_column(columns, image_column)
    if image is None:
        candidates = [c for c in columns if any(w in c.lower() for w in ("image", "img", "path", "file"))]
        hint = f" (maybe --image-column {candidates[0]!r}?)" if candidates else ""
        raise ValueError(
            f"{where}: no image column {image_column!r}; columns found: {_list_columns(columns)}. "
            f"Name the column that holds the image paths with --image-column NAME (image_column=...){hint}."
        )
    attributes = tuple(c for c in (_match_column(columns, a) for a in ATTRIBUTE_COLUMNS) if c)
    result = _Columns(
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


class _RowReader:
    """Builds a record (or a problem) from one row's values, for the CSV and JSON readers."""

    def __init__(
        self,
        source: str,
        columns: _Columns,
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
            if not _is_missing(value) and not (isinstance(value, str) and not value.strip()):
                return value
        return present[0] if present else None

    def __call__(self, row: int, values: Mapping[str, Any]) -> ManifestRecord | DataProblem:
        cols = self.columns
        image = values.get(cols.image)
        if _is_missing(image) or (isinstance(image, str) and not image.strip()):
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
        path = _resolve_path(image, self.base)
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
        text = _parse_text(self._get(values, "text"))
        group = _parse_group(self._get(values, "group"))
        text, labels, role = _assign_role(text, labels, self.role)
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


def _collect(result: ManifestRecord | DataProblem, records: list, problems: list) -> None:
    (records if isinstance(result, ManifestRecord) else problems).append(result)


# --------------------------------------------------------------------------------------------------------------
# Bytes to lines


def split_lines(data: bytes) -> tuple[list[bytes], list[int]]:
    """Physical lines (with their endings) and the byte offset of each; a UTF-8 byte-order mark is skipped."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    lines = data[start:].splitlines(keepends=True)
    offsets, offset = [], start
    for line in lines:
        offsets.append(offset)
        offset += len(line)
    return lines, offsets


def utf8_problem_message(line: bytes, offset: int, exc: UnicodeDecodeError, line_number: int) -> str:
    bad = line[exc.start : max(exc.end, exc.start + 1)]
    return (
        f"line {line_number} is not valid UTF-8 ({exc.reason}: byte{'s' if len(bad) > 1 else ''} "
        f"{bad.hex(' ')} at byte offset {offset + exc.start} of the file, {bad.decode('latin-1')!r} in Latin-1); "
        "the file looks Latin-1/Windows-1252 encoded: re-encode it as UTF-8, "
        "e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`"
    )


def readable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------------------------
# CSV / TSV / FLAIR


def _read_delimited(
    path: str,
    source: str,
    delimiter: str,
    base: str,
    role: str | None,
    separator: str | None,
    column_args: dict,
    roots: DataRoots,
) -> tuple[list[ManifestRecord], list[DataProblem], list[str]]:
    with open(path, "rb") as handle:
        data = handle.read()
    lines, offsets = split_lines(data)
    bad_lines: dict[int, tuple[bytes, int, UnicodeDecodeError]] = {}
    texts = []
    for index, line in enumerate(lines):
        try:
            texts.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            bad_lines[index] = (line, offsets[index], exc)
            texts.append(line.decode("utf-8", "surrogateescape"))
    consumed = 0

    def feed():
        nonlocal consumed
        for index, text in enumerate(texts):
            consumed = index + 1
            yield text

    reader = csv.reader(feed(), delimiter=delimiter, strict=True)
    records: list[ManifestRecord] = []
    problems: list[DataProblem] = []
    header: list[str] | None = None
    build: Callable | None = None
    row = 0
    while True:
        start = consumed
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if header is None:
                raise ValueError(f"{source}: cannot parse the header line ({exc}); fix its quoting") from None
            row += 1
            end = max(consumed, start + 1)
            span = f"line {start + 1}" if end == start + 1 else f"lines {start + 1}-{end}"
            problems.append(
                make_problem(
                    source,
                    row,
                    "",
                    "unparseable-row",
                    f"broken CSV quoting on {span} ({exc}); quote fields that contain {delimiter!r}, quotes or "
                    'line breaks ("..." with inner quotes doubled) and check for an unclosed quote',
                )
            )
            continue
        used = range(start, consumed)
        bad = [(i, *bad_lines[i]) for i in used if i in bad_lines]
        if header is None:
            if not any(f.strip() for f in fields):
                continue  # blank lines before the header
            header = [readable(f).strip() for f in fields]
            if header:
                header[0] = header[0].lstrip("\ufeff")
            if bad:
                index, line, offset, exc = bad[0]
                problems.append(
                    make_problem(
                        source,
                        0,
                        "",
                        "not-utf8",
                        "header " + utf8_problem_message(line, offset, exc, index + 1),
                    )
                )
            columns = _resolve_columns(header, source, **column_args)
            build = _RowReader(source, columns, base, role, separator, roots)
            continue
        row += 1
        if not any(f.strip() for f in fields):
            continue  # blank line (or only delimiters): no data
        if bad:
            index, line, offset, exc = bad[0]
            image_index = header.index(build.columns.image)
            image = readable(fields[image_index]).strip() if image_index < len(fields) else ""
            image = _resolve_path(image, base) if image else ""
            problems.append(
                make_problem(
                    source,
                    row,
                    image,
                    "not-utf8",
                    utf8_problem_message(line, offset, exc, index + 1),
                )
            )
            continue
        if len(fields) > len(header):
            image_index = header.index(build.columns.image)
            problems.append(
                make_problem(
                    source,
                    row,
                    _resolve_path(fields[image_index], base) if fields[image_index].strip() else "",
                    "unparseable-row",
                    f"the row has {len(fields)} fields but the header has {len(header)} (an unquoted "
                    f"{delimiter!r} inside a caption?); quote that field",
                )
            )
            continue
        values = {name: (fields[i] if i < len(fields) else "") for i, name in enumerate(header)}
        _collect(build(row, values), records, problems)
    if header is None:
        raise ValueError(
            f"{source}: the file is empty; a CSV manifest needs a header line naming its columns"
        )
    return records, problems, header


# --------------------------------------------------------------------------------------------------------------
# JSON lines


def _read_json(
    path: str,
    source: str,
    base: str,
    role: str | None,
    separator: str | None,
    column_args: dict,
    allow_array: bool,
    roots: DataRoots,
) -> tuple[list[ManifestRecord], list[DataProblem], str]:
    with open(path, "rb") as handle:
        data = handle.read()
    problems: list[DataProblem] = []
    rows: list[tuple[int, dict]] = []
    kind = "jsonl"  # or "json" for a file holding one list of objects
    stripped = data.lstrip(codecs.BOM_UTF8).lstrip()
    lines, offsets = split_lines(data)
    if allow_array and stripped[:1] in (b"[", b"{"):
        try:
            whole = json.loads(stripped.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            whole = None
        if isinstance(whole, list):
            kind = "json"
            for index, item in enumerate(whole, 1):
                if isinstance(item, dict):
                    rows.append((index, item))
                else:
                    problems.append(
                        make_problem(
                            source,
                            index,
                            "",
                            "unparseable-row",
                            f"item {index} is not a JSON object: {item!r:.80}",
                        )
                    )
            lines = []
        elif isinstance(whole, dict) and sum(1 for line in lines if line.strip()) > 1:
            raise ValueError(
                f"{source}: the file holds one JSON object over several lines; write one object per line "
                "(JSON lines) or a list of objects"
            )
    for index, line in enumerate(lines):
        number = index + 1
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(
                make_problem(
                    source, number, "", "not-utf8", utf8_problem_message(line, offsets[index], exc, number)
                )
            )
            continue
        try:
            item = json.loads(text)
        except ValueError as exc:
            message = getattr(exc, "msg", str(exc))
            column = getattr(exc, "colno", None)
            where = f" at column {column}" if column else ""
            problems.append(
                make_problem(
                    source,
                    number,
                    "",
                    "unparseable-row",
                    f"not valid JSON ({message}{where}); fix the line (one JSON object per line)",
                )
            )
            continue
        if not isinstance(item, dict):
            problems.append(
                make_problem(
                    source,
                    number,
                    "",
                    "unparseable-row",
                    f"a JSON object was expected, got {type(item).__name__}",
                )
            )
            continue
        rows.append((number, item))
    columns: list[str] = []
    for _, item in rows:
        for key in item:
            if key not in columns:
                columns.append(key)
    records: list[ManifestRecord] = []
    if rows:
        columns_found = _resolve_columns(columns, source, **column_args)
        build = _RowReader(source, columns_found, base, role, separator, roots)
        for number, item in rows:
            _collect(build(number, item), records, problems)
    return records, problems, kind


# --------------------------------------------------------------------------------------------------------------
# ImageFolder


def _walk_images(root: str, source: str, roots: DataRoots) -> tuple[list[tuple[str, ...]], list[DataProblem]]:
    """The image files under `root` as path parts relative to it, sorted, and a problem per symlinked folder
    that leads outside the data roots (not descended into: a link to `/` must not walk the whole disk)."""
    found: list[tuple[str, ...]] = []
    problems: list[DataProblem] = []
    visited: set[str] = set()
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in visited:  # a symlink loop
            subdirectories[:] = []
            continue
        visited.add(real)
        kept = []
        for name in sorted(d for d in subdirectories if not d.startswith(".")):
            outside = roots.problem(source, 0, os.path.join(directory, name))
            if outside is None:
                kept.append(name)
            else:
                problems.append(outside)
        subdirectories[:] = kept
        relative = os.path.relpath(directory, root)
        parts = () if relative == os.curdir else tuple(relative.split(os.sep))
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append((*parts, name))
    found.sort()
    return found, problems


def _read_image_folder(
    root: str, source: str, role: str | None, roots: DataRoots
) -> tuple[list[ManifestRecord], list[DataProblem]]:
    root = os.path.abspath(root)
    found, problems = _walk_images(root, source, roots)
    records = []
    for row, parts in enumerate(found, 1):
        path = os.path.join(root, *parts)
        outside = roots.problem(source, row, path)  # a symlinked file leading out of the tree
        if outside is not None:
            problems.append(outside)
            continue
        labels = (parts[0],) if len(parts) > 1 else ()
        text, labels, record_role = _assign_role(None, labels, role)
        records.append(
            ManifestRecord(
                image=path,
                text=text,
                labels=labels,
                group=None,
                source=source,
                row=row,
                role=record_role,
            )
        )
    return records, problems


# --------------------------------------------------------------------------------------------------------------
# Entry points


def _detect_format(path: str) -> str:
    if os.path.isdir(path):
        return "imagefolder"
    extension = os.path.splitext(path)[1].lower()
    if extension in (".jsonl", ".ndjson"):
        return "jsonl"
    if extension == ".json":
        return "json"
    if extension in (".tsv", ".tab"):
        return "tsv"
    if extension == ".csv":
        return "csv"
    with open(path, "rb") as handle:
        start = handle.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
    return "json" if start[:1] in (b"{", b"[") else "csv"


def read_manifest(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    image_column: str = DEFAULT_IMAGE_COLUMN,
    text_column: str | None = DEFAULT_TEXT_COLUMN,
    label_column: str | None = DEFAULT_LABEL_COLUMN,
    group_column: str | None = DEFAULT_GROUP_COLUMN,
    role: str | None = None,
    format: str | None = None,
    label_separator: str | None = "|",
    allowed_roots: Sequence[str | os.PathLike] | None = None,
    allow_outside_data_roots: bool = False,
) -> Manifest:
    """Read a CSV/TSV, FLAIR CSV, JSON-lines manifest or an ImageFolder tree.

    Relative image paths are resolved against `image_root` if given, else the manifest file's folder. Columns
    left at their default names fall back to `caption` (text), `labels` / `categories` (labels), `group` /
    `patient` (group) when absent; a column named explicitly must exist. `format`: None (from the extension:
    .csv/.tsv/.jsonl/.json, a directory is an ImageFolder) or one of `FORMATS`.

    Data roots (`retvlp.data.roots`): an image path that resolves (symlinks and `..` followed) outside the
    manifest's folder, `image_root` and the extra `allowed_roots` becomes an `outside-data-root` problem, not a
    record, and is never opened; `allow_outside_data_roots=True` switches the check off.
    """
    _check_role(role)
    source = os.fspath(path)
    if not os.path.exists(source):
        raise FileNotFoundError(errno.ENOENT, "manifest not found", source)
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown manifest format {format!r}; expected one of {', '.join(FORMATS)}")
    detected = format or _detect_format(source)
    if detected == "imagefolder":
        if not os.path.isdir(source):
            raise ValueError(f"{source}: format 'imagefolder' needs a directory")
        roots = manifest_roots(source, None, allowed_roots, allow_outside_data_roots)
        records, problems = _read_image_folder(source, source, role, roots)
        return Manifest(records, problems, source, "imagefolder")
    if os.path.isdir(source):
        raise ValueError(f"{source} is a directory; use format='imagefolder' (or no format) to read it")
    if image_root is not None:
        base = os.path.abspath(os.path.expanduser(os.fspath(image_root)))
        if not os.path.isdir(base):
            raise FileNotFoundError(errno.ENOENT, "image root not found", os.fspath(image_root))
    else:
        base = os.path.dirname(os.path.abspath(source))
    roots = manifest_roots(source, image_root, allowed_roots, allow_outside_data_roots)
    column_args = dict(
        image_column=image_column,
        text_column=text_column,
        label_column=label_column,
        group_column=group_column,
    )
    if detected in ("jsonl", "json"):
        records, problems, detected = _read_json(
            source,
            source,
            base,
            role,
            label_separator,
            column_args,
            allow_array=detected == "json",
            roots=roots,
        )
        return Manifest(records, problems, source, detected)
    extension = os.path.splitext(source)[1].lower()
    delimiter = "\t" if detected == "tsv" or extension in (".tsv", ".tab") else ","
    records, problems, header = _read_delimited(
        source, source, delimiter, base, role, label_separator, column_args, roots
    )
    if detected == "csv" and _match_column(header, "categories") is not None:
        detected = "flair"
    return Manifest(records, problems, source, detected)


def with_root_options(
    spec: Mapping[str, Any],
    allowed_roots: Sequence[str | os.PathLike] | None = None,
    allow_outside_data_roots: bool = False,
) -> dict[str, Any]:
    """`spec` with run-wide data-root settings added: the spec's own `allowed_roots` are kept and the run's
    appended; `allow_outside_data_roots` is on when either the spec or the run switches it on."""
    options = dict(spec)
    roots = [*root_list(options.get("allowed_roots")), *root_list(allowed_roots)]
    if roots:
        options["allowed_roots"] = roots
    if allow_outside_data_roots:
        options["allow_outside_data_roots"] = True
    return options


def read_manifests(
    specs: Sequence[Mapping[str, Any]],
    *,
    allowed_roots: Sequence[str | os.PathLike] | None = None,
    allow_outside_data_roots: bool = False,
) -> list[Manifest]:
    """Read several manifests: each spec is a dict with `path` plus `read_manifest` keyword arguments;
    `allowed_roots` / `allow_outside_data_roots` apply to every spec (see `with_root_options`)."""
    manifests = []
    for spec in specs:
        options = with_root_options(spec, allowed_roots, allow_outside_data_roots)
        if "path" not in options:
            raise ValueError(f"manifest spec {spec!r} has no 'path'")
        manifests.append(read_manifest(options.pop("path"), **options))
    return manifests


# --------------------------------------------------------------------------------------------------------------
# Hugging Face datasets


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
    import datasets

    _check_role(role)
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ValueError(f"pass one split, e.g. dataset['train'], not a {type(dataset).__name__}")
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"expected a datasets.Dataset, got {type(dataset).__name__} (streaming is not supported)"
        )
    info = dataset.info
    name = name or getattr(info, "dataset_name", None) or getattr(info, "builder_name", None) or "dataset"
    source = f"hf:{name}"
    columns = _resolve_columns(
        list(dataset.column_names),
        f"dataset {source}",
        image_column=image_column,
        text_column=text_column,
        label_column=label_column,
        group_column=group_column,
    )
    image_feature = dataset.features[columns.image]
    if isinstance(image_feature, datasets.Image):
        references = dataset.select_columns([columns.image])
        if image_feature.decode:
            references = references.cast_column(columns.image, datasets.Image(decode=False))
    elif isinstance(image_feature, datasets.Value) and image_feature.dtype in ("string", "large_string"):
        references = None
    else:
        raise ValueError(
            f"dataset {source}: column {columns.image!r} is {image_feature}; expected a datasets.Image feature or "
            "image paths as strings (choose the column with image_column=...)"
        )
    base = (
        os.path.abspath(os.path.expanduser(os.fspath(image_root))) if image_root is not None else os.getcwd()
    )
    roots = DataRoots((base, *root_list(allowed_roots)), allow_outside=allow_outside_data_roots)
    names = {
        column: _class_names_of(dataset.features[column])
        for column in (columns.label, columns.attributes)
        if column is not None
    }
    wanted = [
        c
        for c in dict.fromkeys(
            (columns.image, columns.text, columns.label, columns.group, columns.attributes)
        )
        if c
    ]
    table = dataset.select_columns(wanted).with_format("arrow")
    records: list[ManifestRecord] = []
    problems: list[DataProblem] = []
    for start in range(0, len(dataset), batch_size):
        batch = table[start : start + batch_size]
        images = batch.column(columns.image).combine_chunks()
        if references is not None:
            present = images.is_valid().to_pylist()
            has_bytes = images.field("bytes").is_valid().to_pylist()
            has_path = images.field("path").is_valid().to_pylist()
            has_data = [v and (b or p) for v, b, p in zip(present, has_bytes, has_path, strict=True)]
            image_values: list[Any] = [
                HFImageRef(references, start + i, columns.image) for i in range(len(images))
            ]
        else:
            paths = images.to_pylist()
            has_data = [bool(p and p.strip()) for p in paths]
            image_values = [
                _resolve_path(p, base) if ok else None for p, ok in zip(paths, has_data, strict=True)
            ]
        values = {c: batch.column(c).to_pylist() for c in wanted if c != columns.image}
        for i in range(len(images)):
            row = start + i + 1
            if not has_data[i]:
                problems.append(
                    make_problem(
                        source,
                        row,
                        "",
                        "missing-image-field",
                        f"the row has no image in column {columns.image!r}; fill it in or drop the row",
                    )
                )
                continue
            outside = None if references is not None else roots.problem(source, row, image_values[i])
            if outside is not None:
                problems.append(outside)
                continue
            try:
                labels = (
                    parse_labels(
                        _label_names(values[columns.label][i], names[columns.label]), label_separator
                    )
                    if columns.label
                    else ()
                )
                attributes = (
                    parse_labels(
                        _label_names(values[columns.attributes][i], names[columns.attributes]),
                        label_separator,
                    )
                    if columns.attributes
                    else ()
                )
            except ValueError as exc:
                problems.append(make_problem(source, row, str(image_values[i]), "unparseable-row", str(exc)))
                continue
            text = _parse_text(values[columns.text][i]) if columns.text else None
            group = _parse_group(values[columns.group][i]) if columns.group else None
            text, labels, record_role = _assign_role(text, labels, role)
            records.append(
                ManifestRecord(
                    image=image_values[i],
                    text=text,
                    labels=labels,
                    group=group,
                    source=source,
                    row=row,
                    role=record_role,
                    attributes=attributes,
                )
            )
    return Manifest(records, problems, source, "hf")
