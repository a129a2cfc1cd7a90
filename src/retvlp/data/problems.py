"""The data layer's problem reports, at the bottom of `retvlp.data`: a `DataProblem` names the manifest file,
the data row, the image and what is wrong (`PROBLEM_KINDS`: each kind and its severity). Every reader of the
data layer (`manifest*`, `roots`, `validation`, `cache`, `shards`, `text_corpus`) builds its problems here, so
none of them imports another to report one (`retvlp.data.validation` re-exports these names)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

SEVERITIES = ("error", "warning")

PROBLEM_KINDS = {
    "unparseable-row": "error",
    "not-utf8": "error",
    "missing-image-field": "error",
    "outside-data-root": "error",
    "missing-file": "error",
    "unreadable-image": "error",
    "truncated-image": "error",
    "tiny-image": "error",
    "decompression-bomb": "error",
    "converted-mode": "warning",
    "empty-caption": "error",
    "unknown-label": "error",
    "missing-label": "error",
    "duplicate-row": "error",
    # prepared shard sets (retvlp.data.shard_stream): a shard shorter / other than its index records, a member
    # whose checksum or PNG decode fails
    "truncated-shard": "error",
    "corrupt-shard": "error",
    "corrupt-member": "error",
}


@dataclass(frozen=True)
class DataProblem:
    """One problem with one row of one manifest (row 0: the file as a whole, e.g. its header)."""

    source: str
    row: int
    image: str
    kind: str
    message: str
    severity: str = "error"

    def format(self) -> str:
        """`paired.csv:12: images/a.jpg: truncated-image: image file is truncated (...); re-export ...`."""
        parts = [f"{self.source}:{self.row}" if self.row else self.source]
        if self.image:
            parts.append(_display_image(self.image, self.source))
        parts.append(self.kind if self.severity == "error" else f"{self.kind} ({self.severity})")
        parts.append(self.message)
        return ": ".join(parts)


def make_problem(source: str, row: int, image: Any, kind: str, message: str) -> DataProblem:
    """A `DataProblem` of `kind` with the kind's default severity."""
    if kind not in PROBLEM_KINDS:
        raise ValueError(f"unknown problem kind {kind!r}; known kinds: {', '.join(PROBLEM_KINDS)}")
    return DataProblem(
        str(source), int(row), "" if image is None else str(image), kind, message, PROBLEM_KINDS[kind]
    )


def _display_image(image: str, source: str) -> str:
    """Image paths under the manifest's folder are shown relative to it, others in full."""
    if not os.path.isabs(image) or source.startswith("hf:"):
        return image
    base = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
    try:
        relative = os.path.relpath(image, base)
    except ValueError:  # another drive on Windows
        return image
    return image if relative.startswith("..") else relative


__all__ = ["PROBLEM_KINDS", "SEVERITIES", "DataProblem", "make_problem"]
