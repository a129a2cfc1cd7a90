"""Speed of the evaluation harness: feature extraction vs a bare forward loop, and a linear-probe sweep.

    python benchmarks/evaluation_benchmark.py [--model base|tiny] [--count 256] [--batch 32] [--repeats 3]

1. Feature extraction, images/s over the same `--count` images and the same model (MaskedCLIP, ViT-B/16 at
   224 px and a BERT-base text tower by default, random weights: speed does not depend on them):
   - "bare loop": `model.get_image_features(x)` over batches already decoded, resized and normalised in
     memory before the clock starts — the model's own speed, the reference;
   - "harness": `retvlp.evaluation.features.extract_image_features` — reading the cached uint8 store,
     normalising (background thread), one encoder pass giving both probe features and embeddings,
     copying out. The caches are cleared before each timed call.
   Runs alternate (bare, harness, bare, ...) `--repeats` times; the best of each is reported with the ratio.
2. A second `extract_image_features` call (memory cache) and one after clearing memory (disk cache).
3. Wall time of a full linear-probe label-efficiency sweep on all images (fractions 1 / 10 / 100 %, 5 seeds,
   nested group-aware stratified draws, class-balanced logistic regression, all six metrics), and what the
   same sweep would cost if features were re-extracted for every run.

Images: the TVHL fundus photographs in ../shared/data (DME yes/no, grouped by patient) when present, else the
synthetic demo images.
"""

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from retvlp import MaskedCLIPConfig, MaskedCLIPModel  # noqa: E402
from retvlp.evaluation.data import (  # noqa: E402
    cache_images,
    geometry_of,
    normalization_of,
    read_labelled_records,
    summarize_counts,
    to_model_input,
)
from retvlp.evaluation.features import clear_feature_cache, extract_image_features  # noqa: E402
from retvlp.evaluation.linear_probe import linear_probe_probabilities  # noqa: E402
from retvlp.evaluation.metrics import classification_metrics  # noqa: E402
from retvlp.evaluation.splits import group_stratified_split, nested_label_fractions  # noqa: E402
from retvlp.maskedclip import FundusImageProcessor  # noqa: E402

TVHL = Path(__file__).resolve().parents[2] / "shared" / "data" / "tvhl"
MODELS = {
    "base": dict(
        vision_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
        text_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
        projection_dim=512,
        bridge_num_hidden_layers=4,
    ),
    "tiny": dict(
        vision_config=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                           image_size=64, patch_size=8),
        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
        projection_dim=64,
        bridge_num_hidden_layers=2,
    ),
}  # fmt: skip


def data_manifest(directory: Path) -> tuple[dict, str]:
    """(manifest spec, description): TVHL fundus DME labels (the manifest, written here, names images under the
    TVHL folder: an allowed data root), or the synthetic demo data."""
    if (TVHL / "labels.csv").exists():
        manifest = directory / "tvhl_fundus_dme.csv"
        with open(TVHL / "labels.csv") as source, open(manifest, "w", newline="") as target:
            writer = csv.writer(target)
            writer.writerow(["image", "label", "patient_id"])
            for row in csv.DictReader(source):
                if row["modality"] == "fundus":
                    label = "DME" if row["DME"] == "1" else "no DME"
                    writer.writerow([str(TVHL / row["path"]), label, row["patient_id"]])
        return {"path": str(manifest), "allowed_roots": [str(TVHL)]}, "TVHL fundus (DME yes/no)"
    from retvlp.synthetic import generate_synthetic_dataset

    dataset = generate_synthetic_dataset(directory / "synthetic", num_patients=300, image_size=64)
    return {"path": str(dataset.test)}, "synthetic demo (test split)"


