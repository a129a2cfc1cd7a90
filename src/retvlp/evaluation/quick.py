"""The evaluation run at the end of pretraining: zero-shot and linear-probe accuracy on a held-out split,
for the trained model and for the same architecture at its initial (random) weights.

A preset of the evaluation runner (`runner.evaluate_features`), not a separate implementation: the same
zero-shot and linear-probe code runs with a small fixed setting (`quick_settings`: the linear probe on 100 %
of the probe-train rows, one seed = the run's seed; zero-shot with the run's prompt templates; accuracy and
balanced accuracy only). Features are extracted once per (model, split) from the same cached uint8 store
training uses. The rows are the runner's `ResultRow`s; `evaluate_pretrained` returns them in the quick
check's per-model summary (`EvaluationResults.to_quick_summary`), which the trainer saves as
`eval_results.json`. `retvlp evaluate` runs the full protocols (AUCs, few-shot, label fractions,
fine-tuning) on a trained checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.loading import cache_records
from .data import ImageStore, LabelledRecords, normalization_of, read_labelled_records
from .features import ImageFeatures, extract_image_features
from .metrics import classification_metrics
from .results import EvaluationResults
from .runner import EvaluationSettings, LoadedModel, evaluate_features

ACCURACIES = ("accuracy", "balanced_accuracy")
QUICK_TASKS = ("linear-probe", "zero-shot")


def quick_settings(seed: int, *, show_progress: bool = False) -> EvaluationSettings:
    """The quick check's fixed setting of the runner: linear probe on all probe-train rows + zero-shot."""
    return EvaluationSettings(
        tasks=QUICK_TASKS,
        fractions=(1.0,),
        seeds=(int(seed),),
        save_models=False,
        show_progress=show_progress,
        # a check during pretraining: no patient bootstrap (seconds per row) and no calibration split
        bootstrap=0,
        calibration_fraction=0.0,
    )


def cached_labelled_records(specs, class_names, config, show_progress):
    """The single-label records of `specs`, their cached pixels at the run's geometry and checks, and the
    per-record `ok` mask: `(labelled, store over the ok records, ok)`."""

    labelled = read_labelled_records(specs, class_names, multi_label=False)
    cached = cache_records(labelled.records, config.data, show_progress)
    ok = np.asarray(cached.dataset["ok"], dtype=bool)
    return labelled, ImageStore(cached=cached, rows=np.flatnonzero(ok), ok=ok[ok]), ok


def _labelled_split(specs, class_names, config, show_progress):
    """The single-label records of `specs` (ok images only), their cached pixels and the exclusion counts."""
    labelled, store, ok = cached_labelled_records(specs, class_names, config, show_progress)
    excluded = labelled.excluded
    counts = {
        "unparseable_rows": excluded.get("unparseable_rows", 0),
        "not_single_known_label": sum(
            excluded.get(k, 0) for k in ("unlabelled", "unknown_label", "several_labels")
        ),
        "bad_images": int((~ok).sum()),
    }
    return store, labelled.targets[ok], labelled.groups[ok], counts


def zero_shot_accuracy(image_embeds, prototypes, labels) -> dict[str, float]:
    """Accuracy and balanced accuracy of the nearest prototype (cosine) for each image."""
    scores = image_embeds @ prototypes.T
    return classification_metrics(labels, np.eye(len(prototypes))[scores.argmax(axis=1)], names=ACCURACIES)


def quick_check(
    entries: list[tuple[LoadedModel, ImageFeatures, ImageFeatures]],
    class_names,
    train_y: np.ndarray,
    test_y: np.ndarray,
    *,
    seed: int,
    prompts: list[list[str]] | None = None,
    groups: tuple[np.ndarray, np.ndarray] | None = None,
    show_progress: bool = False,
) -> EvaluationResults:
    """The quick check on extracted features: `entries` are `(model, probe-train features, test features)`;
    the rows of each model in the order of `QUICK_TASKS` (zero-shot only for models with a text tower)."""
    train_groups, test_groups = (
        groups if groups is not None else (np.arange(len(train_y)), -1 - np.arange(len(test_y)))
    )
    labelled = LabelledRecords(
        records=[],
        class_names=list(class_names),
        targets=np.concatenate([np.asarray(train_y), np.asarray(test_y)]).astype(np.int64),
        groups=np.concatenate(
            [np.asarray(train_groups, dtype=object), np.asarray(test_groups, dtype=object)]
        ),
        multi_label=False,
        name="held-out-test",
    )
    pool, test = np.arange(len(train_y)), np.arange(len(train_y), len(train_y) + len(test_y))
    joined = [
        (entry, ImageFeatures(np.concatenate([train.probe, test.probe]), _joined_embeds(train, test)))
        for entry, train, test in entries
    ]
    settings = quick_settings(seed, show_progress=show_progress)
    return evaluate_features(joined, labelled, pool, test, settings, prompts=prompts, metrics=ACCURACIES)


