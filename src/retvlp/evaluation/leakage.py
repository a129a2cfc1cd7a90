"""Leakage checks in evaluation: the optional embedding pass, and the check `evaluate_models` runs when given
the pretraining data.

The image-level checks (exact and perceptual hashes, shared patient ids) are the data layer's
(`retvlp.data.leakage.find_leakage`). This module adds:

* `embedding_pairs`: pairs of a pretraining and an evaluation image whose image embeddings (the evaluation
  features of a given model, `features.extract_image_features`) have cosine similarity `>= min_cosine`, found
  with chunked matrix products and a top-k per evaluation image, never a Python double loop;
* `check_evaluation_leakage`: the check of `evaluate_models(..., pretrain_data=...)` on its labelled records,
  optionally dropping the leaked evaluation records (counted under `excluded["leaked"]` and listed);
* `leakage_section` / `write_leakage`: the `leakage` section of results.json and results.md, and the
  report files under `<output_dir>/leakage/`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.cache import build_image_cache
from ..data.leakage import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MAX_FINE_DISTANCE,
    LeakagePair,
    LeakageReport,
    find_leakage,
)
from ..data.loading import read_training_manifests
from ..data.manifest import ManifestRecord
from .data import ImageStore, LabelledRecords, geometry_of, normalization_of
from .features import extract_image_features

logger = logging.getLogger(__name__)

DEFAULT_MIN_COSINE = 0.95
LEAKED = "leaked"  # the exclusion reason of dropped evaluation records (`LabelledRecords.excluded`)


# ---------------------------------------------------------------------------------------------- embeddings
def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def cosine_pairs(
    pretrain: np.ndarray, evaluation: np.ndarray, min_cosine: float, *, top_k: int = 5, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(pretrain index, eval index, cosine)` of every evaluation vector's `top_k` most similar pretraining
    vectors with cosine `>= min_cosine` (rows are L2-normalised here). Evaluation rows are taken `chunk` at a
    time: one `(chunk, n_pretrain)` matrix product each, then `np.argpartition` for the top k."""
    a, b = _unit_rows(pretrain), _unit_rows(evaluation)
    found_i, found_j, found_c = [], [], []
    k = min(int(top_k), len(a))
    if k == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    for start in range(0, len(b), chunk):
        similarity = b[start : start + chunk] @ a.T
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(similarity, top, axis=1)
        rows, columns = np.nonzero(values >= min_cosine)
        found_j.append(rows + start)
        found_i.append(top[rows, columns])
        found_c.append(values[rows, columns])
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_c)


def _store(records: Sequence[ManifestRecord], geometry, cache_dir, show_progress: bool) -> ImageStore:
    cached = build_image_cache(list(records), geometry, cache_dir, show_progress=show_progress)
    ok = np.asarray(cached.dataset["ok"], dtype=bool)
    return ImageStore(cached=cached, rows=np.arange(len(ok)), ok=ok)


def _embeddings(model, image_processor, records, *, cache_dir, batch_size, show_progress, what):
    """`(unit vectors, record positions)` of the records whose image passed the cache's checks: the model's
    image embeddings, or its probe features for an image-only model."""
    store = _store(records, geometry_of(image_processor), cache_dir, show_progress)
    mean, std = normalization_of(image_processor)
    kept = np.flatnonzero(store.ok)
    if len(kept) == 0:
        return np.zeros((0, 1), np.float32), kept
    features = extract_image_features(
        model,
        store,
        mean,
        std,
        kept,
        batch_size=batch_size,
        cache_dir=cache_dir,
        show_progress=show_progress,
        description=f"{what} embeddings",
    )
    vectors = features.embeds if features.embeds is not None else features.probe
    return _unit_rows(vectors), kept


def embedding_pairs(
    model,
    image_processor,
    pretrain: Sequence[ManifestRecord],
    evaluation: Sequence[ManifestRecord],
    *,
    min_cosine: float = DEFAULT_MIN_COSINE,
    top_k: int = 5,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
) -> list[LeakagePair]:
    """Pairs of a pretraining and an evaluation record whose image embeddings under `model` (and its
    `image_processor`: the evaluation's geometry and normalisation) have cosine `>= min_cosine`, each
    evaluation image's `top_k` at most (`cosine_pairs`). Images failing the cache's checks are skipped (the
    hash pass lists unreadable images)."""
    if not -1.0 <= float(min_cosine) <= 1.0:
        raise ValueError(f"min_cosine must lie in [-1, 1], got {min_cosine}")
    if not pretrain or not evaluation:
        return []
    options = dict(cache_dir=cache_dir, batch_size=batch_size, show_progress=show_progress)
    a, kept_a = _embeddings(model, image_processor, pretrain, what="pretraining", **options)
    b, kept_b = _embeddings(model, image_processor, evaluation, what="evaluation", **options)
    i, j, cosine = cosine_pairs(a, b, float(min_cosine), top_k=top_k)
    pairs = []
    for x, y, c in zip(kept_a[i], kept_b[j], cosine, strict=True):
        pre, ev = pretrain[int(x)], evaluation[int(y)]
        pairs.append(
            LeakagePair(
                str(pre.image),
                str(ev.image),
                "embedding",
                round(float(c), 6),
                int(x),
                int(y),
                f"{pre.source}:{pre.row}",
                f"{ev.source}:{ev.row}",
            )
        )
    return pairs


