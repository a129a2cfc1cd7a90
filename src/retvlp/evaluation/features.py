"""Frozen image and text features of a dual encoder, extracted once per (model, data set) and cached.

One forward pass per image batch yields both representations the protocols need:

- **probe features** for the linear probe: MaskedCLIP's mean-pooled E_I patch tokens (after its final
  LayerNorm), KeepFIT's globally pooled last ResNet feature map, a vision-only model's `pooler_output`, and for
  any other dual encoder (e.g. transformers' `CLIPModel`) its image embedding;
- **image embeddings** (L2-normalised `get_image_features(...).pooler_output`) for zero-shot and few-shot.

Features are cached in memory and on disk (`<cache_dir>/features/<key>.safetensors`, written atomically), keyed
by a fingerprint of the model's weights and config, the image store and the rows, so zero-shot, few-shot,
linear probe and every seed / label fraction reuse one extraction, and a second `retvlp evaluate` of the same
checkpoint on the same data extracts nothing.

Under `accelerate launch` (`processes=`, see `distributed.py`) each process encodes its share of whole
batches and every process gets all features, in the original order and bit for bit those of a one-process run;
the main process alone writes the disk cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..families import family_of_model_type
from .data import ImageStore, prefetched_batches
from .distributed import SINGLE, Processes, shard_rows

FEATURE_FORMAT_VERSION = 1


@dataclass
class ImageFeatures:
    """Per-image features, row `i` for record index `indices[i]` of the store.

    Attributes:
        probe: `(N, F)` float32 frozen-encoder features for the linear probe.
        embeds: `(N, P)` float32 L2-normalised image embeddings, or None for an image-only model.
    """

    probe: np.ndarray
    embeds: np.ndarray | None


def _model_type(model) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", ""))


def has_text_tower(model) -> bool:
    """Whether `model` can embed text (zero-shot and few-shot need it)."""
    model = getattr(model, "released_model", model)
    if not hasattr(model, "get_text_features"):
        return False
    return bool(getattr(model, "has_text_tower", True))


def _is_retvlp_dual_encoder(model) -> bool:
    # A registered family's released dual encoder (MaskedCLIPModel, KeepFitModel, also loaded as remote code):
    # one forward gives the probe feature and the embedding (public API). Its config carries the family's
    # main model_type; the family's vision-only configs do not.
    family = family_of_model_type(_model_type(model))
    return (
        family is not None
        and _model_type(model) == family.model_types[0]
        and hasattr(model, "get_image_features")
    )


def _pooled(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def encode_images(model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(B, 3, H, W)` → probe features `(B, F)` and normalised image embeddings `(B, P)` (or None), from one
    pass of the image encoder. A `...ForPreTraining` model is read through its released model."""
    model = getattr(model, "released_model", model)
    if _is_retvlp_dual_encoder(model):
        output = model(pixel_values=pixel_values, return_dict=True)
        return output.vision_model_output.pooler_output.flatten(1), output.image_embeds
    if hasattr(model, "get_image_features"):
        embeds = _pooled(model.get_image_features(pixel_values=pixel_values, return_dict=True))
        probe = embeds
    else:  # an image-only encoder (MaskedCLIPVisionModel, KeepFitVisionModel, ViTModel, ...)
        output = model(pixel_values=pixel_values)
        pooled = getattr(output, "pooler_output", None)
        if pooled is None and _model_type(model) == "vit_mae":
            # a converted RETFound (ViTMAEModel, no pooler): the mean patch token, RETFound's global pooling
            pooled = output.last_hidden_state[:, 1:].mean(1)
        probe = pooled if pooled is not None else output.last_hidden_state.mean(1)
        return probe.flatten(1), None
    return probe, F.normalize(embeds, dim=-1)


