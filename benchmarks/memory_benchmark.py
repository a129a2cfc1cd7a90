"""Peak memory of a MaskedCLIP training step against the sum of its parts, and activation checkpointing's trade.

MaskedCLIP (`MaskedCLIPForPreTraining`) does in one step what four separate models would do: a masked ViT-MAE
step, a full-image ViT pass, a BERT step and a teacher forward. Its peak memory should be no more than what
those four need one after the other: goal whole / sum <= 1.1. The script measures, for one model size:

* **whole**: one MaskedCLIP training step (forward + backward + fused AdamW + momentum-encoder EMA update) on
  b paired + b unpaired images at 224 px with b captions of 77 tokens (BERT-base text tower); peak memory over
  1 warm-up + `--steps` timed steps, and the median timed step.
* **parts**, each alone in a fresh process, over 2 steps (the second has the AdamW state in memory):
  (a) transformers' `ViTMAEForPreTraining` with the same encoder and the same pixel decoder, mask ratio
      0.75, on the 2b images, with its AdamW: the stock reference of the masked branch;
  (b) the full-image pass of the b paired images through MaskedCLIP's E_I + bridge + visual projection,
      trained (backward + AdamW) on a scalar of the projected cls token;
  (c) BERT (MaskedCLIP's text tower + text projection) on the b captions, trained on a scalar of the
      projected [CLS] state, with its AdamW;
  (d) the teacher forward: E_I + bridge on the 2b whole images under `torch.no_grad()`.
  The sum of the parts is taken MINUS (parts - 1) x the baseline, the peak of a process that imported
  torch / transformers / retvlp and built nothing, so that the interpreter and the libraries count once.
  Not in any part: MaskedCLIP's feature decoder D_F and its loss, the momentum update. Counted twice in the
  sum: the encoder E_I's weights, gradients and AdamW moments (16 bytes per parameter), trained in (a) and
  in (b); the script prints the ratio also with that copy taken off, the stricter figure.
* **activation checkpointing**: the whole step again with `model.activation_checkpointing_enable()`; peak
  memory and median step time on / off.

Peak memory: on CPU the peak RSS (VmHWM, which restarts at exec) of a child process that runs only that
model; on CUDA `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`, in this process with
the other parts deleted (the baseline is then 0). `--precision bf16` runs every model under
`torch.autocast(dtype=torch.bfloat16)` on the device (weights and AdamW state stay fp32). As
train_step_benchmark.py, the script re-executes itself with glibc told to keep freed memory.

    python benchmarks/memory_benchmark.py --smoke                       # tiny models: checks the script (~1.5 min: a child process per part)
    python benchmarks/memory_benchmark.py --size vit-s --batch-size 1 --steps 1
    python benchmarks/memory_benchmark.py --size vit-b --batch-size 16 --precision bf16
    python benchmarks/memory_benchmark.py --size vit-l --batch-size 16 --device cuda --precision bf16 --steps 5

Sizes (`--size`): ViT-S/16 (384 wide, 12 layers, 6 heads), ViT-B/16 (768, 12, 12, MLP 3072), ViT-L/16 (1024,
24, 16, MLP 4096); the pixel decoder is always 384 wide / 8 layers / 6 heads, the text tower BERT-base.
`--smoke`: a 32-wide 2-layer ViT on 32 px images with 8 px patches, a 32-wide 2-layer BERT, 1 timed step.
"""

import argparse
import copy
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from transformers import BertModel, ViTMAEConfig, ViTMAEForPreTraining

from retvlp import MaskedCLIPConfig, MaskedCLIPForPreTraining
from retvlp.maskedclip.modeling_maskedclip import MaskedCLIPBridge, MaskedCLIPVisionTransformer
from retvlp.runtime import malloc_is_tuned, reexec_with_tuned_malloc

sys.path.insert(0, str(Path(__file__).parent))
import train_step_benchmark as tsb  # noqa: E402

