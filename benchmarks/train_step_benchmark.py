"""Training-step benchmark: MaskedCLIP against transformers' ViTMAEForPreTraining, in one process.

Both models get a ViT-S/16 encoder at 224 px and the same pixel decoder (width 384, 6 heads, depth 8).
MaskedCLIP sees 16 paired + 16 unpaired images per step (and a BERT-base text tower on 16 captions of
77 tokens); the reference sees the same 32 images. A step is forward + backward + fused AdamW (+ the momentum
EMA update for MaskedCLIP). For each model and precision the script prints samples/s, achieved GFLOP/s
(FLOPs counted by torch.utils.flop_counter.FlopCounterMode over one step), MFU against a matmul peak
measured in the same run and precision, and peak memory (on CPU the peak RSS of a child process that runs
only that model; on GPU torch.cuda.max_memory_allocated). The two models' timed steps are interleaved so
that drift in the machine's speed affects both alike.

    python benchmarks/train_step_benchmark.py                  # fp32 and bf16, 2 warm-up + 5 timed steps each
    python benchmarks/train_step_benchmark.py --steps 5 --precision bf16 --device cuda
"""

import argparse
import contextlib
import gc
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from retvlp import MaskedCLIPConfig, MaskedCLIPModel
from retvlp.runtime import malloc_is_tuned, reexec_with_tuned_malloc

VIT_S16 = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    intermediate_size=1536,
    image_size=224,
    patch_size=16,
    layer_norm_eps=1e-6,
)
PIXEL_DECODER = dict(
    decoder_hidden_size=384,
    decoder_num_hidden_layers=8,
    decoder_num_attention_heads=6,
    decoder_intermediate_size=1536,
)


def measure_matmul_peak(dtype: torch.dtype, device: str, size: int = 2048, repeats: int = 10) -> float:
    """Best achieved GFLOP/s of a square matmul in `dtype`: the machine's practical peak."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_gib(model_key: str, precision: str, args, device: str) -> float:
    """Peak memory of a training step of one model alone. On GPU: the allocator's peak. On CPU: the peak
    RSS of a fresh child process that builds only that model and runs two steps (process-wide RSS in the
    benchmark process would include the other model)."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model = BUILDERS[model_key][1](device)
        step, _ = make_step(model, args.batch_size, device, torch.bfloat16 if precision == "bf16" else None)
        step()
        step()
        peak = torch.cuda.max_memory_allocated()
        del model, step
        return peak / 2**30
    command = [
        sys.executable,
        __file__,
        "--memory-probe",
        model_key,
        precision,
        "--batch-size",
        str(args.batch_size),
    ]
    if args.no_malloc_tuning:  # measure the child under the same allocator settings as the timings
        command.append("--no-malloc-tuning")
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1]) / 2**20  # VmHWM is in KiB


def _memory_probe(model_key: str, precision: str, batch_size: int) -> None:
    model = BUILDERS[model_key][1]("cpu")
    step, _ = make_step(model, batch_size, "cpu", torch.bfloat16 if precision == "bf16" else None)
    step()
    step()
    # VmHWM (peak resident set of this address space) restarts at exec, unlike ru_maxrss which would
    # carry over the parent's peak.
    with open("/proc/self/status") as status:
        print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))


def build_maskedclip(device: str) -> MaskedCLIPModel:
    config = MaskedCLIPConfig(
        vision_config={**VIT_S16, **PIXEL_DECODER},
        text_config=dict(model_type="bert", vocab_size=28996),  # Bio_ClinicalBERT size (BERT-base)
    )
    return MaskedCLIPModel(config).to(device).train()


def build_reference(device: str) -> ViTMAEForPreTraining:
    config = ViTMAEConfig(**VIT_S16, **PIXEL_DECODER, mask_ratio=0.75, norm_pix_loss=True)
    return ViTMAEForPreTraining(config).to(device).train()


