"""Reading prepared shard sets (`retvlp.data.shards`) as a stream, locally or from any `fsspec` URL.

`open_shard_set(url)` reads `index.json` and the shards' indexes (one request each, fetched concurrently),
checks that every listed shard exists with its recorded size (`verify="size"`, one listing) or reads every
shard and checks its members' checksums and PNG decodes (`verify="full"`), and applies the run's
`on_bad_sample` policy to what it finds: a missing shard is always an error naming it; a truncated or
corrupt shard, or a corrupt member, is fatal (`"error"`) or left out (`"skip"`: its rows counted and listed
with shard and member). Then `ShardSet.read_pixels(rows)` fetches exactly the members of `rows` by byte
range (`fs.cat_ranges`, concurrent), checks each member's crc32 and decodes the PNGs.

`ShardedStepSampler` decides which rows every process reads at every step; it replaces `StepSampler` for a
shard stream with the same guarantees and the locality a stream needs:

- Epoch `e` orders the shards by a permutation drawn from `(seed, e)`; the stream's rows in that shard order
  are cut into `R` contiguous shares, one per *reader* (`data.stream_readers`), and each share is shuffled
  within consecutive windows of `B` rows (`data.shuffle_buffer`; the window permutation is drawn from
  `(seed, e, reader, window)`: a shuffle buffer whose content at any position can be recomputed).
- Step `s` takes the next `q = G / R` rows of every reader's share (`G`: the global batch), reader 0's
  first; epochs roll over inside a reader's share, so no row is skipped. Process `r` of `W` owns readers
  `r·R/W ... (r+1)·R/W − 1`, i.e. exactly its `b = G/W` rows, from its own shards: no row is read twice,
  and the union over processes is the 1-process batch of size `G` (R does not depend on W).
- The rows of a step depend only on `(seed, step)`, so resuming at step `k` needs nothing but `k`; the
  checkpoint records the stream position (`position(step)`: per reader its epoch, offset and next shard)
  and the shard set's fingerprint, and a resume checks both.
- DataLoader workers build whole steps (item `i` = micro-step `i`) and fetch only that step's members.

Within an epoch every row of the stream is read exactly once: the readers' shares partition the epoch's
sequence. Shares differ in length by at most one row, so a reader may start its next epoch a step earlier
than another.
"""

from __future__ import annotations

import json
import logging
import posixpath
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .shards import SHARD_FORMAT, SHARD_FORMAT_VERSION, decode_image_member
from .validation import DataProblem

logger = logging.getLogger(__name__)

VERIFY_MODES = ("size", "full")


class ShardReadError(RuntimeError):
    """A member could not be read back as it was written (crc32 mismatch, not a PNG, wrong size): names the
    shard file and the member."""


@dataclass
class ShardProblem:
    """A shard or member left out (or fatal) when a shard set is opened."""

    shard: str
    member: str  # "" for the whole shard
    kind: str  # truncated-shard, corrupt-shard, corrupt-member
    message: str

    def format(self) -> str:
        where = f"{self.shard}:{self.member}" if self.member else self.shard
        return f"{where}: {self.kind}: {self.message}"


