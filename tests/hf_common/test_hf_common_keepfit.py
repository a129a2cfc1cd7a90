"""transformers' ModelTesterMixin and ConfigTester on the KeepFIT V2 family.

Tiny sizes: 32 px images through a 2-stage bottleneck ResNet (16 → 32 channels; stem 8 × 8, last map 4 × 4;
bottleneck widths of 4+ channels, as width-2 bottlenecks crash torch's channels-last backward on CPU), a
2-layer BERT of width 32 with a 99-token vocabulary, 7-token texts, batch 3, a 16 × 8 appearance codebook.
"""

from retvlp import (
    KeepFitConfig,
    KeepFitForImageClassification,
    KeepFitForPreTraining,
    KeepFitModel,
    KeepFitVisionModel,
)

from .harness import ModelSpec, build_test_cases
from .upstream import require_upstream

upstream = require_upstream()
floats_tensor = upstream.modeling.floats_tensor
ids_tensor = upstream.modeling.ids_tensor
random_attention_mask = upstream.modeling.random_attention_mask

BATCH, ELITE, SEQ, ELITE_SEQ, VOCAB, IMAGE = 3, 2, 7, 9, 99, 32
TINY_VISION = dict(
    model_type="resnet",
    embedding_size=16,
    hidden_sizes=[16, 32],
    depths=[1, 1],
    layer_type="bottleneck",
)
NUM_STAGES, STEM_MAP = len(TINY_VISION["depths"]), IMAGE // 4
TINY_TEXT = dict(
    model_type="bert",
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)
TINY_HEADS = dict(projection_dim=16, codebook_size=16, code_dim=8, knowledge_num_heads=2)


def tiny_config() -> KeepFitConfig:
    return KeepFitConfig(vision_config=dict(TINY_VISION), text_config=dict(TINY_TEXT), **TINY_HEADS)


def pixels(config, batch):
    return {"pixel_values": floats_tensor([batch, 3, IMAGE, IMAGE])}


def dual_encoder_batch(config, batch):
    # as transformers' CLIPModel tester: the contrastive loss is computed too
    return {
        "input_ids": ids_tensor([batch, SEQ], VOCAB),
        "attention_mask": random_attention_mask([batch, SEQ]),
        "pixel_values": floats_tensor([batch, 3, IMAGE, IMAGE]),
        "return_loss": True,
    }


def pretraining_batch(config, batch):
    # The elite batch (2) is not a multiple of the public one (3): the batching test keeps it whole, as the
    # knowledge attention of every public sample reads the whole elite batch.
    public = dual_encoder_batch(config, batch)
    del public["return_loss"]
    return {
        **public,
        "labels": ids_tensor([batch], 3),
        "elite_pixel_values": floats_tensor([ELITE, 3, IMAGE, IMAGE]),
        # below VOCAB - 15: test_resize_tokens_embeddings shrinks the vocabulary by 15 and clamps input_ids only
        "elite_input_ids": ids_tensor([ELITE, ELITE_SEQ], VOCAB - 15),
        "elite_attention_mask": random_attention_mask([ELITE, ELITE_SEQ]),
    }


# The image features' expected hidden-state count is read from num_hidden_layers (text: 2 layers + embeddings)
# and matches the ResNet's: the stem + 2 stages.
COMPOSITE_TESTER = dict(
    batch_size=BATCH,
    seq_length=SEQ,
    image_size=IMAGE,
    hidden_size=TINY_TEXT["hidden_size"],
    num_hidden_layers=TINY_TEXT["num_hidden_layers"],
    num_attention_heads=TINY_TEXT["num_attention_heads"],
    vision_config=TINY_VISION,
    text_config=TINY_TEXT,
)
VISION_TESTER = dict(
    batch_size=BATCH,
    image_size=IMAGE,
    num_channels=3,
    num_stages=NUM_STAGES,
    first_feature_map_size=STEM_MAP,
    hidden_size=TINY_VISION["hidden_sizes"][-1],
)

RESNET_NO_ATTENTION = "the image encoder is a ResNet: no attention layers"
FEATURE_MAP_SHAPE = (
    "get_image_features().last_hidden_state is the ResNet's (batch, channels, h, w) map; the upstream shape check "
    "expects (batch, tokens, hidden) and a hidden-size field that ResNetConfig (hidden_sizes) lacks"
)
RESNET_NO_EMBEDDINGS = "a ResNet has no input embeddings (a conv stem on pixels) and no token vocabulary"
# As for transformers' CLIPModel (whose tester skips the same tests): a dual encoder has no top-level hidden
# states / attentions; each tower reports its own, checked by test_get_image_features_* /
# test_get_text_features_* and by the KeepFitVisionModel tester.
PER_TOWER = (
    "two-tower model: hidden states and attentions are per tower (tested per tower), none at the top level"
)
COMPOSITE_SWITCHED_OFF = {
    "test_hidden_states_output": PER_TOWER,
    "test_attention_outputs": PER_TOWER,
    "test_retain_grad_hidden_states_attentions": PER_TOWER,
}
RESNET_SWITCHED_OFF = {
    "test_model_get_set_embeddings": RESNET_NO_EMBEDDINGS,
    "test_resize_tokens_embeddings*": RESNET_NO_EMBEDDINGS,
    "test_resize_embeddings_untied*": RESNET_NO_EMBEDDINGS,
}
RESNET_ATTRIBUTES = {"has_attentions": (False, RESNET_NO_ATTENTION)}

SPECS = [
    ModelSpec(
        model_class=KeepFitModel,
        get_config=tiny_config,
        get_inputs=dual_encoder_batch,
        tester=COMPOSITE_TESTER,
        attributes={
            "additional_model_inputs": (["pixel_values"], "the second modality (as CLIPModel's tester)"),
            "skip_test_image_features_output_shape": (True, FEATURE_MAP_SHAPE),
        },
        switched_off={**COMPOSITE_SWITCHED_OFF, "test_get_image_features_attentions": RESNET_NO_ATTENTION},
        config_tester=dict(
            config_class=KeepFitConfig,
            has_text_modality=False,
            common_properties=["projection_dim", "logit_scale_init_value"],
            **TINY_HEADS,
        ),
    ),
    ModelSpec(
        model_class=KeepFitVisionModel,
        get_config=tiny_config,
        get_inputs=pixels,
        tester=VISION_TESTER,
        feature_maps=True,
        attributes=RESNET_ATTRIBUTES,
        switched_off=RESNET_SWITCHED_OFF,
        # a base model (as CLIPVisionModel), though no Auto class maps to it
        auto_names=("MODEL_MAPPING_NAMES",),
    ),
    ModelSpec(
        model_class=KeepFitForImageClassification,
        get_config=tiny_config,
        get_inputs=pixels,
        tester=VISION_TESTER,
        feature_maps=True,
        attributes=RESNET_ATTRIBUTES,
        switched_off=RESNET_SWITCHED_OFF,
    ),
]

SPECS.append(
    ModelSpec(
        model_class=KeepFitForPreTraining,
        get_config=tiny_config,
        get_inputs=pretraining_batch,
        tester=COMPOSITE_TESTER,
        attributes={
            "additional_model_inputs": (
                ["input_ids", "elite_pixel_values", "elite_input_ids"],
                "the public prompts and the elite pairs",
            )
        },
        switched_off=COMPOSITE_SWITCHED_OFF,
        auto_names=("MODEL_FOR_PRETRAINING_MAPPING_NAMES",),
    )
)

globals().update(build_test_cases(SPECS, upstream, __name__))
