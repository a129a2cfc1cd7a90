"""Decode, validate and resize every image once into a shared, content-addressed uint8 store.

Decoding and resizing are the package's canonical ones (`retvlp.common.image_processing_fundus`:
`decode_image`, reached through the checks of `retvlp.data.validation.load_checked_image`, then
`fit_to_square`), the very functions `FundusImageProcessor` runs: a file cached here and the same file given to
the processor at inference give identical uint8 pixels (16-bit and float sources are resized in float and
rounded once, after the resize).

One entry per IMAGE, not per row set: an entry is keyed by the image's identity (its resolved path, file size
and modification time; for a `datasets` image its dataset fingerprint, row and column) inside a pool keyed by
the geometry and the checks. Every run, manifest and evaluation that reads the same file at the same geometry
shares the entry; replacing a file (new size or mtime) gives a new key, so a stale entry is never read.

Layout (`<cache_dir>/`, default `$RETVLP_CACHE/images` or `~/.cache/retvlp/images`):

    v3-<geometry hash>/        one pool per (format version, geometry, checks)
        pool.json              the geometry and checks of the pool
        pool.lock              advisory lock: builders and `prune` of one pool take turns
        <shard id>.arrow       entries: key, pixels (size, size, 3) uint8, ok (False: failed a check; zeros)
        <shard id>.json        the shard's keys, ok flags and per-image problems; written last (atomic
                               rename), so a shard without it is unfinished and ignored; its mtime is the
                               shard's last use (least recently used shards are evicted first)

A build reads the pool's shard sidecars, decodes only the images it does not hold (parallel worker
processes, `num_proc`) into new shards, and returns a read-only memory-mapped view whose row `i` is record
`i`. Builders of one pool on one machine serialise on `pool.lock` (concurrent runs never decode an image
twice nor see half-written shards); files are write-once and renamed into place, so a killed build leaves at
most a stray temporary file. `prune_cache` (`retvlp cache prune`) evicts least recently used shards to a size
limit; a view keeps its shards memory-mapped, so pruning under a running job does not disturb it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import PIL.Image
from datasets import Dataset, Features, Value, concatenate_datasets

from ..common.image_processing_fundus import DecodedImage, FundusImageProcessor, fit_to_square
from .limits import parse_size  # noqa: F401 (re-exported: cache sizes are read here)
from .manifest import HFImageRef, ManifestRecord
from .validation import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, DataProblem, load_checked_image

logger = logging.getLogger(__name__)

# 3: one entry per image (content-addressed, shared across row sets) instead of one store per row set; pixels as
# raw bytes (no list offsets: 2.3x smaller).
# 2: one canonical decode shared with the processor (16-bit / float sources resized in float and rounded once,
# after the resize; float values outside [0, 1] and 32-bit integers outside 0..65535 refused, not stretched;
# alpha composited with exact rounding).
CACHE_FORMAT_VERSION = 3


@dataclass(frozen=True)
class ImageGeometry:
    """How images are brought to a fixed square before they are stored.

    The geometric part of `FundusImageProcessor` (crop to the field of view, aspect-preserving pad or plain
    resize, resampling filter), applied by the same function (`fit_to_square`); rescaling and normalisation
    happen on the fly in the batch builder.
    """

    size: int = 224
    pad_to_square: bool = False
    crop_to_fov: bool = False
    fov_threshold: float = 10.0
    resample: int = int(PIL.Image.Resampling.BICUBIC)

    @classmethod
    def from_image_processor(cls, image_processor, size: int | None = None) -> ImageGeometry:
        return cls(
            size=int(size or image_processor.size),
            pad_to_square=bool(image_processor.pad_to_square),
            crop_to_fov=bool(image_processor.crop_to_fov),
            fov_threshold=float(image_processor.fov_threshold),
            resample=int(image_processor.resample),
        )

    def fit(self, image: DecodedImage) -> np.ndarray:
        """A decoded image (`load_checked_image` / `decode_image`) → `(size, size, 3)` uint8."""
        return fit_to_square(
            image,
            size=self.size,
            resample=self.resample,
            pad_to_square=self.pad_to_square,
            crop_to_fov=self.crop_to_fov,
            fov_threshold=self.fov_threshold,
        )

    def image_processor(self) -> FundusImageProcessor:
        """The `FundusImageProcessor` doing this geometry and nothing else (output 0..255, unnormalised)."""
        return FundusImageProcessor(
            size=self.size,
            pad_to_square=self.pad_to_square,
            crop_to_fov=self.crop_to_fov,
            fov_threshold=self.fov_threshold,
            resample=self.resample,
            # the store's own check (`load_checked_image`, with the run's min_size) has passed by now; the
            # processor must not apply a second, possibly different, threshold
            min_size=1,
            do_rescale=False,
            do_normalize=False,
        )


def cache_features() -> Features:
    """Columns of a pool shard. `pixels` holds the `(size, size, 3)` uint8 array's bytes (the side follows from
    the length): a fixed-shape `Array3D` would store two levels of int32 list offsets next to them, 2.3× the
    pixels' own bytes at 224 px."""
    return Features({"key": Value("string"), "pixels": Value("large_binary"), "ok": Value("bool")})