def _tensor_digest(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha1(memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else b"").digest()


def model_fingerprint(model) -> str:
    """A hash of the model's class, config and every parameter / buffer value (changes when any weight does).

    Tensors are hashed in parallel threads (hashlib releases the GIL): ~0.6 s for a ViT-B + BERT-base
    MaskedCLIP (360 M values) on 2 cores."""
    state = model.state_dict()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(type(model).__qualname__.encode())
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        digests = pool.map(_tensor_digest, state.values())
        for (name, tensor), tensor_digest in zip(state.items(), digests, strict=True):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor_digest)
    return digest.hexdigest()


_MEMORY_CACHE: dict[str, ImageFeatures] = {}


def _cache_key(model, store: ImageStore, indices: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> str:
    digest = hashlib.blake2b(digest_size=16)
    normalization = [mean.tolist(), std.tolist()]
    digest.update(
        json.dumps([FEATURE_FORMAT_VERSION, model_fingerprint(model), store.key, normalization]).encode()
    )
    digest.update(np.ascontiguousarray(store.rows[indices], dtype=np.int64).tobytes())
    return digest.hexdigest()


def _load(path: Path) -> ImageFeatures | None:
    if not path.exists():
        return None
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    return ImageFeatures(probe=tensors["probe"], embeds=tensors.get("embeds"))


def _save(path: Path, features: ImageFeatures) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"probe": features.probe}
    if features.embeds is not None:
        tensors["embeds"] = features.embeds
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, staging)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


@torch.inference_mode()
def extract_image_features(
    model,
    store: ImageStore,
    mean: torch.Tensor,
    std: torch.Tensor,
    indices: np.ndarray | None = None,
    *,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    description: str = "features",
    cache: bool = True,
    processes: Processes = SINGLE,
) -> ImageFeatures:
    """Features of the records `indices` (default: all) of `store`, extracted batch-wise in eval mode under
    `torch.inference_mode` on the model's device and dtype, or read back from the cache.

    `cache=False` neither reads nor writes any cache (nor hashes the weights): for weights about to change,
    e.g. the evaluations during pretraining, whose entries would only pile up in memory.

    `processes` (`distributed.evaluation_processes()` under `accelerate launch`; a collective then: every
    process calls it with the same arguments): each process encodes its share of whole batches, every process
    gets all features in the order of `indices`, identical to a one-process run, and only the main process
    writes the disk cache. The default, one process, runs no collective."""
    indices = np.arange(len(store.rows)) if indices is None else np.asarray(indices, dtype=np.int64)
    key = _cache_key(model, store, indices, mean, std) if cache else None
    if key is not None and key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    path = Path(cache_dir) / "features" / f"{key}.safetensors" if cache_dir is not None and cache else None
    features = _load(path) if path is not None else None
    # Extract unless every process read the file: one that extracts alone would wait forever in the gather.
    if not processes.all(features is not None):
        features, encoded = _extract_shared(
            model,
            store,
            indices,
            mean,
            std,
            batch_size=batch_size,
            processes=processes,
            show_progress=show_progress and processes.is_main,
            description=description,
        )
        wrote = path is not None and processes.is_main
        if wrote:
            _save(path, features)
        _note_extraction(description, encoded, processes, wrote_cache=wrote)
    if key is not None:
        _MEMORY_CACHE[key] = features
    return features


def _extract_shared(
    model, store, indices, mean, std, *, batch_size, processes, show_progress, description
) -> tuple[ImageFeatures, int]:
    """`(features of every row of indices, how many images this process encoded)`: this process's share
    (`distributed.shard_rows`) encoded here, the shares of all processes gathered in process order."""
    own = indices[shard_rows(len(indices), batch_size, processes)]
    share = _encode_rows(
        model,
        store,
        own,
        mean,
        std,
        batch_size=batch_size,
        show_progress=show_progress,
        description=description,
    )
    return _joined(processes.gather(share)), len(own)


