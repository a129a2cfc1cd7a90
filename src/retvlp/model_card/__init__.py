"""Model cards for retvlp checkpoints: Hub metadata (including a `model-index` of evaluation results) and a
Markdown body rendered from the Jinja template files in ``retvlp/model_cards/``.

:func:`render_model_card` reads a checkpoint folder (``config.json``, and when present
``training_summary.json``, ``eval_results.json``, ``processor_config.json`` and the run's ``run_config.yaml``)
and returns a :class:`huggingface_hub.ModelCard`; :func:`render_classifier_card` and
:func:`render_adapter_card` do the same for a fine-tuned classifier and a PEFT LoRA adapter folder. Nothing here
touches the network.

Evaluation results are read through `retvlp.evaluation.results` (the layout `retvlp evaluate` writes, or the
quick check's per-model summary the pretraining loop saves). Rows of the evaluated model become ``EvalResult``
entries of the card metadata; rows of other models (``random_init``, ...) appear only as baselines in the
Markdown table; ``dataset.positive_class`` (binary tasks) is shown in the PR-AUC column header and stored in
that metric's ``args``; ``references`` (majority-class and chance levels) become reference rows of the table,
never ``model-index`` entries.

The package is split by meaning:

- `inputs`: reading checkpoint folders and the packaged template files;
- `architecture`: the card registry (`register_card`: template, citation, prompt, architecture rows) and the
  shared pieces of the architecture rows;
- `families`: one module per built-in family (`families/maskedclip.py`, ...), its architecture rows and its
  `register_card(...)` call, found by `architecture` on the first read of the registry;
- `training`: the training settings in words;
- `metadata`: what the card says about results (the `model-index` entries and the table data, built from
  `ResultRow`s) and the YAML header (`ModelCardData`);
- `render`: the templates filled in (`render_model_card`, `render_classifier_card`, `render_adapter_card`).
"""

from __future__ import annotations

from ..lazy import lazy_package

# name → module, imported on first use (`retvlp.lazy.lazy_package`)
_INPUTS = ("card_families", "find_run_config", "is_hub_id", "template_path", "template_text")
_METADATA = (
    "BASE_TAGS",
    "FINETUNE_TASKS",
    "METRIC_LABELS",
    "METRIC_ORDER",
    "TASK_LABELS",
    "TASK_ORDER",
    "build_eval_results",
    "metric_label",
    "protocol_key",
    "protocol_label",
)
_RENDER = (
    "SECTION_END",
    "SECTION_START",
    "render_adapter_card",
    "render_classifier_card",
    "render_finetuned_card",
    "render_model_card",
)
lazy_package(
    __name__,
    {
        "register_card": ".architecture",
        **dict.fromkeys(_INPUTS, ".inputs"),
        **dict.fromkeys(_METADATA, ".metadata"),
        **dict.fromkeys(_RENDER, ".render"),
    },
)

__all__ = [
    "BASE_TAGS",
    "FINETUNE_TASKS",
    "METRIC_LABELS",
    "METRIC_ORDER",
    "SECTION_END",
    "SECTION_START",
    "card_families",
    "TASK_LABELS",
    "TASK_ORDER",
    "build_eval_results",
    "find_run_config",
    "is_hub_id",
    "metric_label",
    "protocol_key",
    "protocol_label",
    "register_card",
    "render_adapter_card",
    "render_classifier_card",
    "render_finetuned_card",
    "render_model_card",
    "template_path",
    "template_text",
]
