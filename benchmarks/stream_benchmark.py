"""Images/s of preparing and feeding training data: prepared shards (streamed) vs the local Arrow cache vs JPEGs.

    python benchmarks/stream_benchmark.py [--images DIR] [--count 1024] [--size 224] [--batch 64]

Preparation (one-time, per image): `retvlp prepare-data` (decode + check + resize + PNG encode + tar) with 1 and
2 processes and with `--image-format npy` (raw), next to the cache build (decode + check + resize + Arrow) with
1 and 2 processes.

Feeding (every epoch): a normalised `(batch, 3, size, size)` float32 training batch with a random resized crop and
flip per image (`augment_and_normalize`, what `StepBatches` does), from
- "jpeg": open + decode + `FundusImageProcessor` per image (no cache at all);
- "arrow cache": `read_pixels` of random rows of the memory-mapped store (`StepSampler` order);
- "shards (file://)": the rows of `ShardedStepSampler` fetched by byte range from local shards, crc32 checked
  and PNG decoded (`ShardSet.read_pixels`);
- "shards (memory://)": the same through fsspec's in-memory filesystem (the cost of the fsspec layer without
  disk or network; an object store adds its latency, hidden by the concurrent range requests);
- "shards npy (file://)": raw members (`--image-format npy`), nothing to decode;
each in this process and with 2 DataLoader workers. Images default to the TVHL fundus JPEGs in ../shared/data.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fsspec  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from data_benchmark import DEFAULT_IMAGES, JpegBatches, benchmark_jpegs, measure  # noqa: E402

from retvlp import FundusImageProcessor  # noqa: E402
from retvlp.data.cache import ImageGeometry, build_image_cache, read_pixels  # noqa: E402
from retvlp.data.manifest import read_manifest  # noqa: E402
from retvlp.data.sampler import StepSampler  # noqa: E402
from retvlp.data.shard_stream import ShardedStepSampler, open_shard_set  # noqa: E402
from retvlp.data.shards import prepare_shards  # noqa: E402
from retvlp.data.transforms import augment_and_normalize  # noqa: E402


class TrainBatches(torch.utils.data.Dataset):
    """Item `i`: the augmented, normalised batch of step `i` from `read(rows)` with `sampler`'s rows."""

    def __init__(self, read, sampler, steps: int, batch: int):
        self.read, self.sampler, self.steps, self.batch = read, sampler, steps, batch
        self.mean = torch.tensor(FundusImageProcessor.image_mean)
        self.std = torch.tensor(FundusImageProcessor.image_std)

    def __len__(self):
        return self.steps

    def __getitem__(self, step):
        rng = np.random.default_rng([0, step])
        pixels = self.read(self.sampler.indices(step, 0))
        side = np.sqrt(rng.uniform(0.6, 1.0, self.batch))
        crops = np.concatenate([side[:, None], rng.uniform(-1, 1, (self.batch, 2)) * (1 - side)[:, None]], 1)
        return augment_and_normalize(pixels, crops, rng.random(self.batch) < 0.5, self.mean, self.std)


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--count", type=int, default=1024)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per data worker, as in training

    scratch = Path(tempfile.mkdtemp(prefix="retvlp-stream-bench-"))
    paths, origin = benchmark_jpegs(args.images, args.count, scratch)
    manifest = scratch / "images.jsonl"
    manifest.write_text("".join(f'{{"image": "{p}", "text": "a fundus photograph"}}\n' for p in paths))
    manifest_obj = read_manifest(manifest, allowed_roots=sorted({str(p.parent) for p in paths}))
    geometry = ImageGeometry(size=args.size)
    print(
        f"images: {origin}; output {args.size} px; batch {args.batch}; cores: {os.cpu_count()}, torch {torch.__version__}"
    )

    print(
        "\n| one-time preparation | processes | seconds | img/s | img/s per process |\n|---|---|---|---|---|"
    )
    prepared = {}
    for workers in (1, 2):
        output = scratch / f"shards-{workers}"
        seconds = timed(
            lambda output=output, workers=workers: prepare_shards(
                [manifest_obj], output, geometry=geometry, shard_size=args.shard_size, num_proc=workers,
                show_progress=False,
            )
        )  # fmt: skip
        prepared[workers] = seconds
        rate = len(paths) / seconds
        print(
            f"| prepare-data (tar shards) | {workers} | {seconds:.1f} | {rate:.0f} | {rate / workers:.0f} |"
        )
    for workers in (1, 2):
        seconds = timed(
            lambda workers=workers: build_image_cache(
                manifest_obj.records,
                geometry,
                scratch / f"cache-{workers}",
                num_proc=workers,
                show_progress=False,
            )
        )
        rate = len(paths) / seconds
        print(
            f"| image cache build (Arrow) | {workers} | {seconds:.1f} | {rate:.0f} | {rate / workers:.0f} |"
        )
    raw_seconds = timed(
        lambda: prepare_shards(
            [manifest_obj], scratch / "shards-npy", geometry=geometry, shard_size=args.shard_size, num_proc=1,
            image_format="npy", show_progress=False,
        )
    )  # fmt: skip
    raw_rate = len(paths) / raw_seconds
    print(
        f"| prepare-data (tar shards, --image-format npy) | 1 | {raw_seconds:.1f} | {raw_rate:.0f} | {raw_rate:.0f} |"
    )
    print(f"prepare-data scaling 1 -> 2 processes: {prepared[1] / prepared[2]:.2f}x")
    shard_bytes = sum(p.stat().st_size for p in (scratch / "shards-1").glob("*.tar"))
    cache = build_image_cache(
        manifest_obj.records, geometry, scratch / "cache-1", num_proc=1, show_progress=False
    )
    cache_bytes = sum(Path(f["filename"]).stat().st_size for f in cache.dataset.cache_files)
    raw_bytes = sum(p.stat().st_size for p in (scratch / "shards-npy").glob("*.tar"))
    print(
        f"bytes per image: shards {shard_bytes / len(paths) / 1e3:.0f} kB (png), {raw_bytes / len(paths) / 1e3:.0f} kB "
        f"(npy); Arrow cache {cache_bytes / len(paths) / 1e3:.0f} kB"
    )

    shards = open_shard_set(f"file://{scratch / 'shards-1'}")
    memory = fsspec.filesystem("memory")
    for path in (scratch / "shards-1").iterdir():
        memory.pipe_file(f"/bench-shards/{path.name}", path.read_bytes())
    in_memory = open_shard_set("memory://bench-shards")
    steps = len(paths) // args.batch
    rows = [
        ("jpeg decode + preprocess (no cache)", JpegBatches(paths, args.batch, args.size)),
        (
            "arrow cache (random rows)",
            TrainBatches(
                lambda r: read_pixels(cache.dataset, r),
                StepSampler(len(cache), args.batch),
                steps,
                args.batch,
            ),
        ),
    ]
    streams = [
        ("shards (file://, byte ranges)", shards),
        ("shards (memory://)", in_memory),
        ("shards npy (file://)", open_shard_set(f"file://{scratch / 'shards-npy'}")),
    ]
    for name, opened in streams:
        sampler = ShardedStepSampler(opened.shard_of, args.batch, readers=8, shuffle_buffer=args.shard_size)
        rows.append((name, TrainBatches(opened.read_pixels, sampler, steps, args.batch)))
    print("\n| training batches from | 1 process (img/s) | 2 DataLoader workers (img/s) |\n|---|---|---|")
    results = {}
    for name, dataset in rows:
        results[name] = (measure(dataset, 0), measure(dataset, 2))
        print(f"| {name} | {results[name][0]:.0f} | {results[name][1]:.0f} |")
    arrow = results["arrow cache (random rows)"]
    jpeg = results["jpeg decode + preprocess (no cache)"]
    for name, _ in streams:
        single, double = results[name]
        print(
            f"{name}: {single / arrow[0]:.2f}x / {double / arrow[1]:.2f}x the Arrow cache, "
            f"{single / jpeg[0]:.2f}x / {double / jpeg[1]:.2f}x the JPEG path (1 process / 2 workers)"
        )
    memory.rm("/bench-shards", recursive=True)


if __name__ == "__main__":
    main()
