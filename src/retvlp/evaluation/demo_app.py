"""The page a clinician can try a model on (issue 27, item 6): upload a fundus photograph, see the class
probabilities, the conformal prediction set and the evidence map over the photograph.

Two kinds of model, told apart by their `config.json`:

- a **pretraining checkpoint** (a MaskedCLIP / KeepFIT dual encoder, e.g. `outputs/run/final`): zero-shot over
  the classes given (`classes=`, each scored by its prompt ensemble, `zero_shot.prompt_ensembles`); the
  probabilities are the zero-shot softmax. There is no calibration file, hence no conformal set, and the page
  says so. The evidence map is the family's (`evidence.evidence_maps`: patch-text similarity for MaskedCLIP,
  the spatial class map for KeepFIT) for the most probable class.
- a **fine-tuned classifier** (`finetuned/<run>/model` of `retvlp evaluate`): its own classes. With a
  `calibration.json` (`calibrated.py`) the scores are the calibrated ones and the set is the file's conformal
  set at the chosen coverage (APS, else LAC), exactly as `predict_calibrated` gives them; without the file, or
  without a set fitted at that coverage, the page shows the model's softmax and says why there is no set. The
  evidence map is `evidence.classifier_class_map` (each patch / position through the classification head).

The map is drawn over the photograph as the model saw it (after the image processor's crop and resize).

`load_page_model` loads once, `predict_for_page` answers one photograph and needs no Gradio (tests call it),
`build_demo` wraps both in a `gradio.Blocks` page (`retvlp demo` serves it), and `write_space_files` stages
the same page as a Hugging Face Space (`retvlp push --space-app`). Gradio is an optional extra
(`pip install "retvlp[demo]"`), imported only inside `build_demo`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .calibrated import CALIBRATION_FILE

DEMO_EXTRA = 'pip install "retvlp[demo]"'
DISPLAY_SIZE = 384  # the overlay's side on the page, in pixels (the model's view is upsampled to it)
HEAT_ALPHA = 0.45  # the evidence map's opacity over the photograph (as in `evidence.overlay_png`)


def require_gradio():
    """`gradio`, or an ImportError whose message is the one line naming the extra to install."""
    try:
        import gradio
    except ImportError:
        raise ImportError(f"the demo page needs Gradio, which is not installed: {DEMO_EXTRA}") from None
    return gradio


@dataclass
class PageModel:
    """What the page predicts with, loaded once (`load_page_model`)."""

    name: str
    kind: str  # "zero-shot" | "classifier"
    model: Any
    image_processor: Any
    class_names: list[str]
    prototypes: np.ndarray | None = None  # zero-shot: (C, P) class embeddings
    logit_scale: float = 100.0
    calibration: dict | None = None  # a classifier's calibration.json content
    coverage: float = 0.9
    method: str | None = None  # the conformal method used ("aps" / "lac"); None: no set
    notes: list[str] = field(default_factory=list)  # what the page says about the scores and the set

    @property
    def has_set(self) -> bool:
        return self.method is not None


@dataclass
class PagePrediction:
    """One photograph's answer: `probabilities` ({class: p}, summing to 1), `conformal_set` (classes in
    decreasing probability; None when the model has no conformal threshold), `overlay` ((S, S, 3) uint8: the
    evidence map of `map_class` over the photograph as the model saw it)."""

    probabilities: dict[str, float]
    conformal_set: list[str] | None
    overlay: np.ndarray
    map_class: str

    def as_tuple(self) -> tuple[dict[str, float], list[str] | None, np.ndarray]:
        return self.probabilities, self.conformal_set, self.overlay


def _is_classifier(config: dict) -> bool:
    return any(str(a).endswith("ForImageClassification") for a in config.get("architectures") or [])


def _read_config(model_path: str | Path) -> dict | None:
    path = Path(model_path) / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _choose_conformal(content: dict, coverage: float) -> tuple[str | None, str]:
    """The conformal method to use at `coverage` (APS, else LAC), or None with the reason there is none."""
    fitted = {(e.get("method"), round(float(e.get("coverage", -1)), 9)) for e in content.get("conformal", [])}
    for method in ("aps", "lac"):
        if (method, round(float(coverage), 9)) in fitted:
            return method, ""
    reasons = [
        reason for key, reason in (content.get("not_fitted") or {}).items() if key.startswith("conformal.")
    ]
    available = ", ".join(f"{m}@{c:g}" for m, c in sorted(fitted)) or "none"
    why = f"{CALIBRATION_FILE} has no conformal set at coverage {coverage:g} (fitted: {available})"
    if reasons:
        why += "; not fitted: " + "; ".join(sorted(set(reasons)))
    return None, why


def load_page_model(
    model_path: str | Path,
    classes: list[str] | None = None,
    coverage: float = 0.9,
    *,
    trust_remote_code: bool = False,
    modality: str = "CFP",
    device: str | None = None,
    name: str | None = None,
) -> PageModel:
    """Load a pretraining checkpoint (zero-shot over `classes`) or a fine-tuned classifier (its own classes,
    calibrated where `calibration.json` exists) for the page, titled `name` (default: the folder or Hub id).
    Raises ValueError for a checkpoint without classes, FileNotFoundError for a path that holds no model."""
    from transformers import AutoImageProcessor

    from .conformal import _check_coverage

    coverage = _check_coverage(coverage)
    source = str(model_path)
    local = Path(source).expanduser().is_dir()
    if not local:
        from .runner import check_model_source  # what to do about a missing path / a run directory

        check_model_source(source)
    config = _read_config(source) if local else None
    if config is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code).to_dict()
    path = Path(source).expanduser().resolve()
    # A run's folders are named by role (finetuned/<run>/model, <run>/final): the run names the model.
    name = name or (
        (f"{path.parent.name}/{path.name}" if path.name in ("model", "final") else path.name)
        if local
        else source
    )
    if _is_classifier(config):
        from transformers import AutoModelForImageClassification

        if classes:
            raise ValueError(
                f"{source} is a fine-tuned classifier with its own classes "
                f"({', '.join(map(str, config.get('id2label', {}).values()))}): leave out --classes"
            )
        model = AutoModelForImageClassification.from_pretrained(source, trust_remote_code=trust_remote_code)
        processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        page = PageModel(name, "classifier", model, processor, labels, coverage=coverage)
        calibration_dir = Path(source) if local else _hub_calibration_dir(source)
        if calibration_dir is None or not (calibration_dir / CALIBRATION_FILE).is_file():
            page.notes.append(
                f"No {CALIBRATION_FILE}: the scores are the classifier's uncalibrated softmax, and there is no "
                "conformal set (`retvlp evaluate` saves one with a calibration split, --calibration-fraction > 0)."
            )
        else:
            from .calibrated import load_calibration

            content = load_calibration(calibration_dir)
            if content["class_names"] != labels:
                raise ValueError(
                    f"{source}: the model's classes {labels} differ from its calibration file's "
                    f"{content['class_names']}."
                )
            page.calibration = content
            page.method, why = _choose_conformal(content, coverage)
            page.notes.append(
                f"Calibrated scores (temperature {float(content['temperature']):.3g}, fitted on "
                f"{content['n_calibration']} held-out calibration images)."
            )
            if why:
                page.notes.append(f"No conformal set: {why}.")
    else:
        from transformers import AutoModel, AutoProcessor, AutoTokenizer

        from .features import class_prototypes, has_text_tower, logit_scale_of
        from .zero_shot import prompt_ensembles

        if not classes:
            raise ValueError(
                f"{source} is a pretraining checkpoint: name the classes to score, e.g. "
                '--classes "normal,diabetic retinopathy,glaucoma"'
            )
        model = AutoModel.from_pretrained(source, trust_remote_code=trust_remote_code)
        if not has_text_tower(getattr(model, "released_model", model)):
            raise ValueError(f"{source} has no text encoder: zero-shot scoring needs a dual encoder.")
        try:
            processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, TypeError):
            processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        tokenizer = getattr(processor, "tokenizer", None) or AutoTokenizer.from_pretrained(
            source, trust_remote_code=trust_remote_code
        )
        max_length = getattr(processor, "max_length", None) or min(
            getattr(tokenizer, "model_max_length", 77), 512
        )
        text_positions = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)
        max_length = int(min(max_length, text_positions or max_length))
        names = [str(c) for c in classes]
        model.eval()
        prototypes = class_prototypes(
            model, tokenizer, prompt_ensembles(names, modality=modality), max_length=max_length
        )
        page = PageModel(
            name,
            "zero-shot",
            model,
            getattr(processor, "image_processor", processor),
            names,
            prototypes=prototypes,
            logit_scale=logit_scale_of(model),
            coverage=coverage,
        )
        page.notes.append(
            "Zero-shot scores over the classes' prompt ensembles (a pretraining checkpoint: not calibrated). "
            f"No conformal set: a pretraining checkpoint has no {CALIBRATION_FILE}; a classifier fine-tuned by "
            "`retvlp evaluate` with a calibration split has one."
        )
    if device is not None:
        page.model.to(device)
    page.model.eval()
    return page


def _hub_calibration_dir(repo_id: str) -> Path | None:
    """The folder of a Hub repository's calibration.json in the local Hub cache (downloaded), or None when the
    repository has none or cannot be reached."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, CALIBRATION_FILE)).parent
    except Exception:  # no such file, offline, no access: the page then says there is no calibration file
        return None


