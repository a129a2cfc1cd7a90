"""Leakage between pretraining and evaluation data: the same photograph (or the same patient) on both sides.

Foundation models are pretrained on public images that later turn up in public test sets; a test image the
model was pretrained on inflates every figure measured on it. `find_leakage` compares the records of the
pretraining manifests with those of the evaluation manifests and reports three kinds of overlap:

* **exact duplicates**: the same decoded pixels (`exact_hash`: BLAKE2b of the shape and the uint8 RGB pixels
  of the package's one decode, `validation.load_checked_image`), so a PNG and its lossless re-save, or the
  same image under two file names, match;
* **near duplicates**: perceptual hashes (`perceptual_hashes`: the signs of the lowest DCT frequencies of a
  grey, histogram-equalised thumbnail of the centre of the field of view, located by its centroid and area so
  that crops of a few per cent barely move it), robust to resizing, JPEG re-encoding, small crops and mild
  colour jitter. Candidate pairs are the 64-bit hashes within Hamming distance `max_distance`, found with
  `HammingIndex` (multi-index hashing: the 64 bits split into bands, so that by the pigeonhole principle any
  two hashes within `max_distance` are close on at least one band; never all pairs), and each candidate is
  confirmed by the 256-bit hashes within `max_fine_distance`;
* **shared patient ids**: group ids (the manifests' patient column) present on both sides. Ids are compared
  as strings: they only name the same patient when both sides number patients the same way (the same
  public data set split two ways); data sets numbered independently (`1`, `2`, ...) collide by chance.

An image that cannot be read is counted and listed (`LeakageReport.unreadable`), never dropped silently.
The optional embedding pass (cosine similarity of a model's image embeddings) lives in the evaluation layer,
`retvlp.evaluation.leakage`. Only numpy and Pillow do the work here; the contact sheet is drawn with Pillow.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from .manifest import Manifest, ManifestRecord
from .validation import DEFAULT_MAX_PIXELS, load_checked_image

HASH_BITS = 64
# Near duplicates: 64-bit hashes within DEFAULT_MAX_DISTANCE (the index's range query), confirmed by 256-bit
# hashes within DEFAULT_MAX_FINE_DISTANCE. Chosen on planted sets like tests/test_leakage.py's (docs/evaluation.md,
# "Leakage"; synthetic fundus photographs of 96-256 px): resized, JPEG q70, 3-5 % cropped, colour-jittered and
# all-at-once copies lie at 0-8 (64 bits) and 0-40 (256 bits) of their originals; other photographs of the same
# class at 10 or more (a few at 10) and 70 or more.
DEFAULT_MAX_DISTANCE = 10
FINE_BITS = 256
DEFAULT_MAX_FINE_DISTANCE = 54
THUMBNAIL = 64  # side of the grey thumbnail the DCT is taken of
FOV_THRESHOLD = 20  # largest channel (0..255) above which a pixel is inside the field of view
# the side of the centred square kept, as a fraction of the field of view's diameter (inside the round fundus)
CENTRE_FRACTION = 0.7
KINDS = ("exact", "near", "embedding")
MAX_SHEET_PAIRS = 60  # pairs drawn on the PNG contact sheet
MAX_HTML_PAIRS = 500  # pairs shown with thumbnails in the HTML page


# ---------------------------------------------------------------------------------------------- hashing
def _uint8_rgb(decoded: Any) -> np.ndarray:
    """`(H, W, 3)` uint8 of a decoded image (an 8-bit RGB PIL image, or a float32 `(3, H, W)` tensor on the
    0..255 scale for deeper sources, rounded once like the cache's `quantize`)."""
    if isinstance(decoded, Image.Image):
        return np.asarray(decoded, dtype=np.uint8)
    values = np.asarray(decoded, dtype=np.float32).transpose(1, 2, 0)
    return np.round(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def exact_hash(pixels: np.ndarray) -> str:
    """BLAKE2b (128 bits, hex) of the image's shape and uint8 RGB pixels: equal for equal decoded pixels."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(pixels.shape).encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(THUMBNAIL)
# the 256 lowest frequencies after the DC term, in zig-zag order (rows + columns, then rows); the first 64 of
# them make the index hash
_LOW = sorted(((i, j) for i in range(24) for j in range(24)), key=lambda ij: (ij[0] + ij[1], ij[0]))[
    1 : FINE_BITS + 1
]
_LOW_ROWS = np.array([i for i, _ in _LOW])
_LOW_COLS = np.array([j for _, j in _LOW])
_WEIGHTS = (1 << np.arange(HASH_BITS - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)


def fundus_thumbnail(pixels: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
    """`(size, size)` float64 grey thumbnail the perceptual hashes are taken of: the image shrunk (box filter)
    to at most 256 px; its field of view (pixels whose largest channel exceeds `FOV_THRESHOLD`) located by its
    centroid and the diameter of a disc of its area (a crop of a few per cent, or the frame cutting the round
    fundus, moves both little, unlike a bounding box); the centred square of `CENTRE_FRACTION` of that diameter
    taken in grey (luma), shrunk to `size` and histogram-equalised (ranks scaled to [0, 1]: brightness, contrast
    and gamma changes leave it unchanged)."""
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), "RGB")
    scale = 256 / max(image.size)
    if scale < 1:
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BOX
        )
    small = np.asarray(image)
    mask = small.max(axis=2) > FOV_THRESHOLD
    area = int(mask.sum())
    if area >= 16:  # the field of view's centroid and the radius of a disc of its area
        ys, xs = np.nonzero(mask)
        centre_y, centre_x = ys.mean() + 0.5, xs.mean() + 0.5
        side = CENTRE_FRACTION * 2 * np.sqrt(area / np.pi)
    else:  # no field of view to speak of: the whole image
        centre_y, centre_x = small.shape[0] / 2, small.shape[1] / 2
        side = CENTRE_FRACTION * min(small.shape[:2])
    box = (centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2)
    grey = image.convert("L").resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
    values = np.asarray(grey, dtype=np.float64).ravel()
    ranks = np.empty(values.size)
    ranks[np.argsort(values, kind="stable")] = np.arange(values.size)
    # ties share their mean rank, so a flat region does not get an arbitrary gradient
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ranks = np.bincount(inverse, weights=ranks) / counts
    return (ranks[inverse] / max(values.size - 1, 1)).reshape(size, size)


def _pack(bits: np.ndarray) -> np.ndarray:
    """Booleans (a multiple of 64) → uint64 words, most significant bit first."""
    return (bits.reshape(-1, HASH_BITS).astype(np.uint64) * _WEIGHTS).sum(axis=1, dtype=np.uint64)


def perceptual_hashes(pixels: np.ndarray) -> tuple[int, np.ndarray]:
    """`(64-bit hash, 256-bit hash as 4 uint64 words)` of an `(H, W, 3)` uint8 image: bit `b` (most
    significant first) says whether the `b`-th lowest non-DC DCT coefficient of `fundus_thumbnail` lies above
    the median of the 64 (resp. 256) lowest. The 64-bit hash is indexed (`HammingIndex`); the 256-bit one
    confirms the candidates."""
    coefficients = _DCT @ fundus_thumbnail(pixels) @ _DCT.T
    low = coefficients[_LOW_ROWS, _LOW_COLS]
    coarse = int(_pack(low[:HASH_BITS] > np.median(low[:HASH_BITS]))[0])
    return coarse, _pack(low > np.median(low))


def perceptual_hash(pixels: np.ndarray) -> int:
    """The 64-bit DCT perceptual hash of an `(H, W, 3)` uint8 image (`perceptual_hashes`)."""
    return perceptual_hashes(pixels)[0]


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Hamming distances of 64-bit hashes (element-wise, broadcast)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))).astype(
        np.int64
    )


# ---------------------------------------------------------------------------------------------- the index
MAX_PROBES = 4096  # band values probed per query and band, at most (the flips of up to `radius` bits)


def _edges(bands: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, HASH_BITS, bands + 1).round().astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def _probes(width: int, radius: int) -> int:
    return sum(math.comb(width, r) for r in range(radius + 1))


def choose_bands(num_indexed: int, max_distance: int) -> int:
    """The number of bands `m` (radius `max_distance // m`) with the least expected work per query for
    `num_indexed` uniformly random hashes: `sum over bands of probes * (4 + n / 2**width)` (a probe, a binary
    search, costs about four candidates' checks; measured by benchmarks/leakage_benchmark.py)."""
    best, best_cost = max_distance + 1, math.inf
    for bands in range(1, max_distance + 2):
        radius = max_distance // bands
        edges = _edges(bands)
        probes = [_probes(hi - lo, radius) for lo, hi in edges]
        if max(probes) > MAX_PROBES:
            continue
        cost = sum(
            p * (4 + num_indexed / 2.0 ** (hi - lo)) for p, (lo, hi) in zip(probes, edges, strict=True)
        )
        if cost < best_cost:
            best, best_cost = bands, cost
    return best


class HammingIndex:
    """Multi-index hashing of 64-bit hashes for the range query `distance <= max_distance`.

    The bits are split into `bands` contiguous bands. Two hashes within `max_distance` differ in at most
    `max_distance` bits, so (pigeonhole) at least one band holds at most `radius = max_distance // bands` of
    them. With `bands = max_distance + 1` (radius 0) the pair agrees exactly on some band; fewer, wider bands
    probe each band value with up to `radius` of its bits flipped, and find far fewer chance candidates (a
    wide band splits the index finely). Each band is a sorted array of its values; a query looks its probes up
    by binary search (`np.searchsorted`), checks every candidate's full distance and keeps each close pair
    once. The result is exactly the all-pairs result (tests/test_leakage.py compares them), at the cost of the
    probes and candidates only; `bands` defaults to the cheapest for the index's size (`choose_bands`).
    """

    def __init__(
        self,
        hashes: Sequence[int] | np.ndarray,
        max_distance: int = DEFAULT_MAX_DISTANCE,
        bands: int | None = None,
    ):
        if not 0 <= int(max_distance) < HASH_BITS:
            raise ValueError(f"max_distance must lie in 0..{HASH_BITS - 1}, got {max_distance}")
        self.hashes = np.asarray(hashes, dtype=np.uint64).ravel()
        self.max_distance = int(max_distance)
        count = choose_bands(len(self.hashes), self.max_distance) if bands is None else int(bands)
        if not 1 <= count <= HASH_BITS:
            raise ValueError(f"bands must lie in 1..{HASH_BITS}, got {bands}")
        self.radius = self.max_distance // count
        self.bands = _edges(count)
        self._sorted, self._flips = [], []
        for lo, hi in self.bands:
            values = self._band(self.hashes, (lo, hi))
            order = np.argsort(values, kind="stable")
            self._sorted.append((values[order], order))
            flips = [
                sum(1 << bit for bit in chosen)
                for r in range(self.radius + 1)
                for chosen in itertools.combinations(range(hi - lo), r)
            ]
            self._flips.append(np.asarray(flips, dtype=np.uint64))

    @staticmethod
    def _band(hashes: np.ndarray, band: tuple[int, int]) -> np.ndarray:
        lo, hi = band
        shift = np.uint64(HASH_BITS - hi)
        mask = np.uint64((1 << (hi - lo)) - 1)
        return (hashes >> shift) & mask

    def query(self, hashes: Sequence[int] | np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, ...]:
        """Every `(query index, index position, distance)` with distance `<= max_distance`, as three int64
        arrays sorted by query then index position. Queries run in chunks of `chunk` (bounded memory)."""
        queries = np.asarray(hashes, dtype=np.uint64).ravel()
        found = [self._query_chunk(queries[s : s + chunk], s) for s in range(0, len(queries), chunk)]
        if not found:
            return tuple(np.zeros(0, np.int64) for _ in range(3))
        q, i, d = (np.concatenate(parts) for parts in zip(*found, strict=True))
        order = np.lexsort((i, q))
        return q[order], i[order], d[order]

    def _query_chunk(self, queries: np.ndarray, offset: int) -> tuple[np.ndarray, ...]:
        n = len(self.hashes)
        query_parts, index_parts = [], []
        for band, (values, order), flips in zip(self.bands, self._sorted, self._flips, strict=True):
            keys = (self._band(queries, band)[:, None] ^ flips[None, :]).ravel()  # every probe of every query
            starts = np.searchsorted(values, keys, side="left")
            counts = np.searchsorted(values, keys, side="right") - starts
            total = int(counts.sum())
            if total == 0:
                continue
            query_of = np.repeat(np.arange(len(keys), dtype=np.int64) // len(flips), counts)
            # the k-th candidate of probe p sits at starts[p] + (k - the first k of p) in the sorted band
            positions = np.arange(total, dtype=np.int64) + np.repeat(
                starts - (np.cumsum(counts) - counts), counts
            )
            index_of = order[positions]
            # distances first: most candidates are far apart and dropped here, before any de-duplication
            close = hamming(queries[query_of], self.hashes[index_of]) <= self.max_distance
            query_parts.append(query_of[close])
            index_parts.append(index_of[close])
        if not query_parts:
            return tuple(np.zeros(0, np.int64) for _ in range(3))
        # a pair close on several bands was found in each: keep it once
        pairs = np.sort(np.concatenate(query_parts) * n + np.concatenate(index_parts))
        pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))] if len(pairs) else pairs
        query_of, index_of = pairs // n, pairs % n
        return query_of + offset, index_of, hamming(queries[query_of], self.hashes[index_of])


def brute_force_pairs(a: np.ndarray, b: np.ndarray, max_distance: int) -> set[tuple[int, int, int]]:
    """All `(i, j, distance)` with `hamming(a[i], b[j]) <= max_distance`, by comparing every pair (for checks
    and small inputs; `HammingIndex` is what scales)."""
    distances = hamming(np.asarray(a, np.uint64)[:, None], np.asarray(b, np.uint64)[None, :])
    i, j = np.nonzero(distances <= max_distance)
    return {(int(x), int(y), int(distances[x, y])) for x, y in zip(i, j, strict=True)}


# ---------------------------------------------------------------------------------------------- records
@dataclass
class HashedImages:
    """The hashes of a list of records: `ok[i]` False when record `i` could not be read (listed in
    `unreadable` as `{"source", "row", "image", "message"}`)."""

    records: list[ManifestRecord]
    exact: list[str | None]
    perceptual: np.ndarray  # (N,) uint64 64-bit hashes, 0 where not ok
    fine: np.ndarray  # (N, 4) uint64 256-bit hashes
    ok: np.ndarray
    unreadable: list[dict]


def _hash_one(record: ManifestRecord, max_pixels: int) -> tuple[str | None, tuple | None, str | None]:
    decoded, problems = load_checked_image(
        record.image, min_size=1, max_pixels=max_pixels, source=record.source, row=record.row
    )
    if decoded is None:
        errors = [p.message for p in problems if p.severity == "error"] or ["the image could not be read"]
        return None, None, "; ".join(errors)
    pixels = _uint8_rgb(decoded)
    return exact_hash(pixels), perceptual_hashes(pixels), None


def hash_records(
    records: Sequence[ManifestRecord],
    *,
    num_workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
) -> HashedImages:
    """Decode every record's image once (the package's decode and image checks) and hash it; threads
    (`num_workers`, default the CPU count, at most 8) overlap the decoding, which releases the GIL."""
    records = list(records)
    workers = max(1, num_workers or min(8, os.cpu_count() or 1))
    exact: list[str | None] = [None] * len(records)
    perceptual = np.zeros(len(records), dtype=np.uint64)
    fine = np.zeros((len(records), FINE_BITS // HASH_BITS), dtype=np.uint64)
    ok = np.zeros(len(records), dtype=bool)
    unreadable = []

    def work(i: int):
        return i, _hash_one(records[i], max_pixels)

    with ThreadPoolExecutor(workers) as pool:
        for i, (digest, hashes, problem) in pool.map(work, range(len(records))):
            if problem is not None:
                record = records[i]
                unreadable.append(
                    {
                        "source": record.source,
                        "row": record.row,
                        "image": str(record.image),
                        "message": problem,
                    }
                )
            else:
                exact[i], ok[i] = digest, True
                perceptual[i], fine[i] = np.uint64(hashes[0]), hashes[1]
            if progress is not None:
                progress(1)
    return HashedImages(records, exact, perceptual, fine, ok, unreadable)


# ---------------------------------------------------------------------------------------------- the report
@dataclass
class LeakagePair:
    """A pretraining image and an evaluation image that are the same photograph: `kind` "exact" (distance 0),
    "near" (Hamming distance of the perceptual hashes) or "embedding" (cosine similarity)."""

    pretrain: str
    eval: str
    kind: str
    distance: float
    pretrain_index: int  # position among the pretraining records
    eval_index: int  # position among the evaluation records
    pretrain_where: str = ""  # manifest:row
    eval_where: str = ""
    fine_distance: int | None = None  # near pairs: the 256-bit hashes' distance that confirmed them

    def to_json(self) -> dict:
        return {
            "pretrain": self.pretrain,
            "eval": self.eval,
            "kind": self.kind,
            "distance": self.distance,
            "pretrain_where": self.pretrain_where,
            "eval_where": self.eval_where,
            **({"fine_distance": self.fine_distance} if self.fine_distance is not None else {}),
        }


@dataclass
class LeakageReport:
    """What `find_leakage` found. `pairs` holds at most one pair per (pretraining, evaluation) image, the
    strongest kind (exact before near before embedding); `shared_ids` the patient ids on both sides and
    `shared_id_images` the evaluation records of those patients (positions); `unreadable` the images that
    could not be hashed, per side."""

    num_pretrain: int
    num_eval: int
    max_distance: int
    pairs: list[LeakagePair] = field(default_factory=list)
    shared_ids: list[str] = field(default_factory=list)
    shared_id_images: list[int] = field(default_factory=list)
    unreadable: dict[str, list[dict]] = field(default_factory=lambda: {"pretrain": [], "eval": []})
    settings: dict = field(default_factory=dict)
    pretrain_records: list[ManifestRecord] = field(default_factory=list, repr=False, compare=False)
    eval_records: list[ManifestRecord] = field(default_factory=list, repr=False, compare=False)

    @property
    def counts(self) -> dict[str, int]:
        counts = {kind: sum(p.kind == kind for p in self.pairs) for kind in KINDS}
        return {
            **counts,
            "eval_images_duplicated": len(self.duplicated_eval_images()),
            "shared_patient_ids": len(self.shared_ids),
            "eval_images_of_shared_patients": len(self.shared_id_images),
            "eval_images_leaked": len(self.leaked_eval_images()),
            "unreadable_pretrain": len(self.unreadable.get("pretrain", [])),
            "unreadable_eval": len(self.unreadable.get("eval", [])),
        }

    @property
    def found(self) -> bool:
        """Whether any leakage was found (a duplicate pair or a shared patient id)."""
        return bool(self.pairs or self.shared_ids)

    def duplicated_eval_images(self) -> list[int]:
        """Positions of the evaluation records with a duplicate (of any kind) in the pretraining data."""
        return sorted({p.eval_index for p in self.pairs})

    def leaked_eval_images(self) -> list[int]:
        """Positions of the evaluation records that leak: duplicated, or of a patient in the pretraining data."""
        return sorted({*self.duplicated_eval_images(), *self.shared_id_images})

    def add_pairs(self, pairs: Iterable[LeakagePair]) -> None:
        """Add pairs (e.g. the embedding pass's), keeping the strongest kind per image pair."""
        rank = {kind: i for i, kind in enumerate(KINDS)}
        best = {(p.pretrain_index, p.eval_index): p for p in self.pairs}
        for pair in pairs:
            key = (pair.pretrain_index, pair.eval_index)
            if key not in best or rank[pair.kind] < rank[best[key].kind]:
                best[key] = pair
        self.pairs = sorted(best.values(), key=lambda p: (p.eval_index, p.pretrain_index))

    def to_json(self) -> dict:
        return {
            "num_pretrain": self.num_pretrain,
            "num_eval": self.num_eval,
            "max_distance": self.max_distance,
            "settings": self.settings,
            "counts": self.counts,
            "pairs": [pair.to_json() for pair in self.pairs],
            "shared_ids": self.shared_ids,
            "eval_images_of_shared_patients": [
                _image_name(self.eval_records[i]) if self.eval_records else i for i in self.shared_id_images
            ],
            "unreadable": self.unreadable,
        }

    def summary(self) -> str:
        """One line: what was found."""
        c = self.counts
        if not self.found:
            return f"no leakage found between {self.num_pretrain} pretraining and {self.num_eval} evaluation images"
        return (
            f"{c['eval_images_leaked']} of {self.num_eval} evaluation images leak: {c['exact']} exact and "
            f"{c['near']} near duplicate pair(s)"
            + (f", {c['embedding']} embedding pair(s)" if c["embedding"] else "")
            + f", {c['shared_patient_ids']} patient id(s) shared ({c['eval_images_of_shared_patients']} "
            "evaluation images)"
        )

    def markdown(self, max_pairs: int = 50, heading: str = "#") -> str:
        """A markdown summary: the counts, the settings, the first `max_pairs` pairs, the shared ids and the
        unreadable images."""
        c = self.counts
        lines = [
            f"{heading} Leakage between pretraining and evaluation data",
            "",
            self.summary()[0].upper() + self.summary()[1:] + ".",
            "",
            "| check | found |",
            "|---|---|",
            f"| exact duplicates (decoded pixels) | {c['exact']} |",
            f"| near duplicates (perceptual hash, Hamming distance <= {self.max_distance}) | {c['near']} |",
        ]
        if "min_cosine" in self.settings:
            lines.append(f"| embedding pairs (cosine >= {self.settings['min_cosine']}) | {c['embedding']} |")
        lines += [
            f"| shared patient ids | {c['shared_patient_ids']} ({c['eval_images_of_shared_patients']} evaluation "
            "images) |",
            f"| evaluation images leaked (any of the above) | {c['eval_images_leaked']} of {self.num_eval} |",
            f"| unreadable images (pretraining / evaluation) | {c['unreadable_pretrain']} / "
            f"{c['unreadable_eval']} |",
        ]
        if self.pairs:
            lines += ["", "| pretraining image | evaluation image | kind | distance |", "|---|---|---|---|"]
            lines += [
                f"| {_cell(p.pretrain)} | {_cell(p.eval)} | {p.kind} | {_distance_text(p)} |"
                for p in self.pairs[:max_pairs]
            ]
            if len(self.pairs) > max_pairs:
                lines.append(
                    f"\n... and {len(self.pairs) - max_pairs} more pairs (leakage.json lists them all)."
                )
        if self.shared_ids:
            shown = ", ".join(self.shared_ids[:30])
            more = f" ... ({len(self.shared_ids) - 30} more)" if len(self.shared_ids) > 30 else ""
            lines += ["", f"Shared patient ids: {shown}{more}."]
        for side, items in self.unreadable.items():
            if items:
                lines += ["", f"Unreadable {side} images (not checked):"]
                lines += [f"- {u['source']}:{u['row']}: {u['image']}: {u['message']}" for u in items[:20]]
                if len(items) > 20:
                    lines.append(f"- ... and {len(items) - 20} more (leakage.json)")
        return "\n".join(lines) + "\n"

    def write(self, directory: str | os.PathLike, *, sheet: bool = True) -> dict[str, Path]:
        """Write `leakage.json`, `leakage.md` and (with pairs and `sheet`) `leakage.png` (a contact sheet of the
        first pairs, side by side) and `leakage.html` (thumbnails of up to `MAX_HTML_PAIRS` pairs)."""
        output = Path(directory)
        output.mkdir(parents=True, exist_ok=True)
        written = {"json": output / "leakage.json", "markdown": output / "leakage.md"}
        written["json"].write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n", encoding="utf-8")
        written["markdown"].write_text(self.markdown(), encoding="utf-8")
        if sheet and self.pairs and self.pretrain_records and self.eval_records:
            thumbnails: dict = {}  # each image decoded once for both pictures
            written["sheet"] = contact_sheet(self, output / "leakage.png", thumbnails=thumbnails)
            written["html"] = html_page(self, output / "leakage.html", thumbnails=thumbnails)
        return written


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _distance_text(pair: LeakagePair) -> str:
    return f"cosine {pair.distance:.3f}" if pair.kind == "embedding" else f"{int(pair.distance)}"


def _image_name(record: ManifestRecord) -> str:
    return str(record.image)


def _where(record: ManifestRecord) -> str:
    return f"{record.source}:{record.row}"


def records_of(manifests: Sequence[Manifest]) -> tuple[list[ManifestRecord], list[dict]]:
    """The records of `manifests`, in order, and their unread rows as unreadable entries (rows that could
    not be parsed, images outside the allowed data roots: never opened, so never checked)."""
    records, unread = [], []
    for manifest in manifests:
        records.extend(manifest.records)
        unread.extend(
            {
                "source": p.source,
                "row": p.row,
                "image": str(p.image or ""),
                "message": f"{p.kind}: {p.message}",
            }
            for p in manifest.problems
            if p.severity == "error"
        )
    return records, unread


def find_leakage(
    pretrain: Sequence[ManifestRecord] | Sequence[Manifest],
    evaluation: Sequence[ManifestRecord] | Sequence[Manifest],
    *,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    max_fine_distance: int = DEFAULT_MAX_FINE_DISTANCE,
    patients: bool = True,
    num_workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
) -> LeakageReport:
    """Compare pretraining records (or manifests) with evaluation records (or manifests): exact duplicates,
    near duplicates (64-bit hashes within `max_distance`, found with `HammingIndex`, confirmed by 256-bit hashes
    within `max_fine_distance`), and (with `patients`) shared patient ids.

    Manifests' unread rows (parse errors, images outside the allowed data roots) are listed as unreadable
    with the images that fail to decode; `progress(n)` is called as images are hashed."""
    pretrain_records, pretrain_unread = _as_records(pretrain)
    eval_records, eval_unread = _as_records(evaluation)
    index = HammingIndex(np.zeros(0, np.uint64), max_distance)  # checks max_distance before any decoding
    a = hash_records(pretrain_records, num_workers=num_workers, max_pixels=max_pixels, progress=progress)
    b = hash_records(eval_records, num_workers=num_workers, max_pixels=max_pixels, progress=progress)
    report = LeakageReport(
        num_pretrain=len(pretrain_records),
        num_eval=len(eval_records),
        max_distance=index.max_distance,
        unreadable={"pretrain": pretrain_unread + a.unreadable, "eval": eval_unread + b.unreadable},
        settings={
            "max_distance": index.max_distance,
            "max_fine_distance": int(max_fine_distance),
            "hash": f"DCT of a {THUMBNAIL}x{THUMBNAIL} grey thumbnail: 64 bits indexed, 256 bits confirming",
            "patients": bool(patients),
        },
        pretrain_records=pretrain_records,
        eval_records=eval_records,
    )
    report.add_pairs(_duplicate_pairs(a, b, index.max_distance, int(max_fine_distance)))
    if patients:
        report.shared_ids, report.shared_id_images = _shared_patients(pretrain_records, eval_records)
    return report


def _as_records(items) -> tuple[list[ManifestRecord], list[dict]]:
    items = list(items)
    if items and all(isinstance(item, Manifest) for item in items):
        return records_of(items)
    return items, []


def _duplicate_pairs(
    a: HashedImages, b: HashedImages, max_distance: int, max_fine_distance: int
) -> list[LeakagePair]:
    """Exact pairs (equal content hashes) and near pairs (`HammingIndex` over the readable images' 64-bit
    hashes, each candidate confirmed by its 256-bit hashes)."""
    pairs = []
    by_digest: dict[str, list[int]] = {}
    for i, digest in enumerate(a.exact):
        if digest is not None:
            by_digest.setdefault(digest, []).append(i)
    for j, digest in enumerate(b.exact):
        for i in by_digest.get(digest, []) if digest is not None else []:
            pairs.append(_pair(a.records[i], b.records[j], i, j, "exact", 0))
    readable_a, readable_b = np.flatnonzero(a.ok), np.flatnonzero(b.ok)
    index = HammingIndex(a.perceptual[readable_a], max_distance)
    queries, hits, distances = index.query(b.perceptual[readable_b])
    i_all, j_all = readable_a[hits], readable_b[queries]
    fine = hamming(a.fine[i_all], b.fine[j_all]).sum(axis=1) if len(i_all) else np.zeros(0, np.int64)
    for i, j, d, f in zip(i_all, j_all, distances, fine, strict=True):
        if f <= max_fine_distance:
            pair = _pair(a.records[int(i)], b.records[int(j)], int(i), int(j), "near", int(d))
            pair.fine_distance = int(f)
            pairs.append(pair)
    return pairs


def _pair(pre: ManifestRecord, ev: ManifestRecord, i: int, j: int, kind: str, distance: float) -> LeakagePair:
    return LeakagePair(_image_name(pre), _image_name(ev), kind, distance, i, j, _where(pre), _where(ev))


def _shared_patients(
    pretrain: list[ManifestRecord], evaluation: list[ManifestRecord]
) -> tuple[list[str], list[int]]:
    ids = {r.group for r in pretrain if r.group is not None}
    shared = sorted(ids & {r.group for r in evaluation if r.group is not None})
    wanted = set(shared)
    return shared, [j for j, r in enumerate(evaluation) if r.group in wanted]


# ---------------------------------------------------------------------------------------------- pictures
def _thumbnail(record: ManifestRecord, size: int, cache: dict | None = None) -> Image.Image:
    key = (record.source, record.row, str(record.image), size)
    if cache is not None and key in cache:
        return cache[key]
    image = _draw_thumbnail(record, size)
    if cache is not None:
        cache[key] = image
    return image


def _draw_thumbnail(record: ManifestRecord, size: int) -> Image.Image:
    decoded, _ = load_checked_image(record.image, min_size=1, source=record.source, row=record.row)
    if decoded is None:
        return Image.new("RGB", (size, size), (90, 0, 0))
    image = Image.fromarray(_uint8_rgb(decoded), "RGB")
    return ImageOps.contain(image, (size, size))  # shrunk or enlarged to fit, aspect kept


def contact_sheet(
    report: LeakageReport, path: str | os.PathLike, *, size: int = 128, thumbnails: dict | None = None
) -> Path:
    """A PNG of the first `MAX_SHEET_PAIRS` pairs, one row each: the pretraining image, the evaluation image
    and the pair's kind, distance and file names."""
    pairs = report.pairs[:MAX_SHEET_PAIRS]
    text_width, pad = 420, 6
    row_height = size + 2 * pad
    sheet = Image.new("RGB", (2 * size + text_width + 4 * pad, row_height * len(pairs)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, pair in enumerate(pairs):
        top = k * row_height + pad
        for column, record in enumerate(
            (report.pretrain_records[pair.pretrain_index], report.eval_records[pair.eval_index])
        ):
            thumb = _thumbnail(record, size, thumbnails)
            sheet.paste(thumb, (pad + column * (size + pad), top))
        x = 2 * (size + pad) + 2 * pad
        lines = [
            f"{pair.kind}  {_distance_text(pair)}",
            f"pretrain: {_short(pair.pretrain)}",
            f"eval:     {_short(pair.eval)}",
        ]
        draw.text((x, top + 4), "\n".join(lines), fill="black", spacing=6)
    path = Path(path)
    sheet.save(path, compress_level=1)
    return path


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def html_page(
    report: LeakageReport, path: str | os.PathLike, *, size: int = 128, thumbnails: dict | None = None
) -> Path:
    """A self-contained HTML page (thumbnails embedded): the summary and up to `MAX_HTML_PAIRS` pairs."""
    rows = []
    for pair in report.pairs[:MAX_HTML_PAIRS]:
        cells = [
            f'<img src="{_data_uri(_thumbnail(record, size, thumbnails))}" width="{size}">'
            for record in (report.pretrain_records[pair.pretrain_index], report.eval_records[pair.eval_index])
        ]
        rows.append(
            f"<tr><td>{cells[0]}</td><td>{cells[1]}</td><td>{html.escape(pair.kind)}<br>"
            f"{html.escape(_distance_text(pair))}</td><td>{html.escape(pair.pretrain)}<br>"
            f"<small>{html.escape(pair.pretrain_where)}</small></td><td>{html.escape(pair.eval)}<br>"
            f"<small>{html.escape(pair.eval_where)}</small></td></tr>"
        )
    more = len(report.pairs) - MAX_HTML_PAIRS
    page = (
        "<!doctype html><meta charset='utf-8'><title>Leakage report</title>"
        "<style>body{font-family:sans-serif}td{vertical-align:top;padding:4px;border-bottom:1px solid #ddd}"
        "</style>"
        f"<h1>Leakage between pretraining and evaluation data</h1><p>{html.escape(report.summary())}</p>"
        "<table><tr><th>pretraining</th><th>evaluation</th><th>kind</th><th>pretraining image</th>"
        "<th>evaluation image</th></tr>"
        + "".join(rows)
        + "</table>"
        + (f"<p>... and {more} more pairs (leakage.json lists them all).</p>" if more > 0 else "")
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "HammingIndex",
    "HashedImages",
    "LeakagePair",
    "LeakageReport",
    "brute_force_pairs",
    "choose_bands",
    "contact_sheet",
    "exact_hash",
    "find_leakage",
    "fundus_thumbnail",
    "hamming",
    "hash_records",
    "html_page",
    "perceptual_hash",
    "perceptual_hashes",
    "records_of",
]