# ---------------------------------------------------------------------------------------------- evaluate_models
def _pretrain_specs(pretrain_data) -> list[dict]:
    """Manifest paths or spec dicts (`{"path", ...read_manifest options}` / `{"hf_dataset", ...}`)."""
    if isinstance(pretrain_data, (str, os.PathLike, dict)):
        pretrain_data = [pretrain_data]
    specs = []
    for item in pretrain_data:
        if isinstance(item, (str, os.PathLike)):
            specs.append({"path": os.fspath(item)})
        elif isinstance(item, dict):
            specs.append(dict(item))
        else:
            raise ValueError(
                f"pretrain_data: expected manifest paths or spec dicts, got a {type(item).__name__}"
            )
    return specs


def check_evaluation_leakage(
    labelled: LabelledRecords,
    num_pool: int | None,
    pretrain_data,
    *,
    exclude: bool = False,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    max_fine_distance: int = DEFAULT_MAX_FINE_DISTANCE,
    show_progress: bool = True,
) -> tuple[LeakageReport, LabelledRecords, int | None]:
    """Check the evaluation records against the pretraining manifests (`find_leakage`): `(report, labelled,
    num_pool)`. With `exclude`, the leaked records (duplicated, or of a patient in the pretraining data) are
    left out, counted under `excluded["leaked"]` and listed (the report lists every one); `num_pool` (the
    number of training-pool records before a given test set) follows."""
    from tqdm.auto import tqdm

    if pretrain_data is None:
        raise ValueError("exclude_leaked needs pretrain_data (the pretraining manifests to check against)")
    manifests = read_training_manifests(_pretrain_specs(pretrain_data))
    total = sum(len(m.records) for m in manifests) + len(labelled)
    with tqdm(total=total, desc="leakage check", unit="img", disable=not show_progress, leave=False) as bar:
        report = find_leakage(
            manifests,
            labelled.records,
            max_distance=max_distance,
            max_fine_distance=max_fine_distance,
            progress=bar.update,
        )
    if report.found:
        logger.warning(
            "Leakage between the pretraining and the evaluation data: %s%s",
            report.summary(),
            " (left out of the evaluation)"
            if exclude
            else " (kept: exclude_leaked / --exclude-leaked drops them)",
        )
    if not exclude or not report.found:
        return report, labelled, num_pool
    leaked = report.leaked_eval_images()
    keep = np.ones(len(labelled), dtype=bool)
    keep[leaked] = False
    kept = labelled.subset(keep)
    duplicated = set(report.duplicated_eval_images())
    for j in leaked:
        record = labelled.records[j]
        kept._exclude(
            LEAKED,
            {
                "source": record.source,
                "row": record.row,
                "image": str(record.image),
                "message": "duplicate of a pretraining image"
                if j in duplicated
                else f"patient {record.group} is in the pretraining data",
            },
        )
    if num_pool is not None:
        num_pool = int(keep[:num_pool].sum())
    return report, kept, num_pool


def leakage_section(report: LeakageReport, *, excluded: bool) -> dict:
    """The `leakage` section of results.json: the report and whether the leaked records were left out."""
    return {**report.to_json(), "excluded_from_evaluation": bool(excluded and report.found)}


def write_leakage(report: LeakageReport, output_dir: str | os.PathLike, *, excluded: bool) -> dict:
    """Write the report under `<output_dir>/leakage/` (JSON, markdown, contact sheet, HTML) and add its
    section to `results.json` and `results.md` (written by the report just before)."""
    output = Path(output_dir)
    written = report.write(output / "leakage")
    results = output / "results.json"
    if results.is_file():
        document = json.loads(results.read_text(encoding="utf-8"))
        document["leakage"] = leakage_section(report, excluded=excluded)
        temporary = results.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(temporary, results)
    markdown = output / "results.md"
    if markdown.is_file():
        what = (
            "The leaked evaluation images were left out of every figure above (`--exclude-leaked`)."
            if excluded and report.found
            else "The leaked evaluation images are still in the figures above (`--exclude-leaked` drops them)."
            if report.found
            else ""
        )
        section = report.markdown(max_pairs=20, heading="##")
        section += f"\n{what}\n" if what else ""
        section += "\nThe full report: [leakage/leakage.md](leakage/leakage.md)"
        section += " (thumbnails: [leakage.html](leakage/leakage.html)).\n" if "html" in written else ".\n"
        with open(markdown, "a", encoding="utf-8") as handle:
            handle.write("\n" + section)
    return written


__all__ = [
    "DEFAULT_MIN_COSINE",
    "LEAKED",
    "check_evaluation_leakage",
    "cosine_pairs",
    "embedding_pairs",
    "leakage_section",
    "write_leakage",
]
