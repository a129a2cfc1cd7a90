"""`retvlp export`: the towers of a released MaskedCLIP or KeepFIT checkpoint as standalone artifacts that run
without retvlp (and without transformers): a `torch.export` program (`.pt2`, needs torch only) or an ONNX graph
(`.onnx`, needs onnxruntime only), plus, for zero-shot classification, the class-prototype matrix of a class
list, so that the exported image tower alone classifies images.

The output folder (docs/export.md):

    image_encoder.pt2 | .onnx   pixel_values (batch, 3, S, S) float32, preprocessed → image_embeds (batch, P)
    text_encoder.pt2 | .onnx    input_ids, attention_mask (batch, sequence) int64 → text_embeds (batch, P)
    *.onnx.data                 an ONNX graph's weights (keep them next to the graph)
    tokenizer/                  the checkpoint's tokenizer (with the text tower or a class list)
    class_prototypes.npy        (C, P) float32, L2-normalised (with a class list)
    export.json                 what each file takes and gives, the preprocessing, classes and logit scale

Each tower is the model's own feature function: `get_image_features(pixel_values).pooler_output` and
`get_text_features(input_ids, attention_mask).pooler_output`, projected and not normalised (as the released
model returns them). The batch (and the text's sequence length) stay dynamic; the image size is the processor's.
After writing, each file is loaded back and run on inputs of another batch size (and sequence length); the
largest difference from the eager model goes into export.json.

This module imports no torch at import time (the CLI builds its options from it); the work happens inside
:func:`export_towers`.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("torch-export", "onnx")
TOWERS = ("image", "text")
EXPORT_JSON = "export.json"
PROTOTYPES_NAME = "class_prototypes.npy"
TOKENIZER_DIR = "tokenizer"
_SUFFIX = {"torch-export": ".pt2", "onnx": ".onnx"}
_FILE_STEM = {"image": "image_encoder", "text": "text_encoder"}
# What the image processor does before the tower, as export.json reports it (FundusImageProcessor's settings).
_PREPROCESSING_KEYS = (
    "resample",
    "crop_to_fov",
    "fov_threshold",
    "pad_to_square",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)
# Parameter prefixes of each tower in the released models: a checkpoint without them (a fine-tuned classifier
# loaded as the released model) would export freshly initialised weights.
_TOWER_PARAMETERS = {
    "image": ("vision_model.", "bridge.", "visual_projection."),
    "text": ("text_model.", "text_projection."),
}
# Tolerance of the load-back check: beyond it export.json says so and a warning is printed (float32 rounding of
# another kernel order stays far below).
_VERIFY_ATOL = 1e-4


class ExportError(ValueError):
    """What was asked cannot be exported (a bad tower or format, a checkpoint that is not a released retvlp dual
    encoder, a tower the checkpoint lacks); the message says why and what to do."""


class ExportDependencyError(ImportError):
    """The ONNX exporter's packages are not installed."""


@dataclass
class ExportResult:
    """Where the export went: `files` maps each tower (and "prototypes", "tokenizer", "manifest") to its path;
    `manifest` is what export.json holds."""

    directory: Path
    files: dict[str, Path] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- arguments and dependencies
def check_request(towers, format: str) -> tuple[str, ...]:
    """The towers to export, in order and without repeats; raises ExportError for an unknown tower or format."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}: choose from {', '.join(FORMATS)}.")
    towers = (towers,) if isinstance(towers, str) else tuple(towers)
    unknown = [tower for tower in towers if tower not in TOWERS]
    if unknown or not towers:
        raise ExportError(
            f"unknown tower {', '.join(map(repr, unknown)) or '(none given)'}: choose from {', '.join(TOWERS)}."
        )
    return tuple(dict.fromkeys(towers))


def require_onnx() -> None:
    """torch's ONNX exporter (`torch.onnx.export(..., dynamo=True)`) needs `onnx` and `onnxscript`."""
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportDependencyError(
            f"ONNX export needs {' and '.join(missing)}, which the core install leaves out: "
            'pip install "retvlp[export]" (onnx, onnxscript and onnxruntime), or export with '
            "--format torch-export (torch only)."
        )


