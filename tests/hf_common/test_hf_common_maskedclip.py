"""transformers' ModelTesterMixin and ConfigTester on the MaskedCLIP family.

Tiny sizes: 32 px images in 8 px patches (16 patches + cls), 2-layer ViT of width 32, 2-layer BERT of width 32
with a 99-token vocabulary, 7-token texts, batch 3.
"""

import torch

from retvlp import (
    MaskedCLIPConfig,
    MaskedCLIPForImageClassification,
    MaskedCLIPForPreTraining,
    MaskedCLIPModel,
    MaskedCLIPVisionConfig,
    MaskedCLIPVisionModel,
)

from .harness import ModelSpec, build_test_cases
from .upstream import require_upstream

upstream = require_upstream()
floats_tensor = upstream.modeling.floats_tensor
ids_tensor = upstream.modeling.ids_tensor
random_attention_mask = upstream.modeling.random_attention_mask

BATCH, SEQ, VOCAB, IMAGE, PATCH = 3, 7, 99, 32, 8
NUM_PATCHES = (IMAGE // PATCH) ** 2
TINY_VISION = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    image_size=IMAGE,
    patch_size=PATCH,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=32,
)
TINY_TEXT = dict(
    model_type="bert",
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)
TINY_HEADS = dict(
    bridge_num_hidden_layers=1,
    feature_decoder_hidden_size=16,
    feature_decoder_num_hidden_layers=1,
    feature_decoder_num_attention_heads=2,
    feature_decoder_intermediate_size=32,
    projection_dim=16,
)


def tiny_config() -> MaskedCLIPConfig:
    return MaskedCLIPConfig(vision_config=dict(TINY_VISION), text_config=dict(TINY_TEXT), **TINY_HEADS)


def tiny_vision_config() -> MaskedCLIPVisionConfig:
    return MaskedCLIPVisionConfig(**TINY_VISION)


def pixels(config, batch):
    return {"pixel_values": floats_tensor([batch, 3, IMAGE, IMAGE])}


def pairs(config, batch):
    return {
        "input_ids": ids_tensor([batch, SEQ], VOCAB),
        "attention_mask": random_attention_mask([batch, SEQ]),
        "pixel_values": floats_tensor([batch, 3, IMAGE, IMAGE]),
    }


def dual_encoder_batch(config, batch):
    # as transformers' CLIPModel tester: the contrastive loss is computed too
    return {**pairs(config, batch), "return_loss": True}


def pretraining_batch(config, batch):
    # `noise` fixes the random masking (as transformers' ViT-MAE tests do), so that two forwards agree; the
    # unpaired images are left out: their rows follow the paired ones in the outputs, which the batching test
    # cannot slice.
    return {**pairs(config, batch), "labels": ids_tensor([batch], 3), "noise": torch.rand(batch, NUM_PATCHES)}


VISION_TESTER = dict(
    batch_size=BATCH,
    image_size=IMAGE,
    patch_size=PATCH,
    num_channels=3,
    seq_length=NUM_PATCHES + 1,
    hidden_size=TINY_VISION["hidden_size"],
    num_hidden_layers=TINY_VISION["num_hidden_layers"],
    num_attention_heads=TINY_VISION["num_attention_heads"],
)
COMPOSITE_TESTER = dict(
    batch_size=BATCH,
    seq_length=SEQ,
    image_size=IMAGE,
    patch_size=PATCH,
    hidden_size=TINY_TEXT["hidden_size"],
    num_hidden_layers=TINY_TEXT["num_hidden_layers"],
    num_attention_heads=TINY_TEXT["num_attention_heads"],
    vision_config=TINY_VISION,
    text_config=TINY_TEXT,
)

NO_TOKEN_VOCABULARY = "image-only model: no token vocabulary, so no token embeddings to resize"
# A dual encoder has no top-level hidden states / attentions (as transformers' CLIPModel, whose tester skips the
# same tests): each tower reports its own, checked by test_get_image_features_* / test_get_text_features_* here
# and by the MaskedCLIPVisionModel tester; the generic tests expect one stack of num_hidden_layers layers.
PER_TOWER = (
    "two-tower model: hidden states and attentions are per tower (tested per tower), none at the top level"
)
COMPOSITE_SWITCHED_OFF = {
    "test_hidden_states_output": PER_TOWER,
    "test_attention_outputs": PER_TOWER,
    "test_retain_grad_hidden_states_attentions": PER_TOWER,
}

SPECS = [
    ModelSpec(
        model_class=MaskedCLIPModel,
        get_config=tiny_config,
        get_inputs=dual_encoder_batch,
        tester=COMPOSITE_TESTER,
        attributes={
            "additional_model_inputs": (["pixel_values"], "the second modality (as CLIPModel's tester)")
        },
        switched_off=COMPOSITE_SWITCHED_OFF,
        config_tester=dict(
            config_class=MaskedCLIPConfig,
            has_text_modality=False,
            common_properties=["projection_dim", "logit_scale_init_value"],
            projection_dim=16,
            bridge_num_hidden_layers=1,
        ),
    ),
    ModelSpec(
        model_class=MaskedCLIPVisionModel,
        get_config=tiny_vision_config,
        get_inputs=pixels,
        tester=VISION_TESTER,
        image_only=True,
        switched_off={
            "test_resize_tokens_embeddings*": NO_TOKEN_VOCABULARY,
            "test_resize_embeddings_untied*": NO_TOKEN_VOCABULARY,
        },
        config_tester=dict(config_class=MaskedCLIPVisionConfig, has_text_modality=False, **TINY_VISION),
    ),
    ModelSpec(
        model_class=MaskedCLIPForImageClassification,
        get_config=tiny_vision_config,
        get_inputs=pixels,
        tester=VISION_TESTER,
        image_only=True,
        switched_off={
            "test_resize_tokens_embeddings*": NO_TOKEN_VOCABULARY,
            "test_resize_embeddings_untied*": NO_TOKEN_VOCABULARY,
        },
    ),
]

SPECS.append(
    ModelSpec(
        model_class=MaskedCLIPForPreTraining,
        get_config=tiny_config,
        get_inputs=pretraining_batch,
        # hidden states / attentions are those of E_I's masked pass, cls + the visible patches at mask ratio
        # 0.75 (as transformers' ViTMAEForPreTraining tester)
        tester={**COMPOSITE_TESTER, "seq_length": 1 + int(NUM_PATCHES * (1 - 0.75))},
        attributes={
            "additional_model_inputs": (["input_ids"], "the texts of the pairs"),
        },
        auto_names=("MODEL_FOR_PRETRAINING_MAPPING_NAMES",),
    )
)

globals().update(build_test_cases(SPECS, upstream, __name__))