def _load_image(image):
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image


def model_view(pixel_values, image_processor) -> np.ndarray:
    """The normalised `(1, 3, H, W)` model input back to the `(H, W, 3)` uint8 picture the model saw."""
    mean = np.asarray(getattr(image_processor, "image_mean", None) or [0.0, 0.0, 0.0], dtype=np.float32)
    std = np.asarray(getattr(image_processor, "image_std", None) or [1.0, 1.0, 1.0], dtype=np.float32)
    scale = float(getattr(image_processor, "rescale_factor", 1 / 255) or 1 / 255)
    pixels = pixel_values[0].detach().float().cpu().numpy().transpose(1, 2, 0)
    pixels = (pixels * std + mean) / scale
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def overlay_array(image_uint8: np.ndarray, heat, size: int = DISPLAY_SIZE) -> np.ndarray:
    """`(H, W, 3)` uint8 picture with the `(h, w)` map `heat` (min-max scaled, jet colours, opacity
    `HEAT_ALPHA`) over it, both upsampled (bilinear) to `(size, size, 3)` uint8."""
    import torch
    from matplotlib import colormaps
    from PIL import Image

    from .evidence import upsample_to_image

    heat = torch.as_tensor(np.asarray(heat, dtype=np.float32))
    heat = upsample_to_image(heat[None], (size, size))[0].numpy().astype(np.float64)
    span = heat.max() - heat.min()
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    picture = np.asarray(Image.fromarray(image_uint8).resize((size, size), Image.BILINEAR), dtype=np.float64)
    colours = colormaps["jet"](heat)[..., :3] * 255.0
    return np.clip(np.rint((1 - HEAT_ALPHA) * picture + HEAT_ALPHA * colours), 0, 255).astype(np.uint8)


