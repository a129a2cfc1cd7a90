"""Peak memory and step time of `optim.contrastive_accumulation` (GradCache) against the direct big batch and
one micro-batch, for MaskedCLIP and KeepFIT V2.

    python benchmarks/contrastive_accumulation_benchmark.py [--family maskedclip|keepfit|both]
        [--micro-batch 16] [--accumulation 4] [--image-size 96] [--steps 3] [--threads N]

Per family, four variants, each in a fresh Python process (so that one variant's allocations cannot hide in
another's high-water mark), each one optimizer step of the trainer's kind (forward, backward, AdamW):

- `direct`: one micro-batch of micro-batch × accumulation pairs (the big batch, if it fits in memory);
- `micro`: one micro-batch of micro-batch pairs, no accumulation;
- `accumulated`: accumulation micro-batches with `contrastive_accumulation_step` — the contrastive terms
  over the whole big batch, gradients equal to `direct`'s (tests/test_contrastive_accumulation.py);
- `plain`: the same micro-batches with plain accumulation (each micro-batch's contrastive term with only its
  own negatives: not the same loss), for the cost of the extra pass.

Each family's other stream has as many rows as the paired one (MaskedCLIP's unpaired images, KeepFIT's elite
pairs). Models: the `*_small_cpu.yaml` recipes' (MaskedCLIP ViT 128 × 4 at 96 px; KeepFIT tiny ResNet-50
layout + 2-layer BERT), float32.

Memory. On a GPU: `torch.cuda.max_memory_allocated` above what is allocated before the measured steps. On a
CPU: the process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) above its
resident set before the measured steps, after a warm-up step (AdamW's moments exist) and `malloc_trim`.
The step's input tensors (all micro-batches of the step, made before the measurement and held through it, as
the loop holds them) are not in that figure; their size is printed apart. Step time: the median of `--steps`
measured steps after the warm-up, wall clock and the process's CPU time (on a CPU shared with other work,
`--threads 1` and the CPU time are the steadier figure). The script prints the ratios; it asserts nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("direct", "micro", "accumulated", "plain")


def _maskedclip(image_size: int):
    from retvlp import MaskedCLIPConfig, MaskedCLIPForPreTraining

    config = MaskedCLIPConfig(
        vision_config=dict(
            image_size=image_size,
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
            patch_size=8,
            decoder_hidden_size=64,
            decoder_num_hidden_layers=2,
            decoder_num_attention_heads=4,
            decoder_intermediate_size=256,
        ),
        text_config=dict(
            model_type="bert",
            vocab_size=2000,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=64,
        ),
        bridge_num_hidden_layers=2,
        feature_decoder_hidden_size=64,
        feature_decoder_num_hidden_layers=2,
        feature_decoder_num_attention_heads=4,
        feature_decoder_intermediate_size=256,
        projection_dim=64,
        text_pooling="mean",
        lambda_clip=1.0,
    )
    return MaskedCLIPForPreTraining(config)


def _keepfit():
    from retvlp import KeepFitConfig, KeepFitForPreTraining

    config = KeepFitConfig(
        vision_config=dict(
            model_type="resnet",
            embedding_size=32,
            hidden_sizes=[32, 64, 128, 256],
            depths=[1, 1, 1, 1],
            layer_type="bottleneck",
        ),
        text_config=dict(
            model_type="bert",
            vocab_size=2000,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=64,
        ),
        projection_dim=64,
        codebook_size=512,
        code_dim=32,
        lambda_semantic=1.0,
        lambda_appearance=10.0,
    )
    return KeepFitForPreTraining(config)


def _batches(family: str, model, rows: int, count: int, image_size: int, seed: int = 0) -> list[dict]:
    """`count` micro-batches of `rows` pairs (+ as many unpaired / elite rows); 32 tokens per text."""
    import torch

    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):

        def images():
            return torch.randn(rows, 3, image_size, image_size, generator=g)

        def tokens():
            return torch.randint(5, 2000, (rows, 32), generator=g)

        labels = torch.randint(-1, 4, (rows,), generator=g)
        if family == "maskedclip":
            patches = model.config.vision_config.num_patches
            batch = dict(
                pixel_values=images(),
                input_ids=tokens(),
                attention_mask=torch.ones(rows, 32, dtype=torch.long),
                labels=labels,
                unpaired_pixel_values=images(),
                noise=torch.rand(2 * rows, patches, generator=g),
            )
        else:
            batch = dict(
                pixel_values=images(),
                input_ids=tokens(),
                labels=labels,
                elite_pixel_values=images(),
                elite_input_ids=tokens(),
            )
        batches.append(batch)
    return batches


def _resident_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    """Return freed heap to the system, reset the high-water mark; the resident bytes now."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")
    return _resident_bytes("VmRSS")


