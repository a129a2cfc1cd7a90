"""KeepFIT V2's card: its architecture rows and its registration (`register_card`: template, citation and
the prompt of the card's zero-shot example)."""

from __future__ import annotations

from collections.abc import Mapping

from ..architecture import bert_description, fmt, register_card, resnet_name


def keepfit_architecture(config: Mapping) -> list[tuple[str, str]]:
    vision = config.get("vision_config") or {}
    text = config.get("text_config") or {}
    layers = config.get("text_pooling_layers")
    rows = [
        ("Image encoder E_v", resnet_name(vision)),
        (
            "Text encoder E_t",
            f"{bert_description(text)}; pooling {config.get('text_pooling')} (layers {layers})",
        ),
        ("Shared embedding space", f"{config.get('projection_dim')}-d, learnable logit scale"),
        (
            "Semantic knowledge injection",
            (
                f"{config.get('knowledge_num_heads')}-head cross-attention, dropout "
                f"{fmt(config.get('knowledge_attention_dropout'))}, softmax over "
                f"{config.get('semantic_softmax_over')} (pretraining only: in KeepFitForPreTraining)"
            )
            if config.get("use_semantic_injection", True)
            else "disabled",
        ),
        (
            "Appearance knowledge injection",
            (
                f"frozen IBQ codebook K×D = {config.get('codebook_size')}×{config.get('code_dim')}, "
                f"attention temperature {fmt(config.get('appearance_temperature'))} (pretraining only: in "
                "KeepFitForPreTraining, not in these weights)"
            )
            if config.get("use_appearance_injection", True)
            else f"disabled (codebook {config.get('codebook_size')}×{config.get('code_dim')} unused)",
        ),
        (
            "Pretraining objective",
            "L_itc^p + L_itc^m + λ1·L_EK^s + λ2·L_EK^a with "
            f"λ1 = {fmt(config.get('lambda_semantic'))}, λ2 = {fmt(config.get('lambda_appearance'))}",
        ),
    ]
    return rows


register_card(
    "keepfit",
    template="keepfit.md",
    citation="keepfit.bib",
    prompt="A fundus photograph of {}.",
    architecture=keepfit_architecture,
)
