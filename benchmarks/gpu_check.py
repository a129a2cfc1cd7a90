"""One command for a GPU machine: correctness and speed of the package on CUDA, printed, no asserts.

    python benchmarks/gpu_check.py               # one H100 / H200: about 6-8 minutes
    python benchmarks/gpu_check.py --cpu-smoke   # tiny sizes on CPU: every section end to end, under a minute

Sections, in order (each prints its own figures; a failing section prints its error and the rest still run):

1. **Loss parity** (fp32, tiny configs, dropout off, TF32 off): every loss term of MaskedCLIP (L_mim,
   L_lg_clip, L_mfd), KeepFIT V2 (L_itc^p, L_itc^m, L_EK^s, L_EK^a), the IBQ tokenizer (reconstruction,
   quantisation, entropy) and the text MLM, computed from the same weights and batch on the CPU and on the
   device; the relative difference of each term and the largest relative gradient difference.
2. **bf16 autocast step** of the tiny MaskedCLIP and KeepFIT: the loss against fp32 and whether every
   gradient is finite.
3. **SDPA backends**: which fused attention kernel (flash, memory-efficient, cuDNN, or the math fallback)
   each attention site runs in a bf16 pretraining forward at the benchmark sizes, read from the profiler's
   aten ops under each module.
4. **Host syncs per training step** (`torch.cuda.set_sync_debug_mode("warn")`) in a steady-state MaskedCLIP
   and KeepFIT step, with the first call sites.
5. **Training steps** (benchmarks/train_step_benchmark.py): MaskedCLIP with a ViT-L/16 encoder against
   transformers' ViT-MAE-L, eager and compiled, and the KeepFIT ResNet-50 + BERT step against its
   reference, eager and compiled; step time, MFU against a matmul peak measured in the same run, peak
   memory.

`--cpu-smoke` runs every section at tiny sizes on the CPU (section 1 then compares CPU with CPU and section 4
reports "not applicable"), compiling with TorchDynamo's `eager` backend instead of inductor (graph capture and
graph breaks without AOT autograd: tests/test_compile.py traces forward and backward), so that CI can check the
script.
"""

import argparse
import copy
import dataclasses
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step_benchmark as tsb  # noqa: E402

from retvlp import (  # noqa: E402
    IBQTokenizerConfig,
    IBQTokenizerModel,
    KeepFitConfig,
    KeepFitForPreTraining,
    MaskedCLIPConfig,
    MaskedCLIPForPreTraining,
)