SIZES = {
    "vit-s": dict(tsb.VIT_S16),
    "vit-b": dict(tsb.VIT_S16, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "vit-l": dict(
        tsb.VIT_S16, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
}
SMOKE_VIT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    layer_norm_eps=1e-6,
)
SMOKE_PIXEL_DECODER = dict(
    decoder_hidden_size=32,
    decoder_num_hidden_layers=2,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=64,
)
SMOKE_HEADS = dict(  # feature decoder and projections
    feature_decoder_hidden_size=32,
    feature_decoder_num_hidden_layers=2,
    feature_decoder_num_attention_heads=2,
    feature_decoder_intermediate_size=64,
    projection_dim=32,
)
SMOKE_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)

PARTS = {
    "mae": "(a) masked ViT-MAE step",
    "full-image": "(b) full-image ViT pass",
    "text": "(c) BERT",
    "teacher": "(d) teacher forward",
}
PART_DETAILS = {
    "mae": "ViTMAEForPreTraining, 2b images, mask 0.75, + AdamW",
    "full-image": "E_I + bridge + projection, b images, backward + AdamW",
    "text": "BERT + projection, b captions, backward + AdamW",
    "teacher": "E_I + bridge, 2b images, no_grad",
}
ADAMW_BYTES_PER_PARAMETER = 16  # fp32 weight, gradient and the two moments


# ---------------------------------------------------------------------------------------------- configs
def maskedclip_config(args) -> MaskedCLIPConfig:
    if args.smoke:
        vision, heads, text = {**SMOKE_VIT, **SMOKE_PIXEL_DECODER}, SMOKE_HEADS, SMOKE_BERT
    else:
        vision, heads, text = {**SIZES[args.size], **tsb.PIXEL_DECODER}, {}, {}
    text_config = dict(model_type="bert", vocab_size=tsb.BERT_VOCAB, **text)  # BERT-base unless smoke
    return MaskedCLIPConfig(vision_config=vision, text_config=text_config, **heads)


def sdpa_vision_config(config: MaskedCLIPConfig):
    """The vision sub-config with SDPA attention, as `MaskedCLIPModel` resolves it for its plain towers."""
    vision_config = copy.deepcopy(config.vision_config)
    vision_config._attn_implementation_internal = "sdpa"
    return vision_config


def mae_config(config: MaskedCLIPConfig) -> ViTMAEConfig:
    vision_config = config.vision_config
    sizes = {name: getattr(vision_config, name) for name in (*tsb.VIT_S16, *tsb.PIXEL_DECODER)}
    return ViTMAEConfig(
        **sizes, mask_ratio=vision_config.mask_ratio, norm_pix_loss=vision_config.norm_pix_loss
    )


