"""Training-step benchmarks of the project's models against transformers references, each in one process.

Two suites (`--model`):

* `maskedclip` (default): MaskedCLIP (`MaskedCLIPForPreTraining`) against transformers' ViTMAEForPreTraining. Both models get a ViT-S/16
  encoder at 224 px and the same pixel decoder (width 384, 6 heads, depth 8). MaskedCLIP sees 16 paired +
  16 unpaired images per step (and a BERT-base text tower on 16 captions of 77 tokens); the reference sees
  the same 32 images.
* `keepfit`: KeepFIT V2 (`KeepFitForPreTraining`, default config: ResNet-50 + Bio_ClinicalBERT-sized BERT-base, random
  init, semantic and appearance knowledge injection over a 16384 x 256 codebook, every loss of Eq. 22) on b
  categorical images at 512 px with 16-token prompts and their labels + b elite images with 256-token
  captions (b = 2 by default). The reference is transformers' `ResNetModel` (ResNet-50) on the same 2b images
  plus `BertModel` (same size) on the same b prompts and b captions, trained on the mean of the pooled
  outputs (the ResNet pool, the [CLS] states): the two backbones' work without KeepFIT's heads and losses.
  The reference gets channels-last input like KeepFIT (its default); `--models resnet-bert resnet-bert-cl
  keepfit` adds the same reference with NCHW input. Three KeepFIT ablations, also only when named in
  `--models`, show where KeepFIT's extra time goes: `keepfit-no-appearance` (no appearance branch: no
  codebook quantisation), `keepfit-cls` ([CLS] text pooling: no hidden-state averaging) and
  `keepfit-backbones` (neither knowledge branch, [CLS] pooling: backbones, projections and the two
  contrastive losses).

`--model all` runs both suites, one after the other. A step is forward + backward + fused AdamW (+ the
momentum EMA update for MaskedCLIP, the logit-scale clamp for KeepFIT). For each model and precision the
script prints samples/s, achieved GFLOP/s (FLOPs counted by torch.utils.flop_counter.FlopCounterMode over
one step of each model: convolutions, matmuls and attention, forward and backward; not elementwise work,
normalisation, pooling or the optimizer), MFU against a matmul peak measured in the same run and
precision, and peak memory (on CPU the peak RSS of a child process that runs only that model; on GPU
torch.cuda.max_memory_allocated). The models' timed steps are interleaved so that drift in the machine's
speed affects all alike; the matmul peak is re-measured after every round and the best rate kept.

    python benchmarks/train_step_benchmark.py                  # MaskedCLIP suite, fp32 and bf16
    python benchmarks/train_step_benchmark.py --model keepfit  # KeepFIT suite, b = 2 at 512 px
    python benchmarks/train_step_benchmark.py --model keepfit --bf16 --batch-size 4 --steps 3
    python benchmarks/train_step_benchmark.py --steps 5 --precision bf16 --device cuda

Variants, only when named in `--models`: `maskedclip-compiled`, `reference-compiled`, `keepfit-compiled` and
`resnet-bert-cl-compiled` are the same models compiled in place with `torch.compile` (inductor; the warm-up
steps pay the compilation, the script prints the TorchDynamo counters: graphs, graph breaks, recompiles);
`maskedclip-flip` encodes half of the paired images' patches in the contrastive pass
(`clip_mask_ratio=0.5`), `maskedclip-flip-teacher` also half of the patches in the momentum teacher's pass
(`mfd_teacher_mask_ratio=0.5`). `--encoder vit-b|vit-l` sets the MaskedCLIP suite's encoder size (both
models; default ViT-S/16):

    python benchmarks/train_step_benchmark.py --models reference maskedclip reference-compiled maskedclip-compiled
    python benchmarks/train_step_benchmark.py --models reference maskedclip maskedclip-flip maskedclip-flip-teacher
"""

import argparse
import contextlib
import gc
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertModel, ResNetModel, ViTMAEConfig, ViTMAEForPreTraining

