"""Short offline MaskedCLIP demo: pretrain a tiny model on synthetic fundus-like images, save, reload, classify.

Runs on 2 CPU cores in about a minute, never touches the network. It draws three classes of simple
procedural images (normal, glaucoma: enlarged pale cup, diabetic retinopathy: red dots and yellow spots),
writes captions from what was drawn, builds a WordPiece tokenizer from those captions, pretrains MaskedCLIP
with paired (image–caption) and unpaired (image-only) batches, prints every loss term, saves model and
processor with `save_pretrained`, reloads them with `AutoModel` / `AutoProcessor`, and runs the zero-shot
pipeline on held-out images.

    python training/demo_maskedclip.py [--steps 60] [--output-dir outputs/demo_maskedclip]

The full data layer and `accelerate launch training/pretrain.py` entry point replace this script later.
"""

import argparse
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoModel, AutoProcessor, pipeline  # noqa: E402

from retvlp import FundusImageProcessor, MaskedCLIPConfig, MaskedCLIPModel, MaskedCLIPProcessor  # noqa: E402
from retvlp.tokenization import build_wordpiece_tokenizer  # noqa: E402

CLASSES = ["normal", "glaucoma", "diabetic retinopathy"]
CAPTIONS = {
    "normal": ["a normal fundus with a healthy optic disc", "healthy retina without lesions"],
    "glaucoma": ["glaucoma with an enlarged optic cup", "large pale cup of the optic disc, glaucoma"],
    "diabetic retinopathy": [
        "diabetic retinopathy with haemorrhages and exudates",
        "red dots and yellow exudates",
    ],
}


def draw_fundus(label: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A crude fundus: dark background, orange disc with falloff, optic disc and cup, class findings."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2 + rng.normal(0, 1.5, 2)
    radius = np.hypot(x - centre[0], y - centre[1])
    field = radius < size * 0.46
    falloff = np.clip(1.1 - radius / (size * 0.55), 0, 1)
    image = np.zeros((size, size, 3), np.float32)
    image[..., 0] = (170 + rng.normal(0, 10)) * falloff
    image[..., 1] = (80 + rng.normal(0, 8)) * falloff
    image[..., 2] = (30 + rng.normal(0, 5)) * falloff
    disc = np.array([size * 0.68, size * 0.5]) + rng.normal(0, 1.5, 2)
    disc_r = size * 0.09
    d = np.hypot(x - disc[0], y - disc[1])
    image[d < disc_r] = [235, 190, 120]
    cup_ratio = 0.75 if CLASSES[label] == "glaucoma" else 0.35
    image[d < disc_r * cup_ratio] = [250, 235, 200]
    if CLASSES[label] == "diabetic retinopathy":
        for _ in range(rng.integers(6, 12)):
            cx, cy = rng.uniform(size * 0.2, size * 0.8, 2)
            colour = [120, 10, 10] if rng.random() < 0.6 else [240, 220, 80]
            image[np.hypot(x - cx, y - cy) < rng.uniform(1.0, 2.2)] = colour
    image[~field] = 0
    image += rng.normal(0, 4, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_split(count: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), count)
    images = [draw_fundus(int(label), rng) for label in labels]
    captions = [CAPTIONS[CLASSES[label]][rng.integers(0, 2)] for label in labels]
    return images, captions, torch.as_tensor(labels)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16, help="paired and unpaired images per step")
    parser.add_argument("--output-dir", default="outputs/demo_maskedclip")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    paired_images, paired_captions, paired_labels = make_split(192, seed=1)
    unpaired_images, _, _ = make_split(192, seed=2)
    test_images, _, test_labels = make_split(60, seed=3)

    tokenizer = build_wordpiece_tokenizer(
        [c for captions in CAPTIONS.values() for c in captions]
        + [f"a fundus photograph of {c}" for c in CLASSES],
        vocab_size=200,
    )
    processor = MaskedCLIPProcessor(FundusImageProcessor(size=64), tokenizer, max_length=32)
    config = MaskedCLIPConfig(
        vision_config=dict(
            hidden_size=96,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=192,
            image_size=64,
            patch_size=8,
            decoder_hidden_size=64,
            decoder_num_hidden_layers=2,
            decoder_num_attention_heads=4,
            decoder_intermediate_size=128,
        ),
        text_config=dict(
            model_type="bert",
            vocab_size=len(tokenizer),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
        ),
        bridge_num_hidden_layers=2,
        feature_decoder_hidden_size=64,
        feature_decoder_num_hidden_layers=2,
        feature_decoder_num_attention_heads=4,
        feature_decoder_intermediate_size=128,
        projection_dim=64,
        lambda_clip=1.0,
        lambda_mfd=0.1,  # paper: 0.01 each; a run of a few hundred steps needs a stronger CLIP signal
    )
    model = MaskedCLIPModel(config).train()
    print(
        f"MaskedCLIP demo: {sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f} M trainable "
        f"parameters, {args.steps} steps of {args.batch_size} paired + {args.batch_size} unpaired 64-px images"
    )

    pixels = processor.image_processor(paired_images)["pixel_values"]
    unpaired_pixels = processor.image_processor(unpaired_images)["pixel_values"]
    text = processor(text=paired_captions)  # padded to the longest caption, truncated at max_length=32
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=1e-3,
        weight_decay=0.05,
        betas=(0.9, 0.95),
        foreach=True,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / args.steps))
    )
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(1, args.steps + 1):
        paired = torch.randint(0, len(pixels), (args.batch_size,), generator=generator)
        unpaired = torch.randint(0, len(unpaired_pixels), (args.batch_size,), generator=generator)
        out = model(
            pixel_values=pixels[paired],
            input_ids=text["input_ids"][paired],
            attention_mask=text["attention_mask"][paired],
            token_type_ids=text["token_type_ids"][paired],
            unpaired_pixel_values=unpaired_pixels[unpaired],
            labels=paired_labels[paired],
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_momentum_encoder()
        if step == 1 or step % 10 == 0:
            print(
                f"step {step:4d}  loss {out.loss.item():.4f}  L_mim {out.loss_mim.item():.4f}  "
                f"L_lg_clip {out.loss_clip.item():.4f}  L_mfd {out.loss_mfd.item():.4f}  "
                f"τ {model.clamped_logit_scale().item():.1f}  {time.time() - start:.0f}s",
                flush=True,
            )

    final = os.path.join(args.output_dir, "final")
    model.save_pretrained(final)
    processor.save_pretrained(final)
    reloaded = AutoModel.from_pretrained(final).eval()
    reloaded_processor = AutoProcessor.from_pretrained(final)
    classifier = pipeline(
        "zero-shot-image-classification",
        model=reloaded,
        tokenizer=reloaded_processor.tokenizer,
        image_processor=reloaded_processor.image_processor,
    )
    predictions = [
        classifier(image, candidate_labels=CLASSES, hypothesis_template="a fundus photograph of {}")[0][
            "label"
        ]
        for image in test_images
    ]
    accuracy = float(
        np.mean([CLASSES.index(p) == int(y) for p, y in zip(predictions, test_labels, strict=True)])
    )
    print(
        f"saved to {final}; reloaded with AutoModel/AutoProcessor; zero-shot accuracy on {len(test_images)} held-out "
        f"images: {accuracy:.2f} (chance {1 / len(CLASSES):.2f})"
    )


if __name__ == "__main__":
    main()