# --------------------------------------------------------------------------- the checkpoint
@dataclass
class _Loaded:
    model: object  # the released model (MaskedCLIPModel / KeepFitModel), eval mode
    family: object  # its FamilySpec
    image_processor: object
    tokenizer: object | None
    max_length: int
    missing: list[str]  # parameters the checkpoint did not hold (initialised by the load)


def _config_dict(source: str) -> dict:
    """The checkpoint's config (a folder's config.json, or a Hub id's); ExportError when there is none."""
    path = Path(source).expanduser()
    if path.is_dir():
        file = path / "config.json"
        if not file.is_file():
            hint = (
                " (a training run's released model is in its final/ folder)"
                if (path / "final").is_dir()
                else ""
            )
            raise ExportError(f"{source} is not a model folder: it has no config.json{hint}.")
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot read {file}: {exc}") from None
    if path.exists():
        raise ExportError(f"{source} is a file; give the model folder (the one holding config.json).")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source).to_dict()
    except (OSError, ValueError) as exc:
        raise ExportError(f"no such model folder, and no Hub model {source!r} could be read: {exc}") from None


def _family_of(source: str, config: dict):
    """The family of a released dual-encoder checkpoint; ExportError for anything else."""
    from .families import family_of_model_type

    model_type = str(config.get("model_type", ""))
    family = family_of_model_type(model_type)
    classes = ", ".join(config.get("architectures") or []) or "unknown"
    if family is None or family.model is None or family.processor is None:
        raise ExportError(
            f"{source} is not a retvlp MaskedCLIP or KeepFIT checkpoint (model_type {model_type!r}, "
            f"architectures {classes}): retvlp export exports the towers of those dual encoders."
        )
    if model_type != family.model_types[0]:
        raise ExportError(
            f"{source} is a {family.title} vision-only checkpoint ({classes}): it has no CLIP image embedding nor "
            "text tower to export. Export the released model (a run's final/ folder)."
        )
    return family


def _max_length(processor, tokenizer, model) -> int:
    """The text length the processor pads / truncates to, at most the text tower's position table (as
    `retvlp evaluate` tokenises prompts)."""
    length = getattr(processor, "max_length", None) or min(getattr(tokenizer, "model_max_length", 77), 512)
    positions = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)
    return int(min(length, positions or length))


def load_checkpoint(source) -> _Loaded:
    """The released model of `source` (a MaskedCLIP / KeepFIT folder or Hub id; a pretraining checkpoint loads
    its released part) with its image processor and tokenizer."""
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor

    source = str(source)
    family = _family_of(source, _config_dict(source))
    model, info = AutoModel.from_pretrained(source, output_loading_info=True)
    model.eval()
    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, TypeError):
        try:
            processor = AutoImageProcessor.from_pretrained(source)
        except (OSError, ValueError, TypeError):
            raise ExportError(
                f"{source} holds no image processor (processor_config.json / preprocessor_config.json): export.json "
                "must state the preprocessing. Save the processor with the model (a run's final/ has it)."
            ) from None
    image_processor = getattr(processor, "image_processor", processor)
    tokenizer = getattr(processor, "tokenizer", None)
    return _Loaded(
        model=model,
        family=family,
        image_processor=image_processor,
        tokenizer=tokenizer,
        max_length=_max_length(processor, tokenizer, model) if tokenizer is not None else 0,
        missing=list(info.get("missing_keys", ())),
    )


