"""Data validation: find every bad row of a manifest before training, and say what to do about it.

A `DataProblem` names the manifest file, the data row, the image and what is wrong. Problems come from three
places:

* reading a manifest (`retvlp.data.manifest`): rows that cannot be parsed, are not UTF-8, have no image or
  name an image outside the allowed data roots (`retvlp.data.roots`; such a file is never opened);
* `check_records`: checks on the records themselves, without I/O (empty captions, unknown labels, duplicates);
* `load_checked_image`: opening and fully decoding each image (missing, unreadable, truncated, tiny, too large,
  values the decode refuses, or not RGB). The decode itself is the package's one canonical decode
  (`retvlp.common.image_processing_fundus.decode_image`, which the training cache and `FundusImageProcessor`
  use too); this module only adds its checks and problem reports around it.

`validate_manifests` runs all of them and returns a `ValidationReport`; `DataValidationError` carries one for
code that must stop on bad data (the trainer raises it unless told to skip bad samples).
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageFile, UnidentifiedImageError

from ..common.image_processing_fundus import DecodedImage, decode_image, decode_note

# One threshold for the data checks and the image processor (which refuses smaller inputs the same way):
# `limits.py` holds it for the config, which must not import the processor; a test checks they agree.
from .limits import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE  # noqa: F401 (re-exported)
from .problems import PROBLEM_KINDS, SEVERITIES, DataProblem, make_problem  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from .manifest import HFImageRef, Manifest, ManifestRecord

PROGRESS_THRESHOLD = 1000  # show a progress bar when checking at least this many images


_KIND_ORDER = {kind: i for i, kind in enumerate(PROBLEM_KINDS)}


def _sorted_problems(problems: Iterable[DataProblem], sources: Iterable[str] = ()) -> list[DataProblem]:
    """Problems grouped by source (in the order of `sources`, then of first appearance), then by row and kind."""
    problems = list(problems)
    source_order: dict[str, int] = {}
    for source in sources:
        source_order.setdefault(source, len(source_order))
    for problem in problems:
        source_order.setdefault(problem.source, len(source_order))
    return sorted(problems, key=lambda p: (source_order[p.source], p.row, _KIND_ORDER.get(p.kind, 99)))


@dataclass
class ValidationReport:
    problems: list[DataProblem]
    num_records: int
    # Good rows whose role the model family does not train on (e.g. unpaired images for KeepFIT), per role.
    unused_roles: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[DataProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[DataProblem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def bad_records(self) -> set[tuple[str, int]]:
        """(source, row) of every row with at least one error: what `--on-bad-sample skip` leaves out."""
        return {(p.source, p.row) for p in self.problems if p.severity == "error"}

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts_by_kind(self) -> dict[str, int]:
        counts = Counter(p.kind for p in self.problems)
        return {kind: counts[kind] for kind in sorted(counts, key=lambda k: _KIND_ORDER.get(k, 99))}

    def summary(self) -> str:
        """One line: how many records were checked and how many problems of each kind were found."""
        records = f"{self.num_records} record{'s' if self.num_records != 1 else ''}"
        if not self.problems:
            return f"Checked {records}: no problems found."
        num_errors, num_warnings = len(self.errors), len(self.warnings)
        kinds = ", ".join(f"{kind}: {count}" for kind, count in self.counts_by_kind().items())
        return (
            f"Checked {records}: {num_errors} error{'s' if num_errors != 1 else ''} "
            f"in {len(self.bad_records)} row{'s' if len(self.bad_records) != 1 else ''}, "
            f"{num_warnings} warning{'s' if num_warnings != 1 else ''} ({kinds})."
        )

    def format(self, max_problems: int | None = None) -> str:
        """The summary line, then every problem (or the first `max_problems`), grouped by manifest."""
        lines = [self.summary()]
        problems = _sorted_problems(self.problems)
        shown = problems if max_problems is None else problems[: max(0, max_problems)]
        per_source = Counter(p.source for p in problems)
        current = None
        for problem in shown:
            if problem.source != current:
                current = problem.source
                count = per_source[current]
                lines.append(f"{current} ({count} problem{'s' if count != 1 else ''}):")
            lines.append(f"  {problem.format()}")
        hidden = len(problems) - len(shown)
        if hidden > 0:
            lines.append(
                f"... and {hidden} more problem{'s' if hidden != 1 else ''} "
                "(write them all with `retvlp validate-data ... --report problems.jsonl`)."
            )
        return "\n".join(lines)

    def write_jsonl(self, path: str | os.PathLike) -> None:
        """One JSON object per problem: source, row, image, kind, message, severity."""
        path = os.fspath(path)
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            for problem in _sorted_problems(self.problems):
                handle.write(json.dumps(asdict(problem), ensure_ascii=False) + "\n")


class DataValidationError(ValueError):
    """Raised when the data has errors; `.report` holds the full `ValidationReport`."""

    MAX_SHOWN = 20

    def __init__(self, report: ValidationReport, context: str | None = None):
        self.report = report
        self.context = context
        super().__init__(self._message())

    def _message(self) -> str:
        head = f"{self.context}: " if self.context else ""
        return (
            f"{head}the training data has problems.\n"
            f"{self.report.format(max_problems=self.MAX_SHOWN)}\n"
            "Run `retvlp validate-data MANIFEST ... --report problems.jsonl` to list every problem, then fix or "
            "remove those rows; or pass `--on-bad-sample skip` to train without the "
            f"{len(self.report.bad_records)} bad row(s)."
        )

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):  # picklable across processes despite the custom __init__
        return (type(self), (self.report, self.context))


class NoUsableRecordsError(DataValidationError):
    """Raised when no row of the training manifests became a record: there is nothing to train on, whatever
    `on_bad_sample` says. The message lists the first problems, each with its fix, as `retvlp validate-data`
    prints them."""

    def _message(self) -> str:
        head = f"{self.context}: " if self.context else ""
        if not self.report.problems:
            return f"{head}the training manifests hold no rows: nothing to train on."
        return (
            f"{head}no usable records: every row of the training manifests has an error, so skipping the bad rows "
            "would leave nothing to train on.\n"
            f"{self.report.format(max_problems=self.MAX_SHOWN)}\n"
            "Fix them as each problem says; `retvlp validate-data MANIFEST ...` checks the manifests (and every "
            "image) without training, `--report problems.jsonl` lists every problem."
        )


# --------------------------------------------------------------------------------------------------------------
# Checks on records (no I/O)


def _known_classes_text(class_names: Sequence[str], limit: int = 20) -> str:
    names = sorted(class_names)
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"{len(names)} known class{'es' if len(names) != 1 else ''}: {shown}{more}"


def _image_key(image: Any) -> Any:
    return image  # paths are absolute and normalised; HFImageRef hashes by (dataset identity, index, column)


def check_records(
    records: Iterable[ManifestRecord], *, class_names: Iterable[str] | None = None
) -> list[DataProblem]:
    """Problems visible in the records alone: empty captions, labels not in `class_names` (when given),
    categorical records without labels, and duplicate rows (same image, caption and labels as an earlier
    record; the later rows are reported, naming the first)."""
    known = None if class_names is None else set(class_names)
    known_text = None if known is None else _known_classes_text(sorted(known))
    problems: list[DataProblem] = []
    first_seen: dict[tuple, tuple[str, int]] = {}
    for record in records:
        source, row, image = record.source, record.row, record.image
        if record.role == "paired" and not (record.text or "").strip():
            problems.append(
                make_problem(
                    source,
                    row,
                    image,
                    "empty-caption",
                    "caption is empty; write the caption, remove the row, or read label-only/image-only rows "
                    "as their own manifest with --role categorical/unpaired",
                )
            )
        if record.role == "categorical" and not record.labels:
            problems.append(
                make_problem(
                    source,
                    row,
                    image,
                    "missing-label",
                    "row has no label but the manifest is read with role 'categorical'; add the label or "
                    "remove the row",
                )
            )
        if known is not None and record.role != "unpaired":
            for label in record.labels:
                if label not in known:
                    problems.append(
                        make_problem(
                            source,
                            row,
                            image,
                            "unknown-label",
                            f"label {label!r} is not one of the {known_text}; fix its spelling or add it to "
                            "the class list (--classes / --classes-file)",
                        )
                    )
        key = (_image_key(image), record.text, tuple(sorted(record.labels)))
        first = first_seen.setdefault(key, (source, row))
        if first != (source, row):
            where = f"row {first[1]}" if first[0] == source else f"row {first[1]} of {first[0]}"
            problems.append(
                make_problem(
                    source,
                    row,
                    image,
                    "duplicate-row",
                    f"same image, caption and labels as {where}; remove the duplicate (it would be seen twice "
                    "per epoch)",
                )
            )
    return problems


# --------------------------------------------------------------------------------------------------------------
# Images

_check_lock = threading.Lock()
_check_depth = 0
_saved_load_truncated = False
_saved_warnings: Any = None


@contextmanager
def image_checking():
    """The Pillow settings the image checks need, for the duration of the block: truncated files raise
    (`ImageFile.LOAD_TRUNCATED_IMAGES = False`, whatever the program set) and Pillow's DecompressionBombWarning
    is silenced (`max_pixels` decides instead; `Image.MAX_IMAGE_PIXELS` is never changed). Both are process-wide
    settings, so they are applied when the first such block starts, in any thread, and restored when the last
    one ends: safe to nest and to use from several threads at once."""
    global _check_depth, _saved_load_truncated, _saved_warnings
    with _check_lock:
        if _check_depth == 0:
            _saved_load_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            _saved_warnings = warnings.catch_warnings()
            _saved_warnings.__enter__()
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        _check_depth += 1
    try:
        yield
    finally:
        with _check_lock:
            _check_depth -= 1
            if _check_depth == 0:
                _saved_warnings.__exit__(None, None, None)
                _saved_warnings = None
                ImageFile.LOAD_TRUNCATED_IMAGES = _saved_load_truncated


def to_rgb(image: Image.Image) -> tuple[DecodedImage, str | None]:
    """The canonical decode of a loaded PIL image (`decode_image`, the same as the training cache's and
    `FundusImageProcessor`'s) and what it did, in words (`decode_note`; None for RGB input, returned as is).

    8-bit sources give an 8-bit RGB PIL image (grey replicated, palette expanded, CMYK converted, transparency
    composited on black); 16-bit, 32-bit integer (0..65535) and float ([0, 1]) sources give a float32
    `(3, H, W)` tensor on the 0..255 scale, rounded only after the resize. Raises `ValueError` for values the
    decode refuses (floats outside [0, 1], 32-bit integers outside 0..65535, NaN / Inf)."""
    return decode_image(image), decode_note(image)


def _pillow_bomb_message(exc: Exception, max_pixels: int) -> str:
    """Pillow refused to open the image (over 2 x Image.MAX_IMAGE_PIXELS); its message holds the pixel count."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = int(found.group(1)) if found else None
    pillow_limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    size = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    if pixels is not None and pixels <= max_pixels:
        return (
            f"the image header claims {size}: within --max-pixels {max_pixels:,}, but Pillow refuses to open "
            f"images over {pillow_limit:,} pixels (2 x Image.MAX_IMAGE_PIXELS); downscale it or remove the row"
        )
    limit = max_pixels if pillow_limit is None else min(max_pixels, pillow_limit)
    return (
        f"the image header claims {size}, over the limit of {limit:,} (--max-pixels); a corrupt header or a "
        "decompression bomb: downscale the image or remove the row"
    )


# A bytes literal inside an exception message: some Pillow plugins quote the header bytes they choke on.
_BYTES_LITERAL = re.compile(r"""(?<![\w])b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_MAX_ERROR_TEXT = 200


def _pillow_error_text(exc: BaseException) -> str:
    """Pillow's message for `exc`, without file content: quoted bytes are replaced (a plugin that accepts a
    file by its first two bytes, e.g. PPM's "P1", may quote what follows) and the text is cut short."""
    text = _BYTES_LITERAL.sub("<file bytes not shown>", str(exc))
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 3] + "..."


def _describe_unknown(data: bytes) -> str:
    """What a file Pillow does not recognise looks like, without showing any of it: its size and whether it
    reads as text (a caption file or a web page saved as .png are common mistakes)."""
    printable = all(b >= 32 or b in b"\t\n\r\f" for b in data[:4096])  # bytes >= 128: UTF-8 text too
    return f"{len(data):,} bytes of {'text' if printable else 'binary data'}"


def _open_source(image: Any) -> tuple[Any, str]:
    """(bytes | PIL image | str path | None, a display name) for a path or an HFImageRef."""
    if isinstance(image, str):
        return image, image
    # An `HFImageRef` (retvlp.data.manifest, which imports this module): recognised by its `raw()` method rather
    # than by importing it back, which would be an import cycle.
    if callable(getattr(image, "raw", None)) and hasattr(image, "dataset"):
        return image.raw(), str(image)
    if isinstance(image, Image.Image):
        return image, "<image>"
    return image, str(image)


def load_checked_image(
    image: str | HFImageRef,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    source: str = "",
    row: int = 0,
) -> tuple[DecodedImage | None, list[DataProblem]]:
    """Open and fully decode one image, checking it on the way. Returns (the decoded image, problems), or
    (None, problems) when any problem is an error. The decode is the canonical one (`to_rgb` /
    `decode_image`): an 8-bit RGB PIL image, or for 16-bit / 32-bit integer / float sources a float32
    `(3, H, W)` tensor on the 0..255 scale; a non-RGB image is reported as a `converted-mode` warning, values
    the decode refuses (e.g. floats outside [0, 1]) as an `unreadable-image` error naming the range. The size
    is checked against `max_pixels` from the header, before decoding."""
    with image_checking():
        return _load_checked_image(image, min_size=min_size, max_pixels=max_pixels, source=source, row=row)


class _ImageRejected(Exception):
    """A problem after which the image cannot be checked further: `(kind, message)`, the last one found."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.found = (kind, message)


def _load_checked_image(
    image: Any, *, min_size: int, max_pixels: int, source: str, row: int
) -> tuple[DecodedImage | None, list[DataProblem]]:
    """`load_checked_image` inside an `image_checking()` block: the source is opened, its size checked from the
    header, its pixels loaded and decoded, each step adding its `(kind, message)` problems; an error that ends
    the checks early raises `_ImageRejected` in the step that finds it."""
    try:
        raw, name = _open_source(image)
    except Exception as exc:  # an HF dataset row that cannot be read
        return None, [
            make_problem(source, row, image, "unreadable-image", f"could not read the image: {exc!r}")
        ]
    found: list[tuple[str, str]] = []
    try:
        decoded = _check_and_decode(raw, min_size=min_size, max_pixels=max_pixels, found=found)
    except _ImageRejected as rejected:
        found.append(rejected.found)
        decoded = None
    return decoded, [make_problem(source, row, name, kind, message) for kind, message in found]


def _check_and_decode(
    raw: Any, *, min_size: int, max_pixels: int, found: list[tuple[str, str]]
) -> DecodedImage | None:
    """The decoded image, or None when any problem appended to `found` is an error. The tiny-image check and
    the pixel load both run before giving up, so one pass reports a small image that is also truncated."""
    if isinstance(raw, dict):  # an HF Image feature value that was not decoded
        raw = raw.get("bytes") or raw.get("path")
    if raw is None:
        raise _ImageRejected(
            "missing-file", "no image data (the image value is empty); fill it in or remove the row"
        )
    if isinstance(raw, Image.Image):
        opened, file_size = raw, None
    else:
        data = _read_image_bytes(raw)
        opened, file_size = _open_image_bytes(data, max_pixels), len(data)
    found.extend(_check_dimensions(opened, min_size=min_size, max_pixels=max_pixels))
    found.extend(_load_pixels(opened, file_size))
    if any(PROBLEM_KINDS[kind] == "error" for kind, _ in found):
        return None
    return _decode_checked(opened, found)


def _read_image_bytes(raw: Any) -> bytes:
    """The bytes of a path or bytes-like image value (non-empty); `_ImageRejected` when there are none."""
    if isinstance(raw, (str, os.PathLike)):
        path = os.fspath(raw)
        if not os.path.exists(path):
            raise _ImageRejected(
                "missing-file",
                f"image file not found: {path}; fix the path (relative paths are resolved against "
                "--image-root, else the manifest's folder) or remove the row",
            )
        if os.path.isdir(path):
            raise _ImageRejected(
                "unreadable-image", "the image path is a directory, not a file; fix the path"
            )
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise _ImageRejected(
                "unreadable-image", f"cannot read the file ({exc.strerror or exc}); check its permissions"
            ) from None
    elif isinstance(raw, (bytes, bytearray, memoryview)):
        data = bytes(raw)
    else:
        raise _ImageRejected(
            "unreadable-image", f"image value of type {type(raw).__name__} is neither a path nor bytes"
        )
    if not data:
        raise _ImageRejected(
            "unreadable-image", "the image file is empty (0 bytes); re-export it or remove the row"
        )
    return data


def _open_image_bytes(data: bytes, max_pixels: int) -> Image.Image:
    """`Image.open` of `data` (the header only: pixels are loaded later); `_ImageRejected` naming why Pillow
    refused it (a decompression bomb, not an image, a header cut short, anything else)."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise _ImageRejected("decompression-bomb", _pillow_bomb_message(exc, max_pixels)) from None
    except UnidentifiedImageError:
        raise _ImageRejected(
            "unreadable-image",
            f"not an image Pillow can read ({_describe_unknown(data)}); re-export it as PNG/JPEG or remove "
            "the row",
        ) from None
    except Exception as exc:
        if "truncated" in str(exc).lower():
            raise _ImageRejected(
                "truncated-image",
                f"image file is truncated (only {len(data)} bytes; even the header is incomplete: "
                f"{_pillow_error_text(exc)}); re-export or re-download the image, or remove the row",
            ) from None
        raise _ImageRejected(
            "unreadable-image",
            f"cannot open the image ({_pillow_error_text(exc)}); re-export it or remove the row",
        ) from None


def _check_dimensions(opened: Image.Image, *, min_size: int, max_pixels: int) -> list[tuple[str, str]]:
    """The header's size against `max_pixels` (`_ImageRejected`: never decoded) and `min_size` (a problem)."""
    width, height = opened.size
    if width * height > max_pixels:
        raise _ImageRejected(
            "decompression-bomb",
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            "(--max-pixels); downscale it, remove the row, or raise --max-pixels if it is genuine",
        )
    if min(width, height) < min_size:
        return [
            (
                "tiny-image",
                f"image is only {width}x{height} pixels (smaller than --min-size {min_size}); probably a "
                "thumbnail or placeholder: replace it with the full image or remove the row",
            )
        ]
    return []


def _load_pixels(opened: Image.Image, file_size: int | None) -> list[tuple[str, str]]:
    """Decode every pixel of `opened` (`Image.load`, truncated files raising): the problem it meets, if any."""
    try:
        opened.load()
    except Image.DecompressionBombError as exc:
        return [
            (
                "decompression-bomb",
                f"Pillow refuses to decode it: {_pillow_error_text(exc)} Downscale the image or remove the row",
            )
        ]
    except Exception as exc:
        if isinstance(exc, OSError) and "truncated" in str(exc).lower():
            width, height = opened.size
            return [
                (
                    "truncated-image",
                    f"image file is truncated (the {file_size}-byte file ends before the {width}x{height} "
                    f"image data does; Pillow: {_pillow_error_text(exc)}); re-export or re-download the "
                    "image, or remove the row",
                )
            ]
        return [
            (
                "unreadable-image",
                f"the image data cannot be decoded ({type(exc).__name__}: {_pillow_error_text(exc)}); "
                "re-export it or remove the row",
            )
        ]
    return []


def _decode_checked(opened: Image.Image, found: list[tuple[str, str]]) -> DecodedImage:
    """The canonical decode of a loaded image (`to_rgb`); a non-RGB source adds a `converted-mode` warning to
    `found`, values the decode refuses raise `_ImageRejected`."""
    mode = opened.mode
    try:
        decoded, detail = to_rgb(opened)
    except Exception as exc:
        raise _ImageRejected("unreadable-image", f"image mode {mode} cannot be decoded: {exc}") from None
    if detail is not None:
        found.append(
            (
                "converted-mode",
                f"image mode is {mode}, not RGB: {detail}; fine for training (inference decodes it the same "
                "way), re-save it as 8-bit RGB to silence this",
            )
        )
    return decoded


def validate_records(
    records: Sequence[ManifestRecord],
    *,
    class_names: Iterable[str] | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_images: bool = True,
    num_workers: int = 1,
    show_progress: bool = True,
) -> ValidationReport:
    """`check_records`, then `load_checked_image` for every distinct image (with `num_workers` threads; an image
    used by several rows is decoded once and its problems are reported for each of those rows). A progress bar
    is shown for large checks unless `show_progress=False` (logs, CI)."""
    records = list(records)
    problems = check_records(records, class_names=class_names)
    if check_images and records:
        rows_by_image: dict[Any, list[ManifestRecord]] = {}
        for record in records:
            rows_by_image.setdefault(_image_key(record.image), []).append(record)
        images = list(rows_by_image)

        def check(image: Any) -> list[DataProblem]:
            first = rows_by_image[image][0]
            _, found = _load_checked_image(
                image, min_size=min_size, max_pixels=max_pixels, source=first.source, row=first.row
            )
            return found

        progress = _progress(len(images), show_progress)
        with image_checking(), progress:
            if num_workers and num_workers > 1 and len(images) > 1:
                with ThreadPoolExecutor(max_workers=num_workers) as pool:
                    results = []
                    for found in pool.map(check, images):
                        results.append(found)
                        _update(progress)
            else:
                results = []
                for image in images:
                    results.append(check(image))
                    _update(progress)
        for image, found in zip(images, results, strict=True):
            for record in rows_by_image[image]:
                problems.extend(replace(p, source=record.source, row=record.row) for p in found)
    return ValidationReport(problems=_sorted_problems(problems), num_records=len(records))


def _progress(total: int, enabled: bool = True):
    if not enabled or total < PROGRESS_THRESHOLD:
        return nullcontext()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return nullcontext()
    return tqdm(total=total, desc="checking images", unit="img", leave=False)


def _update(progress: Any) -> None:
    if hasattr(progress, "update"):
        progress.update(1)


def validate_manifests(
    manifests: Sequence[Manifest], *, class_names: Iterable[str] | None = None, **kwargs: Any
) -> ValidationReport:
    """Validate the records of all `manifests` together (duplicates are found across manifests too) and add
    each manifest's parse-level problems. `kwargs` go to `validate_records`."""
    records = [record for manifest in manifests for record in manifest.records]
    report = validate_records(records, class_names=class_names, **kwargs)
    parse_problems = [problem for manifest in manifests for problem in manifest.problems]
    report.problems = _sorted_problems(parse_problems + report.problems, [m.source for m in manifests])
    return report
