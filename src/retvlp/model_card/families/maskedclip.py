"""MaskedCLIP's card: its architecture rows and its registration (`register_card`: template, citation and
the prompt of the card's zero-shot example)."""

from __future__ import annotations

from collections.abc import Mapping

from ..architecture import bert_description, fmt, register_card, vit_name


def maskedclip_architecture(config: Mapping) -> list[tuple[str, str]]:
    vision = config.get("vision_config") or {}
    text = config.get("text_config") or {}
    rows = [("Image encoder E_I", f"{vit_name(vision)} (MAE-style, encodes visible patches + cls)")]
    rows.append(
        (
            "Pixel decoder D_I",
            f"width {vision.get('decoder_hidden_size')}, {vision.get('decoder_num_hidden_layers')} blocks, "
            f"{vision.get('decoder_num_attention_heads')} heads; mask ratio {fmt(vision.get('mask_ratio'))}, "
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
                f"{fmt(config.get('momentum'))} (pretraining only: in MaskedCLIPForPreTraining, not in these weights)",
            )
        )
    rows.append(("Text encoder E_T", bert_description(text)))
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
            f"λ_clip = {fmt(config.get('lambda_clip'))}, λ_mfd = {fmt(config.get('lambda_mfd'))} "
            f"(terms enabled: {', '.join(losses) or 'none'})",
        )
    )
    return rows


register_card(
    "maskedclip",
    template="maskedclip.md",
    citation="maskedclip.bib",
    prompt="a fundus photograph of {}",
    architecture=maskedclip_architecture,
)
