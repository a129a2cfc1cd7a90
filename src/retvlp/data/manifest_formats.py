"""The per-format manifest readers behind `read_manifest`: CSV / TSV (FLAIR's layout included), JSON lines or one
JSON list of objects, and ImageFolder trees, plus detecting a file's format from its name or first bytes.

Each reader returns its records and the `DataProblem`s of the rows it could not read (never a crash, never a
silent drop); only problems with the file as a whole (no header, no image column, one JSON object spread over
several lines) raise ValueError.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from collections.abc import Callable, Iterator

from .lines import readable, split_lines, utf8_problem_message
from .manifest_columns import RowReader, collect_row, match_column, resolve_columns
from .manifest_records import ManifestRecord, assign_role, resolve_path
from .problems import DataProblem, make_problem
from .roots import DataRoots

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


def detect_format(path: str) -> str:
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


# --------------------------------------------------------------------------------------------------------------
# CSV / TSV / FLAIR

# A line that is not UTF-8: (its index, the line's bytes, its byte offset in the file, the decode error).
_BadLine = tuple[int, bytes, int, UnicodeDecodeError]


class _TrackedLines:
    """The file's physical lines decoded for `csv.reader` (a line that is not UTF-8 with surrogate escapes, and
    remembered), counting how many lines the reader has consumed so far: one CSV row may span several lines."""

    def __init__(self, data: bytes):
        lines, offsets = split_lines(data)
        self.bad: dict[int, tuple[bytes, int, UnicodeDecodeError]] = {}
        self.texts: list[str] = []
        for index, line in enumerate(lines):
            try:
                self.texts.append(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                self.bad[index] = (line, offsets[index], exc)
                self.texts.append(line.decode("utf-8", "surrogateescape"))
        self.consumed = 0

    def __iter__(self) -> Iterator[str]:
        for index, text in enumerate(self.texts):
            self.consumed = index + 1
            yield text

    def bad_in(self, start: int, end: int) -> list[_BadLine]:
        """The lines in [start, end) that are not UTF-8, first line first."""
        return [(i, *self.bad[i]) for i in range(start, end) if i in self.bad]


class _DelimitedRows:
    """Turns the rows `csv.reader` yields into records and problems: the first non-blank row is the header, later
    rows are numbered from 1 (blank rows count, the header does not)."""

    def __init__(
        self,
        source: str,
        delimiter: str,
        base: str,
        role: str | None,
        separator: str | None,
        column_args: dict,
        roots: DataRoots,
    ):
        self.source, self.delimiter, self.base = source, delimiter, base
        self.role, self.separator, self.column_args, self.roots = role, separator, column_args, roots
        self.records: list[ManifestRecord] = []
        self.problems: list[DataProblem] = []
        self.header: list[str] | None = None
        self.build: Callable | None = None
        self.row = 0

    def broken_quoting(self, start: int, consumed: int, exc: csv.Error) -> None:
        """A row `csv.reader` could not parse, from line index `start` up to `consumed`."""
        if self.header is None:
            raise ValueError(
                f"{self.source}: cannot parse the header line ({exc}); fix its quoting"
            ) from None
        self.row += 1
        end = max(consumed, start + 1)
        span = f"line {start + 1}" if end == start + 1 else f"lines {start + 1}-{end}"
        self.problems.append(
            make_problem(
                self.source,
                self.row,
                "",
                "unparseable-row",
                f"broken CSV quoting on {span} ({exc}); quote fields that contain {self.delimiter!r}, quotes or "
                'line breaks ("..." with inner quotes doubled) and check for an unclosed quote',
            )
        )

    def take(self, fields: list[str], bad: list[_BadLine]) -> None:
        """One parsed row; `bad`: the lines it spans that are not UTF-8."""
        if self.header is None:
            self._take_header(fields, bad)
            return
        self.row += 1
        if not any(f.strip() for f in fields):
            return  # blank line (or only delimiters): no data
        if bad:
            self.problems.append(self._not_utf8(fields, bad[0]))
            return
        if len(fields) > len(self.header):
            self.problems.append(self._too_many_fields(fields))
            return
        values = {name: (fields[i] if i < len(fields) else "") for i, name in enumerate(self.header)}
        collect_row(self.build(self.row, values), self.records, self.problems)

    def _take_header(self, fields: list[str], bad: list[_BadLine]) -> None:
        if not any(f.strip() for f in fields):
            return  # blank lines before the header
        header = [readable(f).strip() for f in fields]
        if header:
            header[0] = header[0].lstrip("\ufeff")
        self.header = header
        if bad:
            index, line, offset, exc = bad[0]
            self.problems.append(
                make_problem(
                    self.source,
                    0,
                    "",
                    "not-utf8",
                    "header " + utf8_problem_message(line, offset, exc, index + 1),
                )
            )
        columns = resolve_columns(header, self.source, **self.column_args)
        self.build = RowReader(self.source, columns, self.base, self.role, self.separator, self.roots)

    def _image_index(self) -> int:
        return self.header.index(self.build.columns.image)

    def _not_utf8(self, fields: list[str], bad: _BadLine) -> DataProblem:
        index, line, offset, exc = bad
        image_index = self._image_index()
        image = readable(fields[image_index]).strip() if image_index < len(fields) else ""
        image = resolve_path(image, self.base) if image else ""
        return make_problem(
            self.source,
            self.row,
            image,
            "not-utf8",
            utf8_problem_message(line, offset, exc, index + 1),
        )

    def _too_many_fields(self, fields: list[str]) -> DataProblem:
        image_index = self._image_index()
        return make_problem(
            self.source,
            self.row,
            resolve_path(fields[image_index], self.base) if fields[image_index].strip() else "",
            "unparseable-row",
            f"the row has {len(fields)} fields but the header has {len(self.header)} (an unquoted "
            f"{self.delimiter!r} inside a caption?); quote that field",
        )

    def result(self) -> tuple[list[ManifestRecord], list[DataProblem], list[str]]:
        if self.header is None:
            raise ValueError(
                f"{self.source}: the file is empty; a CSV manifest needs a header line naming its columns"
            )
        return self.records, self.problems, self.header


def read_delimited(
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
    lines = _TrackedLines(data)
    rows = _DelimitedRows(source, delimiter, base, role, separator, column_args, roots)
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    while True:
        start = lines.consumed
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rows.broken_quoting(start, lines.consumed, exc)
            continue
        rows.take(fields, lines.bad_in(start, lines.consumed))
    return rows.result()


def delimiter_for(detected: str, source: str) -> str:
    """Tab for TSV (by format or by extension), else comma."""
    extension = os.path.splitext(source)[1].lower()
    return "\t" if detected == "tsv" or extension in (".tsv", ".tab") else ","


def delimited_format(detected: str, header: list[str]) -> str:
    """A CSV with a `categories` column is FLAIR's layout."""
    if detected == "csv" and match_column(header, "categories") is not None:
        return "flair"
    return detected