# ---------------------------------------------------------------------------------------------- keys
def image_identity(image: str | HFImageRef) -> list:
    """What an entry's pixels depend on besides the geometry: the resolved path, size and mtime of a file (so
    two manifests naming one file by different relative paths share it), or a `datasets` image's dataset
    fingerprint, row and column."""
    if isinstance(image, HFImageRef):
        fingerprint = getattr(image.dataset, "_fingerprint", None) or f"unfingerprinted-{id(image.dataset)}"
        return ["hf", str(fingerprint), image.index, image.column]
    path = os.path.realpath(image)
    try:
        stat = os.stat(path)
        return ["file", path, stat.st_size, stat.st_mtime_ns]
    except OSError:
        return ["file", path, None, None]


def image_key(image: str | HFImageRef) -> str:
    """The entry key of one image (hex digest of `image_identity`)."""
    return hashlib.sha256(json.dumps(image_identity(image)).encode()).hexdigest()[:32]


def pool_name(geometry: ImageGeometry, min_size: int, max_pixels: int) -> str:
    """The pool directory of a geometry and check settings: `v<format>-<hash>`."""
    header = {"geometry": asdict(geometry), "checks": [min_size, max_pixels]}
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()[:16]
    return f"v{CACHE_FORMAT_VERSION}-{digest}"


def cache_key(
    records: Sequence[ManifestRecord], geometry: ImageGeometry, min_size: int, max_pixels: int
) -> str:
    """A hash of what a view of `records` holds: its pool and the image of every record, in order."""
    return _view_key(
        pool_name(geometry, min_size, max_pixels), [image_key(record.image) for record in records]
    )


def _view_key(pool: str, keys: Sequence[str]) -> str:
    digest = hashlib.sha256(pool.encode())
    for key in keys:
        digest.update(key.encode())
    return digest.hexdigest()[:24]


# ---------------------------------------------------------------------------------------------- pool files
@dataclass
class ShardInfo:
    """One finished shard of a pool, as its sidecar describes it."""

    path: Path  # the .arrow file
    keys: list[str]
    ok: list[bool]
    problems: dict[str, list[dict]]  # key -> problems without source / row (those belong to the records)
    num_bytes: int
    last_used: float  # seconds since the epoch (the sidecar's mtime)

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")


def read_shards(pool: Path) -> list[ShardInfo]:
    """The finished shards of a pool, oldest first (an .arrow file without its sidecar is unfinished)."""
    shards = []
    for sidecar in sorted(pool.glob("*.json")):
        if sidecar.name == "pool.json":
            continue
        arrow = sidecar.with_suffix(".arrow")
        try:
            meta = json.loads(sidecar.read_text())
            size, used = arrow.stat().st_size, sidecar.stat().st_mtime
        except (OSError, ValueError):  # evicted meanwhile, or foreign files: not part of the pool
            continue
        shards.append(ShardInfo(arrow, meta["keys"], meta["ok"], meta.get("problems", {}), size, used))
    return sorted(shards, key=lambda shard: (shard.last_used, shard.path.name))


