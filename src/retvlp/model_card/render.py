"""Rendering cards: the template files of ``retvlp/model_cards/`` (family cards ``maskedclip.md`` /
``keepfit.md``, ``classifier.md``, ``adapter.md`` and their shared sections ``_training.md``,
``_evaluation.md``, ``_classifier_intended_use.md``; citations ``<family>.bib``) filled with the metadata of
`metadata.py` and the facts of `architecture.py` / `training.py`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from .architecture import card_parts, fmt
from .inputs import (
    _adapter_num_labels,
    _artifact_name,
    _class_names,
    _default_model_name,
    _family_of,
    _load_optional,
    _read_config,
    _read_folder,
    _read_json,
    _read_yaml,
    card_families,
    card_family,
    find_run_config,
    is_hub_id,
    saved_preprocessing,
    template_path,
    template_text,
)
from .metadata import (
    adapter_card_data,
    artifact_evaluation,
    build_eval_results,
    checkpoint_card_data,
    classifier_card_data,
    evaluation_context,
)
from .training import _finetune_items, _training_items, _uses_synthetic

# Lines of the templates between these markers form the intended-use / limitations section, which the adapter
# card reuses from its base family's template.
SECTION_START = "<!-- retvlp:intended-use:start -->"
SECTION_END = "<!-- retvlp:intended-use:end -->"

_DEFAULT_CLASSES = ["diabetic retinopathy", "glaucoma", "normal"]
_ADAPTER_SETTINGS = (
    ("peft_type", "PEFT method"),
    ("r", "rank r"),
    ("lora_alpha", "lora_alpha"),
    ("lora_dropout", "lora_dropout"),
    ("target_modules", "target modules"),
    ("modules_to_save", "modules trained in full"),
    ("bias", "bias"),
    ("use_dora", "DoRA"),
    ("use_rslora", "rsLoRA"),
    ("peft_version", "peft version"),
)


def _citation(family: str) -> str:
    return template_text(card_parts(family).citation)


def _provenance(data_provenance: str | None, synthetic: bool) -> str | None:
    if data_provenance is None and synthetic:
        return template_text("_synthetic_provenance.md")
    return data_provenance


def _common_context(
    family: str,
    *,
    model_name: str,
    repo_id: str | None,
    data_provenance: str | None,
    synthetic: bool,
    license: str,
) -> dict:
    return {
        "family": family,
        "family_title": card_family(family).title,
        "model_name": model_name,
        "repo_id": repo_id,
        "load_path": repo_id or "path/to/checkpoint",
        "data_provenance": _provenance(data_provenance, synthetic),
        "synthetic_data": synthetic,
        "license": license,
        "citation": _citation(family),
    }


def _render(text: str, context: Mapping) -> str:
    import jinja2

    return jinja2.Template(text).render(**context).strip()


# ------------------------------------------------------------------------------------------- family cards
def render_model_card(
    checkpoint_dir: str | Path,
    *,
    evaluation: Mapping | str | Path | None = None,
    training_summary: Mapping | str | Path | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    dataset_name: str | None = None,
    data_provenance: str | None = None,
    license: str = "apache-2.0",
    base_model: str | Sequence[str] | None = None,
    evaluated_model: str = "pretrained",
    synthetic_data: bool | None = None,
    template: str | Path | None = None,
    run_config: Mapping | str | Path | None = None,
) -> ModelCard:
    """Render the model card of a saved MaskedCLIP or KeepFIT checkpoint.

    Args:
        checkpoint_dir: a `save_pretrained` folder; its `config.json` `model_type` picks the template.
        evaluation: results (dict or JSON path, `retvlp.evaluation.results` layout, or the pretraining quick
            check's summary); default `<checkpoint_dir>/eval_results.json` when it exists; `{}` for none.
        training_summary: dict or JSON path; default `<checkpoint_dir>/training_summary.json` when it exists.
        repo_id: Hub id used in the usage snippets and as the default model name.
        model_name: name in `model-index` (default: the repo name, else the run directory's name).
        dataset_name: readable evaluation dataset name (the dataset block's `name` stays the dataset type).
        data_provenance: the training data the uploader declares (free text, shown under limitations).
        license, base_model: card metadata.
        evaluated_model: the `model` value of the result rows that describe this checkpoint; other rows are
            baselines, shown only in the Markdown table.
        synthetic_data: whether the run trained on the synthetic demo data; default: detected from the
            training summary or the run's `run_config.yaml` next to the checkpoint.
        template: a custom Jinja template path instead of the packaged one.
        run_config: the run's settings (dict or YAML path); default: `run_config.yaml` in the checkpoint
            folder or, for `final/` and `checkpoint-*` folders, in the run directory above it.
    """
    checkpoint_dir = Path(checkpoint_dir)
    config = _read_config(checkpoint_dir)
    family = config["model_type"]
    summary = _load_optional(training_summary, checkpoint_dir / "training_summary.json", "training summary")
    results = _load_optional(evaluation, checkpoint_dir / "eval_results.json", "evaluation results")
    if run_config is None:
        run_config = find_run_config(checkpoint_dir)
    elif not isinstance(run_config, Mapping):
        run_config = _read_yaml(Path(run_config))
    synthetic = _uses_synthetic(summary, run_config) if synthetic_data is None else bool(synthetic_data)
    name = model_name or _default_model_name(checkpoint_dir, repo_id)
    eval_results = (
        build_eval_results(results, evaluated_model=evaluated_model, dataset_name=dataset_name)
        if results
        else []
    )
    evaluation_data = evaluation_context(results, evaluated_model, dataset_name) if results else None
    classes = (evaluation_data or {}).get("classes") or (summary or {}).get("classes") or _DEFAULT_CLASSES
    card_data = checkpoint_card_data(
        family, name=name, license=license, base_model=base_model, eval_results=eval_results
    )
    context = _common_context(
        family,
        model_name=name,
        repo_id=repo_id,
        data_provenance=data_provenance,
        synthetic=synthetic,
        license=license,
    )
    context.update(
        architecture=card_parts(family).architecture(config),
        preprocessing=saved_preprocessing(checkpoint_dir),
        has_processor=(checkpoint_dir / "processor_config.json").is_file(),
        training_items=_training_items(summary, run_config),
        has_training_summary=bool(summary),
        evaluation=evaluation_data,
        num_eval_results=len(eval_results),
        example_labels=list(classes)[:3],
        prompt_template=card_parts(family).prompt,
        base_model=base_model,
        transformers_version=config.get("transformers_version"),
        # the class the weights were saved from: the released model, or a pretraining model pushed as it is
        model_class=(config.get("architectures") or [card_family(family).model.rpartition(":")[2]])[0],
    )
    path = Path(template) if template is not None else template_path(family)
    return ModelCard.from_template(card_data, template_path=str(path), **context)


def _intended_use_section(family: str, context: Mapping) -> str:
    """The intended-use / limitations section of a family template, rendered on its own."""
    text = template_path(family).read_text(encoding="utf-8")
    start, end = text.find(SECTION_START), text.find(SECTION_END)
    if start < 0 or end < 0:
        raise ValueError(f"template {family}.md lacks the {SECTION_START} ... {SECTION_END} markers")
    return _render(text[start + len(SECTION_START) : end], context)


def _finetuned_intended_use(family: str | None, context: Mapping) -> str:
    """The family template's limitations, after an intended-use section that fits a task-specific classifier."""
    intended = _render(template_text("_classifier_intended_use.md"), context)
    if family is None:
        return intended
    section = _intended_use_section(family, context)
    start = section.find("## Limitations and biases")
    return f"{intended}\n\n{section[start:]}" if start >= 0 else intended


# ------------------------------------------------------------------------------- fine-tuned classifiers, adapters
def _finetuned_evaluation(
    folder: Path,
    evaluation: Mapping | str | Path | None,
    summary: Mapping | None,
    *,
    task: str,
    evaluated_model: str,
    dataset_name: str | None,
) -> tuple[list, dict | None]:
    if (summary or {}).get("role") == "lora-base":
        return [], None  # an untrained head: no results are about it
    results = _load_optional(evaluation, folder / "eval_results.json", "evaluation results")
    if results:
        results = artifact_evaluation(
            results,
            task=task,
            fraction=(summary or {}).get("fraction"),
            seed=(summary or {}).get("seed"),
            evaluated_model=evaluated_model,
        )
    if not results:
        return [], None
    eval_results = build_eval_results(results, evaluated_model=evaluated_model, dataset_name=dataset_name)
    return eval_results, evaluation_context(results, evaluated_model, dataset_name)


def _calibration(folder: Path) -> dict | None:
    """What the card says about `calibration.json` (written by `retvlp evaluate`), or None without one."""
    path = folder / "calibration.json"
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(content, Mapping) or content.get("format") != "retvlp-calibration":
        return None
    targets = {label for points in (content.get("operating_points") or {}).values() for label in points}
    return {
        "n_calibration": content.get("n_calibration"),
        "temperature": f"{float(content.get('temperature', 1.0)):.3f}",
        "in_weights": bool(content.get("temperature_in_weights")),
        "conformal": [
            f"{entry.get('method', '?').upper()} at {float(entry.get('coverage', 0)):g}"
            for entry in content.get("conformal") or []
        ],
        "targets": sorted(targets),
    }


def render_classifier_card(
    folder: str | Path,
    *,
    evaluation: Mapping | str | Path | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    dataset_name: str | None = None,
    data_provenance: str | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
    evaluated_model: str | None = None,
    synthetic_data: bool | None = None,
) -> ModelCard:
    """The card of a fine-tuned image classifier folder (`save_pretrained` + image processor).

    Reads `config.json` (class names, family), `training_summary.json` (how it was trained, which result row it
    is) and `eval_results.json` (its own test results), or `evaluation` (the results of `retvlp evaluate`: only
    this artifact's row, at its seed when the row has per-seed values, and the other models' rows of the same
    protocol and label fraction, as baselines). `base_model` overrides the
    summary's (e.g. the Hub id of a local base); only a Hub id goes into the metadata. `evaluated_model`
    defaults to the summary's result-row name, else ``"pretrained"``.
    """
    folder = Path(folder)
    config, summary = _read_folder(folder)
    summary = summary or {}
    family = _family_of(config.get("model_type"))
    evaluated_model = evaluated_model or summary.get("model") or "pretrained"
    base_model = base_model or summary.get("base_model")
    eval_results, evaluation_data = _finetuned_evaluation(
        folder,
        evaluation,
        summary,
        task="finetune",
        evaluated_model=evaluated_model,
        dataset_name=dataset_name,
    )
    name = model_name or _artifact_name(folder, repo_id)
    hub_base = base_model if is_hub_id(base_model) else None
    card_data = classifier_card_data(
        family, name=name, license=license, hub_base=hub_base, eval_results=eval_results
    )
    synthetic = bool(synthetic_data if synthetic_data is not None else _uses_synthetic(summary, None))
    context = {
        "family": family,
        "family_title": card_family(family).title if family else str(config.get("model_type")),
        "model_name": name,
        "model_class": (config.get("architectures") or ["AutoModelForImageClassification"])[0],
        "load_path": repo_id or "path/to/classifier",
        "base_model": base_model,
        "random_init": summary.get("init") == "random",
        "classes": _class_names(config) or ["(no class names saved)"],
        "multi_label": config.get("problem_type") == "multi_label_classification",
        "remote_code": "AutoModelForImageClassification" in (config.get("auto_map") or {}),
        "preprocessing": saved_preprocessing(folder),
        "training_items": _finetune_items(summary),
        "evaluation": evaluation_data,
        "seed": summary.get("seed") if evaluation_data else None,
        "calibration": _calibration(folder),
        "data_provenance": data_provenance or (_provenance(None, True) if synthetic else None),
        "synthetic_data": synthetic,
        "citation": _citation(family) if family else None,
    }
    context["intended_use"] = _finetuned_intended_use(family, context)
    return ModelCard.from_template(card_data, template_str=template_text("classifier.md"), **context)


# The family an adapter card is written for when neither the call, the saved config nor the adapter's base
# class names one. Named here: the card families come in the name order of their modules, so the first of them
# is an accident of naming.
_ADAPTER_DEFAULT_FAMILY = "maskedclip"


def _adapter_family(adapter_config: Mapping, config: Mapping | None, family: str | None) -> str:
    if family is not None:
        if family not in card_families():
            raise ValueError(f"unknown family {family!r}; supported: {', '.join(card_families())}")
        return family
    if config and _family_of(config.get("model_type")):
        return _family_of(config.get("model_type"))
    mapping = adapter_config.get("auto_mapping") or {}
    where = f"{mapping.get('parent_library', '')} {mapping.get('base_model_class', '')}".lower()
    # A family named in the adapter's base class; MaskedCLIP otherwise.
    fallback = _ADAPTER_DEFAULT_FAMILY if _ADAPTER_DEFAULT_FAMILY in card_families() else card_families()[0]
    return next((name for name in card_families() if name in where), fallback)


def _adapter_settings(adapter_config: Mapping) -> list[tuple[str, str]]:
    settings = []
    for key, label in _ADAPTER_SETTINGS:
        value: Any = adapter_config.get(key)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(f"`{item}`" for item in sorted(map(str, value)))
        elif key == "peft_type":
            value = "LoRA" if value == "LORA" else value
        settings.append((label, fmt(value)))
    return settings


def _read_adapter(adapter_dir: Path, base_model: str | None) -> tuple[dict, str, dict | None, dict]:
    """`(adapter_config, base_model, classifier config or None, training summary)` of an adapter folder."""
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json: not a PEFT adapter folder")
    adapter_config = _read_json(config_path)
    base_model = base_model or adapter_config.get("base_model_name_or_path")
    if not base_model:
        raise ValueError(
            f"no base model for the adapter in {adapter_dir}: pass base_model= (the base checkpoint's Hub id)"
        )
    config = _read_json(adapter_dir / "config.json") if (adapter_dir / "config.json").is_file() else None
    summary = _load_optional(None, adapter_dir / "training_summary.json", "training summary") or {}
    return adapter_config, base_model, config, summary


def render_adapter_card(
    adapter_dir: str | Path,
    *,
    base_model: str | None = None,
    evaluation: Mapping | str | Path | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    dataset_name: str | None = None,
    data_provenance: str | None = None,
    license: str = "apache-2.0",
    evaluated_model: str | None = None,
    synthetic_data: bool | None = None,
    family: str | None = None,
) -> ModelCard:
    """A card for a PEFT (LoRA) adapter folder (`adapter_config.json` + `adapter_model.safetensors`, and for
    adapters saved by retvlp the classifier's `config.json`, image processor and `training_summary.json`).

    `base_model` is the Hub id of the base checkpoint (default: the adapter config's
    `base_model_name_or_path`; only a Hub id goes into the metadata). The family (intended use, citation) comes
    from `family`, the saved config's `model_type` or the adapter config's `auto_mapping`. The evaluation is the
    adapter's own (see :func:`render_classifier_card`): its LoRA row, never the other protocols' rows.
    """
    adapter_dir = Path(adapter_dir)
    adapter_config, base_model, config, summary = _read_adapter(adapter_dir, base_model)
    family = _adapter_family(adapter_config, config, family)
    evaluated_model = evaluated_model or summary.get("model") or "pretrained"
    eval_results, evaluation_data = _finetuned_evaluation(
        adapter_dir,
        evaluation,
        summary,
        task="lora",
        evaluated_model=evaluated_model,
        dataset_name=dataset_name,
    )
    name = model_name or _artifact_name(adapter_dir, repo_id)
    base_class = (adapter_config.get("auto_mapping") or {}).get("base_model_class") or (
        (config or {}).get("architectures") or [card_family(family).classifier.rpartition(":")[2]]
    )[0]
    peft_type = str(adapter_config.get("peft_type", "LORA"))
    classification = base_class.endswith("ForImageClassification")
    card_data = adapter_card_data(
        family,
        name=name,
        license=license,
        hub_base=base_model if is_hub_id(base_model) else None,
        peft_type=peft_type,
        classification=classification,
        eval_results=eval_results,
    )
    synthetic = bool(synthetic_data if synthetic_data is not None else _uses_synthetic(summary, None))
    context = _common_context(
        family,
        model_name=name,
        repo_id=repo_id,
        data_provenance=data_provenance,
        synthetic=synthetic,
        license=license,
    )
    context.update(
        load_path=repo_id or "path/to/adapter",
        base_model=base_model,
        base_class=base_class,
        peft_type="LoRA" if peft_type == "LORA" else peft_type,
        modules_to_save=list(adapter_config.get("modules_to_save") or []),
        settings=_adapter_settings(adapter_config),
        classes=_class_names(config) if config else [],
        num_labels=_adapter_num_labels(adapter_dir) if classification else None,
        training_items=[item for item in _finetune_items(summary) if item[0] != "Base model"],
        evaluation=evaluation_data,
        seed=summary.get("seed") if evaluation_data else None,
        calibration=_calibration(adapter_dir),
    )
    context["intended_use"] = (
        _finetuned_intended_use(family, context) if classification else _intended_use_section(family, context)
    )
    return ModelCard.from_template(card_data, template_str=template_text("adapter.md"), **context)


def render_finetuned_card(folder: str | Path, **kwargs) -> ModelCard:
    """The card of a fine-tuned artifact: :func:`render_adapter_card` for a PEFT adapter folder,
    :func:`render_classifier_card` for a classifier folder."""
    if (Path(folder) / "adapter_config.json").is_file():
        return render_adapter_card(folder, **kwargs)
    return render_classifier_card(folder, **kwargs)
