"""Prepared shard sets: manifests validated, decoded and resized once, written as webdataset tar shards.

`retvlp prepare-data MANIFEST... --output DIR` (`prepare_shards`) writes

    DIR/plan.json            what is being prepared: input fingerprint, shard size, shard count, geometry
    DIR/shard-00000.tar      webdataset shard: per row `<key>.png` (the uint8 pixels, lossless; or `<key>.npy`,
                             raw, with `image_format="npy"`) and `<key>.json` (text, labels, group, role,
                             source, row)
    DIR/shard-00000.json     the shard's index: bytes, sha256, per member its byte offset, size and crc32,
                             the rows' metadata and problems; written after the tar, so it marks the shard
                             complete
    DIR/problems.jsonl       every problem found (the `retvlp validate-data` report)
    DIR/skipped_samples.jsonl  the rows left out (`on_bad_sample: skip`), one per row with its problems
    DIR/index.json           written last: the shard list (rows, bytes, sha256), roles, classes, geometry

Why tar shards (webdataset) and not Parquet: a shard is read front to back with plain GETs from any object
store, the format is what open_clip / webdataset users already stream, `datasets` reads it
(`load_dataset("webdataset", data_files=...)`), and a sample is a PNG plus a JSON that any tool can open;
the per-shard index adds what tar lacks, random access to a member by byte range, which the streaming reader
uses to resume at any step and to give each process only its own members.

Record `i` of the (seeded, shuffled) record list goes to shard `i // shard_size`, so the content of every
shard is fixed by the inputs alone: shards are independent work units, done in parallel by `num_proc`
processes and split across machines by rank (shard `k` belongs to rank `k % world_size`); a shard whose
index exists is done, so a killed preparation resumes where it stopped and never duplicates or loses a row;
files are written to temporaries and renamed into place. Images go through the same checks and the same
decode as the training cache (`retvlp.data.cache.decode_to_geometry`), so a prepared shard and the cache hold
identical pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import tarfile
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from .cache import ImageGeometry, decode_to_geometry, image_identity
from .manifest import Manifest, ManifestRecord
from .validation import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIZE,
    DataProblem,
    DataValidationError,
    ValidationReport,
    check_records,
)

SHARD_FORMAT = "retvlp-shards"
SHARD_FORMAT_VERSION = 1
BAD_SAMPLE_POLICIES = ("error", "skip")


def shard_name(number: int) -> str:
    return f"shard-{number:05d}"


def member_key(position: int) -> str:
    """The webdataset key of the record at `position` of the (shuffled) record list."""
    return f"{position:09d}"


@dataclass(frozen=True)
class PreparePlan:
    """What a preparation writes, fixed by its inputs: the record order and the shard boundaries."""

    fingerprint: str
    num_records: int
    shard_size: int
    num_shards: int
    shuffle_seed: int | None
    geometry: dict
    checks: list[int]
    classes: list[str]
    image_format: str = "png"

    def shard_range(self, number: int) -> range:
        return range(number * self.shard_size, min((number + 1) * self.shard_size, self.num_records))


def _fingerprint(records, geometry, checks, shard_size, shuffle_seed, classes, image_format) -> str:
    digest = hashlib.sha256()
    header = [SHARD_FORMAT_VERSION, asdict(geometry), checks, shard_size, shuffle_seed, classes, image_format]
    digest.update(json.dumps(header, sort_keys=True).encode())
    for record in records:
        row = [image_identity(record.image), record.text, list(record.labels), record.group, record.role]
        digest.update(json.dumps(row + [record.source, record.row]).encode())
    return digest.hexdigest()[:24]


def record_order(num_records: int, shuffle_seed: int | None) -> np.ndarray:
    """Positions of the records in the shards: a seeded permutation (rows of one manifest, class or patient
    spread over all shards, as streaming with a finite shuffle buffer needs), or the manifest order."""
    if shuffle_seed is None:
        return np.arange(num_records)
    return np.random.default_rng([shuffle_seed, 0x5EED]).permutation(num_records)


# ---------------------------------------------------------------------------------------------- one shard
def _tar_member(tar: tarfile.TarFile, name: str, payload: bytes) -> int:
    """Append `payload` as `name` with fixed metadata (so equal inputs give byte-identical shards); returns the
    payload's byte offset in the tar."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(payload), 0, 0o644, 0, 0
    info.uname = info.gname = ""
    header = len(info.tobuf(tar.format, tar.encoding, tar.errors))
    start = tar.offset + header
    tar.addfile(info, io.BytesIO(payload))
    return start