TINY_VIT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=32,
)
TINY_BERT = dict(
    model_type="bert",
    vocab_size=400,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    max_position_embeddings=300,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
TINY_HEADS = dict(
    bridge_num_hidden_layers=1,
    feature_decoder_hidden_size=16,
    feature_decoder_num_hidden_layers=1,
    feature_decoder_num_attention_heads=2,
    feature_decoder_intermediate_size=32,
    projection_dim=8,
)
TINY_RESNET = dict(
    model_type="resnet",
    embedding_size=16,
    hidden_sizes=[16, 32, 32, 64],
    depths=[1, 1, 1, 1],
    layer_type="bottleneck",
)
TINY_KEEPFIT = dict(
    vision_config=TINY_RESNET,
    text_config=TINY_BERT,
    projection_dim=16,
    codebook_size=64,
    code_dim=8,
    knowledge_attention_dropout=0.0,
)
TINY_IBQ = dict(
    image_size=32,
    base_channels=8,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    num_mid_res_blocks=1,
    norm_num_groups=4,
    codebook_size=64,
    code_dim=8,
    entropy_loss_weight=0.1,
)


# ------------------------------------------------------------------------------------ tiny models + batches
def tiny_maskedclip() -> MaskedCLIPForPreTraining:
    torch.manual_seed(0)
    config = MaskedCLIPConfig(vision_config=TINY_VIT, text_config=TINY_BERT, **TINY_HEADS)
    return MaskedCLIPForPreTraining(config).train()


def maskedclip_batch() -> dict:
    generator = torch.Generator().manual_seed(0)
    return dict(
        pixel_values=torch.randn(4, 3, 32, 32, generator=generator),
        input_ids=torch.randint(5, 400, (4, 9), generator=generator),
        unpaired_pixel_values=torch.randn(3, 3, 32, 32, generator=generator),
        labels=torch.tensor([0, 1, 0, 2]),
        noise=torch.rand(7, 16, generator=generator),
    )


def tiny_keepfit() -> KeepFitForPreTraining:
    torch.manual_seed(0)
    return KeepFitForPreTraining(KeepFitConfig(**TINY_KEEPFIT)).train()


def keepfit_batch() -> dict:
    generator = torch.Generator().manual_seed(0)

    def texts(n, length):
        ids = torch.randint(5, 400, (n, length), generator=generator)
        mask = torch.ones(n, length, dtype=torch.long)
        mask[-1, length // 2 :] = 0  # one padded row
        return ids, mask

    input_ids, attention_mask = texts(3, 7)
    elite_ids, elite_mask = texts(2, 9)
    return dict(
        pixel_values=torch.rand(3, 3, 64, 64, generator=generator),
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=torch.tensor([0, 1, 0]),
        elite_pixel_values=torch.rand(2, 3, 64, 64, generator=generator),
        elite_input_ids=elite_ids,
        elite_attention_mask=elite_mask,
    )


def tiny_ibq() -> IBQTokenizerModel:
    torch.manual_seed(0)
    return IBQTokenizerModel(IBQTokenizerConfig(**TINY_IBQ)).train()


def ibq_batch() -> dict:
    return dict(pixel_values=torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def tiny_mlm():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"})).train()


def mlm_batch() -> dict:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 400, (3, 12), generator=generator)
    labels = torch.full_like(input_ids, -100)
    chosen = torch.rand(3, 12, generator=generator) < 0.3
    labels[chosen] = input_ids[chosen]
    input_ids[chosen] = 4  # [MASK]
    return dict(input_ids=input_ids, labels=labels)


# name: (builder, batch, loss-term attributes of the output)
FAMILIES = {
    "MaskedCLIP": (tiny_maskedclip, maskedclip_batch, ("loss_mim", "loss_clip", "loss_mfd", "loss")),
    "KeepFIT V2": (
        tiny_keepfit,
        keepfit_batch,
        ("loss_itc_categorical", "loss_itc_elite", "loss_semantic", "loss_appearance", "loss"),
    ),
    "IBQ tokenizer": (
        tiny_ibq,
        ibq_batch,
        ("reconstruction_loss", "quantization_loss", "entropy_loss", "loss"),
    ),
    "text MLM": (tiny_mlm, mlm_batch, ("loss",)),
}


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _terms_and_grads(model, batch: dict, terms: tuple[str, ...], autocast_dtype=None):
    model.zero_grad(set_to_none=True)
    device_type = next(model.parameters()).device.type
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = model(**batch)
    out.loss.backward()
    values = {name: getattr(out, name).detach().float().cpu() for name in terms}
    grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return values, grads


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ------------------------------------------------------------------------------------------------- sections
def loss_parity(device: str) -> None:
    """Every loss term and the gradients on the CPU and on `device`, same weights and batch, fp32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"{'family':<14} {'term':<22} {'CPU':>12} {device:>12} {'rel. diff':>10}")
    for family, (build, make_batch, terms) in FAMILIES.items():
        model, batch = build(), make_batch()
        on_device = copy.deepcopy(model).to(device)
        cpu_values, cpu_grads = _terms_and_grads(model, batch, terms)
        dev_values, dev_grads = _terms_and_grads(on_device, _to(batch, device), terms)
        for name in terms:
            a, b = dev_values[name], cpu_values[name]
            print(f"{family:<14} {name:<22} {b.item():12.6f} {a.item():12.6f} {_relative(a, b):10.2e}")
        worst = max(cpu_grads, key=lambda n: _relative(dev_grads[n], cpu_grads[n]))
        print(
            f"{family:<14} {'gradients':<22} {len(cpu_grads)} tensors, largest relative difference "
            f"{_relative(dev_grads[worst], cpu_grads[worst]):.2e} ({worst})"
        )


def bf16_step(device: str) -> None:
    """A bf16-autocast step of the tiny MaskedCLIP and KeepFIT against their fp32 step."""
    for family in ("MaskedCLIP", "KeepFIT V2"):
        build, make_batch, terms = FAMILIES[family]
        model = build().to(device)
        batch = _to(make_batch(), device)
        fp32, _ = _terms_and_grads(model, batch, terms)
        bf16, grads = _terms_and_grads(model, batch, terms, autocast_dtype=torch.bfloat16)
        finite = all(bool(torch.isfinite(g).all()) for g in grads.values())
        print(
            f"{family}: bf16 loss {bf16['loss'].item():.5f} vs fp32 {fp32['loss'].item():.5f} "
            f"(rel. diff {_relative(bf16['loss'], fp32['loss']):.2e}); all {len(grads)} gradients finite: {finite}"
        )


SDPA_KERNELS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cuDNN",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "aten::_scaled_dot_product_fused_attention_overrideable": "fused (other backend)",
}


def _attention_sites(model) -> dict[str, torch.nn.Module]:
    if isinstance(model, MaskedCLIPForPreTraining):
        released = model.maskedclip
        sites = {
            "E_I encoder (masked and full passes)": released.vision_model,
            "bridge B": released.bridge,
            "BERT text encoder": released.text_model,
            "pixel decoder D_I": model.pixel_decoder,
            "feature decoder D_F": model.feature_decoder,
            "momentum teacher": model.momentum_vision_model,
        }
    else:
        released = model.keepfit
        sites = {"BERT text encoder": released.text_model}
        sites.update(
            {
                f"knowledge attention ({name})": module
                for name, module in model.named_modules()
                if type(module).__name__ == "KeepFitKnowledgeAttention"
            }
        )
    return {name: module for name, module in sites.items() if module is not None}


def _mark_sites(sites: dict, record_function) -> list:
    """Forward hooks that open a profiler range `site::<name>` around each module's forward."""
    handles, open_ranges = [], {}

    def hooks(site):
        def enter(module, args):
            open_ranges[site] = record_function(f"site::{site}")
            open_ranges[site].__enter__()

        def leave(module, args, output):
            open_ranges.pop(site).__exit__(None, None, None)

        return enter, leave

    for site, module in sites.items():
        enter, leave = hooks(site)
        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


def sdpa_backends(device: str, models: dict) -> None:
    """Which attention kernel runs under each attention site in a bf16 pretraining forward."""
    from torch.profiler import ProfilerActivity, profile, record_function

    for family, (model, batch) in models.items():
        handles = _mark_sites(_attention_sites(model), record_function)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        try:
            with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
                with profile(activities=activities) as prof:
                    model(**batch)
        finally:
            for handle in handles:
                handle.remove()
        found: dict[str, set] = {site: set() for site in _attention_sites(model)}
        for event in prof.events():
            kernel = SDPA_KERNELS.get(event.name)
            math_fallback = event.name == "aten::_scaled_dot_product_attention_math"
            if not (kernel or math_fallback):
                continue
            parent = event.cpu_parent
            while parent is not None and not parent.name.startswith("site::"):
                parent = parent.cpu_parent
            if parent is not None:
                found[parent.name.removeprefix("site::")].add(kernel or "math (unfused)")
        for site, kernels in found.items():
            print(f"{family}: {site:<44} {', '.join(sorted(kernels)) or 'no SDPA call (eager attention)'}")


def host_syncs(device: str, steps: dict) -> None:
    """CUDA host synchronisations in one steady-state training step of each model."""
    if not device.startswith("cuda"):
        print("not applicable on CPU (no device to synchronise with)")
        return
    for family, step in steps.items():
        step()  # warm-up: lazy initialisation may sync once
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        sites = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})
        print(
            f"{family}: {len(syncs)} host sync(s) per step" + (f" at {', '.join(sites[:6])}" if sites else "")
        )