def _check_tower(loaded: _Loaded, tower: str, source: str) -> None:
    """ExportError when the checkpoint cannot give `tower`: no CLIP branch / text tower, or its weights missing
    from the checkpoint (a fine-tuned classifier's folder)."""
    model = loaded.model
    name = type(model).__name__
    if not getattr(model, "has_text_tower", True):
        what = "text tower" if tower == "text" else "CLIP image embedding"
        raise ExportError(
            f"{source} has no {what}: its {name} was built without the CLIP branch (use_clip=False), an "
            "image-only model."
        )
    missing = [key for key in loaded.missing if key.startswith(_TOWER_PARAMETERS[tower])]
    if missing:
        architectures = ", ".join(getattr(model.config, "architectures", None) or []) or "another model"
        raise ExportError(
            f"{source} holds no weights of the {tower} tower (missing {len(missing)}, e.g. {missing[0]}): it is "
            f"a {architectures} checkpoint, not a released {loaded.family.title} model with a {tower} tower."
        )
    if tower == "text" and loaded.tokenizer is None:
        raise ExportError(
            f"{source} holds no tokenizer: the text tower is of no use without one. Save the processor with the "
            "model (a run's final/ has it)."
        )


# --------------------------------------------------------------------------- the towers
def _image_size(loaded: _Loaded) -> int:
    size = getattr(loaded.image_processor, "size", None)
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    if size is None:
        size = getattr(getattr(loaded.model.config, "vision_config", None), "image_size", 224)
    return int(size)


def _tower_module(model, tower: str):
    """The tower's feature function as a module: image `(batch, 3, S, S)` → `(batch, P)`; text `(batch, L)`
    ids and mask → `(batch, P)` (projected, not normalised)."""
    import torch

    class ImageEncoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output

    class TextEncoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            output = self.model.get_text_features(
                input_ids=input_ids, attention_mask=attention_mask, return_dict=True
            )
            return output.pooler_output

    return (ImageEncoder if tower == "image" else TextEncoder)(model).eval()


def _example_inputs(loaded: _Loaded, tower: str, batch: int, length: int, seed: int) -> tuple:
    """Inputs to trace (or check) the tower with. Text rows carry padding, so the traced graph keeps the
    attention mask (an all-ones mask could be specialised away)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    if tower == "image":
        size = _image_size(loaded)
        return (torch.randn(batch, 3, size, size, generator=generator),)
    vocab = int(loaded.model.config.text_config.vocab_size)
    input_ids = torch.randint(0, vocab, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        attention_mask[row, max(1, length - row) :] = 0
    return input_ids, attention_mask


def _dynamic_shapes(loaded: _Loaded, tower: str) -> dict:
    """The batch (and the text's sequence length, up to the position table) stay free; the image size is fixed."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=65536)
    if tower == "image":
        return {"pixel_values": {0: batch}}
    positions = int(getattr(loaded.model.config.text_config, "max_position_embeddings", 512))
    sequence = Dim("sequence", min=1, max=positions)
    return {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}}


def _trace_length(loaded: _Loaded) -> int:
    positions = int(getattr(loaded.model.config.text_config, "max_position_embeddings", 512))
    return max(2, min(8, positions))


def _export_torch(module, inputs: tuple, dynamic_shapes: dict, path: Path) -> None:
    import torch

    program = torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes)
    torch.export.save(program, str(path))


def _run_torch(path: Path, inputs: tuple):
    import torch

    return torch.export.load(str(path)).module()(*inputs)


def _export_onnx(module, inputs: tuple, dynamic_shapes: dict, path: Path, tower: str) -> None:
    """The tower as an ONNX graph (torch's dynamo exporter). Weights go to `<file>.data` next to the graph
    (the exporter's default, which keeps a model over protobuf's 2 GB limit exportable)."""
    import torch

    names = ["pixel_values"] if tower == "image" else ["input_ids", "attention_mask"]
    # The exporter logs a warning per torchvision operator it cannot register (torchvision is not a dependency,
    # and the towers use none of its operators).
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # The inputs share one name per dynamic dimension on purpose; the exporter warns that it merged them.
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used", category=UserWarning)
            torch.onnx.export(
                module,
                inputs,
                str(path),
                input_names=names,
                output_names=[f"{tower}_embeds"],
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                verbose=False,
            )
    finally:
        exporter_log.setLevel(level)