def predict_for_page(page: PageModel, image) -> PagePrediction:
    """One photograph (a path, a PIL image or an `(H, W, 3)` uint8 array) → probabilities, conformal set and
    the evidence-map overlay (`PagePrediction`; `.as_tuple()` gives the three). Needs no Gradio."""
    import torch

    from .evidence import classifier_class_map, evidence_maps

    picture = _load_image(image)
    device = next(page.model.parameters()).device
    pixel_values = page.image_processor(images=[picture], return_tensors="pt")["pixel_values"].to(device)
    conformal_set = None
    with torch.no_grad():
        if page.kind == "classifier":
            logits = page.model(pixel_values=pixel_values).logits
            raw = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            if page.calibration is not None:
                from .calibrated import calibrated_prediction

                if page.has_set:
                    prediction = calibrated_prediction(
                        raw, page.calibration, coverage=page.coverage, method=page.method
                    )
                    probabilities = prediction.probabilities[0]
                    conformal_set = prediction.sets[0]
                else:
                    probabilities = _scaled(raw, page.calibration, page.class_names)
            else:
                probabilities = dict(zip(page.class_names, map(float, raw[0]), strict=True))
            maps = classifier_class_map(page.model, pixel_values)
        else:
            from .features import encode_images
            from .zero_shot import zero_shot_probabilities

            _, embeds = encode_images(page.model, pixel_values)
            raw = zero_shot_probabilities(embeds.float().cpu().numpy(), page.prototypes, page.logit_scale)
            probabilities = dict(zip(page.class_names, map(float, raw[0]), strict=True))
            maps = evidence_maps(page.model, pixel_values, page.prototypes)
    top = max(probabilities, key=probabilities.get)
    heat = maps[0, page.class_names.index(top)].float().cpu().numpy()
    overlay = overlay_array(model_view(pixel_values, page.image_processor), heat)
    return PagePrediction(probabilities, conformal_set, overlay, top)