@dataclass
class ShardSet:
    """An opened shard set: per usable row its shard, byte range, checksum and metadata.

    Attributes:
        url: the directory URL it was opened from.
        index: the parsed `index.json`.
        shard_of / offset / size / crc32: `(rows,)` arrays locating each row's image member.
        keys: member keys; texts / labels / groups / roles / sources / source_rows: the rows' metadata.
        problems: what opening left out (`on_bad_sample="skip"`), per shard or member.
        skipped_at_preparation: the rows `prepare-data` left out (its `skipped_samples.jsonl`).
    """

    url: str
    index: dict
    shard_files: list[str]
    shard_fs: list  # the fsspec filesystem of each shard (sets on different stores can be combined)
    shard_of: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    crc32: np.ndarray
    keys: list[str]
    texts: list[str | None]
    labels: list[tuple[str, ...]]
    groups: list[str | None]
    roles: list[str]
    sources: list[str]
    source_rows: list[int]
    problems: list[ShardProblem] = field(default_factory=list)
    skipped_at_preparation: list[dict] = field(default_factory=list)
    preparation_problems: list[DataProblem] = field(default_factory=list)
    # one error per row that opening left out (its source and row, the shard and member as the image)
    left_out: list[DataProblem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def fingerprint(self) -> str:
        return str(self.index["fingerprint"])

    @property
    def image_size(self) -> int:
        return int(self.index["geometry"]["size"])

    def read_pixels(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows → `(len(rows), S, S, 3)` uint8, fetching exactly their members (byte ranges, concurrent)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.image_size, self.image_size, 3), np.uint8)
        by_fs: dict[int, list[int]] = {}
        for i, shard in enumerate(self.shard_of[rows].tolist()):
            by_fs.setdefault(id(self.shard_fs[shard]), []).append(i)
        for where in by_fs.values():
            picked = rows[where]
            fs = self.shard_fs[int(self.shard_of[picked[0]])]
            paths = [self.shard_files[s] for s in self.shard_of[picked].tolist()]
            starts = self.offset[picked]
            payloads = fs.cat_ranges(
                paths, starts.tolist(), (starts + self.size[picked]).tolist(), on_error="return"
            )
            for i, row, payload in zip(where, picked.tolist(), payloads, strict=True):
                out[i] = self._decode(row, payload)
        return out

    @property
    def image_format(self) -> str:
        return str(self.index.get("image_format", "png"))

    def _decode(self, row: int, payload) -> np.ndarray:
        where = (
            f"{posixpath.basename(self.shard_files[self.shard_of[row]])}:{self.keys[row]}.{self.image_format}"
        )
        if isinstance(payload, BaseException):
            raise ShardReadError(f"{where} could not be read: {payload}") from payload
        if zlib.crc32(payload) != int(self.crc32[row]):
            raise ShardReadError(
                f"{where}: crc32 mismatch: the shard changed after it was opened (corrupted in storage or "
                "overwritten). Re-run `retvlp prepare-data` for it, or open the set with data.verify_shards: full "
                "and data.on_bad_sample: skip to leave corrupt members out."
            )
        try:
            pixels = decode_image_member(payload, self.image_format)
        except (OSError, ValueError) as error:
            raise ShardReadError(f"{where}: not a readable {self.image_format} image ({error})") from error
        if pixels.shape != (self.image_size, self.image_size, 3):
            raise ShardReadError(f"{where}: {pixels.shape} pixels, the index says {self.image_size} px")
        return pixels


def combine_shard_sets(sets: Sequence[ShardSet]) -> ShardSet:
    """Several opened shard sets as one (rows of the first set first); they must share the image geometry."""
    if len(sets) == 1:
        return sets[0]
    first = sets[0]
    for other in sets[1:]:
        if other.index["geometry"] != first.index["geometry"]:
            raise ValueError(
                f"the shard sets {first.url} and {other.url} were prepared at different geometries "
                f"({first.index['geometry']} vs {other.index['geometry']}): prepare them with the same options"
            )
    shard_base = np.cumsum([0] + [len(s.shard_files) for s in sets[:-1]])
    index = dict(first.index)
    index["fingerprint"] = "+".join(s.fingerprint for s in sets)
    index["shards"] = [shard for s in sets for shard in s.index["shards"]]
    return ShardSet(
        url=" + ".join(s.url for s in sets),
        index=index,
        shard_files=[f for s in sets for f in s.shard_files],
        shard_fs=[fs for s in sets for fs in s.shard_fs],
        shard_of=np.concatenate([s.shard_of + base for s, base in zip(sets, shard_base, strict=True)]),
        offset=np.concatenate([s.offset for s in sets]),
        size=np.concatenate([s.size for s in sets]),
        crc32=np.concatenate([s.crc32 for s in sets]),
        **{
            name: [value for s in sets for value in getattr(s, name)]
            for name in ("keys", "texts", "labels", "groups", "roles", "sources", "source_rows", "problems")
        },
        skipped_at_preparation=[entry for s in sets for entry in s.skipped_at_preparation],
        preparation_problems=[p for s in sets for p in s.preparation_problems],
        left_out=[p for s in sets for p in s.left_out],
    )