# png: a third of the raw size for fundus photographs, most of a shard's read cost is its decode; npy: the raw
# uint8 array (3× the bytes, nothing to decode) — for shards on a fast local or parallel file system.
IMAGE_FORMATS = ("png", "npy")


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # level 1: about as small as level 6 for photographs, several times faster to write
    PIL.Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_image(pixels: np.ndarray, image_format: str) -> bytes:
    """`(S, S, 3)` uint8 → the bytes of a `<key>.<image_format>` member."""
    if image_format == "npy":
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(pixels), allow_pickle=False)
        return buffer.getvalue()
    return encode_png(pixels)


def decode_image_member(payload: bytes, image_format: str) -> np.ndarray:
    """The bytes of an image member → `(S, S, 3)` uint8 (raises OSError / ValueError when they are not one)."""
    if image_format == "npy":
        return np.load(io.BytesIO(payload), allow_pickle=False)
    return np.asarray(PIL.Image.open(io.BytesIO(payload)).convert("RGB"))


def _row_metadata(record: ManifestRecord) -> dict:
    return {
        "text": record.text,
        "labels": list(record.labels),
        "group": record.group,
        "role": record.role,
        "source": record.source,
        "row": record.row,
    }


def _problem(record: ManifestRecord, found: dict) -> dict:
    return asdict(
        DataProblem(
            source=record.source,
            row=record.row,
            image=str(record.image),
            kind=found["kind"],
            message=found["message"],
            severity=found.get("severity", "error"),
        )
    )


def write_shard(args) -> str:
    """Worker: decode, check and resize the records of one shard, write `shard-K.tar` and then its index
    `shard-K.json`; rows in `excluded` (an error found in the records alone) and rows whose image fails a check
    are left out of the tar and kept as problems in the index. Returns the shard's name."""
    number, positions, records, excluded, output, geometry, min_size, max_pixels, image_format = args
    output = Path(output)
    name = shard_name(number)
    temporary = output / f".{name}.{uuid.uuid4().hex}.tar.tmp"
    members, rows, problems = [], [], []
    try:
        with tarfile.open(temporary, "w", format=tarfile.USTAR_FORMAT) as tar:
            for position, record in zip(positions, records, strict=True):
                if position in excluded:
                    continue
                pixels, found = decode_to_geometry(record, geometry, min_size, max_pixels)
                problems.extend(_problem(record, item) for item in found)
                if pixels is None:
                    continue
                key, png = member_key(position), encode_image(pixels, image_format)
                offset = _tar_member(tar, f"{key}.{image_format}", png)
                metadata = _row_metadata(record)
                _tar_member(tar, f"{key}.json", json.dumps(metadata, ensure_ascii=False).encode())
                members.append({"key": key, "offset": offset, "size": len(png), "crc32": zlib.crc32(png)})
                rows.append(metadata)
        data = temporary.read_bytes()
        os.replace(temporary, output / f"{name}.tar")
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    index = {
        "name": f"{name}.tar",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "members": members,
        "rows": rows,
        "problems": problems,
    }
    _write_json_atomic(output / f"{name}.json", index)
    return name


def _write_json_atomic(path: Path, value, indent: int | None = None) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_text(json.dumps(value, indent=indent, ensure_ascii=False))
    os.replace(temporary, path)


def shard_done(output: Path, number: int) -> bool:
    """A shard is done when its index exists and its tar has the size the index records."""
    index, tar = output / f"{shard_name(number)}.json", output / f"{shard_name(number)}.tar"
    try:
        return tar.stat().st_size == json.loads(index.read_text())["bytes"]
    except (OSError, ValueError, KeyError):
        return False


# ---------------------------------------------------------------------------------------------- preparation
@dataclass
class PrepareResult:
    """What one `prepare_shards` call did: shards written now, shards found done, and (when the set is
    complete) the report and the index path."""

    output: Path
    written: list[str]
    already_done: int
    num_shards: int
    report: ValidationReport | None
    index: Path | None


