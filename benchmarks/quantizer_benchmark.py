"""The IBQ straight-through quantiser (KeepFIT's appearance branch, the IBQ tokenizer): three formulations of
the same value and gradient, timed forward + backward in one process, interleaved.

* `literal`: METHODS Eqs. 11-14 as written, `index = hard − sg(soft) + soft`, `q = index · C` (two more
  `(N, K)` tensors and an `(N, K) × (K, D)` product of a one-hot);
* `zero-product`: `q = C[argmax] + (soft − sg(soft)) · C`, the formulation before 0.3: the lookup plus a
  product whose value is exactly zero, formed in the forward only for its gradient;
* `ibq_quantize`: the package's (`_SoftPathGradient`): the lookup in the forward, the soft path's `g · Cᵀ`
  supplied in the backward only.

Sizes default to KeepFIT's: b = 2 categorical + 2 elite images at 512 px → a 16 × 16 map each, N = 1024
positions, against the frozen K = 16384 × D = 256 codebook (gradient to the features only). Prints the median
step of each, the ratios, and the largest gradient difference against the literal formula.

    python benchmarks/quantizer_benchmark.py
    python benchmarks/quantizer_benchmark.py --positions 4096 --precision bf16
"""

import argparse
import time

import torch
import torch.nn.functional as F

from retvlp.keepfit.quantization_ibq import ibq_quantize


def literal(z, codebook):
    logits = z @ codebook.t()
    soft = logits.softmax(-1)
    hard = F.one_hot(logits.argmax(-1), codebook.shape[0]).to(soft.dtype)
    return (hard - soft.detach() + soft) @ codebook


def zero_product(z, codebook):
    logits = z @ codebook.t()
    soft = logits.softmax(-1)
    return F.embedding(logits.argmax(-1), codebook) + (soft - soft.detach()) @ codebook


def package(z, codebook):
    return ibq_quantize(z, codebook).quantized


FORMULATIONS = {"literal": literal, "zero-product": zero_product, "ibq_quantize": package}


def step(function, z, codebook, upstream, dtype):
    z = z.detach().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        quantized = function(z, codebook)
    (quantized.float() * upstream).sum().backward()
    return quantized.detach().float(), z.grad


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--positions", type=int, default=1024, help="N: feature-map positions per step")
    parser.add_argument("--codes", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(args.positions, args.dim, generator=generator)
    codebook = torch.randn(args.codes, args.dim, generator=generator) / args.dim**0.5
    upstream = torch.randn(args.positions, args.dim, generator=generator)
    print(
        f"N={args.positions} positions, K={args.codes} codes x D={args.dim}, {args.precision}, "
        f"threads={torch.get_num_threads()}, frozen codebook"
    )

    reference_value, reference_grad = step(literal, z, codebook, upstream, args.precision)
    times = {name: [] for name in FORMULATIONS}
    for function in FORMULATIONS.values():  # warm-up
        step(function, z, codebook, upstream, args.precision)
    for _ in range(args.steps):
        for name, function in FORMULATIONS.items():
            start = time.perf_counter()
            step(function, z, codebook, upstream, args.precision)
            times[name].append(time.perf_counter() - start)
    median = {name: sorted(values)[len(values) // 2] for name, values in times.items()}
    for name, function in FORMULATIONS.items():
        value, grad = step(function, z, codebook, upstream, args.precision)
        print(
            f"{name:<13} {1000 * median[name]:8.1f} ms  value vs literal {float((value - reference_value).abs().max()):.1e}"
            f"  gradient vs literal {float((grad - reference_grad).abs().max() / reference_grad.abs().max()):.1e} (rel.)"
        )
    print(
        f"ibq_quantize is {median['literal'] / median['ibq_quantize']:.2f}x the literal formula and "
        f"{median['zero-product'] / median['ibq_quantize']:.2f}x the zero-product formulation (step-time ratios)"
    )


if __name__ == "__main__":
    main()
