"""transformers' ModelTesterMixin and ConfigTester on the IBQ visual tokenizer (`IBQTokenizerModel`)."""

from retvlp import IBQTokenizerConfig, IBQTokenizerModel

from .harness import ModelSpec, build_test_cases
from .upstream import require_upstream

upstream = require_upstream()
floats_tensor = upstream.modeling.floats_tensor

# 16 px images, two levels (downsampling 2): 8 × 8 codes of a 16 × 8 codebook.
TINY_IBQ = dict(
    image_size=16,
    base_channels=8,
    channel_multipliers=[1, 2],  # a list: ConfigTester compares the kwargs with their JSON round trip
    num_res_blocks=1,
    num_mid_res_blocks=1,
    norm_num_groups=4,
    codebook_size=16,
    code_dim=8,
)

NO_ATTENTION = (
    "IBQ is a convolutional autoencoder (GroupNorm + conv residual blocks): it has no attention layers"
)
NO_HIDDEN_STATES = (
    "IBQTokenizerOutput has no hidden_states by design (like transformers' VQ-VAEs, e.g. JanusVQVAE): the "
    "tokenizer returns the reconstruction and the code grid, the forward takes no output_hidden_states"
)
NO_TOKEN_EMBEDDINGS = (
    "an image tokenizer with pixel inputs has no token-embedding matrix to get, set or resize"
)

SPECS = [
    ModelSpec(
        model_class=IBQTokenizerModel,
        get_config=lambda: IBQTokenizerConfig(**TINY_IBQ),
        get_inputs=lambda config, batch: {"pixel_values": floats_tensor([batch, 3, 16, 16])},
        tester=dict(batch_size=3, image_size=16, num_channels=3),
        attributes={"has_attentions": (False, NO_ATTENTION)},
        switched_off={
            "test_hidden_states_output": NO_HIDDEN_STATES,
            "test_retain_grad_hidden_states_attentions": NO_HIDDEN_STATES,
            "test_model_get_set_embeddings": NO_TOKEN_EMBEDDINGS,
            "test_resize_tokens_embeddings*": NO_TOKEN_EMBEDDINGS,
            "test_resize_embeddings_untied*": NO_TOKEN_EMBEDDINGS,
        },
        config_tester=dict(
            config_class=IBQTokenizerConfig,
            has_text_modality=False,
            common_properties=["codebook_size", "code_dim", "image_size"],
            **TINY_IBQ,
        ),
    ),
]

globals().update(build_test_cases(SPECS, upstream, __name__))
