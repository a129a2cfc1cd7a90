"""The evaluation run at the end of pretraining: zero-shot and linear-probe accuracy on a held-out split,
for the trained model and for the same architecture at its initial (random) weights.

Features are extracted once per (model, split) under `torch.inference_mode`, batch by batch from the same
cached uint8 store training uses (no augmentation). The linear probe is scikit-learn's multinomial logistic
regression (L2, C = 0.316 as in METHODS.md §3, class-balanced) on standardised, mean-pooled patch tokens of
E_I, fitted on the probe-train split and scored on the test split; zero-shot scores each test image against
class prototypes (the mean text embedding of the class's prompts).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..data.cache import read_pixels

logger = logging.getLogger(__name__)


def _labelled_split(specs, class_names, config, show_progress):
    from ..training.data import augment_and_normalize, cache_records, read_training_manifests

    manifests = read_training_manifests(specs)
    every = [r for m in manifests for r in m.records]
    records = [r for r in every if len(r.labels) == 1 and r.labels[0] in class_names]
    if not records:
        raise ValueError(f"No records with one known class label in evaluation split {specs}.")
    cache = cache_records(records, config.data, show_progress)
    ok = np.flatnonzero(np.asarray(cache.dataset["ok"]))
    labels = np.asarray([class_names.index(records[i].labels[0]) for i in ok])
    excluded = {
        "unparseable_rows": sum(len(m.problems) for m in manifests),
        "not_single_known_label": len(every) - len(records),
        "bad_images": len(records) - len(ok),
    }
    if any(excluded.values()):
        logger.warning("Evaluation split %s: left out %s (single-label evaluation)", specs, excluded)

    def batches(mean, std, batch_size=64):
        mean, std = torch.tensor(mean).expand(3).float(), torch.tensor(std).expand(3).float()
        for start in range(0, len(ok), batch_size):
            pixels = read_pixels(cache.dataset, ok[start : start + batch_size])
            yield augment_and_normalize(pixels, None, None, mean, std)

    return batches, labels, excluded


def _probe_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Frozen image-encoder features for the linear probe: MaskedCLIP's mean-pooled E_I patch tokens, or the
    pooled last feature map of a convolutional encoder (KeepFIT's ResNet)."""
    if getattr(model.config, "model_type", None) == "keepfit":
        return model.get_image_features(pixel_values).last_hidden_state.mean(dim=(2, 3))
    return model.vision_model(pixel_values)[0][:, 1:].mean(dim=1)


@torch.inference_mode()
def image_representations(model, batches) -> tuple[np.ndarray, np.ndarray | None]:
    """(frozen encoder features for the probe, normalised CLIP image embeddings or None) for every image."""
    model.eval()
    pooled, embedded = [], []
    has_clip = getattr(model.config, "use_clip", True)
    for pixel_values in batches:
        pooled.append(_probe_features(model, pixel_values).float())
        if has_clip:
            embedded.append(
                torch.nn.functional.normalize(model.get_image_features(pixel_values).pooler_output, dim=-1)
            )
    clip = torch.cat(embedded).numpy() if embedded else None
    return torch.cat(pooled).numpy(), clip


@torch.inference_mode()
def class_prototypes(model, tokenizer, class_names, prompts_for, max_length) -> np.ndarray:
    """`(num_classes, dim)` normalised mean embeddings of each class's prompts (`prompts_for(name)`)."""
    prototypes = []
    for name in class_names:
        prompts = prompts_for(name)
        inputs = tokenizer(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        embeds = torch.nn.functional.normalize(model.get_text_features(**inputs).pooler_output, dim=-1)
        prototypes.append(torch.nn.functional.normalize(embeds.mean(dim=0), dim=-1))
    return torch.stack(prototypes).numpy()


def linear_probe_accuracy(train_x, train_y, test_x, test_y, seed: int = 0) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=0.316, max_iter=2000, class_weight="balanced", random_state=seed),
    )
    probe.fit(train_x, train_y)
    predicted = probe.predict(test_x)
    return {
        "accuracy": float(accuracy_score(test_y, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(test_y, predicted)),
    }


def zero_shot_accuracy(image_embeds, prototypes, labels) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    predicted = (image_embeds @ prototypes.T).argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
    }


def evaluate_pretrained(
    model, processor, specs, config, class_names, show_progress=True, prompts_for=None
) -> dict:
    """Zero-shot + linear probe of `model` and of a freshly initialised copy (seeded like the run's start).

    `prompts_for(class_name)` gives a class's zero-shot prompts (default: `data.prompt_templates` filled with
    the name)."""
    from ..training.data import image_normalization

    mean, std = image_normalization(processor.image_processor)
    if prompts_for is None:

        def prompts_for(name):
            return [template.format(name) for template in config.data.prompt_templates]

    train_batches, train_y, train_excluded = _labelled_split(
        specs["probe_train"], class_names, config, show_progress
    )
    test_batches, test_y, test_excluded = _labelled_split(specs["test"], class_names, config, show_progress)

    torch.manual_seed(config.run.seed)
    initial = type(model)(model.config)
    results = {
        "classes": list(class_names),
        "num_probe_train": int(len(train_y)),
        "num_test": int(len(test_y)),
        "excluded": {"probe_train": train_excluded, "test": test_excluded},
    }
    results["chance_accuracy"] = float(np.bincount(test_y, minlength=len(class_names)).max() / len(test_y))
    for name, candidate in (("pretrained", model), ("random_init", initial)):
        train_pooled, _ = image_representations(candidate, train_batches(mean, std))
        test_pooled, test_clip = image_representations(candidate, test_batches(mean, std))
        entry = {
            "linear_probe": linear_probe_accuracy(train_pooled, train_y, test_pooled, test_y, config.run.seed)
        }
        if test_clip is not None:
            prototypes = class_prototypes(
                candidate,
                processor.tokenizer,
                class_names,
                prompts_for,
                processor.max_length,
            )
            entry["zero_shot"] = zero_shot_accuracy(test_clip, prototypes, test_y)
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