def _run_onnx(path: Path, inputs: tuple, tower: str):
    """The ONNX graph's output on `inputs` with onnxruntime; None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {name: tensor.numpy() for name, tensor in zip(names, inputs, strict=True)})[0]


def _export_tower(
    loaded: _Loaded, tower: str, format: str, directory: Path, verify: bool
) -> tuple[Path, dict]:
    """Write one tower and check it; return its path and its export.json entry."""
    import numpy as np
    import torch

    module = _tower_module(loaded.model, tower)
    length = _trace_length(loaded)
    inputs = _example_inputs(loaded, tower, batch=2, length=length, seed=0)
    path = directory / f"{_FILE_STEM[tower]}{_SUFFIX[format]}"
    shapes = _dynamic_shapes(loaded, tower)
    with torch.no_grad():
        if format == "torch-export":
            _export_torch(module, inputs, shapes, path)
        else:
            _export_onnx(module, inputs, shapes, path, tower)
    entry = {"file": path.name, **_signature(loaded, tower)}
    if path.with_name(path.name + ".data").exists():
        entry["weights_file"] = path.name + ".data"  # keep it next to the graph
    if verify:
        # Another batch size (and sequence length) than the trace's: the dynamic dimensions are checked too.
        check = _example_inputs(loaded, tower, batch=3, length=max(1, length - 1), seed=1)
        with torch.no_grad():
            expected = module(*check).numpy()
            got = _run_torch(path, check) if format == "torch-export" else _run_onnx(path, check, tower)
        if got is None:
            entry["check"] = "not run: onnxruntime is not installed"
        else:
            got = got.numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
            difference = float(np.abs(got - expected).max())
            entry["check"] = {"max_abs_difference": difference, "batch": 3}
            if difference > _VERIFY_ATOL:
                warnings.warn(
                    f"the exported {tower} tower differs from the model by up to {difference:.2e} (> "
                    f"{_VERIFY_ATOL:g}) on a check batch: inspect it before use.",
                    stacklevel=2,
                )
    return path, entry


def _signature(loaded: _Loaded, tower: str) -> dict:
    """What a tower file takes and gives, for export.json."""
    dim = int(loaded.model.config.projection_dim)
    output = {"shape": ["batch", dim], "dtype": "float32", "normalized": False}
    if tower == "image":
        size = _image_size(loaded)
        return {
            "inputs": {"pixel_values": {"shape": ["batch", 3, size, size], "dtype": "float32"}},
            "output": {"name": "image_embeds", **output},
        }
    positions = int(getattr(loaded.model.config.text_config, "max_position_embeddings", 512))
    text_input = {"shape": ["batch", "sequence"], "dtype": "int64", "max_sequence": positions}
    return {
        "inputs": {"input_ids": text_input, "attention_mask": dict(text_input)},
        "output": {"name": "text_embeds", **output},
        "tokenizer": TOKENIZER_DIR,
        "max_length": loaded.max_length,
    }


# --------------------------------------------------------------------------- zero-shot prototypes
def _prototypes(loaded: _Loaded, classes: list[str], modality: str, include_descriptions: bool):
    """`(C, P)` L2-normalised class prototypes (the prompts `retvlp evaluate`'s zero-shot uses) and the
    prompts of each class."""
    from .evaluation.features import class_prototypes
    from .evaluation.zero_shot import prompt_ensembles

    prompts = prompt_ensembles(classes, modality=modality, include_descriptions=include_descriptions)
    matrix = class_prototypes(loaded.model, loaded.tokenizer, prompts, max_length=loaded.max_length)
    return matrix.astype("float32"), prompts


def _preprocessing(loaded: _Loaded) -> dict:
    settings = loaded.image_processor.to_dict()
    chosen = {key: settings[key] for key in _PREPROCESSING_KEYS if key in settings}
    chosen["image_size"] = _image_size(loaded)
    if isinstance(chosen.get("resample"), int):  # a PIL filter code: name it for readers without PIL
        from PIL import Image

        chosen["resample_filter"] = Image.Resampling(chosen["resample"]).name.lower()
    chosen["layout"] = "RGB, channels first (batch, 3, S, S)"
    chosen["image_processor_class"] = type(loaded.image_processor).__name__
    return chosen


# --------------------------------------------------------------------------- the whole export
def export_towers(
    source,
    output_dir,
    *,
    towers=("image",),
    format: str = "torch-export",
    classes: list[str] | None = None,
    modality: str = "CFP",
    include_descriptions: bool = True,
    verify: bool = True,
) -> ExportResult:
    """Export `towers` of the checkpoint `source` to `output_dir` (created; files of the same names from an
    earlier export are replaced) in `format`, with, given `classes`, their zero-shot prototypes; see the module
    docstring.

    Raises:
        ExportError: an unknown tower or format, a source that is not a released MaskedCLIP / KeepFIT
            checkpoint, a tower it lacks.
        ExportDependencyError: `format="onnx"` without onnx / onnxscript.
    """
    towers = check_request(towers, format)
    if format == "onnx":
        require_onnx()
    if classes is not None and not classes:
        raise ExportError("the class list is empty.")
    source = str(source)
    loaded = load_checkpoint(source)
    for tower in towers:
        _check_tower(loaded, tower, source)
    if classes:
        _check_tower(loaded, "text", source)  # the prototypes are text embeddings
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    result = ExportResult(directory=directory)
    manifest = _manifest_head(loaded, source, format)
    for tower in towers:
        result.files[tower], manifest["towers"][tower] = _export_tower(
            loaded, tower, format, directory, verify
        )
    if "text" in towers or classes:
        result.files["tokenizer"] = directory / TOKENIZER_DIR
        loaded.tokenizer.save_pretrained(result.files["tokenizer"])
    if classes:
        result.files["prototypes"], manifest["zero_shot"] = _write_prototypes(
            loaded, classes, modality, include_descriptions, directory
        )
    result.files["manifest"] = directory / EXPORT_JSON
    result.files["manifest"].write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    result.manifest = manifest
    return result


def _version() -> str | None:
    """The installed retvlp's version (read from its metadata: the package root sits above this layer)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("retvlp")
    except PackageNotFoundError:
        return None


def _manifest_head(loaded: _Loaded, source: str, format: str) -> dict:
    import torch

    return {
        "format": format,
        "source": source,
        "family": loaded.family.name,
        "model_class": type(loaded.model).__name__,
        "model_type": loaded.model.config.model_type,
        "projection_dim": int(loaded.model.config.projection_dim),
        "retvlp_version": _version(),
        "torch_version": torch.__version__,
        "preprocessing": _preprocessing(loaded),
        "towers": {},
    }


def _write_prototypes(loaded, classes, modality, include_descriptions, directory: Path) -> tuple[Path, dict]:
    import numpy as np

    from .evaluation.features import logit_scale_of

    matrix, prompts = _prototypes(loaded, classes, modality, include_descriptions)
    path = directory / PROTOTYPES_NAME
    np.save(path, matrix)
    entry = {
        "classes": list(classes),
        "prototypes": path.name,
        "shape": list(matrix.shape),
        "logit_scale": logit_scale_of(loaded.model),
        "modality": modality,
        "include_descriptions": include_descriptions,
        "prompts_per_class": [len(p) for p in prompts],
        "usage": "probabilities = softmax(logit_scale * normalize(image_embeds) @ prototypes.T), normalize = "
        "L2 over the last axis; columns in the order of classes",
    }
    return path, entry


__all__ = [
    "EXPORT_JSON",
    "FORMATS",
    "PROTOTYPES_NAME",
    "TOWERS",
    "ExportDependencyError",
    "ExportError",
    "ExportResult",
    "check_request",
    "export_towers",
    "load_checkpoint",
    "require_onnx",
]