@contextlib.contextmanager
def pool_lock(pool: Path) -> Iterator[None]:
    """Exclusive advisory lock of a pool (POSIX `flock`; elsewhere no lock: one builder at a time then)."""
    pool.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(pool / "pool.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _write_json_atomic(path: Path, value) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------- decoding
def decode_to_geometry(record: ManifestRecord, geometry: ImageGeometry, min_size: int, max_pixels: int):
    """`(pixels (size, size, 3) uint8 or None, problems)` of one record's image: the checks of
    `load_checked_image`, then `geometry.fit`; problems as `{kind, message, severity}` dicts (the source and row
    belong to the record, not to the image)."""
    image, found = load_checked_image(record.image, min_size=min_size, max_pixels=max_pixels)
    problems = [{"kind": p.kind, "message": p.message, "severity": p.severity} for p in found]
    if image is None:
        return None, problems
    try:
        return geometry.fit(image), problems
    except (OSError, ValueError) as error:  # e.g. a field-of-view crop of an all-black image
        problems.append(
            {
                "kind": "unreadable-image",
                "message": f"could not be resized to the cache geometry: {error}",
                "severity": "error",
            }
        )
        return None, problems


def _write_shard(args) -> str:
    """Worker: decode, check and resize the images of `records` (one per key) into one new shard of `pool`;
    returns the shard's file name once its sidecar is in place."""
    from datasets.arrow_writer import ArrowWriter

    records, keys, pool, geometry, min_size, max_pixels = args
    pool = Path(pool)
    name = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}"
    temporary = pool / f".{name}.arrow.tmp"
    blank = np.zeros((geometry.size, geometry.size, 3), np.uint8)
    oks, problems = [], {}
    try:
        with ArrowWriter(features=cache_features(), path=str(temporary)) as writer:
            for record, key in zip(records, keys, strict=True):
                pixels, found = decode_to_geometry(record, geometry, min_size, max_pixels)
                oks.append(pixels is not None)
                if found:
                    problems[key] = found
                stored = blank if pixels is None else np.ascontiguousarray(pixels, dtype=np.uint8)
                writer.write({"key": key, "pixels": stored.tobytes(), "ok": oks[-1]})
            writer.finalize()
        os.replace(temporary, pool / f"{name}.arrow")
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _write_json_atomic(pool / f"{name}.json", {"keys": list(keys), "ok": oks, "problems": problems})
    return name