def training_steps(device: str, smoke: bool) -> None:
    """The train_step_benchmark suites at the GPU sizes (ViT-L/16; ResNet-50 + BERT), eager and compiled."""
    args = argparse.Namespace(
        batch_size=None,
        image_size=None,
        steps=1 if smoke else 5,
        warmup=1 if smoke else 3,
        precision=["bf16"] if not smoke else ["fp32"],
        models=None,
        no_malloc_tuning=True,
        no_memory=False,
        encoder="vit-l",
    )
    tsb.ENCODER = tsb.ENCODERS[args.encoder]  # run_suite reads the module global (main() sets it there)
    peaks = {
        p: tsb.measure_matmul_peak(torch.bfloat16 if p == "bf16" else torch.float32, device)
        for p in args.precision
    }
    print(", ".join(f"matmul peak {p}: {v:.1f} GFLOP/s" for p, v in peaks.items()))
    # (compiling the references too would add minutes; the compiled ours is compared with the eager ones)
    suites = {
        "maskedclip": (["reference", "maskedclip", "maskedclip-compiled"], 64),
        "keepfit": (["resnet-bert-cl", "keepfit", "keepfit-compiled"], 16),
    }
    if smoke:  # the compiled-variant code path is the same for both suites; one compilation is enough here
        suites["keepfit"][0].remove("keepfit-compiled")
    for name, (models, batch_size) in suites.items():
        args.models, args.batch_size = models, 2 if smoke else batch_size
        tsb.run_suite(name, args, device, peaks)


