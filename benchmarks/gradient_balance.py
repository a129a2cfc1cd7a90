"""Where MaskedCLIP's image tower gets its gradient, and what its embeddings separate (issue 23's diagnosis).

On real photographs (TVHL's four-class task, the folder `real_data_learning.py --one-acquisition` wrote), for a
row's run at initialisation (the run's own config, seeded, its text tower from the text-MLM stage exactly as
pretraining starts) and at its last checkpoint:

1. **Gradient balance in the shared ViT E_I.** On class-balanced batches (8 paired photographs per class with
   their captions + 32 unpaired images, fixed masks), the gradient of each weighted term of Eq. 6 — L_mim,
   λ_clip·L_lg_clip, λ_mfd·L_mfd — with respect to E_I's parameters: its norm, the cosine between terms, and
   the cosine of the summed gradient (what AdamW follows) with each term.
2. **What each stage of the image path separates.** For 32 training photographs per class (fewer where a class
   has fewer), at E_I's [CLS] token, E_I's patch mean, the bridge's [CLS] and patch mean, and the projected
   CLIP embedding: the mean pairwise cosine (what the collapse guard reads) and the class separation
   trace(S_between) / trace(S_within) of the L2-normalised features (classes weighted equally). The same for
   the captions (padding-masked token mean, then projected); and the image stages again on the held-out patients'
   photographs (the test split), which is what zero-shot is measured on.

    python benchmarks/gradient_balance.py --out outputs/issue23_one_acq --rows maskedclip clip_only --seed 0

Prints one table per row; `--json PATH` writes the figures. Real data only: not part of the test suite.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tvhl_manifests import MULTICLASS_CLASSES  # noqa: E402


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# Preprocessed photographs by (image-processor settings, path): every row and state reads the same photographs.
_PIXELS: dict[tuple[str, str], torch.Tensor] = {}


def load_images(processor, paths: list[str]) -> torch.Tensor:
    """`(len(paths), 3, H, W)` pixel values, each photograph decoded and preprocessed once per run of the script."""
    from PIL import Image

    settings = processor.image_processor.to_json_string()
    missing = [path for path in dict.fromkeys(paths) if (settings, path) not in _PIXELS]
    if missing:
        images = []
        for path in missing:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        _PIXELS.update({(settings, path): tensor for path, tensor in zip(missing, pixels, strict=True)})
    return torch.stack([_PIXELS[settings, path] for path in paths])


def tokenize(processor, texts: list[str], max_length: int) -> dict:
    encoded = processor.tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {key: encoded[key] for key in ("input_ids", "attention_mask")}


def balanced_batches(paired: list[dict], unpaired: list[dict], count: int, seed: int) -> list[dict]:
    """`count` batches of 8 paired rows per class (drawn with replacement where a class has fewer) + 32 unpaired."""
    rng = random.Random(seed)
    by_class = {name: [r for r in paired if r["label"] == name] for name in MULTICLASS_CLASSES}
    batches = []
    for _ in range(count):
        rows = [rng.choice(by_class[name]) for name in MULTICLASS_CLASSES for _ in range(8)]
        batches.append({"paired": rows, "unpaired": rng.sample(unpaired, 32)})
    return batches


def flat_grad(term: torch.Tensor, parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, parameters, strict=True)
        ]
    )


def gradient_balance(model, processor, batches: list[dict], max_length: int, seed: int) -> dict:
    """Mean over batches of each weighted term's E_I-gradient norm and the cosines (see the module docstring)."""
    config = model.config
    weights = {"mim": 1.0, "clip": config.lambda_clip, "mfd": config.lambda_mfd}
    parameters = [p for p in model.maskedclip.vision_model.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    model.train()
    for index, batch in enumerate(batches):
        paired = load_images(processor, [r["image"] for r in batch["paired"]])
        unpaired = load_images(processor, [r["image"] for r in batch["unpaired"]])
        text = tokenize(processor, [r["text"] for r in batch["paired"]], max_length)
        labels = torch.tensor([MULTICLASS_CLASSES.index(r["label"]) for r in batch["paired"]])
        generator = torch.Generator().manual_seed(seed * 1000 + index)
        noise = torch.rand(
            paired.shape[0] + unpaired.shape[0], config.vision_config.num_patches, generator=generator
        )
        out = model(pixel_values=paired, unpaired_pixel_values=unpaired, labels=labels, noise=noise, **text)
        grads = {}
        for name in ("mim", "clip", "mfd"):
            term = getattr(out, f"loss_{name}")
            if term is not None:
                grads[name] = flat_grad(weights[name] * term, parameters)
                sums[f"loss_{name}"] = sums.get(f"loss_{name}", 0.0) + term.item()
        total = sum(grads.values())
        figures = {f"norm_{name}": float(g.norm()) for name, g in grads.items()}
        figures["norm_total"] = float(total.norm())
        names = list(grads)
        for i, a in enumerate(names):
            figures[f"cos_total_{a}"] = float(F.cosine_similarity(total, grads[a], dim=0))
            for b in names[i + 1 :]:
                figures[f"cos_{a}_{b}"] = float(F.cosine_similarity(grads[a], grads[b], dim=0))
        for key, value in figures.items():
            sums[key] = sums.get(key, 0.0) + value
        model.zero_grad(set_to_none=True)
    return {key: value / len(batches) for key, value in sums.items()}


def separation(features: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean pairwise cosine of `features` `(n, d)` and trace(S_b) / trace(S_w) of their L2-normalised rows,
    each class weighted equally."""
    unit = F.normalize(features.double(), dim=-1)
    n = unit.shape[0]
    gram = unit @ unit.T
    mean_cosine = float((gram.sum() - n) / (n * (n - 1)))
    classes = labels.unique()
    means = torch.stack([unit[labels == c].mean(0) for c in classes])
    grand = means.mean(0)
    between = float(((means - grand) ** 2).sum(1).mean())
    within = float(
        torch.stack(
            [((unit[labels == c] - m) ** 2).sum(1).mean() for c, m in zip(classes, means, strict=True)]
        ).mean()
    )
    return {"mean_cosine": mean_cosine, "separation": between / within if within > 0 else math.inf}


@torch.no_grad()
def geometry(model, processor, rows: list[dict], max_length: int, with_text: bool = True) -> dict:
    """`separation` at each stage of the image path, and with `with_text` of the text path, on `rows` (image,
    label and, with `with_text`, text)."""
    model.eval()
    released = model.maskedclip
    config = model.config
    labels = torch.tensor([MULTICLASS_CLASSES.index(r["label"]) for r in rows])
    tokens_e, tokens_b, projected_image, text_pooled, text_projected = [], [], [], [], []
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        pixels = load_images(processor, [r["image"] for r in chunk])
        encoded = released.vision_model(pixels).last_hidden_state
        bridged = released.bridge(encoded) if released.bridge is not None else encoded
        tokens_e.append(encoded)
        tokens_b.append(bridged)
        if config.use_clip:
            projected_image.append(released.get_image_features(pixels).pooler_output)
        if config.use_clip and with_text:
            text = tokenize(processor, [r["text"] for r in chunk], max_length)
            text_pooled.append(
                released._text_outputs(
                    **text,
                    token_type_ids=None,
                    position_ids=None,
                    output_hidden_states=False,
                    output_attentions=False,
                ).pooler_output
            )
            text_projected.append(released.get_text_features(**text).pooler_output)
    encoded, bridged = torch.cat(tokens_e), torch.cat(tokens_b)
    stages = {
        "E_I [CLS]": encoded[:, 0],
        "E_I patch mean": encoded[:, 1:].mean(1),
        "bridge [CLS]": bridged[:, 0],
        "bridge patch mean": bridged[:, 1:].mean(1),
    }
    if config.use_clip:
        stages[f"image embedding ({config.clip_image_pooling}, projected)"] = torch.cat(projected_image)
    if config.use_clip and with_text:
        stages["text pooled (before projection)"] = torch.cat(text_pooled)
        stages["text embedding (projected)"] = torch.cat(text_projected)
    if released.bridge is None or not config.use_clip:  # no bridge, or one no loss trains (MAE-only)
        stages = {k: v for k, v in stages.items() if not k.startswith("bridge")}
    return {name: separation(features, labels) for name, features in stages.items()}


def build_states(run: Path, seed: int):
    """(name, model) at initialisation (as pretraining builds it: the text tower the run started from, its
    `model.text_pretrained`) and at the run's last checkpoint."""
    import yaml
    from safetensors.torch import load_file

    from retvlp.maskedclip import MaskedCLIPConfig, MaskedCLIPForPreTraining

    config = MaskedCLIPConfig.from_pretrained(run / "final")
    run_config = yaml.safe_load((run / "run_config.yaml").read_text())
    text = run_config["model"].get("text_pretrained") if config.use_clip else None
    torch.manual_seed(seed)
    yield "init", MaskedCLIPForPreTraining.from_vision_text_pretrained(None, text, config=config)
    checkpoints = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if checkpoints:
        model = MaskedCLIPForPreTraining(config)
        missing, unexpected = model.load_state_dict(
            load_file(checkpoints[-1] / "model.safetensors"), strict=False
        )
        if unexpected or [k for k in missing if not k.startswith("momentum")]:
            raise RuntimeError(f"{checkpoints[-1]}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        yield f"step {checkpoints[-1].name.split('-')[1]}", model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/issue23_one_acq"))
    parser.add_argument("--rows", nargs="+", default=["maskedclip"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from retvlp.maskedclip import MaskedCLIPProcessor

    paired = read_rows(args.out / "manifests" / "paired.csv")
    unpaired = read_rows(args.out / "manifests" / "unpaired.csv")
    batches = balanced_batches(paired, unpaired, args.batches, args.seed)
    rng = random.Random(args.seed)
    probe_rows = []
    for name in MULTICLASS_CLASSES:
        members = [r for r in paired if r["label"] == name]
        probe_rows += rng.sample(members, min(32, len(members)))
    held_out = read_rows(args.out / "manifests" / "test.csv")
    results = {}
    for row in args.rows:
        run = args.out / "runs" / f"{row}_seed{args.seed}"
        processor = MaskedCLIPProcessor.from_pretrained(run / "final")
        max_length = processor.max_length
        for state, model in build_states(run, args.seed):
            key = f"{row} / {state}"
            results[key] = {"gradients": gradient_balance(model, processor, batches, max_length, args.seed)}
            results[key]["geometry"] = geometry(model, processor, probe_rows, max_length)
            results[key]["geometry_held_out"] = geometry(
                model, processor, held_out, max_length, with_text=False
            )
            print(f"\n## {key}")
            grads = results[key]["gradients"]
            print(
                "  E_I gradient norms: "
                + ", ".join(
                    f"{name} {grads[f'norm_{name}']:.4g}"
                    for name in ("mim", "clip", "mfd", "total")
                    if f"norm_{name}" in grads
                )
            )
            print(
                "  cosines: "
                + ", ".join(f"{k[4:]} {v:+.3f}" for k, v in grads.items() if k.startswith("cos_"))
            )
            print(
                "  losses: "
                + ", ".join(f"{k[5:]} {v:.4f}" for k, v in grads.items() if k.startswith("loss_"))
            )
            for split in ("geometry", "geometry_held_out"):
                print(
                    f"  {'training photographs and captions' if split == 'geometry' else 'held-out photographs'}:"
                )
                for stage, figures in results[key][split].items():
                    print(
                        f"    {stage:40s} mean cosine {figures['mean_cosine']:.3f}   "
                        f"separation {figures['separation']:.3f}"
                    )

    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
