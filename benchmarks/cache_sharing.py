"""One image cache for every row set: what the pretraining run and its evaluations store, on real TVHL data.

    python benchmarks/cache_sharing.py [--image-size 96] [--data-root ../shared/data/tvhl]

Writes the patient-split TVHL manifests (`tvhl_manifests.py`) and builds, in a fresh cache directory and in the
order a real-data run does, the cache views of: the pretraining rows (categorical + elite + unpaired), the DME
probe train / test sets and the DR probe train / test sets. Prints, per view, its rows, the images it had to
decode and the seconds it took, then the pool's images and bytes against what one store per row set (the format
before the shared cache) held: the sum of the views' rows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tvhl_manifests import DEFAULT_ROOT, write_manifests  # noqa: E402

from retvlp.data.cache import ImageGeometry, build_image_cache, cache_summary, read_shards  # noqa: E402
from retvlp.data.manifest import read_manifests  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, default=96, help="px (the real-data benchmark's 96)")
    parser.add_argument("--data-root", default=str(DEFAULT_ROOT))
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="retvlp-cache-sharing-"))
    files = write_manifests(scratch / "manifests", args.data_root)["files"]
    root = str(Path(args.data_root).resolve())
    spec = {name: {"path": str(path), "allowed_roots": [root]} for name, path in files.items()}
    views = {
        "pretraining (categorical + elite + unpaired)": [
            spec["categorical"],
            spec["elite"],
            spec["unpaired"],
        ],
        "DME probe train": [spec["probe_train"]],
        "DME test": [spec["test"]],
        "DR probe train": [spec["dr_probe_train"]],
        "DR test": [spec["dr_test"]],
    }
    geometry = ImageGeometry(size=args.image_size)
    cache_dir = scratch / "cache"
    print(f"TVHL at {args.data_root}; {args.image_size} px; cache {cache_dir}\n")
    print("| view | rows | decoded now | seconds |\n|---|---|---|---|")
    total_rows = 0
    for name, specs in views.items():
        records = [record for manifest in read_manifests(specs) for record in manifest.records]
        pool = cache_summary(cache_dir)
        before = pool[0].images if pool else 0
        start = time.perf_counter()
        view = build_image_cache(records, geometry, cache_dir, show_progress=False)
        seconds = time.perf_counter() - start
        after = sum(len(shard.keys) for shard in read_shards(view.path))
        total_rows += len(records)
        print(f"| {name} | {len(records)} | {after - before} | {seconds:.1f} |")
    (pool,) = cache_summary(cache_dir)
    per_image = pool.num_bytes / pool.images
    print(
        f"\nshared pool: {pool.images} images, {pool.num_bytes / 1e6:.0f} MB; one store per row set would hold "
        f"{total_rows} rows, ~{total_rows * per_image / 1e6:.0f} MB ({total_rows / pool.images:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
