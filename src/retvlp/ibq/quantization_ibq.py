# Generated from src/retvlp/common/quantization_ibq.py by utils/check_copies.py — do not edit;
# edit the source and run `python utils/check_copies.py --fix`.
"""Index Backpropagation Quantization (IBQ) and its losses (METHODS.md §2, "The codebook" and Eqs. 11–19).

IBQ scores every code against a feature vector, takes the arg-max code in the forward pass, and lets the
gradient flow through the softmax over ALL codes in the backward pass (straight-through on the one-hot
index rather than on the feature, as VQ-VAE does). Used twice in this project:

* by the IBQ visual tokenizer (`modeling_ibq.py`), which learns the codebook C (K = 16384 × 256);
* by KeepFIT's appearance knowledge injection, which quantises image features against the FROZEN C.

Both use this very module (single source in `retvlp/common/`; the `ibq/` and `keepfit/` folders hold
generated copies, `utils/check_copies.py`), and it is copied next to saved checkpoints for
``trust_remote_code`` loading, so it imports torch only — nothing from ``retvlp``, nothing from transformers.

Shapes: features `z` are `(..., D)` (any leading dims, e.g. `(B, h, w, D)`), the codebook is `(K, D)`,
logits and probabilities are `(..., K)`, indices are `(...)`.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class IBQQuantization:
    r"""Result of [`ibq_quantize`].

    quantized (`(..., D)`): straight-through quantised features. VALUE: exactly `codebook[indices]`;
        GRADIENT: that of `softmax(z·Cᵀ / T) @ C`, i.e. it reaches `z` (and the codebook, if it requires grad)
        through the soft assignment over all K codes.
    hard_quantized (`(..., D)`): `codebook[indices]`, the plain lookup; its gradient reaches only the chosen
        codebook rows (used by the codebook term β‖q_hard − sg(z)‖²).
    indices (`(...)`, int64): arg-max code of every feature vector.
    soft (`(..., K)`): softmax(logits), the soft assignment.
    logits (`(..., K)`): z·Cᵀ / temperature.
    """

    quantized: torch.Tensor
    hard_quantized: torch.Tensor
    indices: torch.Tensor
    soft: torch.Tensor
    logits: torch.Tensor


@dataclass
class IBQLosses:
    r"""The quantisation terms of the IBQ tokenizer, each a mean squared error over all elements.

    quantization (`()`): ‖q − z‖², q the straight-through output; gradient to z directly and, through q's
        soft path, to z and the codebook again.
    commitment (`()`): ‖sg(q_hard) − z‖²; pulls the encoder output towards its chosen code.
    codebook (`()`): β·‖q_hard − sg(z)‖² (β already applied); pulls the chosen codes towards the features.
    total (`()`): the sum of the three.
    """

    total: torch.Tensor
    quantization: torch.Tensor
    commitment: torch.Tensor
    codebook: torch.Tensor


class _SoftPathGradient(torch.autograd.Function):
    """`hard_quantized + (soft − sg(soft))·C` without the product: its value is exactly zero, so the forward
    returns the lookup as it is and only the backward does the `(N, K) × (K, D)` work.

    Gradients: to `hard_quantized` the identity; to `soft` `g·Cᵀ` (what the product would give); to `C`
    none through this path (`(soft − sg(soft))ᵀ·g` is exactly zero). The backward's matmul runs in the
    autocast dtype of the forward, as the product would have."""

    @staticmethod
    def forward(ctx, hard_quantized, soft, codebook):
        device_type = soft.device.type
        autocast = torch.is_autocast_enabled(device_type)
        ctx.matmul_dtype = torch.get_autocast_dtype(device_type) if autocast else soft.dtype
        ctx.save_for_backward(codebook)
        return hard_quantized.clone()

    @staticmethod
    def backward(ctx, grad_output):
        (codebook,) = ctx.saved_tensors
        dtype = ctx.matmul_dtype
        grad_soft = grad_output.to(dtype) @ codebook.to(dtype).t() if ctx.needs_input_grad[1] else None
        return grad_output, grad_soft, None


def ibq_quantize(z: torch.Tensor, codebook: torch.Tensor, temperature: float = 1.0) -> IBQQuantization:
    """Quantise `z` `(..., D)` against `codebook` `(K, D)` with IBQ's straight-through index.

    The definition (METHODS Eqs. 11–14) is::

        logits = z·Cᵀ / T,  soft = softmax(logits),  hard = one_hot(argmax logits)
        index  = hard − sg(soft) + soft,  q = index · C

    Materialising `hard` and `index` costs two more `(N, K)` tensors (N positions × K = 16384 codes: for a
    batch of 32 images at 16×16 tokens that is 0.5 GB each in float32) plus an `(N, K) × (K, D)` product for
    a one-hot. We compute the identical quantity as::

        q = C[argmax] + (soft − sg(soft)) · C

    Value: `soft − sg(soft)` is exactly zero, so q is exactly the lookup `C[argmax]` (no rounding at all,
    whereas `(hard − soft + soft)·C` is only equal up to float error). Gradient: the lookup is the `hard·C`
    term (its gradient reaches the chosen rows of C only, like `hardᵀ·g`), and `(soft − sg(soft))·C` has the
    gradient of `soft·C` through the softmax (to z and C), its direct gradient to C being
    `(soft − sg(soft))ᵀ·g = 0`: term by term the gradient of `index·C`. The value-zero product is never
    formed: `_SoftPathGradient` returns the lookup and supplies `g·Cᵀ` to the softmax in the backward (one
    `(N, K) × (K, D)` matmul and an `(N, K)` subtraction fewer per forward). When no gradient is needed
    (inference, or frozen codebook with z not requiring grad) the soft path is skipped.

    Args:
        z: features `(..., D)`.
        codebook: `(K, D)`; frozen or trainable, both work.
        temperature: T > 0 dividing the logits (1.0 in the paper).
    """
    if codebook.dim() != 2:
        raise ValueError(f"codebook must be (K, D), got shape {tuple(codebook.shape)}.")
    if z.shape[-1] != codebook.shape[1]:
        raise ValueError(
            f"z has feature size {z.shape[-1]} but the codebook has code_dim {codebook.shape[1]}; "
            f"expected z of shape (..., {codebook.shape[1]})."
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    leading = z.shape[:-1]
    flat = z.reshape(-1, z.shape[-1])
    logits = flat @ codebook.t()
    if temperature != 1.0:
        logits = logits / temperature
    soft = logits.softmax(dim=-1)
    indices = logits.argmax(dim=-1)
    hard_quantized = F.embedding(indices, codebook)
    needs_grad = torch.is_grad_enabled() and (z.requires_grad or codebook.requires_grad)
    quantized = _SoftPathGradient.apply(hard_quantized, soft, codebook) if needs_grad else hard_quantized
    num_codes = codebook.shape[0]
    return IBQQuantization(
        quantized=quantized.reshape(*leading, -1),
        hard_quantized=hard_quantized.reshape(*leading, -1),
        indices=indices.reshape(leading),
        soft=soft.reshape(*leading, num_codes),
        logits=logits.reshape(*leading, num_codes),
    )


def ibq_losses(
    z: torch.Tensor, quantized: torch.Tensor, hard_quantized: torch.Tensor, beta: float = 0.25
) -> IBQLosses:
    """The three quantisation terms of METHODS §2: ‖q−z‖² + ‖sg(q_hard)−z‖² + β‖q_hard−sg(z)‖².

    Args:
        z: encoder features `(..., D)` (before quantisation).
        quantized: the straight-through `IBQQuantization.quantized`, same shape.
        hard_quantized: `IBQQuantization.hard_quantized` (= codebook[indices]), same shape.
        beta: weight of the codebook term (0.25).
    """
    if not (z.shape == quantized.shape == hard_quantized.shape):
        raise ValueError(
            f"z, quantized and hard_quantized must have one shape, got {tuple(z.shape)}, "
            f"{tuple(quantized.shape)} and {tuple(hard_quantized.shape)}."
        )
    quantization = F.mse_loss(quantized, z)
    commitment = F.mse_loss(z, hard_quantized.detach())
    codebook = beta * F.mse_loss(hard_quantized, z.detach())
    return IBQLosses(
        total=quantization + commitment + codebook,
        quantization=quantization,
        commitment=commitment,
        codebook=codebook,
    )


def entropy_loss(logits: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Code-usage regulariser on `logits` `(..., K)`: mean per-sample entropy minus batch entropy.

    With p = softmax(logits / temperature) per position and p̄ its average over all positions::

        loss = mean_n H(p_n) − H(p̄),   H(p) = −Σ_k p_k log p_k   (natural log)

    Sign convention: the loss is MINIMISED. The first term wants each position to pick one code
    confidently (low entropy), the second wants the batch to spread over many codes (high entropy of
    the average). Range: [−log K, log K]; one confident code per position spread uniformly over all K
    codes gives −log K, every position choosing the same code gives 0. The low temperature (0.01) sharpens
    the distributions so that the terms track the arg-max assignment.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    flat = logits.reshape(-1, logits.shape[-1]).float() / temperature
    log_probs = flat.log_softmax(dim=-1)
    probs = log_probs.exp()
    per_sample_entropy = -(probs * log_probs).sum(dim=-1).mean()
    mean_probs = probs.mean(dim=0)
    batch_entropy = -(mean_probs * torch.log(mean_probs.clamp_min(1e-12))).sum()
    return per_sample_entropy - batch_entropy


def code_histogram(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """How often each code occurs in `indices` (any shape): `(num_codes,)` int64. Histograms of several
    batches (or processes) can be summed before [`usage_from_histogram`] / [`perplexity_from_histogram`]."""
    flat = indices.reshape(-1).long()
    if flat.numel() and (flat.min() < 0 or flat.max() >= num_codes):
        raise ValueError(f"indices must lie in [0, {num_codes}), got values in [{flat.min()}, {flat.max()}].")
    return torch.bincount(flat, minlength=num_codes)


def usage_from_histogram(counts: torch.Tensor) -> torch.Tensor:
    """Fraction of codes with a non-zero count (a float tensor in [0, 1])."""
    return (counts > 0).sum().float() / counts.numel()


def perplexity_from_histogram(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy of the code frequencies): the effective number of codes in use (1 … K)."""
    total = counts.sum()
    # Branch-free (0 for an empty histogram), so that the tokenizer's forward stays export / compile friendly.
    freqs = counts.double() / total.clamp_min(1)
    entropy = -(freqs * torch.log(freqs.clamp_min(1e-300))).sum()
    return torch.where(total > 0, entropy.exp(), torch.zeros_like(entropy)).float()


def codebook_usage(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Fraction of the `num_codes` codes that occur at least once in `indices` (any shape).

    Note that a batch of N positions can use at most N/K of the codebook: report usage over a whole
    evaluation set by summing [`code_histogram`]s and calling [`usage_from_histogram`].
    """
    return usage_from_histogram(code_histogram(indices, num_codes))


def codebook_perplexity(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Perplexity exp(H) of the code histogram of `indices`: K for uniform use of K codes, 1 for one code."""
    return perplexity_from_histogram(code_histogram(indices, num_codes))


__all__ = [
    "IBQLosses",
    "IBQQuantization",
    "code_histogram",
    "codebook_perplexity",
    "codebook_usage",
    "entropy_loss",
    "ibq_losses",
    "ibq_quantize",
    "perplexity_from_histogram",
    "usage_from_histogram",
]