# ---------------------------------------------------------------------------------------------- opening
def _filesystem(url: str, storage_options: dict | None):
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, root.rstrip("/")


def _read_json(fs, path: str, what: str):
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        raise FileNotFoundError(what) from None
    except ValueError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}): the shard set is damaged; prepare it again"
        ) from None


def _listing(fs, root: str) -> dict[str, int]:
    return {
        posixpath.basename(entry["name"]): int(entry.get("size") or 0) for entry in fs.ls(root, detail=True)
    }


def open_shard_set(
    url: str,
    *,
    verify: str = "size",
    on_bad_sample: str = "error",
    storage_options: dict | None = None,
) -> ShardSet:
    """Open the shard set at `url` (a local directory, `file://`, `memory://`, `s3://`, `gs://`, `hf://`, ...).

    Args:
        verify: "size": every listed shard exists with its recorded size; "full": also read every shard and
            check each member's crc32 and PNG decode.
        on_bad_sample: what a truncated / corrupt shard or a corrupt member gets: "error" (raise, naming it)
            or "skip" (left out; counted in `problems`, listed by the run's `skipped_samples.jsonl`).
        storage_options: passed to fsspec (credentials, endpoint, ...).

    Raises:
        FileNotFoundError: no `index.json` (not a finished preparation), or a listed shard is missing.
        ValueError: an unknown format or version, a bad `verify` / `on_bad_sample`, or a bad shard with "error".
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"data.verify_shards={verify!r}; choose one of {list(VERIFY_MODES)}")
    fs, root = _filesystem(url, storage_options)
    index = _read_json(
        fs,
        posixpath.join(root, "index.json"),
        f"{url}: no index.json: not a finished shard set (run `retvlp prepare-data MANIFEST... --output {url}` "
        "until it reports the index written)",
    )
    if index.get("format") != SHARD_FORMAT or int(index.get("version", -1)) > SHARD_FORMAT_VERSION:
        raise ValueError(
            f"{url}/index.json: format {index.get('format')!r} version {index.get('version')!r} is not a shard set "
            f"this version reads ({SHARD_FORMAT} ≤ {SHARD_FORMAT_VERSION})"
        )
    _check_member_names(url, index)
    listing = _listing(fs, root)
    missing = [shard["name"] for shard in index["shards"] if shard["name"] not in listing]
    if missing:
        raise FileNotFoundError(
            f"{url}: {len(missing)} shard(s) listed in index.json are missing: {', '.join(missing[:10])}"
            f"{' ...' if len(missing) > 10 else ''}. Copy them again (or re-run `retvlp prepare-data` with the same "
            "--output to rewrite them)."
        )
    shard_indexes = _fetch_shard_indexes(fs, root, index)
    problems = _size_problems(index, listing)
    if verify == "full":
        problems += _content_problems(fs, root, index, shard_indexes, {p.shard for p in problems})
    if problems and on_bad_sample == "error":
        shown = "\n  ".join(p.format() for p in problems[:20])
        raise ValueError(
            f"{url}: {len(problems)} bad shard(s) or member(s):\n  {shown}\nCopy or prepare them again, or set "
            "data.on_bad_sample: skip to leave them out (counted and listed in skipped_samples.jsonl)."
        )
    for problem in problems:
        logger.warning("shard set %s: %s (left out)", url, problem.format())
    return _assemble(url, fs, root, index, shard_indexes, problems)


def _check_member_names(url: str, index: dict) -> None:
    """Every file index.json names must be a plain file name inside the shard directory: a name with a path
    separator or `..` would make the reader open files outside the directory the user pointed at."""
    for shard in index.get("shards", []):
        for key in ("name", "index"):
            name = str(shard.get(key, ""))
            if not name or name in (".", "..") or "/" in name or "\\" in name:
                raise ValueError(
                    f"{url}/index.json names the file {name!r}: shard files must be plain names inside the shard "
                    "directory. The index is damaged or was not written by `retvlp prepare-data`; prepare it again."
                )


def _fetch_shard_indexes(fs, root: str, index: dict) -> list[dict]:
    paths = [posixpath.join(root, shard["index"]) for shard in index["shards"]]
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda p: _read_json(fs, p, f"{p}: the shard's index is missing"), paths))


def _size_problems(index: dict, listing: dict[str, int]) -> list[ShardProblem]:
    problems = []
    for shard in index["shards"]:
        found = listing[shard["name"]]
        if found != int(shard["bytes"]):
            kind = "truncated-shard" if found < int(shard["bytes"]) else "corrupt-shard"
            message = f"{found} bytes, index.json records {shard['bytes']}"
            problems.append(ShardProblem(shard["name"], "", kind, message))
    return problems


def _content_problems(
    fs, root: str, index: dict, shard_indexes: list[dict], bad: set[str]
) -> list[ShardProblem]:
    """Per shard not already bad: read it whole and check every member's crc32 and PNG decode."""
    import hashlib

    problems, image_format = [], index.get("image_format", "png")
    for shard, detail in zip(index["shards"], shard_indexes, strict=True):
        if shard["name"] in bad:
            continue
        data = fs.cat_file(posixpath.join(root, shard["name"]))
        if hashlib.sha256(data).hexdigest() == shard["sha256"]:
            continue
        for member in detail["members"]:
            payload = data[member["offset"] : member["offset"] + member["size"]]
            problem = None
            if zlib.crc32(payload) != member["crc32"]:
                problem = "crc32 mismatch"
            else:
                try:
                    decode_image_member(payload, image_format)
                except (OSError, ValueError) as error:
                    problem = f"not a readable {image_format} image ({error})"
            if problem:
                problems.append(
                    ShardProblem(shard["name"], f"{member['key']}.{image_format}", "corrupt-member", problem)
                )
    return problems