def make_step(model, batch_size: int, device: str, autocast_dtype):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2 * batch_size, 3, 224, 224, generator=generator).to(device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=1.5e-4,
        betas=(0.9, 0.95),
        weight_decay=0.05,
        fused=True,  # one kernel per step on CPU and GPU alike
    )
    autocast = (
        torch.autocast(device_type=device.split(":")[0], dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    if isinstance(model, MaskedCLIPModel):
        inputs = dict(
            pixel_values=images[:batch_size],
            unpaired_pixel_values=images[batch_size:],
            input_ids=torch.randint(1000, 28996, (batch_size, 77), generator=generator).to(device),
            attention_mask=torch.ones(batch_size, 77, dtype=torch.long, device=device),
            labels=torch.randint(0, 5, (batch_size,), generator=generator).to(device),
        )
    else:
        inputs = dict(pixel_values=images)

    def step():
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if isinstance(model, MaskedCLIPModel):
            model.update_momentum_encoder()

    return step, 2 * batch_size


BUILDERS = {
    "reference": ("ViTMAEForPreTraining (reference)", build_reference),
    "maskedclip": ("MaskedCLIPModel", build_maskedclip),
}


def count_step_flops(step) -> int:
    """FLOPs of forward + backward of one step (the optimizer's elementwise work is not counted)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def benchmark_interleaved(models: dict, args, device, precision, peak_gflops) -> list[dict]:
    """Time the models' steps alternately (A, B, A, B, ...) so that drift of the machine's speed over the
    run (frequency, other tenants) hits every model alike; report each model's median step."""
    autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    steps = {
        name: make_step(model, args.batch_size, device, autocast_dtype) for name, model in models.items()
    }
    flops = {}
    for name, (step, _) in steps.items():
        flops[name] = count_step_flops(step)
        for _ in range(args.warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, (step, _) in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, (_, images_per_step) in steps.items():
        seconds = sorted(times[name])[len(times[name]) // 2]  # median step
        achieved = flops[name] / seconds / 1e9
        rows.append(
            dict(
                model=name,
                precision=precision,
                step_s=seconds,
                samples_per_s=images_per_step / seconds,
                gflop_per_step=flops[name] / 1e9,
                gflops=achieved,
                mfu=achieved / peak_gflops,
            )
        )
    return rows


def main():
    if "--no-malloc-tuning" not in sys.argv:
        reexec_with_tuned_malloc()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=16, help="paired (and unpaired) images per step")
    parser.add_argument(
        "--steps", type=int, default=5, help="timed steps per model, interleaved (median reported)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps first (oneDNN builds its kernels)"
    )
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--models", nargs="+", default=["reference", "maskedclip"], choices=["reference", "maskedclip"]
    )
    parser.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="keep glibc's default of returning freed memory to the OS (see retvlp.runtime)",
    )
    parser.add_argument("--memory-probe", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        _memory_probe(*args.memory_probe, args.batch_size)
        return

    torch.manual_seed(0)
    device = args.device
    print(
        f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} batch={args.batch_size}+"
        f"{args.batch_size} images at 224 px, ViT-S/16 encoder, glibc malloc keeps freed memory: {malloc_is_tuned()}"
    )
    peaks = {
        p: measure_matmul_peak(torch.bfloat16 if p == "bf16" else torch.float32, device)
        for p in args.precision
    }
    for precision, peak in peaks.items():
        print(f"matmul peak {precision}: {peak:.1f} GFLOP/s")

    models = {}
    for key in args.models:
        name, build = BUILDERS[key]
        torch.manual_seed(0)
        models[name] = build(device)
    rows = []
    for precision in args.precision:
        rows_now = benchmark_interleaved(models, args, device, precision, peaks[precision])
        for key, row in zip(args.models, rows_now, strict=True):
            row["peak_mem_gib"] = peak_memory_gib(key, precision, args, device)
            rows.append(row)
            print(
                f"{row['model']:<34} {precision:<5} step {row['step_s']:7.2f} s  {row['samples_per_s']:7.2f} img/s  "
                f"{row['gflop_per_step']:8.1f} GFLOP/step  {row['gflops']:7.1f} GFLOP/s  MFU {100 * row['mfu']:5.1f} %  "
                f"peak mem {row['peak_mem_gib']:.2f} GiB",
                flush=True,
            )
        gc.collect()

    print("\n| model | precision | step (s) | images/s | GFLOP/step | GFLOP/s | MFU | peak memory (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['precision']} | {row['step_s']:.2f} | {row['samples_per_s']:.2f} | "
            f"{row['gflop_per_step']:.0f} | {row['gflops']:.1f} | {100 * row['mfu']:.1f} % | {row['peak_mem_gib']:.2f} |"
        )
    by = {(r["model"], r["precision"]): r for r in rows}
    for precision in args.precision:
        ours, ref = (
            by.get(("MaskedCLIPModel", precision)),
            by.get(("ViTMAEForPreTraining (reference)", precision)),
        )
        if ours and ref:
            print(f"{precision}: MaskedCLIP MFU / reference MFU = {ours['mfu'] / ref['mfu']:.3f}")
    if ("MaskedCLIPModel", "bf16") in by and ("MaskedCLIPModel", "fp32") in by:
        speedup = (
            by[("MaskedCLIPModel", "bf16")]["samples_per_s"]
            / by[("MaskedCLIPModel", "fp32")]["samples_per_s"]
        )
        print(f"MaskedCLIP bf16 / fp32 throughput = {speedup:.2f}x")


if __name__ == "__main__":
    main()
