"""The card layer's part of each model family: the card registry (`register_card`: the template and citation
files in `retvlp/model_cards/`, the zero-shot prompt of the card's example and the architecture rows) and the
shared pieces of the architecture rows (a checkpoint's towers in words, from its `config.json`: `vit_name`,
`resnet_name`, `bert_description`, and `fmt` for a number).

Each built-in family's rows and `register_card(...)` call live in its own module of
`retvlp.model_card.families` (`families/maskedclip.py`, ...), found, not listed: the first read of the registry
imports every module of that package. The model facts (title, classes) stay in `retvlp.families`."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..families import family_names, get_family

_VIT_NAMES = {
    (192, 12, 3): "ViT-Ti",
    (384, 12, 6): "ViT-S",
    (768, 12, 12): "ViT-B",
    (1024, 24, 16): "ViT-L",
    (1280, 32, 16): "ViT-H",
}
_RESNET_NAMES = {
    ("basic", (2, 2, 2, 2)): "ResNet-18",
    ("basic", (3, 4, 6, 3)): "ResNet-34",
    ("bottleneck", (3, 4, 6, 3)): "ResNet-50",
    ("bottleneck", (3, 4, 23, 3)): "ResNet-101",
    ("bottleneck", (3, 8, 36, 3)): "ResNet-152",
}


def fmt(value: Any) -> str:
    """A setting's value as a card shows it (a float in its shortest form: 0.0001 → "0.0001", 1e-05 → "1e-05")."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def vit_name(vision: Mapping) -> str:
    """A ViT vision config in words: its standard name where it has one (ViT-B/16, ...), shape and input size."""
    width = vision.get("hidden_size")
    depth = vision.get("num_hidden_layers")
    heads = vision.get("num_attention_heads")
    patch = vision.get("patch_size")
    size = vision.get("image_size")
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    size = size[0] if isinstance(size, (list, tuple)) else size
    known = _VIT_NAMES.get((width, depth, heads))
    shape = f"width {width}, depth {depth}, {heads} heads, MLP {vision.get('intermediate_size')}"
    name = f"{known}/{patch}" if known else f"ViT/{patch} ({shape})"
    if known:
        name += f" ({shape})"
    return f"{name}, {size}×{size} px input"


def bert_description(text: Mapping) -> str:
    """A BERT-like text config in words: width, depth, heads, vocabulary, positions."""
    width, depth, heads = (
        text.get("hidden_size"),
        text.get("num_hidden_layers"),
        text.get("num_attention_heads"),
    )
    size = " (BERT-base size)" if (width, depth, heads) == (768, 12, 12) else ""
    kind = "BERT" if text.get("model_type", "bert") == "bert" else str(text.get("model_type"))
    return (
        f"{kind}{size}: width {width}, {depth} layers, {heads} heads, vocabulary {text.get('vocab_size')}, "
        f"up to {text.get('max_position_embeddings')} positions"
    )


def resnet_name(vision: Mapping) -> str:
    """A ResNet vision config in words: its standard name where it has one (ResNet-50, ...), blocks, widths."""
    if vision.get("model_type") != "resnet":
        sizes = vision.get("hidden_sizes") or vision.get("hidden_size")
        return f"{vision.get('model_type')} backbone (widths {sizes})"
    layer_type = vision.get("layer_type", "bottleneck")
    depths = tuple(vision.get("depths") or ())
    sizes = list(vision.get("hidden_sizes") or ())
    known = _RESNET_NAMES.get((layer_type, depths))
    standard = sizes == ([256, 512, 1024, 2048] if layer_type == "bottleneck" else [64, 128, 256, 512])
    detail = f"{layer_type} blocks, depths {list(depths)}, widths {sizes}"
    if known and standard:
        return f"{known} ({detail})"
    return f"custom ResNet ({detail})"


# --------------------------------------------------------------------------- the card registry
@dataclass(frozen=True)
class CardParts:
    """A family's card: its template and citation files (in `retvlp/model_cards/`), the prompt of the card's
    zero-shot example, and `architecture(config dict) -> [(row, text)]`."""

    family: str
    template: str
    citation: str
    prompt: str
    architecture: Callable[[Mapping], list[tuple[str, str]]]


_CARDS: dict[str, CardParts] = {}

# The package of the built-in families' cards: one module per family, each calling `register_card`.
BUILTIN_CARDS = "retvlp.model_card.families"
_builtins_loaded = False


def _load_builtin_cards() -> None:
    """Import every module of `retvlp.model_card.families` (in name order; each registers its family's card),
    once: on the first read or change of the card registry."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # first: the card modules call `register_card`, which comes back here
    try:
        package = importlib.import_module(BUILTIN_CARDS)
        found = pkgutil.iter_modules(package.__path__, BUILTIN_CARDS + ".")
        for module in sorted(found, key=lambda m: m.name):
            importlib.import_module(module.name)
    except BaseException:
        _builtins_loaded = False  # the next read tries again (and raises again), never a partial registry
        raise


def register_card(
    family: str,
    *,
    template: str,
    citation: str,
    prompt: str,
    architecture: Callable[[Mapping], list[tuple[str, str]]],
    exist_ok: bool = False,
) -> CardParts:
    """Register `family`'s card (a second registration of a name, a built-in one included, is an error unless
    `exist_ok`)."""
    _load_builtin_cards()
    if family in _CARDS and not exist_ok:
        raise ValueError(f"the card of model family {family!r} is already registered.")
    parts = _CARDS[family] = CardParts(family, template, citation, prompt, architecture)
    return parts


def unregister_card(family: str) -> None:
    _load_builtin_cards()
    _CARDS.pop(family, None)


def card_families() -> tuple[str, ...]:
    """The families with a card (a checkpoint's main `model_type` is the family name), in the order of the
    family registry whichever card module was imported first."""
    _load_builtin_cards()
    order = {name: i for i, name in enumerate(family_names())}
    return tuple(sorted(_CARDS, key=lambda name: order.get(name, len(order))))


def card_parts(family: str) -> CardParts:
    """`family`'s card; an error naming the card families when it has none."""
    get_family(family)  # an unregistered name is refused with the registered families
    _load_builtin_cards()
    if family not in _CARDS:
        raise ValueError(
            f"family {family!r} has no model card template; card families: {list(card_families())}"
        )
    return _CARDS[family]


__all__ = [
    "BUILTIN_CARDS",
    "CardParts",
    "bert_description",
    "card_families",
    "card_parts",
    "fmt",
    "register_card",
    "resnet_name",
    "unregister_card",
    "vit_name",
]
