"""A fine-tuned classifier's calibration file, and predictions that use it: calibrated probabilities, conformal
prediction sets and screening calls for one image or a batch.

`retvlp evaluate` calibrates every fine-tuned classifier or LoRA adapter it saves on the calibration patients of
that run (held out of training and of the test set): the temperature T (fitted by NLL) is folded into the saved
classification head (weight and bias divided by T: the logits become logits / T, the predicted class is
unchanged), so that `AutoModelForImageClassification` and the `image-classification` pipeline return calibrated
probabilities; and `calibration.json` records it with the conformal and screening thresholds, fitted on those
calibrated probabilities (what the saved model outputs):

    {"format": "retvlp-calibration", "version": 1, "class_names": [...], "n_calibration": 48,
     "temperature": 1.7, "temperature_in_weights": true,
     "conformal": [ConformalPredictor.to_json(), ...],   # one per method × coverage
     "operating_points": {"<class>": {"spec=0.9": threshold, "sens=0.9": ..., "youden": ...}}}

(The report's own trust figures are computed on the protocol's probabilities before any scaling; `trust.py`.)

    from retvlp.evaluation.calibrated import predict_calibrated
    prediction = predict_calibrated("runs/eval/finetuned/maskedclip-finetune-fraction1-seed0/model", "eye.png")
    prediction.probabilities[0]   # calibrated, {class: p}
    prediction.sets[0]            # the 90 % APS set, e.g. ["moderate NPDR", "severe NPDR"]
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import apply_temperature, fit_temperature
from .conformal import ConformalPredictor, min_calibration_size
from .operating_points import threshold_at_sensitivity, threshold_at_specificity, youden_threshold

CALIBRATION_FILE = "calibration.json"
FORMAT = "retvlp-calibration"
VERSION = 1


def fit_calibration(
    probabilities: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    *,
    coverage: Sequence[float] = (0.9,),
    methods: Sequence[str] = ("lac", "aps"),
    operating_points: dict | None = None,
    temperature_in_weights: bool = False,
) -> dict[str, Any]:
    """The calibration file's content from a classifier's probabilities `(N, C)` on calibration images with
    class ids `targets (N,)`: the temperature, then the conformal and screening thresholds on the probabilities
    the model will output — scaled by T when `temperature_in_weights` (the caller folds T into the saved head,
    `fold_temperature`), as given otherwise. Coverages the split is too small for are named under `not_fitted`."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    targets = np.asarray(targets, dtype=np.int64)
    names = [str(name) for name in class_names]
    temperature = fit_temperature(probabilities, targets, inputs="probabilities")
    if temperature_in_weights:
        probabilities = apply_temperature(probabilities, temperature, inputs="probabilities")
        probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    content: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "class_names": names,
        "n_calibration": int(len(targets)),
        "temperature": temperature,
        "temperature_in_weights": bool(temperature_in_weights),
        "conformal": [],
        "operating_points": {},
        "not_fitted": {},
    }
    for method in methods:
        for level in coverage:
            if len(targets) < min_calibration_size(level):
                content["not_fitted"][f"conformal.{method}@{level:g}"] = (
                    f"{len(targets)} calibration images; coverage {level:g} needs {min_calibration_size(level)}"
                )
                continue
            predictor = ConformalPredictor.fit(probabilities, targets, level, method, class_names=names)
            content["conformal"].append(predictor.to_json())
    targets_of = operating_points or {"spec": (0.9, 0.95), "sens": (0.9,)}
    classes = [1] if len(names) == 2 else range(len(names))
    for k in classes:
        positives = targets == k
        chosen: dict[str, float] = {}
        for key, levels in targets_of.items():
            choose = threshold_at_specificity if key == "spec" else threshold_at_sensitivity
            for level in levels:
                try:
                    chosen[f"{key}={level:g}"] = choose(probabilities[:, k], positives, level)
                except ValueError as error:
                    content["not_fitted"][f"operating_points.{names[k]}.{key}={level:g}"] = str(error)
        try:
            chosen["youden"] = youden_threshold(probabilities[:, k], positives)
        except ValueError as error:
            content["not_fitted"][f"operating_points.{names[k]}.youden"] = str(error)
        content["operating_points"][names[k]] = chosen
    if not content["not_fitted"]:
        del content["not_fitted"]
    return content


_HEAD = ("classifier.weight", "classifier.bias")