def _scaled(raw: np.ndarray, content: dict, names: list[str]) -> dict[str, float]:
    """Calibrated probabilities of one image when the file has no conformal set to go with them."""
    from .calibration import apply_temperature

    if content.get("temperature_in_weights"):
        scaled = raw
    else:
        scaled = apply_temperature(raw, float(content["temperature"]), inputs="probabilities")
    return dict(zip(names, map(float, scaled[0]), strict=True))


def set_markdown(page: PageModel, prediction: PagePrediction) -> str:
    """The page's text about one prediction: the conformal set (or why there is none) and the notes."""
    lines = []
    if prediction.conformal_set is not None:
        shown = ", ".join(f"**{name}**" for name in prediction.conformal_set) or "(empty)"
        lines.append(
            f"**{page.coverage:.0%} conformal set ({page.method.upper()}):** {shown}  \n"
            f"Over patients like the calibration ones, sets built this way contain the true class at least "
            f"{page.coverage:.0%} of the time; it is not a promise about this one photograph."
        )
    else:
        lines.append("**Conformal set:** none for this model.")
    lines.append(f"**Evidence map:** where the model's evidence for *{prediction.map_class}* lies.")
    lines.extend(page.notes)
    return "\n\n".join(lines)


def header_markdown(page: PageModel) -> str:
    what = (
        f"zero-shot over {len(page.class_names)} classes"
        if page.kind == "zero-shot"
        else f"fine-tuned classifier, {len(page.class_names)} classes"
    )
    return (
        f"# {page.name}\n{what}: {', '.join(page.class_names)}.  \n"
        "Upload a colour fundus photograph. A research model, not a diagnostic device."
    )


def build_demo(
    model_path: str | Path,
    classes: list[str] | None = None,
    coverage: float = 0.9,
    *,
    trust_remote_code: bool = False,
    page: PageModel | None = None,
    name: str | None = None,
):
    """The `gradio.Blocks` page of `model_path` (or of an already loaded `page`): an image input, a Predict
    button (API name `/predict`), the class probabilities (`gr.Label`), the conformal set with what it promises
    (`gr.Markdown`) and the evidence-map overlay (`gr.Image`)."""
    gr = require_gradio()
    page = page or load_page_model(
        model_path, classes, coverage, trust_remote_code=trust_remote_code, name=name
    )

    def predict(image):
        if image is None:
            raise gr.Error("Upload a fundus photograph first.")
        prediction = predict_for_page(page, image)
        return prediction.probabilities, set_markdown(page, prediction), prediction.overlay

    with gr.Blocks(title=f"retvlp: {page.name}", analytics_enabled=False) as demo:
        gr.Markdown(header_markdown(page))
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Fundus photograph", elem_id="photograph")
                button = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column():
                label = gr.Label(
                    num_top_classes=len(page.class_names),
                    label="Class probabilities",
                    elem_id="probabilities",
                )
                text = gr.Markdown(elem_id="conformal-set")
                overlay = gr.Image(type="numpy", label="Evidence map", elem_id="evidence", interactive=False)
        button.click(predict, inputs=image, outputs=[label, text, overlay], api_name="predict")
    return demo