from retvlp import KeepFitConfig, KeepFitForPreTraining, MaskedCLIPConfig, MaskedCLIPForPreTraining
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
VIT_B16 = dict(VIT_S16, hidden_size=768, num_attention_heads=12, intermediate_size=3072)
VIT_L16 = dict(
    VIT_S16, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
)
ENCODERS = {"vit-s": VIT_S16, "vit-b": VIT_B16, "vit-l": VIT_L16}
# The MaskedCLIP suite's encoder (--encoder); a module global so that memory-probe children build the same.
ENCODER = VIT_S16
# Tower sizes and compile backend as module globals too, so that gpu_check.py --cpu-smoke can shrink them.
TEXT_TOWER = dict(model_type="bert", vocab_size=28996)  # Bio_ClinicalBERT (cased BERT-base); both suites
KEEPFIT_CONFIG: dict = {}  # KeepFitConfig overrides (default: the paper's ResNet-50 + BERT-base)
MASKEDCLIP_HEADS: dict = {}  # MaskedCLIPConfig overrides of the bridge / feature decoder / projection sizes
COMPILE_BACKEND = "inductor"
MEASURE_MEMORY = True
PIXEL_DECODER = dict(
    decoder_hidden_size=384,
    decoder_num_hidden_layers=8,
    decoder_num_attention_heads=6,
    decoder_intermediate_size=1536,
)
BERT_VOCAB = 28996  # Bio_ClinicalBERT (cased BERT-base)
CAPTION_TOKENS = 77  # MaskedCLIP captions
KEEPFIT_PROMPT_TOKENS = 16  # categorical prompts ("a fundus photograph of diabetic retinopathy")
KEEPFIT_CAPTION_TOKENS = 256  # elite captions (the KeepFIT text length)


@dataclass(frozen=True)
class Suite:
    members: tuple[str, ...]  # model keys run by default, in the order their steps are interleaved
    ours: str
    reference: str  # the reference the target ratio is taken against
    batch_size: int
    image_size: int
    description: str
    optional: tuple[str, ...] = ()  # run only when named in --models


SUITES = {
    "maskedclip": Suite(
        members=("reference", "maskedclip"),
        optional=("reference-compiled", "maskedclip-compiled", "maskedclip-flip", "maskedclip-flip-teacher"),
        ours="maskedclip",
        reference="reference",
        batch_size=16,
        image_size=224,
        description="{b}+{b} images at {s} px, ViT-S/16 encoder",
    ),
    "keepfit": Suite(
        members=("resnet-bert-cl", "keepfit"),
        # the NCHW reference and the KeepFIT ablations: only when named in --models
        optional=(
            "resnet-bert",
            "resnet-bert-cl-compiled",
            "keepfit-compiled",
            "keepfit-no-appearance",
            "keepfit-cls",
            "keepfit-backbones",
        ),
        ours="keepfit",
        reference="resnet-bert-cl",
        batch_size=2,
        image_size=512,
        description=(
            f"{{b}} categorical ({KEEPFIT_PROMPT_TOKENS}-token prompts) + {{b}} elite "
            f"({KEEPFIT_CAPTION_TOKENS}-token captions) images at {{s}} px, ResNet-50 + BERT-base"
        ),
    ),
}


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


def _autocast_dtype(precision: str):
    return torch.bfloat16 if precision == "bf16" else None


