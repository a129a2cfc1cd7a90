"""Images/s of the training data path: decoding JPEG files every epoch vs reading the cached Arrow store.

    python benchmarks/data_benchmark.py [--images DIR] [--size 224] [--count 512] [--batch 64]

Both paths produce the same thing, a normalised `(batch, 3, size, size)` float32 tensor:
- "jpeg": open + decode each JPEG with Pillow, then `FundusImageProcessor` (resize, rescale, normalise);
- "cache (read)": `read_pixels` of uint8 rows from the memory-mapped store + normalisation;
- "cache (train batch)": what a training step gets — the same plus a random resized crop and flip per image
  (`augment_and_normalize`), i.e. the per-step work of `retvlp.training.data.StepBatches`.
Each is measured in this process and with a 2-worker DataLoader. The one-time cost of building the store
(decode + check + resize, parallel over processes) is printed too. Images default to the TVHL fundus JPEGs
in ../shared/data (384 px); without them, synthetic fundus JPEGs at 384 px are written to a temp dir.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from retvlp import FundusImageProcessor  # noqa: E402
from retvlp.data.cache import ImageGeometry, build_image_cache, read_pixels  # noqa: E402
from retvlp.data.manifest import read_manifest  # noqa: E402
from retvlp.data.transforms import augment_and_normalize  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "tvhl" / "fundus"


def synthetic_jpegs(directory: Path, count: int) -> list[Path]:
    from retvlp.synthetic import SYNTHETIC_CLASSES, render_fundus

    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        pixels, _ = render_fundus(SYNTHETIC_CLASSES[i % len(SYNTHETIC_CLASSES)], rng, size=384)
        path = directory / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def benchmark_jpegs(images: str, count: int, scratch: Path) -> tuple[list[Path], str]:
    """The first `count` JPEGs of the folder `images` (the TVHL fundus photographs by default), or synthetic
    fundus JPEGs written to `scratch` when it has fewer; and a line saying which."""
    source = Path(images)
    paths = sorted(source.glob("*.jpg"))[:count] if source.is_dir() else []
    if len(paths) >= count:
        return paths, f"{source} ({len(paths)} JPEGs)"
    paths = synthetic_jpegs(scratch, count)
    return paths, f"synthetic fundus JPEGs at 384 px ({len(paths)})"


class JpegBatches(torch.utils.data.Dataset):
    def __init__(self, paths, batch, size):
        self.paths, self.batch = paths, batch
        self.processor = FundusImageProcessor(size=size)

    def __len__(self):
        return len(self.paths) // self.batch

    def __getitem__(self, i):
        chunk = self.paths[i * self.batch : (i + 1) * self.batch]
        return self.processor([Image.open(p).convert("RGB") for p in chunk])["pixel_values"]


class CachedBatches(torch.utils.data.Dataset):
    def __init__(self, dataset, batch, augment, seed=0):
        self.dataset, self.batch, self.augment, self.seed = dataset, batch, augment, seed
        self.mean = torch.tensor(FundusImageProcessor.image_mean)
        self.std = torch.tensor(FundusImageProcessor.image_std)

    def __len__(self):
        return len(self.dataset) // self.batch

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, i])
        rows = rng.permutation(len(self.dataset))[: self.batch]
        pixels = read_pixels(self.dataset, rows)
        crops = flips = None
        if self.augment:
            side = np.sqrt(rng.uniform(0.6, 1.0, self.batch))
            crops = np.concatenate(
                [side[:, None], rng.uniform(-1, 1, (self.batch, 2)) * (1 - side)[:, None]], 1
            )
            flips = rng.random(self.batch) < 0.5
        return augment_and_normalize(pixels, crops, flips, self.mean, self.std)


def measure(dataset, workers: int, repeats: int = 3) -> float:
    """Best of `repeats` passes over the dataset, images/s."""
    best = 0.0
    for _ in range(repeats):
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, shuffle=False)
        start, images = time.perf_counter(), 0
        for batch in loader:
            images += batch.shape[0]
        best = max(best, images / (time.perf_counter() - start))
    return best


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--clinical-size",
        type=int,
        default=2048,
        help="also decode copies re-encoded at this long side (clinical cameras give 2000-4000 px); 0: skip",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per data worker, as in training

    scratch = Path(tempfile.mkdtemp(prefix="retvlp-data-bench-"))
    paths, origin = benchmark_jpegs(args.images, args.count, scratch)
    manifest = scratch / "images.jsonl"
    manifest.write_text("".join(f'{{"image": "{p}"}}\n' for p in paths))
    sizes = {Image.open(p).size for p in paths[:20]}

    print(f"images: {origin}; e.g. sizes {sorted(sizes)[:3]}; output {args.size} px; batch {args.batch}")
    print(f"cores: {os.cpu_count()}, torch {torch.__version__}")
    # the manifest (in the scratch folder) names images elsewhere: their folder is an allowed data root
    records = read_manifest(manifest, allowed_roots=sorted({str(Path(p).parent) for p in paths})).records
    start = time.perf_counter()
    cache = build_image_cache(
        records,
        ImageGeometry(size=args.size),
        scratch / "cache",
        num_proc=os.cpu_count(),
        show_progress=False,
    )
    build_seconds = time.perf_counter() - start
    print(
        f"build the store once: {len(records)} images in {build_seconds:.1f} s "
        f"({len(records) / build_seconds:.0f} img/s over {os.cpu_count()} processes)"
    )

    rows = [("jpeg decode + preprocess", JpegBatches(paths, args.batch, args.size))]
    if args.clinical_size:
        large = []
        for i, path in enumerate(paths[: 2 * args.batch]):
            image = Image.open(path).convert("RGB")
            scale = args.clinical_size / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
            large.append(scratch / f"large-{i:05d}.jpg")
            image.save(large[-1], quality=90)
        rows.append(
            (
                f"jpeg at {args.clinical_size} px decode + preprocess",
                JpegBatches(large, args.batch, args.size),
            )
        )
    rows += [
        ("cache (read + normalise)", CachedBatches(cache.dataset, args.batch, augment=False)),
        ("cache (train batch: + crop/flip)", CachedBatches(cache.dataset, args.batch, augment=True)),
    ]
    print("\n| path | 1 process (img/s) | 2 DataLoader workers (img/s) |\n|---|---|---|")
    results = {}
    for name, dataset in rows:
        results[name] = (measure(dataset, 0), measure(dataset, 2))
        print(f"| {name} | {results[name][0]:.0f} | {results[name][1]:.0f} |")
    train = results["cache (train batch: + crop/flip)"]
    for name, (single, double) in results.items():
        if name.startswith("jpeg"):
            print(
                f"cached train batches vs {name}: {train[0] / single:.1f}x (1 process), {train[1] / double:.1f}x (2 workers)"
            )
    print(
        f"target >= 300 img/s at {args.size} px from the cache: "
        f"{'met' if max(train) >= 300 else 'NOT met'} ({max(train):.0f} img/s)"
    )


if __name__ == "__main__":
    main()
