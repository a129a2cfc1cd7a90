"""Decode, validate and resize every image once into a memory-mapped Arrow store (uint8).

Decoding and resizing are the package's canonical ones (`retvlp.common.image_processing_fundus`:
`decode_image`, reached through the checks of `retvlp.data.validation.load_checked_image`, then
`fit_to_square`), the very functions `FundusImageProcessor` runs: a file cached here and the same file given to
the processor at inference give identical uint8 pixels (16-bit and float sources are resized in float and
rounded once, after the resize).

Training epochs then read fixed-size uint8 arrays straight from the Arrow files: no JPEG decoding, no
resampling, no Python image objects on the hot path. The store is keyed by the records (paths, file sizes
and modification times, texts, labels) and by the image geometry, so editing a manifest, replacing an image
or changing the resolution builds a new store and a stale one is never read.

Layout of one store (`<cache_dir>/<key>/`):

    shard-00000.arrow ...   rows in record order: pixels (size, size, 3) uint8, text, labels, group, role,
                            source, row, ok (False when the image failed a check; its pixels are zeros)
    problems.jsonl          every problem met while decoding (also the warnings)
    cache_info.json         written last: the completion marker; a store without it is rebuilt

Shards are written by parallel worker processes (`num_proc`) into a temporary directory that is renamed
into place when complete, so a killed build never leaves a store that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import PIL.Image
from datasets import Dataset, Features, List, Value, concatenate_datasets
from datasets.features import Array3D

from ..common.image_processing_fundus import DecodedImage, FundusImageProcessor, fit_to_square
from .manifest import HFImageRef, ManifestRecord
from .validation import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, DataProblem, load_checked_image

# 2: one canonical decode shared with the processor (16-bit / float sources resized in float and rounded once,
# after the resize; float values outside [0, 1] and 32-bit integers outside 0..65535 refused, not stretched;
# alpha composited with exact rounding).
CACHE_FORMAT_VERSION = 2


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


def cache_features(size: int) -> Features:
    return Features(
        {
            "pixels": Array3D(shape=(size, size, 3), dtype="uint8"),
            "text": Value("string"),
            "labels": List(Value("string")),
            "group": Value("string"),
            "role": Value("string"),
            "source": Value("string"),
            "row": Value("int64"),
            "ok": Value("bool"),
        }
    )


def _image_identity(image: str | HFImageRef) -> list:
    if isinstance(image, HFImageRef):
        fingerprint = getattr(image.dataset, "_fingerprint", None) or id(image.dataset)
        return ["hf", str(fingerprint), image.index, image.column]
    try:
        stat = os.stat(image)
        return [image, stat.st_size, stat.st_mtime_ns]
    except OSError:
        return [image, None, None]


def cache_key(
    records: Sequence[ManifestRecord], geometry: ImageGeometry, min_size: int, max_pixels: int
) -> str:
    """A hash of everything the stored rows depend on: records, image files, geometry and checks."""
    digest = hashlib.sha256()
    header = {"version": CACHE_FORMAT_VERSION, "geometry": asdict(geometry), "checks": [min_size, max_pixels]}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for record in records:
        row = [
            _image_identity(record.image),
            record.text,
            list(record.labels),
            record.group,
            record.role,
            record.source,
            record.row,
        ]
        digest.update(json.dumps(row).encode())
    return digest.hexdigest()[:24]


def resize_to_geometry(image: DecodedImage, geometry: ImageGeometry) -> np.ndarray:
    """A decoded image → `(size, size, 3)` uint8 (`geometry.fit`)."""
    return geometry.fit(image)


def _write_shard(args) -> list[dict]:
    """Worker: decode, check and resize a contiguous slice of records into one Arrow file."""
    from datasets.arrow_writer import ArrowWriter

    records, path, geometry, min_size, max_pixels = args
    features = cache_features(geometry.size)
    blank = np.zeros((geometry.size, geometry.size, 3), np.uint8)
    problems: list[dict] = []
    with ArrowWriter(features=features, path=path) as writer:
        for record in records:
            image, found = load_checked_image(
                record.image, min_size=min_size, max_pixels=max_pixels, source=record.source, row=record.row
            )
            problems.extend(asdict(p) for p in found)
            pixels = blank
            ok = image is not None
            if ok:
                try:
                    pixels = geometry.fit(image)
                except (OSError, ValueError) as error:  # e.g. a field-of-view crop of an all-black image
                    ok = False
                    problems.append(
                        asdict(
                            DataProblem(
                                source=record.source,
                                row=record.row,
                                image=str(record.image),
                                kind="unreadable-image",
                                message=f"could not be resized to the cache geometry: {error}",
                            )
                        )
                    )
            writer.write(
                {
                    "pixels": pixels,
                    "text": record.text,
                    "labels": list(record.labels),
                    "group": record.group,
                    "role": record.role,
                    "source": record.source,
                    "row": record.row,
                    "ok": ok,
                }
            )
        writer.finalize()
    return problems


@dataclass
class CachedImages:
    """A built store: the rows (a memory-mapped `datasets.Dataset`) and the problems met while building."""

    dataset: Dataset
    problems: list[DataProblem]
    path: Path

    def __len__(self) -> int:
        return len(self.dataset)


def _load_store(path: Path) -> CachedImages:
    info = json.loads((path / "cache_info.json").read_text())
    shards = [Dataset.from_file(str(path / name)) for name in info["shards"]]
    dataset = concatenate_datasets(shards) if len(shards) > 1 else shards[0]
    problems = [
        DataProblem(**json.loads(line))
        for line in (path / "problems.jsonl").read_text().splitlines()
        if line.strip()
    ]
    return CachedImages(dataset=dataset, problems=problems, path=path)


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
    show_progress: bool = True,
) -> CachedImages:
    """Decode, check and resize `records` once; reuse the store on later calls with the same inputs.

    Args:
        records: manifest records (any roles), stored in this order.
        geometry: output size and resizing rules.
        cache_dir: parent directory of the stores (default `$RETVLP_CACHE/images` or `~/.cache/retvlp/images`).
        min_size / max_pixels: the image checks of `load_checked_image` (tiny images, decompression bombs).
        num_proc: worker processes for decoding (default: the CPU count).
        rows_per_shard: records per Arrow file (and per work unit).

    Returns:
        `CachedImages`; rows whose image failed a check have `ok=False` and are listed in `problems`.
    """
    if not records:
        raise ValueError(
            "build_image_cache got no records: the manifests are empty or every row failed to parse (or names "
            "an image outside the allowed data roots); see the manifests' problems."
        )
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(records, geometry, min_size, max_pixels)
    final = cache_dir / key
    if (final / "cache_info.json").exists():
        return _load_store(final)

    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
    try:
        chunks = [list(records[i : i + rows_per_shard]) for i in range(0, len(records), rows_per_shard)]
        names = [f"shard-{i:05d}.arrow" for i in range(len(chunks))]
        jobs = [
            (chunk, str(staging / name), geometry, min_size, max_pixels)
            for chunk, name in zip(chunks, names, strict=False)
        ]
        workers = max(1, min(num_proc or os.cpu_count() or 1, len(jobs)))
        progress = _progress(
            len(records), f"caching {len(records)} images at {geometry.size} px", show_progress
        )
        problems: list[dict] = []
        if workers == 1:
            for job in jobs:
                problems.extend(_write_shard(job))
                progress.update(len(job[0]))
        else:
            # Records holding datasets.Dataset references cannot cross a spawn boundary cheaply; fork shares them.
            context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            with context.Pool(workers) as pool:
                for job, found in zip(jobs, pool.imap(_write_shard, jobs), strict=False):
                    problems.extend(found)
                    progress.update(len(job[0]))
        progress.close()
        with open(staging / "problems.jsonl", "w") as handle:
            for problem in problems:
                handle.write(json.dumps(problem) + "\n")
        info = {
            "version": CACHE_FORMAT_VERSION,
            "geometry": asdict(geometry),
            "num_rows": len(records),
            "shards": names,
            "checks": {"min_size": min_size, "max_pixels": max_pixels},
        }
        (staging / "cache_info.json").write_text(json.dumps(info, indent=2))
        try:
            os.replace(staging, final)
        except OSError:  # another process finished the same store first
            if not (final / "cache_info.json").exists():
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _load_store(final)


def _progress(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="img", disable=not enabled or total < 64, leave=False)


def read_pixels(dataset: Dataset, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Rows `indices` of a store → `(len(indices), size, size, 3)` uint8, without per-row Python objects."""
    table = dataset.with_format("arrow")[np.asarray(indices, dtype=np.int64)]
    column = table.column("pixels").combine_chunks()
    storage = column.storage if hasattr(column, "storage") else column
    size = dataset.features["pixels"].shape[0]
    values = storage.flatten().flatten().flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, size, size, 3)


__all__ = [
    "CACHE_FORMAT_VERSION",
    "CachedImages",
    "ImageGeometry",
    "build_image_cache",
    "cache_key",
    "default_cache_dir",
    "read_pixels",
    "resize_to_geometry",
]