@torch.inference_mode()
def bare_loop(model, batches) -> float:
    start = time.perf_counter()
    for pixel_values in batches:
        model.get_image_features(pixel_values)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="base")
    parser.add_argument("--count", type=int, default=256, help="images timed in the extraction comparison")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the linear-probe sweep")
    args = parser.parse_args()
    torch.manual_seed(0)

    work = Path(tempfile.mkdtemp(prefix="retvlp_eval_bench_"))
    manifest, description = data_manifest(work)
    config = MaskedCLIPConfig(**MODELS[args.model])
    model = MaskedCLIPModel(config).eval()
    size = config.vision_config.image_size
    processor = FundusImageProcessor(size=size)
    labelled = read_labelled_records(manifest)
    store = cache_images(labelled, geometry_of(processor), cache_dir=str(work / "cache"))
    mean, std = normalization_of(processor)
    count = min(args.count, len(labelled))
    indices = np.arange(count)
    batches = [
        to_model_input(store.pixels(indices[i : i + args.batch]), mean, std)
        for i in range(0, count, args.batch)
    ]
    counts = summarize_counts(labelled, np.arange(len(labelled)))
    print(f"data: {description}, {len(labelled)} images of {len(set(labelled.groups))} patients, {counts}")
    print(
        f"model: MaskedCLIP {args.model} (ViT {config.vision_config.hidden_size}×{config.vision_config.num_hidden_layers}"
        f" at {size} px), batch {args.batch}, {count} images, {torch.get_num_threads()} threads"
    )

    bare_loop(model, batches[:1])  # warm-up
    bare_times, harness_times = [], []
    for _ in range(args.repeats):
        bare_times.append(bare_loop(model, batches))
        clear_feature_cache()
        start = time.perf_counter()
        extract_image_features(model, store, mean, std, indices, batch_size=args.batch, show_progress=False)
        harness_times.append(time.perf_counter() - start)
    bare, harness = count / min(bare_times), count / min(harness_times)
    print(f"\n| path | images/s (best of {args.repeats}) | all runs (s) |")
    print("|---|---|---|")
    print(
        f"| bare get_image_features loop (pre-normalised tensors) | {bare:.1f} | {', '.join(f'{t:.2f}' for t in bare_times)} |"
    )
    print(
        f"| extract_image_features (store → features) | {harness:.1f} | {', '.join(f'{t:.2f}' for t in harness_times)} |"
    )
    print(f"| **ratio harness / bare** | **{harness / bare:.3f}** | |")

    start = time.perf_counter()
    extract_image_features(model, store, mean, std, indices, batch_size=args.batch, show_progress=False)
    memory_hit = time.perf_counter() - start
    cache_dir = work / "features"
    clear_feature_cache()
    extract_image_features(
        model, store, mean, std, indices, batch_size=args.batch, cache_dir=cache_dir, show_progress=False
    )
    clear_feature_cache()
    start = time.perf_counter()
    extract_image_features(
        model, store, mean, std, indices, batch_size=args.batch, cache_dir=cache_dir, show_progress=False
    )
    disk_hit = time.perf_counter() - start
    print(f"\nrepeat call: memory cache {memory_hit * 1000:.1f} ms, disk cache {disk_hit * 1000:.1f} ms "
          f"(includes the weight fingerprint) vs {min(harness_times):.2f} s extracting")  # fmt: skip

    # Linear-probe label-efficiency sweep over every image.
    start = time.perf_counter()
    features = extract_image_features(model, store, mean, std, batch_size=args.batch, show_progress=False)
    extraction = time.perf_counter() - start
    train, test = group_stratified_split(labelled.targets, labelled.groups, 0.2, seed=0)
    fractions = (0.01, 0.1, 1.0)
    start = time.perf_counter()
    runs = 0
    for seed in range(args.seeds):
        subsets = nested_label_fractions(labelled.targets[train], labelled.groups[train], fractions, seed)
        for fraction in fractions:
            rows = train[subsets[fraction]]
            probabilities = linear_probe_probabilities(
                features.probe[rows],
                labelled.targets[rows],
                features.probe[test],
                len(labelled.class_names),
                seed=seed,
            )
            classification_metrics(labelled.targets[test], probabilities)
            runs += 1
    sweep = time.perf_counter() - start
    print(
        f"\nlinear-probe sweep: {runs} runs (fractions {fractions} × {args.seeds} seeds) on {len(train)} / "
        f"{len(test)} images, {features.probe.shape[1]}-d features: {sweep:.1f} s after one extraction of "
        f"{extraction:.1f} s ({len(labelled)} images) = {sweep + extraction:.1f} s in all; re-extracting per run "
        f"would add {(runs - 1) * extraction:.0f} s"
    )


if __name__ == "__main__":
    main()