def _plan(
    records, geometry, min_size, max_pixels, shard_size, shuffle_seed, classes, image_format
) -> PreparePlan:
    checks = [min_size, max_pixels]
    return PreparePlan(
        fingerprint=_fingerprint(records, geometry, checks, shard_size, shuffle_seed, classes, image_format),
        num_records=len(records),
        shard_size=shard_size,
        num_shards=max(1, -(-len(records) // shard_size)),
        shuffle_seed=shuffle_seed,
        geometry=asdict(geometry),
        checks=checks,
        classes=classes,
        image_format=image_format,
    )


def _claim_output(output: Path, plan: PreparePlan) -> None:
    """Write `plan.json`, or check that the one there describes the same preparation (resume)."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / "plan.json"
    if path.exists():
        existing = json.loads(path.read_text())
        if existing.get("fingerprint") != plan.fingerprint:
            raise ValueError(
                f"{output} holds a preparation of different inputs (plan.json fingerprint "
                f"{existing.get('fingerprint')}, these inputs {plan.fingerprint}: the manifests, images, "
                "geometry, shard size or shuffle seed changed). Choose a new --output, or delete the folder to "
                "start over."
            )
        return
    _write_json_atomic(path, asdict(plan), indent=2)


def prepare_shards(
    manifests: Sequence[Manifest],
    output: str | os.PathLike,
    *,
    geometry: ImageGeometry,
    shard_size: int = 1024,
    class_names: Sequence[str] | None = None,
    on_bad_sample: str = "error",
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    rank: int = 0,
    world_size: int = 1,
    num_proc: int | None = None,
    shuffle_seed: int | None = 0,
    max_shards: int | None = None,
    image_format: str = "png",
    show_progress: bool = True,
) -> PrepareResult:
    """Validate, decode, resize and write the manifests' records as tar shards under `output`.

    Args:
        manifests: the manifests (`read_manifests`); their parse problems are part of the report.
        output: the shard directory (created; a directory of the same preparation is resumed).
        geometry: output size and resizing rules (those of the run that will train on the shards).
        shard_size: records per shard (rows per shard after skipped rows are left out).
        class_names: known classes (labels outside them are errors); default: the labels found.
        on_bad_sample: "error": a row with an error stops the preparation with the full report (`index.json` is
            not written; shards already done are kept for the rerun); "skip": such rows are left out, counted
            and listed in `skipped_samples.jsonl`.
        rank / world_size: this machine's (or job's) share: shards `k` with `k % world_size == rank`.
        num_proc: worker processes on this machine (default: the CPU count).
        shuffle_seed: seed of the record order in the shards (None: manifest order).
        max_shards: write at most this many shards in this call (time-boxed jobs; rerun to continue).
        image_format: "png" (lossless, a third of the bytes) or "npy" (raw, no decoding when read).

    Returns:
        `PrepareResult`; `index` is set once every shard of every rank is done and the data passed the policy.

    Raises:
        DataValidationError: errors with `on_bad_sample="error"` (the report names each file and row).
        ValueError: bad arguments, or `output` holds a preparation of other inputs.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"on_bad_sample={on_bad_sample!r}; choose one of {list(BAD_SAMPLE_POLICIES)}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format={image_format!r}; choose one of {list(IMAGE_FORMATS)}")
    output = Path(output)
    records_in_order = [record for manifest in manifests for record in manifest.records]
    if not records_in_order:
        raise ValueError("the manifests hold no records: nothing to prepare (see their problems).")
    classes = (
        sorted(class_names) if class_names else sorted({lab for r in records_in_order for lab in r.labels})
    )
    order = record_order(len(records_in_order), shuffle_seed)
    records = [records_in_order[i] for i in order]
    plan = _plan(records, geometry, min_size, max_pixels, shard_size, shuffle_seed, classes, image_format)

    global_problems = [p for manifest in manifests for p in manifest.problems]
    global_problems += check_records(records_in_order, class_names=classes)
    bad_rows = {(p.source, p.row) for p in global_problems if p.severity == "error"}
    if bad_rows and on_bad_sample == "error":  # known before any image is opened: report now, decode nothing
        raise DataValidationError(ValidationReport(problems=global_problems, num_records=len(records)))
    _claim_output(output, plan)

    mine = [k for k in range(plan.num_shards) if k % world_size == rank]
    done = [k for k in mine if shard_done(output, k)]
    todo = [k for k in mine if k not in done][: max_shards if max_shards is not None else None]
    excluded = {i for i, record in enumerate(records) if (record.source, record.row) in bad_rows}
    jobs = []
    for number in todo:
        positions = list(plan.shard_range(number))
        jobs.append(
            (
                number,
                positions,
                [records[i] for i in positions],
                excluded.intersection(positions),
                str(output),
                geometry,
                min_size,
                max_pixels,
                image_format,
            )
        )
    written = _run_jobs(jobs, num_proc, show_progress, len(records))
    result = PrepareResult(output, written, len(done), plan.num_shards, None, None)
    if all(shard_done(output, k) for k in range(plan.num_shards)):
        result.report, result.index = finalize_shards(output, plan, global_problems, on_bad_sample)
    return result