def shrink_benchmark_sizes() -> None:
    """--cpu-smoke: the step benchmark's towers at tiny sizes, compiled without code generation."""
    tsb.ENCODERS["vit-l"] = {k: v for k, v in TINY_VIT.items() if not k.startswith("decoder_")}
    tsb.ENCODER = tsb.ENCODERS["vit-l"]
    tsb.PIXEL_DECODER = {k: v for k, v in TINY_VIT.items() if k.startswith("decoder_")}
    tsb.TEXT_TOWER = dict(TINY_BERT)
    # The bridge and feature decoder at their default sizes made compiling the smoke's model most of its time.
    tsb.MASKEDCLIP_HEADS = dict(TINY_HEADS)
    tsb.KEEPFIT_CONFIG = dict(TINY_KEEPFIT)
    tsb.CAPTION_TOKENS, tsb.KEEPFIT_PROMPT_TOKENS, tsb.KEEPFIT_CAPTION_TOKENS = 9, 7, 12
    tsb.SUITES["maskedclip"] = dataclasses.replace(
        tsb.SUITES["maskedclip"], image_size=TINY_VIT["image_size"]
    )
    tsb.SUITES["keepfit"] = dataclasses.replace(tsb.SUITES["keepfit"], image_size=64)
    tsb.COMPILE_BACKEND = "eager"
    tsb.MEASURE_MEMORY = False  # a CPU memory probe is a child process that would build the full-size model
    measure = tsb.measure_matmul_peak
    tsb.measure_matmul_peak = lambda dtype, device, size=256, repeats=3: measure(dtype, device, size, repeats)


def _training_step(model, batch: dict):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        with torch.autocast(batch["pixel_values"].device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _benchmark_models(device: str, smoke: bool) -> dict:
    """MaskedCLIP and KeepFIT at the benchmark sizes (tiny with --cpu-smoke) with their batches."""
    if smoke:
        return {
            "MaskedCLIP": (tiny_maskedclip().to(device), _to(maskedclip_batch(), device)),
            "KeepFIT V2": (tiny_keepfit().to(device), _to(keepfit_batch(), device)),
        }
    tsb.ENCODER = tsb.ENCODERS["vit-l"]  # build_maskedclip reads the module global
    batches = {
        "MaskedCLIP": ("maskedclip", tsb.build_maskedclip(device), 32, 224),
        "KeepFIT V2": ("keepfit", tsb.build_keepfit(device), 8, 512),
    }
    return {
        family: (model, tsb.make_inputs(key, b, size, device))
        for family, (key, model, b, size) in batches.items()
    }


SECTIONS = ("loss parity", "bf16 autocast step", "SDPA backends", "host syncs per step", "training steps")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="every section at tiny sizes on the CPU")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --cpu-smoke)")
    parser.add_argument("--skip", nargs="+", default=[], choices=SECTIONS, metavar="SECTION")
    args = parser.parse_args()
    device = args.device or ("cpu" if args.cpu_smoke else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            "No CUDA device: run on a GPU machine, or pass --cpu-smoke to check the script on CPU."
        )
    if args.cpu_smoke:
        shrink_benchmark_sizes()
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    print(f"gpu_check on {device} ({name}), torch {torch.__version__}, smoke={args.cpu_smoke}", flush=True)

    started = time.perf_counter()
    failed = []
    models = None
    for section in SECTIONS:
        if section in args.skip:
            continue
        print(f"\n== {section}", flush=True)
        section_start = time.perf_counter()
        try:
            if section == "loss parity":
                loss_parity(device)
            elif section == "bf16 autocast step":
                bf16_step(device)
            elif section == "SDPA backends":
                models = _benchmark_models(device, args.cpu_smoke)
                sdpa_backends(device, models)
            elif section == "host syncs per step":
                models = models or _benchmark_models(device, args.cpu_smoke)
                host_syncs(device, {family: _training_step(*pair) for family, pair in models.items()})
                models = None
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
            else:
                training_steps(device, args.cpu_smoke)
        except Exception:  # one section's failure must not hide the others' figures
            failed.append(section)
            traceback.print_exc()
        print(f"({section}: {time.perf_counter() - section_start:.1f} s)", flush=True)
    print(
        f"\ngpu_check finished in {time.perf_counter() - started:.0f} s; failed sections: {failed or 'none'}"
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
