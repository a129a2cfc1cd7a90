"""The few pieces of transformers' modelling machinery that the checkpoint code needs, written on its public API.

A saved checkpoint carries its own code and is loaded (`trust_remote_code=True`) with whatever transformers
release the user has. transformers' own model files are generated self-contained for that reason; ours import
only what transformers documents as public: top-level names (`from transformers import AttentionInterface`),
the output classes (`transformers.modeling_outputs`), `transformers.utils.ModelOutput` and the
`transformers.initialization` helpers (`tests/test_checkpoint_code_imports.py` enforces the rule). What the code
used to import from private modules is here instead:

- `can_return_tuple`: transformers' decorator of the same name (`transformers.utils.generic`, not public): a
  forward that builds a `ModelOutput` returns `output.to_tuple()` when `return_dict=False` is passed or set in
  the config.
- `attention_function`: the attention kernel named by `config._attn_implementation`, through the public
  `AttentionInterface` (what `ALL_ATTENTION_FUNCTIONS.get_interface` does; that method is missing in 5.0).
- `activation_module`: the activation modules of transformers' `ACT2FN` (`transformers.activations`, not public)
  for the names our configurations use, as the same torch modules.

The single source lives in `retvlp/common/`; each family folder holds a generated copy (`utils/check_copies.py`).
Imports only the standard library, torch and transformers' public API.
"""

from collections.abc import Callable
from functools import wraps

from torch import nn
from transformers import AttentionInterface

# `hidden_act` name → the torch module transformers' ACT2FN builds for it (same computation: ACT2FN["gelu"] is
# GELUActivation, which calls nn.functional.gelu; "relu" is nn.ReLU; "silu" / "swish" nn.SiLU; "gelu_pytorch_tanh"
# nn.functional.gelu with the tanh approximation).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def activation_module(name: str) -> nn.Module:
    """A new activation module for a config's `hidden_act` name (see `ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"Unsupported activation {name!r}: one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()


# One instance over transformers' class-wide registry: `AttentionInterface.register(...)` (and the kernels
# transformers registers itself) are seen by every instance.
_ATTENTION_FUNCTIONS = AttentionInterface()


def attention_function(implementation: str | None, eager: Callable) -> Callable:
    """The attention kernel for `config._attn_implementation`: `eager` for `"eager"` (or unset), else the one
    registered under that name (`"sdpa"`, `"flash_attention_2"`, `"flex_attention"`, a registered custom kernel).
    Every kernel takes `(module, query, key, value, attention_mask, dropout=..., scaling=..., **kwargs)` with
    `(batch, heads, tokens, head_dim)` tensors and returns `(output (batch, tokens, heads, head_dim), weights)`."""
    if implementation is None or implementation == "eager":
        return eager
    if implementation not in _ATTENTION_FUNCTIONS:
        raise KeyError(
            f"{implementation!r} is not an attention implementation registered in transformers' AttentionInterface "
            f"(known: {sorted(_ATTENTION_FUNCTIONS)})."
        )
    return _ATTENTION_FUNCTIONS[implementation]


def can_return_tuple(function):
    """Decorate a model method returning a `ModelOutput`: with `return_dict=False` (the keyword, else
    `self.config.return_dict`) it returns `output.to_tuple()` (the `None` fields left out), as transformers'
    decorator of the same name does."""

    @wraps(function)
    def wrapper(self, *args, **kwargs):
        return_dict = self.config.return_dict if hasattr(self, "config") else True
        passed = kwargs.pop("return_dict", return_dict)
        if passed is not None:
            return_dict = passed
        output = function(self, *args, **kwargs)
        if not return_dict and not isinstance(output, tuple):
            output = output.to_tuple()
        return output

    return wrapper


__all__ = ["ACTIVATIONS", "activation_module", "attention_function", "can_return_tuple"]