# ------------------------------------------------------------------------------------------------- Space
SPACE_APP = '''"""A Gradio Space for this model repository, written by `retvlp push --space-app`: upload a fundus
photograph, see the class probabilities, the conformal prediction set and the evidence map. The model loads
from this folder with trust_remote_code=True (its modelling code is here); the page itself is retvlp's
(`retvlp.evaluation.demo_app`), installed from requirements.txt."""

from pathlib import Path

from retvlp.evaluation.demo_app import build_demo

NAME = {name!r}
CLASSES = {classes!r}  # zero-shot classes of a pretraining checkpoint; None: a classifier's own
COVERAGE = {coverage!r}

demo = build_demo(Path(__file__).resolve().parent, CLASSES, COVERAGE, trust_remote_code=True, name=NAME)

if __name__ == "__main__":
    demo.launch()
'''

SPACE_FRONT_MATTER = {
    "sdk": "gradio",
    "app_file": "app.py",
    "pinned": False,
}


def space_requirements(retvlp_requirement: str | None = None) -> str:
    """requirements.txt of the Space: retvlp with its demo extra (the page's code; it brings torch,
    transformers and Gradio), at this version unless `retvlp_requirement` (a pip requirement: a version, a
    wheel URL, `retvlp[demo] @ git+https://...`) says otherwise."""
    if retvlp_requirement is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            retvlp_requirement = f"retvlp[demo]=={version('retvlp')}"
        except PackageNotFoundError:
            retvlp_requirement = "retvlp[demo]"
    return retvlp_requirement + "\n"


def _gradio_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradio")
    except PackageNotFoundError:
        return None


def add_space_front_matter(readme: str, title: str) -> str:
    """The model card `readme` with the Space keys (`sdk: gradio`, `app_file: app.py`, the Gradio version
    here as `sdk_version` when installed, `title`) added to its YAML front matter (created when missing)."""
    import yaml

    body, meta = readme, {}
    if readme.startswith("---\n"):
        end = readme.find("\n---", 4)
        if end != -1:
            meta = yaml.safe_load(readme[4:end]) or {}
            body = readme[end + 4 :].lstrip("\n")
    meta = {"title": title[:30], **meta, **SPACE_FRONT_MATTER}
    gradio_version = _gradio_version()
    if gradio_version:
        meta["sdk_version"] = gradio_version
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def write_space_files(
    folder: str | Path,
    *,
    classes: list[str] | None = None,
    coverage: float = 0.9,
    retvlp_requirement: str | None = None,
    title: str | None = None,
) -> list[Path]:
    """Add `app.py`, `requirements.txt` and the Space front matter of README.md to a staged model folder, so
    that the folder, pushed as a Space, serves the page on its own files. A pretraining checkpoint needs
    `classes` (its zero-shot classes); a classifier refuses them. Returns the files written."""
    from .conformal import _check_coverage

    folder = Path(folder)
    config = _read_config(folder)
    if config is None:
        raise ValueError(f"{folder} has no config.json: a Space app needs the model in the folder")
    if (folder / "adapter_config.json").is_file():
        raise ValueError("a Space app needs a full model folder, not a LoRA adapter (merge it first)")
    classifier = _is_classifier(config)
    if classifier and classes:
        raise ValueError("a fine-tuned classifier's Space uses its own classes: leave out --classes")
    if not classifier and not classes:
        raise ValueError(
            "a pretraining checkpoint's Space scores zero-shot classes: name them (--classes A,B,...)"
        )
    names = [str(c) for c in classes] if classes else None
    app = folder / "app.py"
    title = title or folder.name
    app.write_text(
        SPACE_APP.format(name=title, classes=names, coverage=_check_coverage(coverage)), encoding="utf-8"
    )
    requirements = folder / "requirements.txt"
    requirements.write_text(space_requirements(retvlp_requirement), encoding="utf-8")
    readme = folder / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    readme.write_text(add_space_front_matter(text, title), encoding="utf-8")
    return [app, requirements, readme]


__all__ = [
    "DEMO_EXTRA",
    "PageModel",
    "PagePrediction",
    "build_demo",
    "load_page_model",
    "predict_for_page",
    "require_gradio",
    "write_space_files",
]
