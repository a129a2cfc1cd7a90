"""How fast the leakage check is (issue 28, item 3): hashing images, and indexing + querying the hashes.

    python benchmarks/leakage_benchmark.py [--images 40] [--size 1024] [--hashes 10000] [--max-distance 6 10 14]
    python benchmarks/leakage_benchmark.py --skip-images --hashes 100000 --max-distance 10   # the index alone

Prints:

- the time to decode + hash one image (exact content hash and the perceptual hashes, `retvlp.data.leakage`)
  for `--images` synthetic fundus photographs of `--size` px saved as JPEG (quality 95) and PNG, one thread,
  and what hashing 10,000 such images takes at that rate (on one thread, and spread over the CPUs);
- the time to build the `HammingIndex` over `--hashes` pretraining hashes and query `--hashes` evaluation
  hashes (random 64-bit hashes, with 1 % of the queries planted within `--max-distance` of an indexed hash),
  for several `--max-distance` values, with the number of candidates checked and the pairs found (every
  planted pair must be among them), and for reference the all-pairs distance matrix on a 2,000 x 2,000 slice.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _time_hashing(count: int, size: int) -> dict[str, float]:
    from PIL import Image

    from retvlp.data.leakage import hash_records
    from retvlp.data.manifest_records import ManifestRecord
    from retvlp.synthetic import SYNTHETIC_CLASSES, render_fundus

    seconds = {}
    with tempfile.TemporaryDirectory() as folder:
        base = render_fundus(SYNTHETIC_CLASSES[1], np.random.default_rng(0), size=min(size, 512))[0]
        paths = {"jpeg": [], "png": []}
        for i in range(count):
            # a distinct picture per file (no decoder cache helps): the base shifted, brightened and resized
            image = Image.fromarray(np.roll(base, i, axis=1)).resize((size, size), Image.Resampling.BICUBIC)
            for kind, suffix in (("jpeg", "jpg"), ("png", "png")):
                path = Path(folder) / f"{i}.{suffix}"
                image.save(path, quality=95) if kind == "jpeg" else image.save(path)
                paths[kind].append(str(path))
        for kind, files in paths.items():
            records = [ManifestRecord(p, None, (), None, "bench", i, "unpaired") for i, p in enumerate(files)]
            hash_records(records[:2], num_workers=1)  # warm-up
            for workers in (1, min(os.cpu_count() or 1, 8)):
                start = time.perf_counter()
                hashed = hash_records(records, num_workers=workers)
                seconds[(kind, workers)] = (time.perf_counter() - start) / count
                assert hashed.ok.all()
    return seconds


def _time_thumbnail_only(size: int, repeats: int = 20) -> float:
    """The hashing alone (no file decode): perceptual + exact hash of decoded pixels."""
    from retvlp.data.leakage import exact_hash, perceptual_hashes
    from retvlp.synthetic import render_fundus

    pixels = render_fundus("glaucoma", np.random.default_rng(1), size=min(size, 512))[0]
    pixels = np.asarray(
        __import__("PIL.Image", fromlist=["Image"]).fromarray(pixels).resize((size, size)), dtype=np.uint8
    )
    start = time.perf_counter()
    for _ in range(repeats):
        perceptual_hashes(pixels)
        exact_hash(pixels)
    return (time.perf_counter() - start) / repeats


def _planted(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, set]:
    index = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    queries = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    planted = set()
    for j in rng.choice(n, size=max(1, n // 100), replace=False):
        i = int(rng.integers(n))
        flips = rng.choice(64, size=int(rng.integers(0, k + 1)), replace=False)
        queries[j] = index[i] ^ np.uint64(sum(1 << int(f) for f in flips))
        planted.add((int(j), i))
    return index, queries, planted


def _time_index(n: int, k: int, bands: int | None = None) -> dict:
    from retvlp.data.leakage import HammingIndex

    index_hashes, queries, planted = _planted(n, k, np.random.default_rng(k))
    start = time.perf_counter()
    index = HammingIndex(index_hashes, k, bands=bands)
    built = time.perf_counter() - start
    start = time.perf_counter()
    q, i, _ = index.query(queries)
    queried = time.perf_counter() - start
    found = set(zip(q.tolist(), i.tolist(), strict=True))
    assert planted <= found, "a planted pair was missed"
    probes = [math.comb(hi - lo, r) for lo, hi in index.bands for r in range(index.radius + 1)]
    expected_candidates = (
        n * n * sum(2.0 ** -(hi - lo) for lo, hi in index.bands) * (sum(probes) / len(index.bands))
    )
    return {
        "k": k,
        "bands": len(index.bands),
        "radius": index.radius,
        "build_s": built,
        "query_s": queried,
        "pairs": len(found),
        "planted": len(planted),
        "candidates": expected_candidates,
    }


def _time_all_pairs(n: int = 2000) -> float:
    from retvlp.data.leakage import hamming

    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    b = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    start = time.perf_counter()
    hamming(a[:, None], b[None, :])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=1024, help="side of the hashed images (px)")
    parser.add_argument("--hashes", type=int, default=10_000)
    parser.add_argument("--max-distance", type=int, nargs="+", default=[6, 10, 14])
    parser.add_argument("--skip-images", action="store_true", help="time the index only")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    print(f"{cpus} CPU(s); OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    per_hash = 0.0 if args.skip_images else _time_thumbnail_only(args.size)
    if not args.skip_images:
        print(f"hashing decoded pixels alone ({args.size} x {args.size}): {per_hash * 1000:.1f} ms per image")
    for (kind, workers), seconds in (
        {} if args.skip_images else _time_hashing(args.images, args.size)
    ).items():
        print(
            f"decode + hash, {args.size} x {args.size} {kind.upper()}, {workers} thread(s): {seconds * 1000:.1f} ms "
            f"per image ({1 / seconds:.0f} images/s); 10,000 such images: {10_000 * seconds / 60:.1f} min"
        )
    for k in args.max_distance:
        for bands in (
            (None, k + 1) if args.hashes <= 20_000 else (None,)
        ):  # the default (cheapest) banding, and k + 1 exact-match bands
            r = _time_index(args.hashes, k, bands)
            print(
                f"index {args.hashes:,} x query {args.hashes:,} hashes, max distance {k} ({r['bands']} bands, "
                f"radius {r['radius']}{', default' if bands is None else ''}): build {r['build_s'] * 1000:.0f} ms, "
                f"query {r['query_s']:.2f} s; ~{r['candidates'] / 1e6:.1f} M candidates; {r['pairs']} pairs "
                f"found, all {r['planted']} planted ones among them"
            )
    if args.skip_images:
        return
    seconds = _time_all_pairs()
    print(
        f"for reference, all pairs: 2,000 x 2,000 distances in {seconds:.2f} s "
        f"(10,000 x 10,000 would be ~{seconds * 25:.1f} s and 800 MB; 100,000 x 100,000: ~{seconds * 2500 / 60:.0f} min)"
    )


if __name__ == "__main__":
    main()