def run_variant(
    family: str, variant: str, micro: int, accumulation: int, image_size: int, steps: int
) -> dict:
    import torch
    from accelerate import Accelerator

    from retvlp.training.contrastive_accumulation import contrastive_accumulation_step
    from retvlp.training.keepfit_task import KeepFitTask
    from retvlp.training.maskedclip_task import MaskedCLIPTask
    from retvlp.training.task import seed_from

    accelerator = Accelerator()
    device = accelerator.device
    torch.manual_seed(0)
    model = _maskedclip(image_size) if family == "maskedclip" else _keepfit()
    task = MaskedCLIPTask() if family == "maskedclip" else KeepFitTask()
    rows, count = {
        "direct": (micro * accumulation, 1),
        "micro": (micro, 1),
        "accumulated": (micro, accumulation),
        "plain": (micro, accumulation),
    }[variant]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    batches = _batches(family, model, rows, count, image_size)
    if device.type == "cuda":
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    input_bytes = sum(v.numel() * v.element_size() for b in batches for v in b.values())

    def step(index: int) -> None:
        seeds = [seed_from(0, index * count + k, 0) for k in range(count)]
        if variant == "accumulated":
            contrastive_accumulation_step(model, task, batches, seeds, accelerator)
        else:
            for batch, seed in zip(batches, seeds, strict=True):
                torch.manual_seed(seed)
                terms, _ = task.training_forward(model, batch, device)
                accelerator.backward(terms["loss"] / count)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        task.after_optimizer_step(accelerator.unwrap_model(model))

    step(0)  # warm-up: AdamW's moments, allocator pools
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _reset_peak()
    times, cpu_times = [], []
    for index in range(1, steps + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        step(index)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _resident_bytes("VmHWM")
    return {
        "family": family,
        "variant": variant,
        "pairs_per_step": rows * count,
        "micro_batch": rows,
        "micro_steps": count,
        "peak_bytes": peak - baseline,
        "input_bytes": input_bytes,
        "step_s": statistics.median(times),
        "step_cpu_s": statistics.median(cpu_times),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["maskedclip", "keepfit", "both"], default="both")
    parser.add_argument("--micro-batch", type=int, default=16, help="pairs per micro-batch")
    parser.add_argument("--accumulation", type=int, default=4, help="micro-batches per step")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per variant (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per variant")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, in a child
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.variant:
        print(
            json.dumps(
                run_variant(
                    args.family,
                    args.variant,
                    args.micro_batch,
                    args.accumulation,
                    args.image_size,
                    args.steps,
                )
            )
        )
        return

    families = ["maskedclip", "keepfit"] if args.family == "both" else [args.family]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    print(
        f"micro-batch {args.micro_batch} pairs (+ as many unpaired / elite rows), accumulation "
        f"{args.accumulation}, {args.image_size} px, median of {args.steps} steps after 1 warm-up; "
        "each variant in a fresh process"
    )
    for family in families:
        results = {}
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--variant", variant, "--family", family]
            command += ["--micro-batch", str(args.micro_batch), "--accumulation", str(args.accumulation)]
            command += ["--image-size", str(args.image_size), "--steps", str(args.steps)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if completed.returncode != 0:
                raise SystemExit(f"{family} {variant} failed:\n{completed.stderr[-3000:]}")
            results[variant] = json.loads(completed.stdout.strip().splitlines()[-1])
        first = results["direct"]
        cuda = "cpu" not in first["device"]
        memory = (
            "peak allocated above the pre-step allocation"
            if cuda
            else "peak RSS (VmHWM) above the pre-step RSS"
        )
        print(f"\n{family} on {first['device']} ({first['threads']} threads); memory: {memory}")
        print(
            f"{'variant':<12}{'pairs/step':>11}{'micro x K':>11}{'memory MiB':>12}{'inputs MiB':>12}"
            f"{'step s':>9}{'cpu s':>9}"
        )
        for variant, r in results.items():
            print(
                f"{variant:<12}{r['pairs_per_step']:>11}{r['micro_batch']:>7} x {r['micro_steps']:<2}"
                f"{r['peak_bytes'] / 2**20:>11.1f}{r['input_bytes'] / 2**20:>12.1f}{r['step_s']:>9.3f}"
                f"{r['step_cpu_s']:>9.3f}"
            )
        acc, micro, direct, plain = (results[v] for v in ("accumulated", "micro", "direct", "plain"))
        print(
            f"memory: accumulated / micro {acc['peak_bytes'] / micro['peak_bytes']:.2f} (target <= 1.2), "
            f"accumulated / direct {acc['peak_bytes'] / direct['peak_bytes']:.2f}"
        )
        for label, key in (("wall", "step_s"), ("cpu", "step_cpu_s")):
            print(
                f"{label} time: accumulated / direct {acc[key] / direct[key]:.2f} (target <= 1.5), "
                f"accumulated / plain accumulation {acc[key] / plain[key]:.2f}"
            )


if __name__ == "__main__":
    main()
