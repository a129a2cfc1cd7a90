"""From run-file data specs to manifests and cached pixels: what pretraining (`retvlp.training`) and the
evaluations (`retvlp.evaluation`) both read their images with."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from .cache import CachedImages, ImageGeometry, build_image_cache, parse_size
from .manifest import Manifest, manifest_from_hf_dataset, read_manifests, with_root_options


class ImageDataSettings(Protocol):
    """The keys of a run's `data` section that `cache_records` reads (e.g. `retvlp.training.config.DataSection`)."""

    image_size: int
    pad_to_square: bool
    crop_to_fov: bool
    cache_dir: str | None
    min_image_size: int
    max_image_pixels: int | None
    preprocessing_workers: int | None
    cache_max_size: str | None  # optional: a size limit of the shared cache (`parse_size`)


def read_training_manifests(
    specs: list[dict], *, allowed_roots: list[str] | None = None, allow_outside_data_roots: bool = False
) -> list[Manifest]:
    """Manifests of `data.train`: file specs (`path` + `read_manifest` options) or Hugging Face datasets
    (`hf_dataset`: a `save_to_disk` directory or a Hub dataset id, with `split`, default "train", plus the
    `manifest_from_hf_dataset` options).

    `allowed_roots` / `allow_outside_data_roots` (the run's `data.allowed_roots` /
    `data.allow_outside_data_roots`) add to every spec's own data-root settings (`retvlp.data.roots`)."""
    import datasets

    manifests = []
    for spec in specs:
        spec = with_root_options(spec, allowed_roots, allow_outside_data_roots)
        if "hf_dataset" not in spec:
            manifests.extend(read_manifests([spec]))
            continue
        options = dict(spec)
        source, split = options.pop("hf_dataset"), options.pop("split", "train")
        _check_dataset_source(source)
        if Path(source).is_dir():
            loaded = datasets.load_from_disk(source)
            dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            dataset = datasets.load_dataset(source, split=split)
        options.setdefault("name", f"{source}:{split}")
        manifests.append(manifest_from_hf_dataset(dataset, **options))
    return manifests


def _check_dataset_source(source) -> None:
    """Refuse an `hf_dataset` that is not a folder or Hub id, e.g. an in-memory `datasets.Dataset`: the run writes
    its config to `run_config.yaml` and fingerprints its data, which needs a name, not an object (and as a string
    the object would be looked up on the Hub, failing with a misleading connection error)."""
    if isinstance(source, (str, os.PathLike)):
        return
    kind = type(source).__name__
    raise ValueError(
        f"data.train: hf_dataset must be a save_to_disk folder or a Hub dataset id, got an in-memory {kind}. "
        f"Save it first (dataset.save_to_disk('DIR')) and give {{hf_dataset: DIR}}; the evaluation API "
        "(`evaluate_models`) takes the Dataset object itself."
    )


def cache_records(records, data: ImageDataSettings, show_progress: bool = True) -> CachedImages:
    """The cached uint8 store of `records` at the run's image geometry and checks (built once, then reused)."""
    geometry = ImageGeometry(
        size=data.image_size, pad_to_square=data.pad_to_square, crop_to_fov=data.crop_to_fov
    )
    return build_image_cache(
        records,
        geometry,
        data.cache_dir,
        min_size=data.min_image_size,
        max_pixels=data.max_image_pixels,
        num_proc=data.preprocessing_workers,
        max_bytes=None if getattr(data, "cache_max_size", None) is None else parse_size(data.cache_max_size),
        show_progress=show_progress,
    )


__all__ = ["ImageDataSettings", "cache_records", "read_training_manifests"]
