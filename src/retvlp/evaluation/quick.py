"""The evaluation run at the end of pretraining: zero-shot and linear-probe accuracy on a held-out split,
for the trained model and for the same architecture at its initial (random) weights.

A small front end to the evaluation suite's parts (`retvlp.evaluation.features`, `.linear_probe`, `.metrics`):
features are extracted once per (model, split) from the same cached uint8 store training uses; the linear
probe (class-balanced logistic regression, C = 0.316, METHODS.md §3) is fitted on the probe-train split and
scored on the test split; zero-shot takes each test image's nearest class prototype. `retvlp evaluate` runs the
full protocols (AUCs, few-shot, label fractions, fine-tuning) on a trained checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import ImageStore, normalization_of, read_labelled_records
from .features import class_prototypes, extract_image_features
from .linear_probe import linear_probe_probabilities
from .metrics import classification_metrics

ACCURACIES = ("accuracy", "balanced_accuracy")


def cached_labelled_records(specs, class_names, config, show_progress):
    """The single-label records of `specs`, their cached pixels at the run's geometry and checks, and the
    per-record `ok` mask: `(labelled, store over the ok records, ok)`."""
    from ..training.data import cache_records

    labelled = read_labelled_records(specs, class_names, multi_label=False)
    cached = cache_records(labelled.records, config.data, show_progress)
    ok = np.asarray(cached.dataset["ok"], dtype=bool)
    return labelled, ImageStore(cached=cached, rows=np.flatnonzero(ok), ok=ok[ok]), ok


def _labelled_split(specs, class_names, config, show_progress):
    """The single-label records of `specs` and their cached pixels at the run's geometry and checks."""
    labelled, store, ok = cached_labelled_records(specs, class_names, config, show_progress)
    excluded = labelled.excluded
    counts = {
        "unparseable_rows": excluded.get("unparseable_rows", 0),
        "not_single_known_label": sum(
            excluded.get(k, 0) for k in ("unlabelled", "unknown_label", "several_labels")
        ),
        "bad_images": int((~ok).sum()),
    }
    return store, labelled.targets[ok], counts


def zero_shot_accuracy(image_embeds, prototypes, labels) -> dict[str, float]:
    """Accuracy and balanced accuracy of the nearest prototype (cosine) for each image."""
    scores = image_embeds @ prototypes.T
    return classification_metrics(labels, np.eye(len(prototypes))[scores.argmax(axis=1)], names=ACCURACIES)


def evaluate_pretrained(
    model, processor, specs, config, class_names, show_progress=True, prompts_for=None
) -> dict:
    """Zero-shot + linear probe of `model` and of a freshly initialised copy (seeded like the run's start).

    `prompts_for(class_name)` gives a class's zero-shot prompts (default: `data.prompt_templates` filled with
    the name)."""
    if prompts_for is None:

        def prompts_for(name):
            return [template.format(name) for template in config.data.prompt_templates]

    mean, std = normalization_of(processor.image_processor)
    train_store, train_y, train_excluded = _labelled_split(
        specs["probe_train"], class_names, config, show_progress
    )
    test_store, test_y, test_excluded = _labelled_split(specs["test"], class_names, config, show_progress)

    torch.manual_seed(config.run.seed)
    parameter = next(model.parameters())
    initial = type(model)(model.config).to(parameter.device, parameter.dtype)
    results = {
        "classes": list(class_names),
        "num_probe_train": int(len(train_y)),
        "num_test": int(len(test_y)),
        "excluded": {"probe_train": train_excluded, "test": test_excluded},
    }
    results["chance_accuracy"] = float(np.bincount(test_y, minlength=len(class_names)).max() / len(test_y))
    for name, candidate in (("pretrained", model), ("random_init", initial)):
        train = extract_image_features(candidate, train_store, mean, std, show_progress=show_progress)
        test = extract_image_features(candidate, test_store, mean, std, show_progress=show_progress)
        probabilities = linear_probe_probabilities(
            train.probe, train_y, test.probe, len(class_names), seed=config.run.seed
        )
        entry = {"linear_probe": classification_metrics(test_y, probabilities, names=ACCURACIES)}
        if test.embeds is not None:
            prototypes = class_prototypes(
                candidate,
                processor.tokenizer,
                [prompts_for(c) for c in class_names],
                max_length=processor.max_length,
            )
            entry["zero_shot"] = zero_shot_accuracy(test.embeds, prototypes, test_y)
        results[name] = entry
    return results


def format_results_table(results: dict) -> str:
    """A small Markdown table of the numbers a user wants to see after the demo."""
    lines = [
        f"held-out test images: {results['num_test']}  |  probe-train images: {results['num_probe_train']}  |  "
        f"classes: {len(results['classes'])}  |  majority-class accuracy: {results['chance_accuracy']:.3f}",
        "",
        "| encoder | zero-shot acc | zero-shot bal. acc | linear-probe acc | linear-probe bal. acc |",
        "|---|---|---|---|---|",
    ]
    for name in ("pretrained", "random_init"):
        entry = results[name]
        zs = entry.get("zero_shot", {})
        lp = entry["linear_probe"]
        lines.append(
            f"| {name} | {zs.get('accuracy', float('nan')):.3f} | {zs.get('balanced_accuracy', float('nan')):.3f} | "
            f"{lp['accuracy']:.3f} | {lp['balanced_accuracy']:.3f} |"
        )
    return "\n".join(lines)
