"""Our ViT-MAE and ResNet blocks (`common/vit_blocks.py`, `common/resnet_blocks.py`) and the public-API helpers
(`common/modeling_support.py`, `common/configuration_support.py`) against the transformers classes they replace.

The shipped checkpoint code no longer imports transformers' private classes (`tests/test_checkpoint_code_imports.py`);
these tests may, and do: each block is built both ways, the state dicts must have exactly the same keys, the
weights are copied across and the outputs must agree (to 1e-6; in practice bit for bit). A seeded fresh
initialisation must be the same too, so a run started from scratch draws the same weights as before."""

import pytest
import torch
from transformers import (
    GradientCheckpointingLayer,
    ResNetConfig,
    ResNetModel,
    ViTMAEConfig,
    configuration_utils,
)
from transformers.models.vit_mae import modeling_vit_mae as hf_vit_mae

from retvlp.common import modeling_support, resnet_blocks, vit_blocks
from retvlp.common.configuration_support import build_sub_config, diff_sub_configs
from retvlp.maskedclip import MaskedCLIPConfig
from retvlp.maskedclip.modeling_maskedclip import MaskedCLIPVisionTransformer

ATOL = 1e-6
VIT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=2,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=32,
    layer_norm_eps=1e-6,
    mask_ratio=0.75,
)


def vit_config(implementation="eager", **overrides) -> ViTMAEConfig:
    config = ViTMAEConfig(**{**VIT, **overrides})
    config._attn_implementation = implementation
    return config


def randomized(module: torch.nn.Module, seed=0) -> torch.nn.Module:
    """Every parameter and BatchNorm statistic away from its initial value (so a mix-up of two cannot pass)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if tensor.is_floating_point():
                noise = 0.1 * torch.randn(tensor.shape, generator=generator)
                tensor.mul_(1 + noise.abs()) if name.endswith("running_var") else tensor.add_(noise)
    return module


def same_weights(theirs: torch.nn.Module, ours: torch.nn.Module) -> torch.nn.Module:
    """Copy `theirs` into `ours`, requiring exactly the same state-dict keys and shapes."""
    their_state, our_state = theirs.state_dict(), ours.state_dict()
    assert list(their_state) == list(our_state)
    assert all(their_state[k].shape == our_state[k].shape for k in their_state)
    ours.load_state_dict(their_state, strict=True)
    return ours


def assert_same_state(a: dict, b: dict):
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------------------------------ ViT-MAE
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_vit_layer_matches_transformers(implementation):
    config = vit_config(implementation)
    torch.manual_seed(0)
    theirs = randomized(hf_vit_mae.ViTMAELayer(config)).eval()
    torch.manual_seed(0)
    ours = vit_blocks.ViTMAELayer(config).eval()
    same_weights(theirs, ours)
    hidden = torch.randn(3, 17, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(hidden)
        got, weights = ours(hidden)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    assert (weights is None) == (implementation == "sdpa")
    if weights is not None:
        assert weights.shape == (3, 4, 17, 17)


def test_vit_layer_seeded_construction_matches_transformers():
    config = vit_config()
    torch.manual_seed(5)
    theirs = hf_vit_mae.ViTMAELayer(config)
    torch.manual_seed(5)
    ours = vit_blocks.ViTMAELayer(config)
    assert_same_state(theirs.state_dict(), ours.state_dict())


def test_vit_embeddings_match_transformers_with_masking_and_interpolation():
    config = vit_config()
    theirs = randomized(hf_vit_mae.ViTMAEEmbeddings(config)).eval()
    ours = same_weights(theirs, vit_blocks.ViTMAEEmbeddings(config)).eval()
    generator = torch.Generator().manual_seed(2)
    pixels = torch.randn(2, 3, 32, 32, generator=generator)
    noise = torch.rand(2, 16, generator=generator)
    with torch.no_grad():
        expected, expected_mask, expected_restore = theirs(pixels, noise=noise)
        patches, cls_token = ours(pixels)
        kept, mask, ids_restore = vit_blocks.random_masking(patches, config.mask_ratio, noise)
        got = torch.cat([cls_token.expand(2, -1, -1), kept], dim=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    assert torch.equal(mask, expected_mask) and torch.equal(ids_restore, expected_restore)
    # another input size: the bicubic interpolation of the position table
    big = torch.randn(2, 3, 48, 48, generator=generator)
    with torch.no_grad():
        tokens = ours.patch_embeddings(big)
        torch.testing.assert_close(
            ours.interpolate_pos_encoding(tokens, 48, 48), theirs.interpolate_pos_encoding(tokens, 48, 48)
        )
        patches, _ = ours(big, interpolate_pos_encoding=True)
    assert patches.shape == (2, 36, 32)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        ours(big)


def test_sincos_table_is_transformers_vit_mae_layout():
    config = vit_config()
    embeddings = hf_vit_mae.ViTMAEEmbeddings(config)
    embeddings.initialize_weights()
    table = vit_blocks.sincos_position_table(4, 32).unsqueeze(0)
    assert torch.equal(embeddings.position_embeddings.detach(), table)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_vit_decoder_matches_transformers(implementation):
    config = vit_config(implementation)
    torch.manual_seed(3)
    theirs = hf_vit_mae.ViTMAEDecoder(config, num_patches=16)
    torch.manual_seed(3)
    ours = vit_blocks.ViTMAEDecoder(config, num_patches=16)
    # construction draws the same random numbers (the mask token included): a fresh model is unchanged
    assert_same_state(theirs.state_dict(), ours.state_dict())
    randomized(theirs)
    same_weights(theirs, ours)
    theirs.eval(), ours.eval()
    generator = torch.Generator().manual_seed(4)
    latent = torch.randn(2, 5, 32, generator=generator)  # cls + 4 kept of 16 patches
    ids_restore = torch.argsort(torch.rand(2, 16, generator=generator), dim=1)
    with torch.no_grad():
        for interpolate in (False, True):
            expected = theirs(latent, ids_restore, interpolate_pos_encoding=interpolate).logits
            got = ours(latent, ids_restore, interpolate_pos_encoding=interpolate).logits
            torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    assert got.shape == (2, 16, 8 * 8 * 3)
    assert ours.config.hidden_size == 16 and ours.config._attn_implementation == implementation


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_maskedclip_image_encoder_matches_transformers_vit_mae_model(implementation):
    """E_I on our blocks against transformers' ViTMAEModel holding the same weights (the MAE / RETFound layout)."""
    theirs = hf_vit_mae.ViTMAEModel(vit_config(implementation))
    randomized(theirs).eval()
    vision_config = MaskedCLIPConfig(vision_config=VIT).vision_config
    vision_config._attn_implementation = implementation
    ours = same_weights(theirs, MaskedCLIPVisionTransformer(vision_config)).eval()
    generator = torch.Generator().manual_seed(6)
    pixels, noise = torch.randn(2, 3, 32, 32, generator=generator), torch.rand(2, 16, generator=generator)
    with torch.no_grad():
        expected = theirs(pixels, noise=noise)
        got = ours(pixels, mask_ratio=0.75, noise=noise)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, rtol=0, atol=ATOL)
    assert torch.equal(got.mask, expected.mask) and torch.equal(got.ids_restore, expected.ids_restore)