def fold_temperature(directory: str | Path, temperature: float) -> Path:
    """Divide the saved classification head (`classifier.weight` / `classifier.bias`: a fine-tuned classifier's
    `model.safetensors`, or a LoRA adapter's `adapter_model.safetensors`, which holds the trained head) by
    `temperature`, in place and atomically; returns the file. softmax of the new logits = softmax(logits / T)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    directory = Path(directory)
    files = [directory / name for name in ("model.safetensors", "adapter_model.safetensors")]
    path = next((f for f in files if f.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{directory} holds neither model.safetensors nor adapter_model.safetensors.")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    head = [
        key
        for key in tensors
        if key == _HEAD[0] or key == _HEAD[1] or key.endswith(("." + _HEAD[0], "." + _HEAD[1]))
    ]
    if len(head) != 2:
        raise ValueError(f"{path}: expected one classifier weight and bias, found {head or 'none'}.")
    for key in head:
        tensors[key] = (tensors[key].double() / float(temperature)).to(tensors[key].dtype)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    os.close(handle)
    save_file(tensors, staging, metadata=metadata)
    os.replace(staging, path)
    return path


def save_calibration(directory: str | Path, content: dict[str, Any]) -> Path:
    """Write `content` (from `fit_calibration`) as `directory/calibration.json`, atomically."""
    path = Path(directory) / CALIBRATION_FILE
    handle, staging = tempfile.mkstemp(prefix=f".{CALIBRATION_FILE}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(content, stream, indent=1, default=float)
    os.replace(staging, path)
    return path


def load_calibration(directory: str | Path) -> dict[str, Any]:
    """The calibration file of a saved classifier folder; a clear error when it is missing or not ours."""
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: only classifiers saved by `retvlp evaluate` with a calibration split "
            "(--calibration-fraction > 0) have one."
        )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}); re-run the evaluation to rewrite it."
        ) from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ValueError(f'{path} is not a retvlp calibration file (no "format": "{FORMAT}").')
    if int(content.get("version", 0)) > VERSION:
        raise ValueError(
            f"{path} has version {content['version']}; this retvlp reads up to {VERSION}: upgrade."
        )
    return content


@dataclass
class CalibratedPrediction:
    """Per image: `probabilities` ({class: p}, temperature-scaled), `raw_probabilities` (the model's softmax; the
    same when the temperature is in the saved weights),
    `sets` (the conformal set at `coverage` with `method`, classes in decreasing probability) and `flags`
    ({class: {operating point: called positive}}: score >= the threshold fitted on the calibration patients)."""

    probabilities: list[dict[str, float]]
    raw_probabilities: list[dict[str, float]]
    sets: list[list[str]]
    flags: list[dict[str, dict[str, bool]]]
    coverage: float
    method: str
    temperature: float


def calibrated_prediction(
    raw: np.ndarray, content: dict[str, Any], *, coverage: float | None = None, method: str = "aps"
) -> CalibratedPrediction:
    """`CalibratedPrediction` of softmax probabilities `raw (N, C)` under a calibration file's `content`."""
    raw = np.asarray(raw, dtype=np.float64)
    names = content["class_names"]
    if raw.ndim != 2 or raw.shape[1] != len(names):
        raise ValueError(
            f"probabilities of shape {raw.shape} for a calibration file of {len(names)} classes."
        )
    predictors = [ConformalPredictor.from_json(entry) for entry in content.get("conformal", [])]
    matching = [
        p
        for p in predictors
        if p.method == method and (coverage is None or abs(p.coverage - coverage) < 1e-9)
    ]
    if not matching:
        available = ", ".join(f"{p.method}@{p.coverage:g}" for p in predictors) or "none"
        raise ValueError(
            f"the calibration file has no {method} set at coverage {coverage if coverage is not None else 'any'}; "
            f"available: {available}."
        )
    predictor = matching[0]
    membership = predictor.predict_sets(raw)
    if content.get("temperature_in_weights"):  # the model's softmax is already calibrated
        scaled = raw
    else:
        scaled = apply_temperature(raw, float(content["temperature"]), inputs="probabilities")
    sets, flags = [], []
    for i in range(len(raw)):
        order = np.argsort(-raw[i], kind="stable")
        sets.append([names[k] for k in order if membership[i, k]])
        flags.append(
            {
                name: {label: bool(raw[i, names.index(name)] >= t) for label, t in points.items()}
                for name, points in content.get("operating_points", {}).items()
            }
        )
    return CalibratedPrediction(
        probabilities=[dict(zip(names, map(float, row), strict=True)) for row in scaled],
        raw_probabilities=[dict(zip(names, map(float, row), strict=True)) for row in raw],
        sets=sets,
        flags=flags,
        coverage=predictor.coverage,
        method=predictor.method,
        temperature=float(content["temperature"]),
    )


def predict_calibrated(
    model_dir: str | Path,
    images,
    *,
    coverage: float | None = None,
    method: str = "aps",
    trust_remote_code=False,
) -> CalibratedPrediction:
    """Load a saved classifier (a `model/` folder; for a LoRA `adapter/` folder pass the merged model) and its
    calibration file, and predict `images` (paths, PIL images or arrays; one or a list)."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    content = load_calibration(model_dir)
    model = AutoModelForImageClassification.from_pretrained(
        model_dir, trust_remote_code=trust_remote_code
    ).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    images = images if isinstance(images, (list, tuple)) else [images]
    loaded = [
        Image.open(image).convert("RGB") if isinstance(image, (str, Path)) else image for image in images
    ]
    with torch.no_grad():
        logits = model(**processor(images=loaded, return_tensors="pt")).logits
    raw = torch.softmax(logits.float(), dim=-1).numpy()
    labels = [model.config.id2label[i] for i in range(raw.shape[1])]
    if labels != content["class_names"]:
        raise ValueError(
            f"{model_dir}: the model's classes {labels} differ from its calibration file's {content['class_names']}."
        )
    return calibrated_prediction(raw, content, coverage=coverage, method=method)


__all__ = [
    "CALIBRATION_FILE",
    "CalibratedPrediction",
    "calibrated_prediction",
    "fit_calibration",
    "fold_temperature",
    "load_calibration",
    "predict_calibrated",
    "save_calibration",
]