def _assemble(url, fs, root, index, shard_indexes, problems: list[ShardProblem]) -> ShardSet:
    columns: dict[str, list] = {name: [] for name in ("shard", "offset", "size", "crc32", "key")}
    metadata: list[dict] = []
    why = {(p.shard, p.member): p for p in problems}
    left_out, extension = [], index.get("image_format", "png")
    for number, (shard, detail) in enumerate(zip(index["shards"], shard_indexes, strict=True)):
        for member, row in zip(detail["members"], detail["rows"], strict=True):
            image = f"{shard['name']}:{member['key']}.{extension}"
            problem = why.get((shard["name"], "")) or why.get((shard["name"], f"{member['key']}.{extension}"))
            if problem is not None:
                left_out.append(
                    DataProblem(
                        row["source"], int(row["row"]), f"{url}/{image}", problem.kind, problem.message
                    )
                )
                continue
            columns["shard"].append(number)
            columns["offset"].append(member["offset"])
            columns["size"].append(member["size"])
            columns["crc32"].append(member["crc32"])
            columns["key"].append(member["key"])
            metadata.append(row)
    skipped, preparation_problems = _preparation_reports(fs, root)
    return ShardSet(
        url=url,
        index=index,
        shard_files=[posixpath.join(root, shard["name"]) for shard in index["shards"]],
        shard_fs=[fs] * len(index["shards"]),
        shard_of=np.asarray(columns["shard"], dtype=np.int64),
        offset=np.asarray(columns["offset"], dtype=np.int64),
        size=np.asarray(columns["size"], dtype=np.int64),
        crc32=np.asarray(columns["crc32"], dtype=np.int64),
        keys=columns["key"],
        texts=[row["text"] for row in metadata],
        labels=[tuple(row["labels"]) for row in metadata],
        groups=[row["group"] for row in metadata],
        roles=[row["role"] for row in metadata],
        sources=[row["source"] for row in metadata],
        source_rows=[int(row["row"]) for row in metadata],
        problems=problems,
        skipped_at_preparation=skipped,
        preparation_problems=preparation_problems,
        left_out=left_out,
    )