def _joined_embeds(train: ImageFeatures, test: ImageFeatures) -> np.ndarray | None:
    if test.embeds is None:
        return None
    if train.embeds is None:  # cannot happen for one model; keep the test rows aligned anyway
        return np.concatenate(
            [np.zeros((len(train.probe), test.embeds.shape[1]), test.embeds.dtype), test.embeds]
        )
    return np.concatenate([train.embeds, test.embeds])


def evaluate_pretrained(
    model, processor, specs, config, class_names, show_progress=True, prompts_for=None
) -> dict:
    """Zero-shot + linear probe of `model` and of a freshly initialised copy (seeded like the run's start).

    `prompts_for(class_name)` gives a class's zero-shot prompts (default: the family section's
    `prompt_templates`, e.g. `maskedclip.prompt_templates`, filled with the name)."""
    if prompts_for is None:
        templates = getattr(config.family_settings, "prompt_templates", None)
        if not templates:
            raise ValueError(
                f"model.family={config.model.family} has no prompt_templates setting: pass prompts_for= "
                "(a class name → its zero-shot prompts)."
            )

        def prompts_for(name):
            return [template.format(name) for template in templates]

    mean, std = normalization_of(processor.image_processor)
    train_store, train_y, train_groups, train_excluded = _labelled_split(
        specs["probe_train"], class_names, config, show_progress
    )
    test_store, test_y, test_groups, test_excluded = _labelled_split(
        specs["test"], class_names, config, show_progress
    )

    torch.manual_seed(config.run.seed)
    parameter = next(model.parameters())
    initial = type(model)(model.config).to(parameter.device, parameter.dtype)
    entries = []
    for name, candidate in (("pretrained", model), ("random_init", initial)):
        train = extract_image_features(candidate, train_store, mean, std, show_progress=show_progress)
        test = extract_image_features(candidate, test_store, mean, std, show_progress=show_progress)
        tokenizer = processor.tokenizer if test.embeds is not None else None
        loaded = LoadedModel(
            name, candidate, processor.image_processor, tokenizer, processor.max_length, candidate
        )
        entries.append((loaded, train, test))
    document = quick_check(
        entries,
        class_names,
        train_y,
        test_y,
        seed=config.run.seed,
        prompts=[prompts_for(c) for c in class_names],
        groups=(train_groups, test_groups),
    )
    document.dataset.num_train, document.dataset.num_test = int(len(train_y)), int(len(test_y))
    document.extra.update(
        excluded={"probe_train": train_excluded, "test": test_excluded},
        chance_accuracy=float(np.bincount(test_y, minlength=len(class_names)).max() / len(test_y)),
    )
    return document.to_quick_summary()


def format_results_table(results: dict | EvaluationResults) -> str:
    """A small Markdown table of the numbers a user wants to see after the demo (`results`: what
    `evaluate_pretrained` returns, or its document)."""
    document = EvaluationResults.from_json(results, "quick check results")
    data, nan = document.dataset, float("nan")
    lines = [
        f"held-out test images: {data.num_test}  |  probe-train images: {data.num_train}  |  "
        f"classes: {len(data.classes)}  |  majority-class accuracy: {document.extra['chance_accuracy']:.3f}",
        "",
        "| encoder | zero-shot acc | zero-shot bal. acc | linear-probe acc | linear-probe bal. acc |",
        "|---|---|---|---|---|",
    ]
    for name in ("pretrained", "random_init"):
        rows = {row.task: row.metrics for row in document.rows if row.model == name}
        zs, lp = rows.get("zero-shot", {}), rows["linear-probe"]
        cells = [zs[m].mean if m in zs else nan for m in ACCURACIES] + [lp[m].mean for m in ACCURACIES]
        lines.append(f"| {name} | " + " | ".join(f"{value:.3f}" for value in cells) + " |")
    return "\n".join(lines)