def _run_jobs(jobs: list[tuple], num_proc: int | None, show_progress: bool, total: int) -> list[str]:
    from tqdm.auto import tqdm

    workers = max(1, min(num_proc or os.cpu_count() or 1, len(jobs)))
    images = sum(len(job[1]) for job in jobs)
    progress = tqdm(
        total=images, desc="preparing shards", unit="img", disable=not show_progress or total < 64
    )
    written = []
    if workers == 1:
        for job in jobs:
            written.append(write_shard(job))
            progress.update(len(job[1]))
    else:
        context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with context.Pool(workers) as pool:
            for job, name in zip(jobs, pool.imap(write_shard, jobs), strict=True):
                written.append(name)
                progress.update(len(job[1]))
    progress.close()
    return written


def finalize_shards(
    output: Path, plan: PreparePlan, global_problems: list[DataProblem], on_bad_sample: str
) -> tuple[ValidationReport, Path | None]:
    """Gather the shards' problems, apply the policy, write the reports and (data accepted) `index.json`."""
    shards = [json.loads((output / f"{shard_name(k)}.json").read_text()) for k in range(plan.num_shards)]
    problems = list(global_problems) + [DataProblem(**p) for shard in shards for p in shard["problems"]]
    report = ValidationReport(problems=problems, num_records=plan.num_records)
    # every file of the finish goes to a temporary that is renamed: two ranks finishing at once write the same
    # content, and neither may read or leave the other's half-written file
    temporary = output / f".problems.{uuid.uuid4().hex}.tmp"
    report.write_jsonl(temporary)
    os.replace(temporary, output / "problems.jsonl")
    skipped = sorted(report.bad_records)
    if report.errors and on_bad_sample == "error":
        raise DataValidationError(report)
    reasons: dict[tuple[str, int], list[str]] = {}
    images: dict[tuple[str, int], str] = {}
    for problem in report.errors:
        reasons.setdefault((problem.source, problem.row), []).append(f"{problem.kind}: {problem.message}")
        images.setdefault((problem.source, problem.row), problem.image)
    temporary = output / f".skipped_samples.{uuid.uuid4().hex}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        for source, row in skipped:
            entry = {
                "source": source,
                "row": row,
                "image": images[(source, row)],
                "problems": reasons[(source, row)],
            }
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
    os.replace(temporary, output / "skipped_samples.jsonl")
    roles: dict[str, int] = {}
    for shard in shards:
        for row in shard["rows"]:
            roles[row["role"]] = roles.get(row["role"], 0) + 1
    index = {
        "format": SHARD_FORMAT,
        "version": SHARD_FORMAT_VERSION,
        "fingerprint": plan.fingerprint,
        "geometry": plan.geometry,
        "checks": plan.checks,
        "image_format": plan.image_format,
        "classes": plan.classes,
        "num_records": plan.num_records,
        "num_rows": sum(len(shard["rows"]) for shard in shards),
        "skipped": len(skipped),
        "roles": dict(sorted(roles.items())),
        "shards": [
            {"name": shard["name"], "index": f"{shard_name(k)}.json", "rows": len(shard["rows"]),
             "bytes": shard["bytes"], "sha256": shard["sha256"]}
            for k, shard in enumerate(shards)
        ],
    }  # fmt: skip
    _write_json_atomic(output / "index.json", index, indent=1)
    return report, output / "index.json"


__all__ = [
    "BAD_SAMPLE_POLICIES",
    "PreparePlan",
    "PrepareResult",
    "SHARD_FORMAT",
    "SHARD_FORMAT_VERSION",
    "IMAGE_FORMATS",
    "decode_image_member",
    "encode_image",
    "encode_png",
    "finalize_shards",
    "member_key",
    "prepare_shards",
    "record_order",
    "shard_done",
    "shard_name",
    "write_shard",
]