def _preparation_reports(fs, root: str) -> tuple[list[dict], list[DataProblem]]:
    def lines(name: str) -> list[dict]:
        try:
            text = fs.cat_file(posixpath.join(root, name)).decode("utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    return lines("skipped_samples.jsonl"), [DataProblem(**p) for p in lines("problems.jsonl")]


# ---------------------------------------------------------------------------------------------- the sampler
def default_stream_readers(global_batch: int, world_size: int, num_rows: int, preferred: int = 8) -> int:
    """The reader count when `data.stream_readers` is not set: the largest multiple of `world_size` that
    divides the global batch and is at most `max(world_size, min(preferred, num_rows))`. It equals for runs
    of 1, 2, 4 or 8 processes with the same global batch (when that batch is a multiple of 8); set
    `data.stream_readers` to fix it for any other layout."""
    limit = max(world_size, min(preferred, num_rows))
    candidates = [r for r in range(world_size, limit + 1, world_size) if global_batch % r == 0]
    return max(candidates) if candidates else world_size


@dataclass
class ShardedStepSampler:
    """Rows of one shard stream for every (step, process); the interface of `StepSampler`.

    Args:
        shard_of_row: `(num_rows,)` shard number of each stream row, rows of one shard in member order.
        batch_size: rows per process per step (`b`).
        world_size: number of processes (`W`).
        seed: base seed of the shard orders and window shuffles.
        readers: `R`, a multiple of `W` dividing `G = b·W` (None: `default_stream_readers`).
        shuffle_buffer: `B`, rows per shuffle window (0 or 1: no shuffle within a reader's share).
    """

    shard_of_row: np.ndarray
    batch_size: int
    world_size: int = 1
    seed: int = 0
    readers: int | None = None
    shuffle_buffer: int = 1024
    name: str = "stream"  # for messages

    def __post_init__(self):
        self.shard_of_row = np.asarray(self.shard_of_row, dtype=np.int64)
        self.num_rows = len(self.shard_of_row)
        if self.num_rows <= 0:
            raise ValueError("ShardedStepSampler needs at least one row; the data stream is empty.")
        if self.batch_size <= 0 or self.world_size <= 0:
            raise ValueError(
                f"batch_size and world_size must be positive, got {self.batch_size}, {self.world_size}"
            )
        global_batch = self.global_batch_size
        if self.readers is None:
            self.readers = default_stream_readers(global_batch, self.world_size, self.num_rows)
        if self.readers % self.world_size or global_batch % self.readers:
            raise ValueError(
                f"data.stream_readers={self.readers} must be a multiple of the process count ({self.world_size}) "
                f"and divide the global batch of the stream {self.name!r} ({global_batch} rows per step); give "
                "each stream its own count as a mapping (e.g. {paired: 4, unpaired: 2}) or leave it unset"
            )
        if self.readers > self.num_rows:
            raise ValueError(
                f"data.stream_readers={self.readers} is more than the {self.num_rows} rows of the stream "
                f"{self.name!r}: lower it (or the process count), or train this data from the local cache"
            )
        self.per_reader = global_batch // self.readers
        bounds = np.arange(self.readers + 1) * self.num_rows // self.readers
        self.share_start, self.share_length = bounds[:-1], np.diff(bounds)
        self.shards = np.unique(self.shard_of_row)
        self._epochs: dict[int, np.ndarray] = {}

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The stream rows of `epoch` in shard order (shards permuted by `(seed, epoch)`), before the windows."""
        if epoch not in self._epochs:
            if len(self._epochs) > 4:
                self._epochs.pop(min(self._epochs))
            shard_order = np.random.default_rng([self.seed, epoch]).permutation(self.shards)
            rank_of_shard = np.empty(int(self.shards.max()) + 1, dtype=np.int64)
            rank_of_shard[shard_order] = np.arange(len(shard_order))
            # stable: rows of one shard keep their member order (sequential reads within a shard)
            self._epochs[epoch] = np.argsort(rank_of_shard[self.shard_of_row], kind="stable")
        return self._epochs[epoch]

    def _window_rows(self, reader: int, epoch: int, window: int) -> np.ndarray:
        start, length = int(self.share_start[reader]), int(self.share_length[reader])
        buffer = max(1, self.shuffle_buffer)
        lo, hi = window * buffer, min((window + 1) * buffer, length)
        rows = self.epoch_order(epoch)[start + lo : start + hi]
        if buffer > 1:
            rows = rows[np.random.default_rng([self.seed, epoch, reader, window]).permutation(len(rows))]
        return rows

    def reader_rows(self, reader: int, step: int) -> np.ndarray:
        """The `q = G / R` rows reader `reader` contributes to `step`."""
        length, buffer = int(self.share_length[reader]), max(1, self.shuffle_buffer)
        positions = np.arange(step * self.per_reader, (step + 1) * self.per_reader)
        epochs, offsets = np.divmod(positions, length)
        windows, within = np.divmod(offsets, buffer)
        out = np.empty(len(positions), dtype=np.int64)
        for key in sorted(set(zip(epochs.tolist(), windows.tolist(), strict=True))):
            selected = (epochs == key[0]) & (windows == key[1])
            out[selected] = self._window_rows(reader, key[0], key[1])[within[selected]]
        return out

    def global_indices(self, step: int) -> np.ndarray:
        """Stream rows of the whole global batch of `step` (reader 0's first: process 0's slice first)."""
        return np.concatenate([self.reader_rows(reader, step) for reader in range(self.readers)])

    def indices(self, step: int, rank: int = 0) -> np.ndarray:
        """Rows process `rank` reads at `step`: those of its readers."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world_size {self.world_size}")
        return np.concatenate([self.reader_rows(reader, step) for reader in self.readers_of(rank)])

    def readers_of(self, rank: int) -> range:
        """The readers process `rank` owns: `rank·R/W ... (rank+1)·R/W − 1`."""
        per_rank = self.readers // self.world_size
        return range(rank * per_rank, (rank + 1) * per_rank)

    def epoch(self, step: int) -> float:
        """Epochs of this stream completed before `step` (fractional)."""
        return step * self.global_batch_size / self.num_rows

    def position(self, step: int) -> dict:
        """Where the stream stands before `step`: the settings and, per reader, its epoch, offset in its share
        and the shard it reads next (recorded in checkpoints, checked on resume)."""
        readers = []
        for reader in range(self.readers):
            epoch, offset = divmod(step * self.per_reader, int(self.share_length[reader]))
            window, within = divmod(offset, max(1, self.shuffle_buffer))
            next_row = int(self._window_rows(reader, epoch, window)[within])
            readers.append({"epoch": epoch, "offset": offset, "next_shard": int(self.shard_of_row[next_row])})
        return {
            "readers": self.readers,
            "shuffle_buffer": self.shuffle_buffer,
            "rows": self.num_rows,
            "seed": self.seed,
            "positions": readers,
        }


__all__ = [
    "ShardProblem",
    "ShardReadError",
    "ShardSet",
    "ShardedStepSampler",
    "VERIFY_MODES",
    "combine_shard_sets",
    "default_stream_readers",
    "open_shard_set",
]
