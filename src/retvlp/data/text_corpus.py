"""Text corpora for masked-language-model pretraining (KeepFIT V2's textual pretraining, `model.family:
text-mlm`): the `data.train` entries of such a run are text files, read here into passages.

Each entry is `{path, text_column?, format?}` with

* `.txt`: one passage per non-blank line;
* `.jsonl`: one JSON object per line, the passage in `text_column` (default "text");
* `.csv` / `.tsv`: a header line, the passage in column `text_column`.

Every bad passage (a line that is not UTF-8, not JSON, an empty / missing / non-string text field, broken CSV
quoting) becomes a `DataProblem` naming `file:line`; `data.on_bad_sample` decides (`apply_bad_sample_policy`):
"error" stops with the full report (`DataValidationError`), "skip" trains on the rest and lists the skipped
lines in `<output_dir>/skipped_samples.jsonl`. A missing file is always an error (`FileNotFoundError`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .manifest import readable, split_lines, utf8_problem_message
from .validation import DataProblem, DataValidationError, ValidationReport, make_problem

logger = logging.getLogger(__name__)

SPEC_KEYS = ("path", "text_column", "format")
CORPUS_FORMATS = ("txt", "jsonl", "csv", "tsv")
_SUFFIX_FORMATS = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
}


@dataclass
class TextCorpus:
    """The good passages of a text corpus, where each came from, and every problem found while reading.

    Attributes:
        texts: the passages (stripped of surrounding whitespace), in file order.
        origins: `(source, line)` of each passage (1-based line number; for CSV the line the record starts on).
        report: the problems (bad lines) found; `report.num_records` counts good and bad passages.
        files: the files read, as given in the specs.
    """

    texts: list[str]
    origins: list[tuple[str, int]]
    report: ValidationReport
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def _corpus_format(spec: dict[str, Any], path: str) -> str:
    fmt = spec.get("format")
    if fmt is None:
        fmt = _SUFFIX_FORMATS.get(os.path.splitext(path)[1].lower())
        if fmt is None:
            raise ValueError(
                f"{path}: cannot tell the corpus format from the file name; set format to one of "
                f"{list(CORPUS_FORMATS)} in its data.train entry."
            )
    if fmt not in CORPUS_FORMATS:
        raise ValueError(f"{path}: format={fmt!r}; choose one of {list(CORPUS_FORMATS)}.")
    return fmt


def _read_txt(data: bytes, source: str) -> tuple[list[tuple[int, str]], list[DataProblem], int]:
    lines, offsets = split_lines(data)
    passages, problems, count = [], [], 0
    for index, line in enumerate(lines):
        number = index + 1
        if not line.strip():
            continue
        count += 1
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(
                make_problem(
                    source, number, "", "not-utf8", utf8_problem_message(line, offsets[index], exc, number)
                )
            )
            continue
        text = text.strip()
        if not text:  # e.g. only a form feed or a non-breaking space
            problems.append(
                make_problem(source, number, "", "empty-caption", "the line holds only whitespace")
            )
            continue
        passages.append((number, text))
    return passages, problems, count


def _text_field(source: str, number: int, values: dict, column: str) -> tuple[str | None, DataProblem | None]:
    if column not in values:
        keys = ", ".join(repr(k) for k in list(values)[:10])
        return None, make_problem(
            source,
            number,
            "",
            "empty-caption",
            f"no {column!r} field (fields: {keys or 'none'}); add the text or set text_column in the "
            "data.train entry",
        )
    value = values[column]
    if value is None:
        return None, make_problem(source, number, "", "empty-caption", f"the {column!r} field is null")
    if not isinstance(value, str):
        return None, make_problem(
            source,
            number,
            "",
            "unparseable-row",
            f"the {column!r} field is {type(value).__name__} {value!r:.60}, not a string",
        )
    text = value.strip()
    if not text:
        return None, make_problem(source, number, "", "empty-caption", f"the {column!r} field is empty")
    return text, None


def _read_jsonl(
    data: bytes, source: str, column: str
) -> tuple[list[tuple[int, str]], list[DataProblem], int]:
    lines, offsets = split_lines(data)
    passages, problems, count = [], [], 0
    for index, line in enumerate(lines):
        number = index + 1
        if not line.strip():
            continue
        count += 1
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(
                make_problem(
                    source, number, "", "not-utf8", utf8_problem_message(line, offsets[index], exc, number)
                )
            )
            continue
        try:
            item = json.loads(decoded)
        except ValueError as exc:
            message = getattr(exc, "msg", str(exc))
            column_number = getattr(exc, "colno", None)
            where = f" at column {column_number}" if column_number else ""
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
        text, problem = _text_field(source, number, item, column)
        if problem is not None:
            problems.append(problem)
        else:
            passages.append((number, text))
    return passages, problems, count


def _decode_lines(data: bytes) -> tuple[list[str], dict[int, tuple[bytes, int, UnicodeDecodeError]]]:
    """Every physical line decoded (a non-UTF-8 line with surrogate escapes, so the CSV reader still sees its
    quotes), and `{line index: (bytes, file offset, error)}` of the lines that are not UTF-8."""
    lines, offsets = split_lines(data)
    bad_lines: dict[int, tuple[bytes, int, UnicodeDecodeError]] = {}
    decoded = []
    for index, line in enumerate(lines):
        try:
            decoded.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            bad_lines[index] = (line, offsets[index], exc)
            decoded.append(line.decode("utf-8", "surrogateescape"))
    return decoded, bad_lines


def _text_column(fields: list[str], column: str, source: str) -> tuple[list[str], str]:
    """The header's columns and the name of the text column in it (`column`, else its only case-insensitive
    match)."""
    header = [readable(f).strip() for f in fields]
    header[0] = header[0].lstrip("\ufeff")
    if column not in header:
        folded = [h for h in header if h.lower() == column.lower()]
        if len(folded) != 1:
            raise ValueError(
                f"{source}: no column {column!r} in the header (columns: {header}); set text_column "
                "in its data.train entry."
            )
        column = folded[0]
    return header, column


def _quoting_problem(source: str, start: int, consumed: int, delimiter: str, exc: csv.Error) -> DataProblem:
    end = max(consumed, start + 1)
    span = f"line {start + 1}" if end == start + 1 else f"lines {start + 1}-{end}"
    return make_problem(
        source,
        start + 1,
        "",
        "unparseable-row",
        f"broken CSV quoting on {span} ({exc}); quote fields that contain {delimiter!r}, quotes or "
        'line breaks ("..." with inner quotes doubled) and check for an unclosed quote',
    )


def _read_delimited(
    data: bytes, source: str, column: str, delimiter: str
) -> tuple[list[tuple[int, str]], list[DataProblem], int]:
    decoded, bad_lines = _decode_lines(data)
    consumed = 0

    def feed():
        nonlocal consumed
        for index, text in enumerate(decoded):
            consumed = index + 1
            yield text

    reader = csv.reader(feed(), delimiter=delimiter, strict=True)
    passages: list[tuple[int, str]] = []
    problems: list[DataProblem] = []
    header: list[str] | None = None
    position = -1
    count = 0
    while True:
        start = consumed
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if header is None:
                raise ValueError(f"{source}: cannot parse the header line ({exc}); fix its quoting") from None
            count += 1
            problems.append(_quoting_problem(source, start, consumed, delimiter, exc))
            continue
        if not any(f.strip() for f in fields):
            continue  # blank line (or only delimiters)
        number = start + 1
        bad = [i for i in range(start, consumed) if i in bad_lines]
        if header is None:
            header, column = _text_column(fields, column, source)
            position = header.index(column)
            if bad:
                line, offset, exc = bad_lines[bad[0]]
                raise ValueError(
                    f"{source}: the header " + utf8_problem_message(line, offset, exc, bad[0] + 1)
                )
            continue
        count += 1
        if bad:
            line, offset, exc = bad_lines[bad[0]]
            problems.append(
                make_problem(
                    source, number, "", "not-utf8", utf8_problem_message(line, offset, exc, bad[0] + 1)
                )
            )
            continue
        if len(fields) > len(header):
            problems.append(
                make_problem(
                    source,
                    number,
                    "",
                    "unparseable-row",
                    f"the row has {len(fields)} fields but the header has {len(header)} (an unquoted "
                    f"{delimiter!r} inside the text?); quote that field",
                )
            )
            continue
        text = fields[position].strip() if position < len(fields) else ""
        if not text:
            problems.append(
                make_problem(source, number, "", "empty-caption", f"the {column!r} field is empty")
            )
            continue
        passages.append((number, text))
    return passages, problems, count


def read_text_corpus(specs: list[dict[str, Any]]) -> TextCorpus:
    """Read the passages of every corpus file in `specs` (the `data.train` entries of a text-mlm run).

    Each spec is `{path, text_column?: "text", format?: "txt" | "jsonl" | "csv" | "tsv"}` (format from the
    suffix when not given). Bad lines are never dropped silently: each becomes a problem in `corpus.report`
    (kinds `not-utf8`, `unparseable-row`, `empty-caption`) naming `file:line`; apply `data.on_bad_sample` to
    them with `apply_bad_sample_policy`.

    Raises:
        FileNotFoundError: a file does not exist (named in the message).
        ValueError: an unknown spec key or format, or a CSV without the text column.
    """
    texts: list[str] = []
    origins: list[tuple[str, int]] = []
    problems: list[DataProblem] = []
    files: list[str] = []
    num_records = 0
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "path" not in spec:
            raise ValueError(
                f"data.train[{i}] must be a mapping with a 'path' to a text corpus file (got {spec!r}); "
                "text-mlm reads .txt / .jsonl / .csv files."
            )
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown:
            raise ValueError(
                f"data.train[{i}] ({spec.get('path')}): key(s) {unknown} do not apply to a text corpus; "
                f"valid keys: {list(SPEC_KEYS)}."
            )
        path = os.fspath(spec["path"])
        source = str(path)
        if not os.path.isfile(path):
            what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
            raise FileNotFoundError(f"Text corpus file {path} {what} (data.train[{i}]).")
        fmt = _corpus_format(spec, path)
        column = spec.get("text_column") or "text"
        with open(path, "rb") as handle:
            data = handle.read()
        if fmt == "txt":
            passages, found, count = _read_txt(data, source)
        elif fmt == "jsonl":
            passages, found, count = _read_jsonl(data, source, column)
        else:
            passages, found, count = _read_delimited(data, source, column, "," if fmt == "csv" else "\t")
        files.append(source)
        num_records += count
        problems.extend(found)
        for number, text in passages:
            texts.append(text)
            origins.append((source, number))
    order = {source: k for k, source in enumerate(files)}
    problems.sort(key=lambda p: (order.get(p.source, len(order)), p.row))
    return TextCorpus(texts, origins, ValidationReport(problems=problems, num_records=num_records), files)


def apply_bad_sample_policy(
    corpus: TextCorpus, on_bad_sample: str, output_dir: str | os.PathLike, *, is_main_process: bool = True
) -> TextCorpus:
    """Apply `data.on_bad_sample` to the corpus' problems and return the corpus to train on.

    "error": any problem raises `DataValidationError` with the full report. "skip": the good passages are kept,
    every skipped line is written to `<output_dir>/skipped_samples.jsonl` (`{source, row, problems}`) and the
    count is logged. In both cases the problems are also written to `<output_dir>/data_problems.jsonl`.

    Raises:
        ValueError: no passage is left to train on (the message names the files).
    """
    output_dir = Path(output_dir)
    report = corpus.report
    if is_main_process and report.problems:
        output_dir.mkdir(parents=True, exist_ok=True)
        report.write_jsonl(output_dir / "data_problems.jsonl")
    if report.errors and on_bad_sample == "error":
        raise DataValidationError(report, context="text-mlm corpus")
    if report.errors:
        reasons: dict[tuple[str, int], list[str]] = {}
        for problem in report.errors:
            reasons.setdefault((problem.source, problem.row), []).append(f"{problem.kind}: {problem.message}")
        if is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            with open(output_dir / "skipped_samples.jsonl", "w", encoding="utf-8") as handle:
                for (source, row), found in reasons.items():
                    handle.write(json.dumps({"source": source, "row": row, "problems": found}) + "\n")
        logger.warning(
            "Skipped %d of %d corpus passages with errors (on_bad_sample=skip); listed in %s",
            len(reasons),
            report.num_records,
            output_dir / "skipped_samples.jsonl",
        )
    if not corpus.texts:
        skipped = len(report.bad_records)
        raise ValueError(
            f"The text corpus is empty: no passage to train on in {corpus.files}"
            + (
                f" ({skipped} bad line(s) skipped, see {output_dir / 'skipped_samples.jsonl'})"
                if skipped
                else ""
            )
            + "; check the files and their text_column."
        )
    return corpus


__all__ = ["CORPUS_FORMATS", "SPEC_KEYS", "TextCorpus", "apply_bad_sample_policy", "read_text_corpus"]