def _decode_missing(
    missing: list[tuple[str, ManifestRecord]],
    pool: Path,
    geometry: ImageGeometry,
    min_size: int,
    max_pixels: int,
    num_proc: int | None,
    rows_per_shard: int,
    show_progress: bool,
) -> None:
    # at least one chunk per worker: a build smaller than workers × rows_per_shard still uses every worker
    workers = max(1, num_proc or os.cpu_count() or 1)
    step = max(1, min(rows_per_shard, -(-len(missing) // workers)))
    chunks = [missing[i : i + step] for i in range(0, len(missing), step)]
    jobs = [
        (
            [record for _, record in chunk],
            [key for key, _ in chunk],
            str(pool),
            geometry,
            min_size,
            max_pixels,
        )
        for chunk in chunks
    ]
    workers = min(workers, len(jobs))
    progress = _progress(len(missing), f"caching {len(missing)} images at {geometry.size} px", show_progress)
    if workers == 1:
        for job in jobs:
            _write_shard(job)
            progress.update(len(job[0]))
    else:
        # Records holding datasets.Dataset references cannot cross a spawn boundary cheaply; fork shares them.
        context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with context.Pool(workers) as pool_workers:
            for job, _ in zip(jobs, pool_workers.imap(_write_shard, jobs), strict=True):
                progress.update(len(job[0]))
    progress.close()


# ---------------------------------------------------------------------------------------------- views
@dataclass
class CachedImages:
    """A view of the store: row `i` of `dataset` (memory-mapped; columns key, pixels, ok) is record `i`, and
    `problems` are the records' problems met while decoding (with their source and row).

    Attributes:
        dataset: the view (the pool's shards concatenated, rows selected in record order).
        problems: per-record problems (warnings too), in record order.
        path: the pool directory the entries live in.
        key: `cache_key` of the records (what the view holds; equal keys, equal pixels).
    """

    dataset: Dataset
    problems: list[DataProblem]
    path: Path
    key: str = ""

    def __len__(self) -> int:
        return len(self.dataset)


def _open_view(records, keys: list[str], shards: list[ShardInfo], pool: Path, key: str) -> CachedImages:
    where: dict[str, tuple[int, int]] = {}
    for number, shard in enumerate(shards):
        for row, entry in enumerate(shard.keys):
            where.setdefault(entry, (number, row))
    used = sorted({where[k][0] for k in keys})
    offsets, total = {}, 0
    for number in used:
        offsets[number] = total
        total += len(shards[number].keys)
    parts = [Dataset.from_file(str(shards[number].path)) for number in used]
    combined = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    positions = [offsets[where[k][0]] + where[k][1] for k in keys]
    identity = positions == list(range(len(combined)))
    dataset = combined if identity else combined.select(positions)
    now = time.time()
    for number in used:  # last use, for least-recently-used eviction
        with contextlib.suppress(OSError):
            os.utime(shards[number].sidecar, (now, now))
    problems = []
    for record, entry in zip(records, keys, strict=True):
        for found in shards[where[entry][0]].problems.get(entry, []):
            problems.append(
                DataProblem(
                    source=record.source,
                    row=record.row,
                    image=str(record.image),
                    kind=found["kind"],
                    message=found["message"],
                    severity=found.get("severity", "error"),
                )
            )
    return CachedImages(dataset=dataset, problems=problems, path=pool, key=key)


def default_cache_dir() -> Path:
    root = os.environ.get("RETVLP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "retvlp"
    )
    return Path(root) / "images"


def build_image_cache(
    records: Sequence[ManifestRecord],
    geometry: ImageGeometry,
    cache_dir: str | os.PathLike | None = None,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_proc: int | None = None,
    rows_per_shard: int = 2048,
    max_bytes: int | None = None,
    show_progress: bool = True,
) -> CachedImages:
    """Decode, check and resize the images of `records` that the store does not hold yet; return the view.

    Args:
        records: manifest records (any roles); row `i` of the view is record `i`.
        geometry: output size and resizing rules.
        cache_dir: parent directory of the pools (default `$RETVLP_CACHE/images` or `~/.cache/retvlp/images`).
        min_size / max_pixels: the image checks of `load_checked_image` (tiny images, decompression bombs).
        num_proc: worker processes for decoding (default: the CPU count).
        rows_per_shard: images per new shard file (and per work unit).
        max_bytes: after building, evict least recently used shards this view does not use until the pool's
            shards total at most this many bytes (None: no limit; `retvlp cache prune` does it by hand).

    Returns:
        `CachedImages`; rows whose image failed a check have `ok=False` and are listed in `problems`.
    """
    if not records:
        raise ValueError(
            "build_image_cache got no records: the manifests are empty or every row failed to parse (or names "
            "an image outside the allowed data roots); see the manifests' problems."
        )
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    pool = cache_dir / pool_name(geometry, min_size, max_pixels)
    _warn_about_legacy_stores(cache_dir)
    keys = [image_key(record.image) for record in records]
    with pool_lock(pool):
        if not (pool / "pool.json").exists():
            _write_json_atomic(
                pool / "pool.json",
                {
                    "version": CACHE_FORMAT_VERSION,
                    "geometry": asdict(geometry),
                    "checks": [min_size, max_pixels],
                },
            )
        held = {entry for shard in read_shards(pool) for entry in shard.keys}
        missing: dict[str, ManifestRecord] = {}
        for record, entry in zip(records, keys, strict=True):
            if entry not in held:
                missing.setdefault(entry, record)
        if missing:
            _decode_missing(
                list(missing.items()),
                pool,
                geometry,
                min_size,
                max_pixels,
                num_proc,
                rows_per_shard,
                show_progress,
            )
        shards = read_shards(pool)
        # opened under the lock: the memory maps outlive any later eviction of these files
        # the keys computed above (one stat per record), not `cache_key`, which would stat every file again
        view = _open_view(records, keys, shards, pool, _view_key(pool.name, keys))
        if max_bytes is not None:
            in_use = {Path(item["filename"]).name for item in view.dataset.cache_files}
            _evict(
                read_shards(pool),
                max_bytes,
                keep={shard.path for shard in shards if shard.path.name in in_use},
            )
    return view


_WARNED_LEGACY: set[Path] = set()


def _warn_about_legacy_stores(cache_dir: Path) -> None:
    """Once per cache directory and process: name the per-row-set stores of cache format 2 that this format
    no longer reads, and how to remove them."""
    if cache_dir in _WARNED_LEGACY or not cache_dir.is_dir():
        return
    _WARNED_LEGACY.add(cache_dir)
    legacy = [path for path in cache_dir.iterdir() if (path / "cache_info.json").is_file()]
    if legacy:
        logger.warning(
            "%s holds %d image store(s) of an earlier cache format that are no longer read (one per row set); "
            "`retvlp cache prune --all --cache-dir %s` removes them (and empties the cache).",
            cache_dir,
            len(legacy),
            cache_dir,
        )


# ---------------------------------------------------------------------------------------------- info / prune
@dataclass
class PoolSummary:
    """What `retvlp cache info` prints for one pool."""

    path: Path
    geometry: dict
    shards: int
    images: int
    failed: int
    num_bytes: int
    last_used: float | None


def cache_summary(cache_dir: str | os.PathLike | None = None) -> list[PoolSummary]:
    """One `PoolSummary` per pool of `cache_dir` (legacy per-row-set stores of format 2 show as geometry
    `{"legacy": ...}` and are removed by `prune_cache(..., max_bytes=0)`)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = []
    for pool in sorted(p for p in cache_dir.glob("*") if p.is_dir()):
        if (pool / "pool.json").exists():
            meta = json.loads((pool / "pool.json").read_text())
            shards = read_shards(pool)
            out.append(
                PoolSummary(
                    path=pool,
                    geometry=dict(meta["geometry"], checks=meta["checks"]),
                    shards=len(shards),
                    images=sum(len(shard.keys) for shard in shards),
                    failed=sum(len(shard.ok) - sum(shard.ok) for shard in shards),
                    num_bytes=sum(shard.num_bytes for shard in shards),
                    last_used=max((shard.last_used for shard in shards), default=None),
                )
            )
        elif (pool / "cache_info.json").exists():
            info = json.loads((pool / "cache_info.json").read_text())
            files = [pool / name for name in info.get("shards", [])]
            out.append(
                PoolSummary(
                    path=pool,
                    geometry={"legacy": f"format {info.get('version')} store of one row set"},
                    shards=len(files),
                    images=int(info.get("num_rows", 0)),
                    failed=0,
                    num_bytes=sum(f.stat().st_size for f in files if f.exists()),
                    last_used=(pool / "cache_info.json").stat().st_mtime,
                )
            )
    return out


def _evict(shards: list[ShardInfo], max_bytes: int, keep: set[Path] = frozenset()) -> list[ShardInfo]:
    """Delete least recently used shards (not in `keep`) until the rest total ≤ `max_bytes`; sidecar first, so
    a half-deleted shard is unfinished, never a finished shard without its pixels."""
    total = sum(shard.num_bytes for shard in shards)
    removed = []
    for shard in shards:  # oldest first
        if total <= max_bytes:
            break
        if shard.path in keep:
            continue
        shard.sidecar.unlink(missing_ok=True)
        shard.path.unlink(missing_ok=True)
        total -= shard.num_bytes
        removed.append(shard)
    return removed


def prune_cache(
    cache_dir: str | os.PathLike | None = None,
    *,
    max_bytes: int = 0,
    older_than_days: float | None = None,
) -> tuple[int, int]:
    """Evict least recently used shards until each pool totals at most `max_bytes` (0: empty every pool and
    remove legacy stores); with `older_than_days`, evict only shards unused for that long. Returns (shards
    removed, bytes freed). Takes each pool's lock, so a concurrent build never loses a shard it is writing."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    removed = freed = 0
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    for pool in sorted(p for p in cache_dir.glob("*") if p.is_dir()):
        if (pool / "pool.json").exists():
            with pool_lock(pool):
                shards = read_shards(pool)
                if cutoff is not None:
                    keep = {shard.path for shard in shards if shard.last_used >= cutoff}
                    gone = _evict(shards, 0, keep=keep)
                else:
                    gone = _evict(shards, max_bytes)
            removed += len(gone)
            freed += sum(shard.num_bytes for shard in gone)
        elif (pool / "cache_info.json").exists() and max_bytes == 0 and cutoff is None:
            info = json.loads((pool / "cache_info.json").read_text())
            freed += sum((pool / n).stat().st_size for n in info.get("shards", []) if (pool / n).exists())
            removed += len(info.get("shards", []))
            shutil.rmtree(pool, ignore_errors=True)
    return removed, freed


def _progress(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="img", disable=not enabled or total < 64, leave=False)


def read_pixels(dataset: Dataset, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Rows `indices` of a store → `(len(indices), size, size, 3)` uint8, without per-row Python objects: the
    taken rows' bytes are one contiguous buffer, viewed as an array."""
    indices = np.asarray(indices, dtype=np.int64)
    column = dataset.with_format("arrow")[indices].column("pixels").combine_chunks()
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[
        column.offset : column.offset + len(column) + 1
    ]
    if len(column) == 0:
        return np.empty((0, 0, 0, 3), np.uint8)
    per_row = int(offsets[1] - offsets[0])
    size = int(round((per_row // 3) ** 0.5))
    if size * size * 3 != per_row or offsets[-1] - offsets[0] != per_row * len(column):
        raise ValueError(f"the store's pixel rows are not all {size}×{size}×3 uint8: the cache is damaged")
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data.reshape(len(column), size, size, 3)


def resize_to_geometry(image: DecodedImage, geometry: ImageGeometry) -> np.ndarray:
    """A decoded image → `(size, size, 3)` uint8 (`geometry.fit`)."""
    return geometry.fit(image)


__all__ = [
    "CACHE_FORMAT_VERSION",
    "CachedImages",
    "ImageGeometry",
    "PoolSummary",
    "build_image_cache",
    "cache_key",
    "cache_summary",
    "decode_to_geometry",
    "default_cache_dir",
    "image_identity",
    "image_key",
    "parse_size",
    "pool_name",
    "prune_cache",
    "read_pixels",
    "read_shards",
    "resize_to_geometry",
]