# ---------------------------------------------------------------------------------------------- parts
class FullImagePass(nn.Module):
    """Part (b): E_I + bridge + visual projection on whole images, trained on the projected cls token."""

    def __init__(self, config: MaskedCLIPConfig):
        super().__init__()
        vision_config = sdpa_vision_config(config)
        self.vision_model = MaskedCLIPVisionTransformer(vision_config)
        self.bridge = MaskedCLIPBridge(vision_config, config.bridge_num_hidden_layers)
        self.visual_projection = nn.Linear(vision_config.hidden_size, config.projection_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.bridge(self.vision_model(pixel_values).last_hidden_state)
        return self.visual_projection(tokens[:, 0]).float().pow(2).mean()


class TextPass(nn.Module):
    """Part (c): MaskedCLIP's text tower + text projection, trained on the projected [CLS] state."""

    def __init__(self, config: MaskedCLIPConfig):
        super().__init__()
        self.text_model = BertModel(config.text_config, add_pooling_layer=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.text_projection(hidden[:, 0]).float().pow(2).mean()


class TeacherPass(nn.Module):
    """Part (d): the momentum teacher, E_I + bridge on whole images without gradients (`_momentum_targets`)."""

    def __init__(self, config: MaskedCLIPConfig):
        super().__init__()
        vision_config = sdpa_vision_config(config)
        self.vision_model = MaskedCLIPVisionTransformer(vision_config)
        self.bridge = MaskedCLIPBridge(vision_config, config.bridge_num_hidden_layers)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.bridge(self.vision_model(pixel_values).last_hidden_state)[:, 1:]


# ---------------------------------------------------------------------------------------------- steps
def autocast_context(device: str, precision: str):
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")


def train_step(model: nn.Module, inputs: dict, device: str, precision: str):
    """Forward + backward + fused AdamW (train_step_benchmark's settings) of a module returning a scalar."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True
    )

    def step():
        with autocast_context(device, precision):
            loss = model(**inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def forward_step(model: nn.Module, inputs: dict, device: str, precision: str):
    def step():
        with autocast_context(device, precision):
            model(**inputs)

    return step


def build_step(kind: str, args):
    """The step of one measured model, built on the device; None for the baseline (nothing built)."""
    if kind == "baseline":
        return None
    config, device, b = maskedclip_config(args), args.device, args.batch_size
    image_size = config.vision_config.image_size
    autocast_dtype = torch.bfloat16 if args.precision == "bf16" else None
    torch.manual_seed(0)
    if kind in ("whole", "whole-checkpointed"):
        model = MaskedCLIPForPreTraining(config).to(device).train()
        if kind == "whole-checkpointed":
            model.activation_checkpointing_enable()
        return tsb.make_step("maskedclip", model, b, image_size, device, autocast_dtype)[0]
    if kind == "mae":
        model = ViTMAEForPreTraining(mae_config(config)).to(device).train()
        return tsb.make_step("reference", model, b, image_size, device, autocast_dtype)[0]
    batch = tsb.make_inputs("maskedclip", b, image_size, device)  # the whole step's batch
    if kind == "full-image":
        model = FullImagePass(config).to(device).train()
        return train_step(model, dict(pixel_values=batch["pixel_values"]), device, args.precision)
    if kind == "text":
        model = TextPass(config).to(device).train()
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return train_step(model, inputs, device, args.precision)
    if kind == "teacher":
        model = TeacherPass(config).to(device)
        images = torch.cat([batch["pixel_values"], batch["unpaired_pixel_values"]])
        return forward_step(model, dict(pixel_values=images), device, args.precision)
    raise ValueError(f"unknown model kind {kind!r}")


def steps_to_run(kind: str, args) -> int:
    """Whole steps: 1 warm-up + `--steps` timed. Parts: 2 (the second with the AdamW state allocated)."""
    return 1 + max(args.steps, 1) if kind.startswith("whole") else 2


# ---------------------------------------------------------------------------------------------- measuring
def run_probe(kind: str, args) -> dict:
    """Build one model, run its steps; its peak memory (GiB) and the step times (s, warm-up first)."""
    device = args.device
    if device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step = build_step(kind, args)
    times = []
    for _ in range(steps_to_run(kind, args) if step is not None else 0):
        tsb._sync(device)
        start = time.perf_counter()
        step()
        tsb._sync(device)
        times.append(time.perf_counter() - start)
    del step
    return dict(
        peak_gib=peak_memory_gib(device), times=times, encoder_parameters=encoder_parameters(kind, args)
    )


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    # VmHWM (peak resident set of this address space) restarts at exec, unlike ru_maxrss.
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("VmHWM:"))) / 2**20  # KiB


def encoder_parameters(kind: str, args) -> int | None:
    """E_I's parameter count, reported by part (b) (the copy of E_I's training state the sum counts twice)."""
    if kind != "full-image":
        return None
    with torch.device("meta"):
        encoder = MaskedCLIPVisionTransformer(maskedclip_config(args).vision_config)
    return sum(p.numel() for p in encoder.parameters() if p.requires_grad)  # not the frozen positions


def measure(kind: str, args) -> dict:
    """`run_probe` in this process on CUDA, in a fresh child process on CPU (so VmHWM is that model's)."""
    if args.device.startswith("cuda"):
        result = run_probe(kind, args)
        gc.collect()
        torch.cuda.empty_cache()
        return result
    command = [sys.executable, __file__, "--probe", kind, "--size", args.size, "--device", args.device]
    command += [
        "--batch-size",
        str(args.batch_size),
        "--precision",
        args.precision,
        "--steps",
        str(args.steps),
    ]
    command += ["--smoke"] * args.smoke + ["--no-malloc-tuning"] * args.no_malloc_tuning
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"probe {kind} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


# ---------------------------------------------------------------------------------------------- report
def describe(args) -> str:
    config = maskedclip_config(args)
    vision = config.vision_config
    name = "smoke" if args.smoke else args.size
    return (
        f"{name}: ViT {vision.hidden_size} wide, {vision.num_hidden_layers} layers, "
        f"{vision.num_attention_heads} heads, patch {vision.patch_size}; {args.batch_size} paired + "
        f"{args.batch_size} unpaired images at {vision.image_size} px, {args.batch_size} captions of "
        f"{tsb.CAPTION_TOKENS} tokens; BERT {config.text_config.hidden_size} wide / "
        f"{config.text_config.num_hidden_layers} layers; {args.precision} on {args.device}"
    )


def report_parts(parts: dict, baseline: float, whole: dict) -> None:
    encoder_state = parts["full-image"]["encoder_parameters"] * ADAMW_BYTES_PER_PARAMETER / 2**30
    total = sum(part["peak_gib"] for part in parts.values()) - (len(parts) - 1) * baseline
    print("\n| part | what | peak memory (GiB) |")
    print("|---|---|---|")
    print(f"| baseline | imports only, nothing built | {baseline:.3f} |")
    for kind, part in parts.items():
        print(f"| {PARTS[kind]} | {PART_DETAILS[kind]} | {part['peak_gib']:.3f} |")
    print(f"| sum of parts | minus {len(parts) - 1} x baseline | {total:.3f} |")
    print(f"| MaskedCLIP whole step | MaskedCLIPForPreTraining + AdamW + EMA | {whole['peak_gib']:.3f} |")
    print(f"\nwhole / sum of parts = {whole['peak_gib'] / total:.3f} (goal <= 1.1)")
    print(
        f"E_I's training state counted twice in the sum ((a) and (b)): {encoder_state:.3f} GiB; "
        f"whole / (sum - that) = {whole['peak_gib'] / (total - encoder_state):.3f}"
    )


def report_checkpointing(off: dict, on: dict, baseline: float) -> None:
    print(
        "\n| activation checkpointing | peak memory (GiB) | above baseline (GiB) | step (s), median (min-max) |"
    )
    print("|---|---|---|---|")
    for label, run in (("off", off), ("on", on)):
        timed = run["times"][1:]
        print(
            f"| {label} | {run['peak_gib']:.3f} | {run['peak_gib'] - baseline:.3f} | "
            f"{median(timed):.3f} ({min(timed):.3f}-{max(timed):.3f}) |"
        )
    net = (on["peak_gib"] - baseline) / (off["peak_gib"] - baseline)
    print(
        f"\ncheckpointing on / off: memory {on['peak_gib'] / off['peak_gib']:.3f} (above baseline {net:.3f}), "
        f"step time {median(on['times'][1:]) / median(off['times'][1:]):.3f}"
    )


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", default="vit-b", choices=list(SIZES), help="ViT encoder size (default vit-b)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="b: b paired + b unpaired images per step")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: torch.autocast")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--steps", type=int, default=3, help="timed whole steps (after 1 warm-up); median shown"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny models, b = 2, 1 timed step: seconds")
    parser.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="keep glibc's default of returning freed memory to the OS (see retvlp.runtime)",
    )
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # child process: measure one model, print JSON
    args = parser.parse_args()
    if args.smoke and not args.probe:
        args.batch_size, args.steps = 2, 1
    return args


def main():
    if "--no-malloc-tuning" not in sys.argv:
        reexec_with_tuned_malloc()
    args = parse_args()
    if args.probe:
        print(json.dumps(run_probe(args.probe, args)))
        return
    print(
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}, "
        f"glibc malloc keeps freed memory: {malloc_is_tuned()}\n{describe(args)}",
        flush=True,
    )
    baseline = 0.0 if args.device.startswith("cuda") else measure("baseline", args)["peak_gib"]
    parts = {}
    for kind in PARTS:
        parts[kind] = measure(kind, args)
        print(f"{PARTS[kind]}: peak {parts[kind]['peak_gib']:.3f} GiB", flush=True)
    whole = measure("whole", args)
    print(f"whole step: peak {whole['peak_gib']:.3f} GiB", flush=True)
    checkpointed = measure("whole-checkpointed", args)
    print(f"whole step, activation checkpointing: peak {checkpointed['peak_gib']:.3f} GiB", flush=True)
    report_parts(parts, baseline, whole)
    report_checkpointing(whole, checkpointed, baseline)


if __name__ == "__main__":
    main()
