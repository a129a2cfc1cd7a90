"""Bytes to lines for the line-based readers (CSV/TSV and JSON-lines manifests, text corpora): physical lines
with their byte offsets, and the problem message for a line that is not valid UTF-8."""

from __future__ import annotations

import codecs


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