def peak_memory_gib(model_key: str, precision: str, batch_size: int, image_size: int, args, device) -> float:
    """Peak memory of a training step of one model alone. On GPU: the allocator's peak. On CPU: the peak
    RSS of a fresh child process that builds only that model and runs two steps (process-wide RSS in the
    benchmark process would include the other models)."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model = BUILDERS[model_key][1](device)
        step, _ = make_step(model_key, model, batch_size, image_size, device, _autocast_dtype(precision))
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
        str(batch_size),
        "--image-size",
        str(image_size),
    ]
    if args.no_malloc_tuning:  # measure the child under the same allocator settings as the timings
        command.append("--no-malloc-tuning")
    command += ["--encoder", args.encoder]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1]) / 2**20  # VmHWM is in KiB


def _memory_probe(model_key: str, precision: str, batch_size: int, image_size: int) -> None:
    model = BUILDERS[model_key][1]("cpu")
    step, _ = make_step(model_key, model, batch_size, image_size, "cpu", _autocast_dtype(precision))
    step()
    step()
    # VmHWM (peak resident set of this address space) restarts at exec, unlike ru_maxrss which would
    # carry over the parent's peak.
    with open("/proc/self/status") as status:
        print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))


# ---------------------------------------------------------------------------------------------- models
def build_maskedclip(device: str, **config_changes) -> MaskedCLIPForPreTraining:
    config = MaskedCLIPConfig(
        vision_config={**ENCODER, **PIXEL_DECODER},
        text_config=dict(TEXT_TOWER),
        **{**MASKEDCLIP_HEADS, **config_changes},
    )
    return MaskedCLIPForPreTraining(config).to(device).train()


def build_reference(device: str) -> ViTMAEForPreTraining:
    config = ViTMAEConfig(**ENCODER, **PIXEL_DECODER, mask_ratio=0.75, norm_pix_loss=True)
    return ViTMAEForPreTraining(config).to(device).train()


def build_keepfit(device: str, **config_changes) -> KeepFitForPreTraining:
    """The paper's KeepFIT V2 pretraining model: the default config (ResNet-50, Bio_ClinicalBERT sizes, both
    knowledge branches, K = 16384 codebook, channels-last vision), random weights and the stand-in codebook
    (no `load_codebook`: a trained one costs the same); `config_changes` make the ablations."""
    return KeepFitForPreTraining(KeepFitConfig(**{**KEEPFIT_CONFIG, **config_changes})).to(device).train()


class ResNetBertReference(nn.Module):
    """transformers' `ResNetModel` + `BertModel` with KeepFIT's tower configs, trained on the mean of their
    pooled outputs: the backbone work of a KeepFIT step without its projections, heads and losses."""

    def __init__(self, channels_last: bool):
        super().__init__()
        config = KeepFitConfig(**KEEPFIT_CONFIG)
        self.vision_model = ResNetModel(config.vision_config)
        self.text_model = BertModel(config.text_config, add_pooling_layer=False)
        self.channels_last = channels_last

    def forward(self, pixel_values, input_ids, elite_input_ids) -> torch.Tensor:
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        prompts = self.text_model(input_ids=input_ids).last_hidden_state[:, 0]
        captions = self.text_model(input_ids=elite_input_ids).last_hidden_state[:, 0]
        return pooled.float().mean() + prompts.float().mean() + captions.float().mean()


def build_resnet_bert(device: str, channels_last: bool) -> ResNetBertReference:
    return ResNetBertReference(channels_last).to(device).train()


BUILDERS = {
    "reference": ("ViTMAEForPreTraining (reference)", build_reference),
    "maskedclip": ("MaskedCLIPForPreTraining", build_maskedclip),
    "resnet-bert": (
        "ResNet-50 + BERT (reference, NCHW)",
        lambda device: build_resnet_bert(device, channels_last=False),
    ),
    "resnet-bert-cl": (
        "ResNet-50 + BERT (reference, channels_last)",
        lambda device: build_resnet_bert(device, channels_last=True),
    ),
    "maskedclip-flip": (
        "MaskedCLIPForPreTraining (clip_mask_ratio 0.5)",
        lambda device: build_maskedclip(device, clip_mask_ratio=0.5),
    ),
    "maskedclip-flip-teacher": (
        "MaskedCLIPForPreTraining (clip + teacher mask 0.5)",
        lambda device: build_maskedclip(device, clip_mask_ratio=0.5, mfd_teacher_mask_ratio=0.5),
    ),
    "keepfit": ("KeepFitForPreTraining", build_keepfit),
    "keepfit-no-appearance": (
        "KeepFitForPreTraining (no appearance branch)",
        lambda device: build_keepfit(device, use_appearance_injection=False),
    ),
    "keepfit-cls": (
        "KeepFitForPreTraining ([CLS] text pooling)",
        lambda device: build_keepfit(device, text_pooling="cls"),
    ),
    "keepfit-backbones": (
        "KeepFitForPreTraining (no knowledge branches, [CLS])",
        lambda device: build_keepfit(
            device, use_appearance_injection=False, use_semantic_injection=False, text_pooling="cls"
        ),
    ),
}


COMPILED_SUFFIX = "-compiled"
for _key in ("reference", "maskedclip", "resnet-bert-cl", "keepfit"):
    _name, _build = BUILDERS[_key]
    BUILDERS[_key + COMPILED_SUFFIX] = (f"{_name}, compiled", _build)  # compiled after its FLOPs are counted


def eager_key(model_key: str) -> str:
    """The model a key builds (a compiled variant builds its eager model, compiled later)."""
    return model_key.removesuffix(COMPILED_SUFFIX)


def make_inputs(model_key: str, batch_size: int, image_size: int, device: str) -> dict:
    """The same random batch for every model of a suite: 2b images (b paired / categorical first, then b
    unpaired / elite), token ids drawn from BERT's vocabulary, all-ones attention masks."""
    model_key = eager_key(model_key)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2 * batch_size, 3, image_size, image_size, generator=generator).to(device)

    def tokens(length):
        vocab = TEXT_TOWER["vocab_size"]
        return torch.randint(min(1000, vocab // 2), vocab, (batch_size, length), generator=generator).to(
            device
        )

    if model_key == "reference":
        return dict(pixel_values=images)
    if model_key.startswith("maskedclip"):
        return dict(
            pixel_values=images[:batch_size],
            unpaired_pixel_values=images[batch_size:],
            input_ids=tokens(CAPTION_TOKENS),
            attention_mask=torch.ones(batch_size, CAPTION_TOKENS, dtype=torch.long, device=device),
            labels=torch.randint(0, 5, (batch_size,), generator=generator).to(device),
        )
    prompts, captions = tokens(KEEPFIT_PROMPT_TOKENS), tokens(KEEPFIT_CAPTION_TOKENS)
    if model_key in ("resnet-bert", "resnet-bert-cl"):
        return dict(pixel_values=images, input_ids=prompts, elite_input_ids=captions)
    return dict(
        pixel_values=images[:batch_size],
        input_ids=prompts,
        attention_mask=torch.ones_like(prompts),
        labels=torch.randint(0, 5, (batch_size,), generator=generator).to(device),
        elite_pixel_values=images[batch_size:],
        elite_input_ids=captions,
        elite_attention_mask=torch.ones_like(captions),
    )


def make_step(model_key: str, model, batch_size: int, image_size: int, device: str, autocast_dtype):
    inputs = make_inputs(model_key, batch_size, image_size, device)
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
    after_step = None
    if isinstance(model, MaskedCLIPForPreTraining):
        after_step = model.update_momentum_encoder
    elif isinstance(model, KeepFitForPreTraining):
        after_step = model.clamp_logit_scale_

    def step():
        with autocast:
            output = model(**inputs)
            loss = output if isinstance(output, torch.Tensor) else output.loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step()

    return step, 2 * batch_size


def count_step_flops(step) -> int:
    """FLOPs of forward + backward of one step (the optimizer's elementwise work is not counted)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def compile_in_place(model: nn.Module) -> None:
    """`torch.compile` the model's forward (inductor), counters reset so `report_dynamo` sees this model."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model.compile(backend=COMPILE_BACKEND)


def report_dynamo(key: str) -> None:
    """TorchDynamo's counters after the warm-up steps: graphs compiled and graph breaks (with reasons)."""
    counters = torch._dynamo.utils.counters
    breaks = sum(counters["graph_break"].values())
    reasons = "; ".join(str(reason)[:120] for reason in list(counters["graph_break"])[:3])
    print(
        f"{BUILDERS[key][0]}: TorchDynamo compiled {counters['stats'].get('unique_graphs', 0)} graph(s) "
        f"over {counters['stats'].get('calls_captured', 0)} captured calls, {breaks} graph break(s)"
        + (f": {reasons}" if breaks else ""),
        flush=True,
    )


def benchmark_interleaved(models: dict, args, sizes, device, precision, peaks: dict) -> list[dict]:
    """Time the models' steps alternately (A, B, A, B, ...) so that drift of the machine's speed over the
    run (frequency, other tenants) hits every model alike; report each model's median step. The matmul
    peak is measured again after every round and the best rate kept (`peaks[precision]` is updated): on a
    shared machine one measurement taken while other tenants were busy would understate it."""
    batch_size, image_size = sizes
    steps = {
        key: make_step(key, model, batch_size, image_size, device, _autocast_dtype(precision))
        for key, model in models.items()
    }
    flops = {}
    for key, (step, _) in steps.items():
        flops[key] = count_step_flops(step)  # eager: a compiled step does the same FLOPs
        if key.endswith(COMPILED_SUFFIX):
            compile_in_place(models[key])
        for _ in range(args.warmup):
            step()
        if key.endswith(COMPILED_SUFFIX):
            report_dynamo(key)
    times = {key: [] for key in steps}
    utilisation = {key: [] for key in steps}  # process CPU time / (wall time x threads): < 1 when shared
    for _ in range(args.steps):
        for key, (step, _) in steps.items():
            _sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            _sync(device)
            times[key].append(time.perf_counter() - start)
            utilisation[key].append(
                (time.process_time() - cpu_start) / (times[key][-1] * torch.get_num_threads())
            )
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        peaks[precision] = max(peaks[precision], measure_matmul_peak(dtype, device, repeats=3))
    peak_gflops = peaks[precision]
    rows = []
    for key, (_, images_per_step) in steps.items():
        seconds = sorted(times[key])[len(times[key]) // 2]  # median step
        achieved = flops[key] / seconds / 1e9
        rows.append(
            dict(
                key=key,
                model=BUILDERS[key][0],
                precision=precision,
                step_s=seconds,
                step_range=(min(times[key]), max(times[key])),
                step_times=times[key],
                cpu_utilisation=sorted(utilisation[key])[len(times[key]) // 2],
                samples_per_s=images_per_step / seconds,
                gflop_per_step=flops[key] / 1e9,
                gflops=achieved,
                mfu=achieved / peak_gflops,
                peak_gflops=peak_gflops,
            )
        )
    return rows


def run_suite(name: str, args, device: str, peaks: dict) -> None:
    suite = SUITES[name]
    batch_size = args.batch_size or suite.batch_size
    image_size = args.image_size or suite.image_size
    if name == "maskedclip" and image_size != ENCODER["image_size"]:
        raise SystemExit(
            f"The MaskedCLIP suite is fixed at {ENCODER['image_size']} px (the encoder's positions)."
        )
    runnable = sorted([*suite.members, *suite.optional], key=list(BUILDERS).index)  # references first
    keys = [key for key in runnable if key in args.models] if args.models else list(suite.members)
    if not keys:
        return
    print(
        f"\n== {name} suite: "
        f"{suite.description.format(b=batch_size, s=image_size)}; {args.warmup} warm-up + {args.steps} timed "
        f"steps per model and precision",
        flush=True,
    )
    models = {}
    for key in keys:
        torch.manual_seed(0)
        models[key] = BUILDERS[key][1](device)
    if any(key.endswith(COMPILED_SUFFIX) for key in keys):
        print("compiled variants: the warm-up steps include the compilation", flush=True)
    rows = []
    for precision in args.precision:
        rows_now = benchmark_interleaved(models, args, (batch_size, image_size), device, precision, peaks)
        print(
            f"{precision}: MFU against the best matmul rate of the run so far, {peaks[precision]:.1f} GFLOP/s"
        )
        for row in rows_now:
            compiled_on_cpu = row["key"].endswith(COMPILED_SUFFIX) and device == "cpu"
            # (a CPU memory probe would compile the model again in its child process: minutes, not measured)
            row["peak_mem_gib"] = (
                float("nan")
                if compiled_on_cpu or not MEASURE_MEMORY
                else peak_memory_gib(row["key"], precision, batch_size, image_size, args, device)
            )
            rows.append(row)
            low, high = row["step_range"]
            print(
                f"{row['model']:<44} {precision:<5} step {row['step_s']:7.2f} s ({low:.2f}-{high:.2f})  "
                f"{row['samples_per_s']:6.2f} img/s  {row['gflop_per_step']:8.1f} GFLOP/step  "
                f"{row['gflops']:7.1f} GFLOP/s  MFU {100 * row['mfu']:5.1f} %  peak mem {row['peak_mem_gib']:.2f} GiB"
                + (f"  CPU use {100 * row['cpu_utilisation']:.0f} %" if device == "cpu" else ""),
                flush=True,
            )
        gc.collect()
    del models
    gc.collect()

    print("\n| model | precision | step (s) | images/s | GFLOP/step | GFLOP/s | MFU | peak memory (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['precision']} | {row['step_s']:.2f} | {row['samples_per_s']:.2f} | "
            f"{row['gflop_per_step']:.0f} | {row['gflops']:.1f} | {100 * row['mfu']:.1f} % | {row['peak_mem_gib']:.2f} |"
        )
    by = {(r["key"], r["precision"]): r for r in rows}
    ours_name = BUILDERS[suite.ours][0]
    references = [suite.reference] + [
        k for k in runnable if k != suite.reference and not k.startswith(suite.ours)
    ]
    ablations = [k for k in runnable if k != suite.ours and k.startswith(suite.ours)]
    # Compiled and FLIP variants of ours: their MFU and step time against the stock reference too.
    variants = [k for k in ablations if k.endswith(COMPILED_SUFFIX) or "flip" in k]
    for precision in args.precision:
        ref, eager_ref = (
            by.get((suite.reference, precision)),
            by.get((suite.reference + COMPILED_SUFFIX, precision)),
        )
        for key in variants:
            variant = by.get((key, precision))
            if not (variant and ref):
                continue
            line = (
                f"{precision}: {BUILDERS[key][0]} vs {BUILDERS[suite.reference][0]}: MFU ratio "
                f"{variant['mfu'] / ref['mfu']:.3f}, step-time ratio (reference / variant) "
                f"{ref['step_s'] / variant['step_s']:.3f}"
            )
            if key.endswith(COMPILED_SUFFIX) and eager_ref:
                line += (
                    f"; vs the compiled reference: MFU ratio {variant['mfu'] / eager_ref['mfu']:.3f}, "
                    f"step-time ratio {eager_ref['step_s'] / variant['step_s']:.3f}"
                )
            print(line)
    for precision in args.precision:
        ours = by.get((suite.ours, precision))
        for reference_key in references:
            ref = by.get((reference_key, precision))
            if not (ours and ref):
                continue
            # Steps of one round ran back to back: their ratio is the least disturbed by drift.
            paired = sorted(r / o for r, o in zip(ref["step_times"], ours["step_times"], strict=True))
            print(
                f"{precision}: {ours_name} vs {BUILDERS[reference_key][0]}: MFU ratio "
                f"{ours['mfu'] / ref['mfu']:.3f}, step-time ratio (reference / ours) "
                f"{ref['step_s'] / ours['step_s']:.3f} (median of the per-round ratios "
                f"{paired[len(paired) // 2]:.3f}, of the best steps {ref['step_range'][0] / ours['step_range'][0]:.3f}), "
                f"FLOPs ours / reference {ours['gflop_per_step'] / ref['gflop_per_step']:.3f}"
            )
        for ablation_key in ablations:
            ablation = by.get((ablation_key, precision))
            if not (ours and ablation):
                continue
            saved = sorted(o - a for o, a in zip(ours["step_times"], ablation["step_times"], strict=True))
            print(
                f"{precision}: {BUILDERS[ablation_key][0]}: step {ablation['step_s']:.2f} s, "
                f"{ours_name} step minus this one {saved[len(saved) // 2]:+.3f} s (median over rounds)"
            )
    if (suite.ours, "bf16") in by and (suite.ours, "fp32") in by:
        speedup = by[(suite.ours, "bf16")]["samples_per_s"] / by[(suite.ours, "fp32")]["samples_per_s"]
        print(f"{ours_name} bf16 / fp32 throughput = {speedup:.2f}x")


def main():
    if "--no-malloc-tuning" not in sys.argv:
        reexec_with_tuned_malloc()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="maskedclip",
        choices=[*SUITES, "all"],
        help="which suite: MaskedCLIP vs ViTMAE (default), KeepFIT vs ResNet-50 + BERT, or both",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="b: paired + unpaired (MaskedCLIP, default 16) or categorical + elite (KeepFIT, default 2) "
        "images per step are b + b",
    )
    parser.add_argument(
        "--image-size", type=int, help="image side in px (KeepFIT suite, default 512; MaskedCLIP: 224 only)"
    )
    parser.add_argument(
        "--steps", type=int, default=5, help="timed steps per model, interleaved (median reported)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps first (oneDNN builds its kernels)"
    )
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast only (= --precision bf16)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--encoder",
        default="vit-s",
        choices=list(ENCODERS),
        help="the MaskedCLIP suite's image encoder, for both models: ViT-S/16 (default), ViT-B/16, ViT-L/16",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(BUILDERS),
        help="run these members of the chosen suite(s) (default: the suite's model and its reference; "
        "resnet-bert, the KeepFIT reference with NCHW input, runs only when named here)",
    )
    parser.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="keep glibc's default of returning freed memory to the OS (see retvlp.runtime)",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory probes (each runs two more steps)"
    )
    parser.add_argument("--memory-probe", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    global ENCODER, MEASURE_MEMORY
    ENCODER = ENCODERS[args.encoder]
    MEASURE_MEMORY = not args.no_memory
    if args.memory_probe:
        _memory_probe(*args.memory_probe, args.batch_size, args.image_size)
        return
    if args.bf16:
        args.precision = ["bf16"]

    torch.manual_seed(0)
    device = args.device
    print(
        f"device={device} threads={torch.get_num_threads()} torch={torch.__version__}, "
        f"glibc malloc keeps freed memory: {malloc_is_tuned()}"
    )
    peaks = {
        p: measure_matmul_peak(torch.bfloat16 if p == "bf16" else torch.float32, device)
        for p in args.precision
    }
    for precision, peak in peaks.items():
        print(f"matmul peak {precision}: {peak:.1f} GFLOP/s")
    for name in SUITES if args.model == "all" else [args.model]:
        run_suite(name, args, device, peaks)


if __name__ == "__main__":
    main()