def _encode_rows(
    model, store, indices, mean, std, *, batch_size, show_progress, description
) -> ImageFeatures | None:
    """Features of the records `indices` (`(len(indices), F)` probe, `(len(indices), P)` embeds or None), or
    None for no records."""
    if len(indices) == 0:
        return None
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    probes, embeds = [], []
    progress = tqdm(total=len(indices), desc=description, unit="img", disable=not show_progress, leave=False)
    for pixel_values in prefetched_batches(store, indices, batch_size, mean, std):
        pixel_values = pixel_values.to(parameter.device, parameter.dtype, non_blocking=True)
        probe, embed = encode_images(model, pixel_values)
        probes.append(probe.float().cpu())
        if embed is not None:
            embeds.append(embed.float().cpu())
        progress.update(len(pixel_values))
    progress.close()
    model.train(was_training)
    return ImageFeatures(
        probe=torch.cat(probes).numpy(), embeds=torch.cat(embeds).numpy() if embeds else None
    )


def _joined(shares: list[ImageFeatures | None]) -> ImageFeatures:
    """The shares of consecutive row ranges (None: no rows) as one `ImageFeatures`, in order."""
    shares = [share for share in shares if share is not None]
    if not shares:
        raise ValueError("No images to extract features of.")
    if len(shares) == 1:
        return shares[0]
    embeds = None if shares[0].embeds is None else np.concatenate([share.embeds for share in shares])
    return ImageFeatures(probe=np.concatenate([share.probe for share in shares]), embeds=embeds)


def _note_extraction(description: str, encoded: int, processes: Processes, *, wrote_cache: bool) -> None:
    """With `RETVLP_DEBUG_FEATURE_COUNTS=<dir>`: append one JSON line `{"description", "rank", "processes",
    "images", "wrote_cache"}` per extraction to `<dir>/feature-counts-rank<rank>.jsonl` (one file per process,
    so no two processes write the same file). A debugging aid: the tests read it to check that each process
    encoded only its share."""
    directory = os.environ.get("RETVLP_DEBUG_FEATURE_COUNTS")
    if not directory:
        return
    entry = {
        "description": description,
        "rank": processes.index,
        "processes": processes.count,
        "images": int(encoded),
        "wrote_cache": wrote_cache,
    }
    log = Path(directory) / f"feature-counts-rank{processes.index}.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def clear_feature_cache() -> None:
    """Forget the in-memory features (the disk cache stays)."""
    _MEMORY_CACHE.clear()


@torch.inference_mode()
def class_prototypes(
    model, tokenizer, prompts_per_class: list[list[str]], *, max_length: int = 77, batch_size: int = 64
) -> np.ndarray:
    """`(C, P)` zero-shot classifier: for each class the L2-normalised mean of its prompts' normalised text
    embeddings (METHODS §3)."""
    model = getattr(model, "released_model", model)
    if not has_text_tower(model):
        raise ValueError(
            f"{type(model).__name__} has no text encoder: zero-shot and few-shot need a dual encoder "
            "(get_text_features)."
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    flat = [prompt for prompts in prompts_per_class for prompt in prompts]
    if any(not prompts for prompts in prompts_per_class):
        raise ValueError("Every class needs at least one prompt.")
    embeddings = []
    for start in range(0, len(flat), batch_size):
        inputs = tokenizer(
            flat[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        embeddings.append(
            F.normalize(_pooled(model.get_text_features(**inputs, return_dict=True)).float(), dim=-1).cpu()
        )
    model.train(was_training)
    embeddings = torch.cat(embeddings)
    prototypes, start = [], 0
    for prompts in prompts_per_class:
        prototypes.append(F.normalize(embeddings[start : start + len(prompts)].mean(dim=0), dim=-1))
        start += len(prompts)
    return torch.stack(prototypes).numpy()


def logit_scale_of(model, maximum: float = 100.0) -> float:
    """exp(τ) of a CLIP-style model, clamped to `maximum` (100, CLIP's clamp); 100 when it has none."""
    model = getattr(model, "released_model", model)
    if hasattr(model, "clamped_logit_scale"):  # MaskedCLIP, KeepFIT: their own clamp (ln 100)
        return float(model.clamped_logit_scale().detach())
    scale = getattr(model, "logit_scale", None)
    if isinstance(scale, torch.Tensor):
        return float(min(scale.detach().exp().item(), maximum))
    return maximum