def test_vit_layer_checkpoints_activations_like_transformers():
    config = vit_config()
    layer = randomized(vit_blocks.ViTMAELayer(config)).train()
    hidden = torch.randn(2, 5, 32, requires_grad=True)
    out, _ = layer(hidden)
    out.sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    hidden.grad = None
    layer.gradient_checkpointing = True
    layer._gradient_checkpointing_func = lambda f, *a, **k: torch.utils.checkpoint.checkpoint(
        f, *a, use_reentrant=False, **k
    )
    out_checkpointed, _ = layer(hidden)
    out_checkpointed.sum().backward()
    torch.testing.assert_close(out_checkpointed, out)
    for a, b in zip(grads, [p.grad for p in layer.parameters()], strict=True):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------ ResNet
RESNETS = {
    "bottleneck": dict(embedding_size=16, hidden_sizes=[16, 32, 32, 64], depths=[1, 2, 1, 1]),
    "basic, first stage downsampling": dict(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[2, 1],
        layer_type="basic",
        downsample_in_first_stage=True,
    ),
    "bottleneck, downsampling in the bottleneck": dict(
        embedding_size=8, hidden_sizes=[16, 32], depths=[2, 2], downsample_in_bottleneck=True
    ),
}


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_tower_matches_transformers_resnet_model(name):
    config = ResNetConfig(**RESNETS[name])
    torch.manual_seed(7)
    theirs = ResNetModel(config)
    torch.manual_seed(7)
    ours = resnet_blocks.ResNetVisionModel(config)
    # same keys, and a seeded fresh tower draws the same weights (transformers' ResNet initialisation)
    assert_same_state(theirs.state_dict(), ours.state_dict())
    randomized(theirs)
    same_weights(theirs, ours)
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    for mode in ("eval", "train"):  # train: BatchNorm on batch statistics, running statistics updated
        getattr(theirs, mode)(), getattr(ours, mode)()
        with torch.no_grad():
            expected = theirs(pixels, output_hidden_states=True)
            got = ours(pixels, output_hidden_states=True)
            expected_tuple = theirs(pixels, return_dict=False)
            got_tuple = ours(pixels, return_dict=False)
        torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, rtol=0, atol=ATOL)
        torch.testing.assert_close(got.pooler_output, expected.pooler_output, rtol=0, atol=ATOL)
        assert len(got.hidden_states) == len(expected.hidden_states) == len(config.depths) + 1
        for a, b in zip(got.hidden_states, expected.hidden_states, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
        assert len(got_tuple) == len(expected_tuple) == 2
        for a, b in zip(got_tuple, expected_tuple, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
    for key, value in theirs.state_dict().items():  # the running statistics moved alike
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=ATOL, msg=key)
    assert type(got).__name__ == type(expected).__name__ == "BaseModelOutputWithPoolingAndNoAttention"
    assert all(isinstance(stage, GradientCheckpointingLayer) for stage in ours.encoder.stages)


def test_resnet_rejects_wrong_channel_count():
    tower = resnet_blocks.ResNetVisionModel(ResNetConfig(**RESNETS["bottleneck"]))
    with pytest.raises(ValueError, match="channel dimension"):
        tower(torch.randn(1, 1, 32, 32))


# ------------------------------------------------------------------------------------------------ helpers
def test_activations_are_transformers_act2fn():
    from transformers.activations import ACT2FN

    x = torch.linspace(-4, 4, 101)
    for name in modeling_support.ACTIVATIONS:
        torch.testing.assert_close(
            modeling_support.activation_module(name)(x), ACT2FN[name](x), rtol=0, atol=1e-7
        )
    with pytest.raises(ValueError, match="Unsupported activation 'gelu_new'"):
        modeling_support.activation_module("gelu_new")


def test_attention_dispatch_is_transformers_registry():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = vit_blocks.eager_attention_forward
    assert modeling_support.attention_function(None, eager) is eager
    assert modeling_support.attention_function("eager", eager) is eager
    assert modeling_support.attention_function("sdpa", eager) is ALL_ATTENTION_FUNCTIONS["sdpa"]
    with pytest.raises(KeyError, match="not an attention implementation"):
        modeling_support.attention_function("no-such-kernel", eager)


def test_can_return_tuple_matches_transformers_decorator():
    from transformers.modeling_outputs import BaseModelOutput
    from transformers.utils.generic import can_return_tuple as theirs

    class Toy(torch.nn.Module):
        def __init__(self, return_dict):
            super().__init__()
            self.config = type("Config", (), {"return_dict": return_dict})()

        def run(self, x, **kwargs):
            return BaseModelOutput(last_hidden_state=x)

    x = torch.ones(2)
    for decorator in (theirs, modeling_support.can_return_tuple):
        run = decorator(Toy.run)
        assert isinstance(run(Toy(True), x), BaseModelOutput)
        assert isinstance(run(Toy(False), x), tuple)
        assert isinstance(run(Toy(True), x, return_dict=False), tuple)
        assert isinstance(run(Toy(False), x, return_dict=True), BaseModelOutput)


@pytest.mark.skipif(
    not hasattr(configuration_utils, "SubConfigSpec"),
    reason="this transformers has no SubConfigSpec to compare with",
)
@pytest.mark.parametrize(
    "value",
    [None, {"hidden_size": 24, "num_attention_heads": 2}, {"model_type": "bert", "vocab_size": 30}],
    ids=["defaults", "dict", "dict with model_type"],
)
def test_sub_configs_are_built_as_transformers_sub_config_spec_builds_them(value):
    from transformers import AutoConfig

    defaults = {"vocab_size": 28996, "hidden_size": 48, "num_attention_heads": 4}
    spec = configuration_utils.SubConfigSpec(AutoConfig, model_type="bert", init_kwargs=defaults)
    expected, _ = spec.create_subconfig("text_config", None if value is None else dict(value))
    got = build_sub_config(None if value is None else dict(value), "bert", defaults)
    assert type(got) is type(expected) and got.to_dict() == expected.to_dict()
    vision = MaskedCLIPConfig(vision_config=VIT).vision_config
    assert build_sub_config(vision, "bert") is vision  # a config is taken as it is


def test_saved_sub_configs_are_written_as_transformers_nested_diff():
    """`config.json`'s vision_config / text_config: what transformers' own nested diff writes."""
    from transformers import PreTrainedConfig
    from transformers.configuration_utils import recursive_diff_dict

    config = MaskedCLIPConfig(vision_config=VIT, text_config={"hidden_size": 24, "num_attention_heads": 2})
    written = config.to_diff_dict()
    generic = PreTrainedConfig().to_dict()
    for key in ("vision_config", "text_config"):
        sub_config = getattr(config, key)
        expected = recursive_diff_dict(sub_config.to_dict(), generic, config_obj=sub_config)
        expected["model_type"] = sub_config.model_type
        assert written[key] == expected
    assert "id2label" not in written["vision_config"] and written["vision_config"]["hidden_size"] == 32
    assert diff_sub_configs(config, {"vision_config": None}) == {"vision_config": None}
    again = MaskedCLIPConfig.from_dict(written)
    assert again.vision_config.to_dict() == config.vision_config.to_dict()
    assert again.text_config.to_dict() == config.text_config.to_dict()