# --------------------------------------------------------------------------------------------------------------
# JSON lines


def _json_array_rows(
    data: bytes, lines: list[bytes], source: str
) -> tuple[list[tuple[int, dict]], list[DataProblem]] | None:
    """The rows of a file holding one JSON list of objects (items numbered from 1), or None when the file is not
    one JSON list. Raises ValueError for one JSON object spread over several lines."""
    stripped = data.lstrip(codecs.BOM_UTF8).lstrip()
    if stripped[:1] not in (b"[", b"{"):
        return None
    try:
        whole = json.loads(stripped.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        whole = None
    if isinstance(whole, list):
        rows: list[tuple[int, dict]] = []
        problems: list[DataProblem] = []
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
        return rows, problems
    if isinstance(whole, dict) and sum(1 for line in lines if line.strip()) > 1:
        raise ValueError(
            f"{source}: the file holds one JSON object over several lines; write one object per line "
            "(JSON lines) or a list of objects"
        )
    return None


def _json_line(line: bytes, number: int, offset: int, source: str) -> dict | DataProblem:
    """The object on JSON line `number` (at byte `offset`), or the problem that keeps it from being one."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return make_problem(source, number, "", "not-utf8", utf8_problem_message(line, offset, exc, number))
    try:
        item = json.loads(text)
    except ValueError as exc:
        message = getattr(exc, "msg", str(exc))
        column = getattr(exc, "colno", None)
        where = f" at column {column}" if column else ""
        return make_problem(
            source,
            number,
            "",
            "unparseable-row",
            f"not valid JSON ({message}{where}); fix the line (one JSON object per line)",
        )
    if not isinstance(item, dict):
        return make_problem(
            source,
            number,
            "",
            "unparseable-row",
            f"a JSON object was expected, got {type(item).__name__}",
        )
    return item


def _json_lines_rows(
    lines: list[bytes], offsets: list[int], source: str
) -> tuple[list[tuple[int, dict]], list[DataProblem]]:
    """The objects of a JSON-lines file, numbered by line (blank lines are skipped but counted)."""
    rows: list[tuple[int, dict]] = []
    problems: list[DataProblem] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        item = _json_line(line, index + 1, offsets[index], source)
        if isinstance(item, DataProblem):
            problems.append(item)
        else:
            rows.append((index + 1, item))
    return rows, problems


def _keys_in_order(rows: list[tuple[int, dict]]) -> list[str]:
    """Every key of the rows' objects, in order of first appearance."""
    columns: list[str] = []
    for _, item in rows:
        for key in item:
            if key not in columns:
                columns.append(key)
    return columns


def read_json_manifest(
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
    lines, offsets = split_lines(data)
    array = _json_array_rows(data, lines, source) if allow_array else None
    if array is not None:
        kind = "json"  # a file holding one list of objects
        rows, problems = array
    else:
        kind = "jsonl"
        rows, problems = _json_lines_rows(lines, offsets, source)
    records: list[ManifestRecord] = []
    if rows:
        columns_found = resolve_columns(_keys_in_order(rows), source, **column_args)
        build = RowReader(source, columns_found, base, role, separator, roots)
        for number, item in rows:
            collect_row(build(number, item), records, problems)
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


def read_image_folder(
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
        text, labels, record_role = assign_role(None, labels, role)
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
