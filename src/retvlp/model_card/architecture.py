"""The card layer's part of each model family: the architecture of a checkpoint in words (from its
`config.json`), and the family's card registration (`register_card`: the template and citation files in
`retvlp/model_cards/`, the zero-shot prompt of the card's example and the architecture rows), next to the rows.
The model facts (title, classes) stay in `retvlp.families`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..families import get_family

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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _vit_name(vision: Mapping) -> str:
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


def _bert_description(text: Mapping) -> str:
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


def _resnet_name(vision: Mapping) -> str:
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


def maskedclip_architecture(config: Mapping) -> list[tuple[str, str]]:
    vision = config.get("vision_config") or {}
    text = config.get("text_config") or {}
    rows = [("Image encoder E_I", f"{_vit_name(vision)} (MAE-style, encodes visible patches + cls)")]
    rows.append(
        (
            "Pixel decoder D_I",
            f"width {vision.get('decoder_hidden_size')}, {vision.get('decoder_num_hidden_layers')} blocks, "
            f"{vision.get('decoder_num_attention_heads')} heads; mask ratio {_fmt(vision.get('mask_ratio'))}, "
            f"per-patch normalised pixel targets: {'yes' if vision.get('norm_pix_loss', True) else 'no'} "
            "(pretraining only: in MaskedCLIPForPreTraining, not in these weights)",
        )
    )
    bridge = (
        f"{config.get('bridge_num_hidden_layers')} transformer blocks at the encoder width"
        if config.get("use_bridge", True)
        else "disabled (CLIP head directly on E_I)"
    )
    rows.append(("Bridge transformer B", bridge))
    if config.get("use_mfd", True):
        rows.append(
            (
                "Feature decoder D_F",
                f"width {config.get('feature_decoder_hidden_size')}, "
                f"{config.get('feature_decoder_num_hidden_layers')} blocks, "
                f"{config.get('feature_decoder_num_attention_heads')} heads; momentum encoder EMA "
                f"{_fmt(config.get('momentum'))} (pretraining only: in MaskedCLIPForPreTraining, not in these weights)",
            )
        )
    rows.append(("Text encoder E_T", _bert_description(text)))
    rows.append(
        (
            "Shared embedding space",
            f"{config.get('projection_dim')}-d, image token: {config.get('clip_image_pooling', 'cls')}, "
            "learnable logit scale",
        )
    )
    losses = [name for name in ("mim", "clip", "mfd") if config.get(f"use_{name}", True)]
    rows.append(
        (
            "Pretraining objective",
            "L_mim + λ_clip·L_lg_clip + λ_mfd·L_mfd with "
            f"λ_clip = {_fmt(config.get('lambda_clip'))}, λ_mfd = {_fmt(config.get('lambda_mfd'))} "
            f"(terms enabled: {', '.join(losses) or 'none'})",
        )
    )
    return rows


def keepfit_architecture(config: Mapping) -> list[tuple[str, str]]:
    vision = config.get("vision_config") or {}
    text = config.get("text_config") or {}
    layers = config.get("text_pooling_layers")
    rows = [
        ("Image encoder E_v", _resnet_name(vision)),
        (
            "Text encoder E_t",
            f"{_bert_description(text)}; pooling {config.get('text_pooling')} (layers {layers})",
        ),
        ("Shared embedding space", f"{config.get('projection_dim')}-d, learnable logit scale"),
        (
            "Semantic knowledge injection",
            (
                f"{config.get('knowledge_num_heads')}-head cross-attention, dropout "
                f"{_fmt(config.get('knowledge_attention_dropout'))}, softmax over "
                f"{config.get('semantic_softmax_over')} (pretraining only: in KeepFitForPreTraining)"
            )
            if config.get("use_semantic_injection", True)
            else "disabled",
        ),
        (
            "Appearance knowledge injection",
            (
                f"frozen IBQ codebook K×D = {config.get('codebook_size')}×{config.get('code_dim')}, "
                f"attention temperature {_fmt(config.get('appearance_temperature'))} (pretraining only: in "
                "KeepFitForPreTraining, not in these weights)"
            )
            if config.get("use_appearance_injection", True)
            else f"disabled (codebook {config.get('codebook_size')}×{config.get('code_dim')} unused)",
        ),
        (
            "Pretraining objective",
            "L_itc^p + L_itc^m + λ1·L_EK^s + λ2·L_EK^a with "
            f"λ1 = {_fmt(config.get('lambda_semantic'))}, λ2 = {_fmt(config.get('lambda_appearance'))}",
        ),
    ]
    return rows


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


def register_card(
    family: str,
    *,
    template: str,
    citation: str,
    prompt: str,
    architecture: Callable[[Mapping], list[tuple[str, str]]],
    exist_ok: bool = False,
) -> CardParts:
    """Register `family`'s card (a second registration of a name is an error unless `exist_ok`)."""
    if family in _CARDS and not exist_ok:
        raise ValueError(f"the card of model family {family!r} is already registered.")
    parts = _CARDS[family] = CardParts(family, template, citation, prompt, architecture)
    return parts


def unregister_card(family: str) -> None:
    _CARDS.pop(family, None)


def card_families() -> tuple[str, ...]:
    """The families with a card: a checkpoint's main `model_type` is the family name."""
    return tuple(_CARDS)


def card_parts(family: str) -> CardParts:
    """`family`'s card; an error naming the card families when it has none."""
    get_family(family)  # an unregistered name is refused with the registered families
    if family not in _CARDS:
        raise ValueError(
            f"family {family!r} has no model card template; card families: {list(card_families())}"
        )
    return _CARDS[family]


register_card(
    "maskedclip",
    template="maskedclip.md",
    citation="maskedclip.bib",
    prompt="a fundus photograph of {}",
    architecture=maskedclip_architecture,
)
register_card(
    "keepfit",
    template="keepfit.md",
    citation="keepfit.bib",
    prompt="A fundus photograph of {}.",
    architecture=keepfit_architecture,
)
