"""MaskedCLIPForPreTraining (wiring of the losses, momentum encoder, ablation switches, attention/precision
options) and the released MaskedCLIPModel (embeddings, similarities, the contrastive loss on request)."""

import math

import pytest
import torch
import torch.nn.functional as F

from retvlp import MaskedCLIPForPreTraining, MaskedCLIPModel
from retvlp.maskedclip.loss_maskedclip import (
    label_guided_contrastive_loss,
    masked_image_modeling_loss,
    patchify,
)


def _model(make, seed=0, **kwargs):
    """The pretraining model (the released one is `.maskedclip`)."""
    torch.manual_seed(seed)
    return MaskedCLIPForPreTraining(make(**kwargs))


def _released(make, seed=0, **kwargs):
    torch.manual_seed(seed)
    return MaskedCLIPModel(make(**kwargs))


def _noise(batch, seed=3):
    return torch.rand(batch, 16, generator=torch.Generator().manual_seed(seed))


def test_fresh_model_has_sincos_positions_and_an_exact_momentum_copy(tiny_config):
    model = _model(tiny_config)
    assert model.released_model is model.maskedclip
    assert (
        model.maskedclip.vision_model.embeddings.position_embeddings.abs().sum() > 0
    )  # stock ViT-MAE init leaves zeros
    assert model.pixel_decoder.decoder_pos_embed.abs().sum() > 0
    assert model.maskedclip.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    for online, momentum in model._online_and_momentum_pairs():
        assert torch.equal(online, momentum)
    assert not any(p.requires_grad for p in model._momentum_parameters())


def test_training_forward_returns_every_term_and_eq6_weights(tiny_config, tiny_batch):
    model = _model(tiny_config, lambda_clip=0.3, lambda_mfd=0.05).train()
    out = model(**tiny_batch, noise=_noise(7))
    assert out.logits_per_image.shape == (4, 4) and out.image_embeds.shape == (4, 8)
    assert out.pixel_predictions.shape == (7, 16, 8 * 8 * 3) and out.mask.shape == (7, 16)
    expected = out.loss_mim + 0.3 * out.loss_clip + 0.05 * out.loss_mfd
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(4))
    # L_mim over paired + unpaired images with norm_pix targets (the default)
    pixels = torch.cat([tiny_batch["pixel_values"], tiny_batch["unpaired_pixel_values"]])
    independent = masked_image_modeling_loss(
        out.pixel_predictions, patchify(pixels, 8), out.mask, norm_pix_loss=True
    )
    assert out.loss_mim.item() == pytest.approx(independent.item(), rel=1e-6)
    assert torch.equal(out.mask.sum(1), torch.full((7,), 12.0))  # 16 patches, 75 % masked


def test_unpaired_images_never_enter_the_contrastive_loss(tiny_config, tiny_batch):
    model = _model(tiny_config).train()
    first = model(**tiny_batch, noise=_noise(7))
    other = dict(tiny_batch, unpaired_pixel_values=torch.randn(3, 3, 32, 32))
    second = model(**other, noise=_noise(7))
    assert first.loss_clip.item() == pytest.approx(second.loss_clip.item(), rel=1e-6)
    assert abs(first.loss_mim.item() - second.loss_mim.item()) > 1e-5
    assert abs(first.loss_mfd.item() - second.loss_mfd.item()) > 1e-5


def test_contrastive_loss_uses_the_whole_image_and_the_labels(tiny_config, tiny_batch):
    model = _model(tiny_config).train()
    with torch.no_grad():
        out = model(**tiny_batch, noise=_noise(7))
        full = F.normalize(
            model.maskedclip.get_image_features(tiny_batch["pixel_values"]).pooler_output, dim=-1
        )
    assert torch.allclose(out.image_embeds, full, atol=1e-6)  # not the masked pass
    unlabeled = model(**{k: v for k, v in tiny_batch.items() if k != "labels"}, noise=_noise(7))
    assert abs(out.loss_clip.item() - unlabeled.loss_clip.item()) > 1e-4


def test_mfd_target_comes_from_the_momentum_encoder_without_gradient(tiny_config, tiny_batch):
    model = _model(tiny_config).train()
    out = model(**tiny_batch, noise=_noise(7))
    out.loss.backward()
    assert all(p.grad is None for p in model._momentum_parameters())
    assert model.maskedclip.vision_model.layers[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert model.feature_decoder.decoder_pred.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for p in model.momentum_bridge.parameters():
            p.add_(0.5 * torch.randn_like(p))
    moved = model(**tiny_batch, noise=_noise(7))
    assert abs(moved.loss_mfd.item() - out.loss_mfd.item()) > 1e-4
    assert moved.loss_mim.item() == pytest.approx(out.loss_mim.item(), rel=1e-6)


def test_momentum_encoder_stays_in_eval_mode(tiny_config):
    model = _model(tiny_config).train()
    assert model.maskedclip.vision_model.training and not model.momentum_vision_model.training
    assert not model.momentum_bridge.training


def test_ema_update_matches_the_formula(tiny_config):
    model = _model(tiny_config)
    with torch.no_grad():
        online = model.maskedclip
        for p in list(online.vision_model.parameters()) + list(online.bridge.parameters()):
            p.add_(torch.randn_like(p))
    before = [(o.detach().clone(), m.detach().clone()) for o, m in model._online_and_momentum_pairs()]
    model.update_momentum_encoder(momentum=0.9)
    for (online, momentum_before), (_, momentum_after) in zip(
        before, model._online_and_momentum_pairs(), strict=True
    ):
        assert torch.allclose(momentum_after, 0.9 * momentum_before + 0.1 * online, atol=1e-6)
    # default decay comes from the config (0.999)
    snapshot = [m.detach().clone() for _, m in model._online_and_momentum_pairs()]
    model.update_momentum_encoder()
    online, momentum = next(iter(model._online_and_momentum_pairs()))
    assert torch.allclose(momentum, 0.999 * snapshot[0] + 0.001 * online, atol=1e-6)


def _parameter_prefixes(model):
    """Top-level modules, the released model's counted as top level (`maskedclip.bridge` → `bridge`)."""
    return {name.removeprefix("maskedclip.").split(".")[0] for name, _ in model.named_parameters()}


@pytest.mark.parametrize(
    "switch, removed, absent_term",
    [
        ("use_bridge", {"bridge", "momentum_bridge"}, None),
        ("use_mfd", {"feature_decoder", "momentum_vision_model", "momentum_bridge"}, "loss_mfd"),
        ("use_mim", {"pixel_decoder"}, "loss_mim"),
        ("use_clip", {"text_model", "visual_projection", "text_projection"}, "loss_clip"),
    ],
)
def test_each_ablation_switch_changes_exactly_what_it_names(
    tiny_config, tiny_batch, switch, removed, absent_term
):
    full, ablated = _model(tiny_config), _model(tiny_config, **{switch: False})
    assert _parameter_prefixes(full) - _parameter_prefixes(ablated) == removed
    released = removed - {"pixel_decoder", "feature_decoder", "momentum_vision_model", "momentum_bridge"}
    assert _parameter_prefixes(full.maskedclip) - _parameter_prefixes(ablated.maskedclip) == released
    out = ablated.train()(**tiny_batch, noise=_noise(7))
    terms = {"loss_mim", "loss_clip", "loss_mfd"}
    for term in terms - {absent_term}:
        assert getattr(out, term) is not None
    if absent_term:
        assert getattr(out, absent_term) is None
    weights = {"loss_mim": 1.0, "loss_clip": 0.01, "loss_mfd": 0.01}
    assert out.loss.item() == pytest.approx(
        sum(weights[t] * getattr(out, t).item() for t in terms - {absent_term}), rel=1e-6
    )


def test_without_bridge_the_clip_head_sits_on_the_encoder(tiny_config):
    model = _released(tiny_config, use_bridge=False).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        direct = model.visual_projection(model.vision_model(images).last_hidden_state[:, 0])
        assert torch.allclose(model.get_image_features(images).pooler_output, direct, atol=1e-6)


def test_without_bridge_the_momentum_target_is_the_encoder(tiny_config):
    model = _model(tiny_config, use_bridge=False)
    images = torch.randn(2, 3, 32, 32)
    online = model.maskedclip.vision_model(images).last_hidden_state
    assert torch.allclose(model._momentum_targets(images)[0], online[:, 1:], atol=1e-6)


def test_logit_scale_is_clamped_at_ln_100(tiny_config):
    model = _released(tiny_config)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.clamped_logit_scale().item() == pytest.approx(100.0, rel=1e-6)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_released_forward_embeds_and_scores_without_losses(tiny_config, tiny_batch, mode):
    """The released model's forward embeds and scores in either mode; no loss unless asked for."""
    model = _released(tiny_config).train(mode == "train")
    with torch.no_grad():
        out = model(input_ids=tiny_batch["input_ids"][:3], pixel_values=tiny_batch["pixel_values"])
    assert out.loss is None and out.logits_per_image.shape == (4, 3)
    assert torch.allclose(out.logits_per_text, out.logits_per_image.t())
    expected = model.clamped_logit_scale() * out.image_embeds @ out.text_embeds.t()
    assert torch.allclose(out.logits_per_image, expected, atol=1e-5)
    as_tuple = model(
        input_ids=tiny_batch["input_ids"][:3], pixel_values=tiny_batch["pixel_values"], return_dict=False
    )
    assert isinstance(as_tuple, tuple)


def test_released_forward_gives_the_label_guided_loss_on_request(tiny_config, tiny_batch):
    model = _released(tiny_config).eval()
    inputs = dict(input_ids=tiny_batch["input_ids"], pixel_values=tiny_batch["pixel_values"])
    with torch.no_grad():
        out = model(**inputs, labels=tiny_batch["labels"], return_loss=True)
        expected, _, _ = label_guided_contrastive_loss(
            out.image_embeds, out.text_embeds, model.clamped_logit_scale(), labels=tiny_batch["labels"]
        )
        plain = model(**inputs, return_loss=True)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert abs(out.loss.item() - plain.loss.item()) > 1e-4  # the labels make positives of pairs 0 and 2
    with pytest.raises(ValueError, match="one text per image"):
        model(
            input_ids=tiny_batch["input_ids"][:3], pixel_values=tiny_batch["pixel_values"], return_loss=True
        )
    with pytest.raises(ValueError, match="needs both pixel_values and input_ids"):
        model(pixel_values=tiny_batch["pixel_values"], return_loss=True)


def test_bad_inputs_raise_clear_errors(tiny_config, tiny_batch):
    model = _model(tiny_config).train()
    with pytest.raises(ValueError, match="Paired batch mismatch: 4 images"):
        model(input_ids=tiny_batch["input_ids"][:2], pixel_values=tiny_batch["pixel_values"])
    with pytest.raises(ValueError, match="needs images"):
        model(input_ids=tiny_batch["input_ids"])
    with pytest.raises(ValueError, match="need their texts"):
        model(pixel_values=tiny_batch["pixel_values"])
    with pytest.raises(ValueError, match="does not match the model's"):
        model(pixel_values=torch.randn(2, 3, 48, 48), input_ids=tiny_batch["input_ids"][:2])
    with pytest.raises(ValueError, match="labels has 3 entries"):
        model(**dict(tiny_batch, labels=torch.tensor([0, 1, 2])))
    with pytest.raises(ValueError, match="interpolate_pos_encoding is for inference"):
        model(**tiny_batch, interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match="channel dimension"):
        model.maskedclip.eval()(pixel_values=torch.randn(1, 1, 32, 32))
    clip_less = _released(tiny_config, use_clip=False)
    with pytest.raises(ValueError, match="use_clip=False"):
        clip_less.get_text_features(tiny_batch["input_ids"])


def test_image_only_batches_train_mim_and_mfd(tiny_config, tiny_batch):
    model = _model(tiny_config).train()
    out = model(unpaired_pixel_values=tiny_batch["unpaired_pixel_values"])
    assert out.loss_clip is None and out.loss_mim is not None and out.loss_mfd is not None


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(use_mim=False, use_clip=False, use_mfd=False), "nothing to train"),
        (dict(momentum=1.5), "EMA decay"),
        (dict(vision={"mask_ratio": 1.0}), "mask_ratio must be in"),
        (dict(vision={"hidden_size": 30}), "divisible"),
        (dict(vision={"image_size": 36}), "divisible by patch_size"),
        (dict(lambda_clip=-1.0), "lambda_clip"),
        (dict(clip_image_pooling="max"), "clip_image_pooling"),
        (dict(text_pooling="max"), "text_pooling"),
        (dict(logit_scale_init_value=5.0), "exceeds logit_scale_max"),
        (dict(feature_decoder_num_attention_heads=3), "feature_decoder_hidden_size"),
    ],
)
def test_inconsistent_configs_are_rejected(tiny_config, bad, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**bad)


def test_sdpa_and_eager_attention_agree(tiny_config, tiny_batch):
    sdpa, eager = _model(tiny_config), _model(tiny_config)
    eager.set_attn_implementation("eager")
    assert sdpa.config.vision_config._attn_implementation == "sdpa"
    assert eager.config.vision_config._attn_implementation == "eager"
    inputs = dict(input_ids=tiny_batch["input_ids"], pixel_values=tiny_batch["pixel_values"])
    with torch.no_grad():
        a, b = sdpa.maskedclip.eval()(**inputs), eager.maskedclip.eval()(**inputs)
    assert torch.allclose(a.logits_per_image, b.logits_per_image, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients(tiny_config, tiny_batch):
    plain, checkpointed = _model(tiny_config).train(), _model(tiny_config).train()
    checkpointed.activation_checkpointing_enable()
    assert checkpointed.maskedclip.vision_model.layers[0].gradient_checkpointing
    for model in (plain, checkpointed):
        model(**tiny_batch, noise=_noise(7)).loss.backward()
    for (name, p), (_, q) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_bf16_autocast_trains_on_cpu(tiny_config, tiny_batch):
    model = _model(tiny_config).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**tiny_batch, noise=_noise(7))
    assert out.image_embeds.dtype == torch.bfloat16 or out.logits_per_image.dtype == torch.bfloat16
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.maskedclip.vision_model.layers[0].attention.q_proj.weight.grad.dtype == torch.float32
    model.update_momentum_encoder()
    assert model.momentum_vision_model.layers[0].attention.q_proj.weight.dtype == torch.float32


# ------------------------------------------------------------------------ drop-path (stochastic depth) for fine-tuning
from conftest import TINY_VISION, make_tiny_config  # noqa: E402
from transformers import AutoModelForImageClassification  # noqa: E402
from transformers.models.vit_mae.modeling_vit_mae import ViTMAELayer  # noqa: E402

from retvlp import MaskedCLIPForImageClassification, MaskedCLIPVisionConfig  # noqa: E402
from retvlp.maskedclip.modeling_maskedclip import MaskedCLIPLayer  # noqa: E402


def _layer_pair(rate, seed=0):
    """A MaskedCLIPLayer at `rate` and a stock ViTMAELayer holding the same weights."""
    config = MaskedCLIPVisionConfig(**TINY_VISION)
    torch.manual_seed(seed)
    layer = MaskedCLIPLayer(config, drop_path_rate=rate)
    with torch.no_grad():  # move LayerNorm weights off their (1, 0) init so every weight matters
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    stock = ViTMAELayer(config)
    stock.load_state_dict(layer.state_dict())  # strict: the same parameter names
    return layer, stock


def test_drop_path_layer_keeps_vitmae_parameter_names():
    layer, stock = _layer_pair(0.3)
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in stock.named_parameters()]
    assert list(layer.state_dict()) == list(stock.state_dict())
    plain = MaskedCLIPForImageClassification(MaskedCLIPVisionConfig(**TINY_VISION))
    stochastic = MaskedCLIPForImageClassification(MaskedCLIPVisionConfig(**TINY_VISION, drop_path_rate=0.2))
    assert list(plain.state_dict()) == list(stochastic.state_dict())


def test_drop_path_rate_zero_and_eval_mode_are_the_stock_layer():
    hidden = torch.randn(6, 5, 32)
    zero, stock = _layer_pair(0.0)
    assert torch.equal(zero.train()(hidden)[0], stock.train()(hidden))
    half, stock = _layer_pair(0.5)
    half.eval(), stock.eval()
    assert torch.equal(half(hidden)[0], stock(hidden))
    with torch.no_grad():  # and in training mode the rate does change the output
        assert not torch.allclose(half.train()(hidden)[0], stock(hidden))


def test_drop_path_in_training_drops_whole_branches_per_sample():
    rate, keep = 0.5, 0.5
    layer, _ = _layer_pair(rate)
    layer.train()
    hidden = torch.randn(8, 5, 32)
    torch.manual_seed(11)
    output, _ = layer(hidden)
    # independent computation: the same Bernoulli draws (attention branch first, then MLP), branches by hand
    torch.manual_seed(11)
    attention_mask = torch.empty(8, 1, 1).bernoulli_(keep)
    mlp_mask = torch.empty(8, 1, 1).bernoulli_(keep)
    attention_branch = layer.attention(layer.layernorm_before(hidden))[0]
    middle = hidden + attention_branch * attention_mask / keep
    mlp_branch = layer.mlp(layer.layernorm_after(middle))
    expected = middle + mlp_branch * mlp_mask / keep
    assert torch.allclose(output, expected, atol=1e-6)
    assert 0 < attention_mask.sum() < 8 and 0 < mlp_mask.sum() < 8  # this seed exercises both outcomes
    both_dropped = (attention_mask.flatten() == 0) & (mlp_mask.flatten() == 0)
    assert both_dropped.any() and torch.equal(output[both_dropped], hidden[both_dropped])  # identity block


def test_drop_path_schedule_is_linear_over_the_blocks():
    config = MaskedCLIPVisionConfig(**{**TINY_VISION, "num_hidden_layers": 5}, drop_path_rate=0.2)
    classifier = MaskedCLIPForImageClassification(config)
    rates = [layer.drop_path_rate for layer in classifier.vision_model.layers]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert all(type(layer) is MaskedCLIPLayer for layer in classifier.vision_model.layers)
    # pretraining model: E_I gets the schedule, the bridge has none, the momentum encoder stays in eval
    model = MaskedCLIPForPreTraining(make_tiny_config(vision={"drop_path_rate": 0.1})).train()
    online = model.maskedclip
    assert [layer.drop_path_rate for layer in online.vision_model.layers] == pytest.approx([0.0, 0.1])
    assert all(
        type(layer) is MaskedCLIPLayer and layer.drop_path_rate == 0.0
        for bridge in (online.bridge, model.momentum_bridge)
        for layer in bridge.layers
    )
    assert not any(m.training for m in model.momentum_vision_model.modules())
    assert not any(m.training for m in model.momentum_bridge.modules())
    assert MaskedCLIPVisionConfig().drop_path_rate == 0.0  # off by default (pretraining)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_drop_path_rate_is_validated(rate):
    with pytest.raises(Exception, match=r"drop_path_rate must be in \[0, 1\)"):
        MaskedCLIPVisionConfig(**TINY_VISION, drop_path_rate=rate)
    with pytest.raises(Exception, match=r"drop_path_rate must be in \[0, 1\)"):
        make_tiny_config(vision={"drop_path_rate": rate})


def test_integer_drop_path_rate_is_accepted():
    assert MaskedCLIPVisionConfig(**TINY_VISION, drop_path_rate=0).drop_path_rate == 0


@pytest.fixture(scope="module")
def pretrained_directory(tmp_path_factory):
    """A pretraining model, its released checkpoint (what fine-tuning starts from) and its full checkpoint."""
    torch.manual_seed(0)
    model = MaskedCLIPForPreTraining(make_tiny_config())
    directory = tmp_path_factory.mktemp("maskedclip-finetune")
    model.released_model.save_pretrained(directory)
    full = tmp_path_factory.mktemp("maskedclip-pretraining")
    model.save_pretrained(full)
    return model.eval(), directory, full


def test_from_pretrained_sets_the_drop_path_rate_of_the_loaded_vision_config(pretrained_directory):
    model, directory, _ = pretrained_directory
    classifier = MaskedCLIPForImageClassification.from_pretrained(directory, num_labels=3, drop_path_rate=0.1)
    assert classifier.config.drop_path_rate == 0.1 and classifier.config.num_labels == 3
    assert [layer.drop_path_rate for layer in classifier.vision_model.layers] == pytest.approx([0.0, 0.1])
    for (name, a), (_, b) in zip(
        model.maskedclip.vision_model.named_parameters(),
        classifier.vision_model.named_parameters(),
        strict=True,
    ):
        assert torch.equal(a, b), name
    plain = MaskedCLIPForImageClassification.from_pretrained(directory, num_labels=3)
    plain.classifier.load_state_dict(classifier.classifier.state_dict())
    plain.fc_norm.load_state_dict(classifier.fc_norm.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(classifier.eval()(images).logits, plain.eval()(images).logits)
    with pytest.raises(ValueError, match="drop_path_rate must be in"):  # set after the config's validation
        MaskedCLIPForImageClassification.from_pretrained(directory, num_labels=3, drop_path_rate=1.5)


def test_mean_pooling_classifier_freezes_the_unused_final_layernorm(pretrained_directory):
    _, directory, _ = pretrained_directory
    config = MaskedCLIPVisionConfig(**TINY_VISION, num_labels=3, drop_path_rate=0.1)
    built = MaskedCLIPForImageClassification(config)
    loaded = MaskedCLIPForImageClassification.from_pretrained(directory, num_labels=3, drop_path_rate=0.1)
    for classifier in (built, loaded):
        frozen = {n for n, p in classifier.named_parameters() if not p.requires_grad}
        # the unused final LayerNorm, and the fixed sin-cos position table (as in ViTMAEEmbeddings)
        assert frozen == {
            "vision_model.layernorm.weight",
            "vision_model.layernorm.bias",
            "vision_model.embeddings.position_embeddings",
        }
        classifier.train()
        torch.manual_seed(0)
        classifier(torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 0])).loss.backward()
        no_grad = [n for n, p in classifier.named_parameters() if p.requires_grad and p.grad is None]
        assert no_grad == []
    assert "vision_model.layernorm.weight" in loaded.state_dict()  # kept: checkpoints unchanged
    cls_pooling = MaskedCLIPForImageClassification(MaskedCLIPVisionConfig(**TINY_VISION, pooling="cls"))
    assert cls_pooling.vision_model.layernorm.weight.requires_grad  # the cls head does use it


def test_from_pretrained_keeps_what_construction_freezes(pretrained_directory):
    """transformers' loading makes every parameter trainable again; the momentum encoder and the fixed sin-cos
    tables must stay frozen in a loaded model, exactly as in a freshly built one."""
    model, directory, full = pretrained_directory

    def frozen(m):
        return {n for n, p in m.named_parameters() if not p.requires_grad}

    # the pretraining model, from its full checkpoint and from the released one (M̂ rebuilt as a copy)
    for source in (full, directory):
        loaded = MaskedCLIPForPreTraining.from_pretrained(source)
        assert frozen(loaded) == frozen(model), source
        assert not any(p.requires_grad for p in loaded._momentum_parameters())
        assert {
            "maskedclip.vision_model.embeddings.position_embeddings",
            "pixel_decoder.decoder_pos_embed",
        } <= frozen(loaded)
        assert loaded.maskedclip.vision_model.layers[0].attention.q_proj.weight.requires_grad
    # the released model, from either checkpoint
    for source in (directory, full):
        released = MaskedCLIPModel.from_pretrained(source)
        assert frozen(released) == frozen(model.maskedclip) == {"vision_model.embeddings.position_embeddings"}
        assert released.vision_model.layers[0].attention.q_proj.weight.requires_grad


def test_image_classification_auto_class_loads_classifier_and_maskedclip_checkpoints(
    pretrained_directory, tmp_path
):
    model, directory, full = pretrained_directory
    classifier = MaskedCLIPForImageClassification.from_pretrained(directory, num_labels=2)
    classifier.save_pretrained(tmp_path / "classifier")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "classifier")
    assert type(reloaded) is MaskedCLIPForImageClassification
    assert not reloaded.vision_model.layernorm.weight.requires_grad
    # A MaskedCLIP directory (released or pretraining; composite config) builds the classifier on its vision
    # part, with the label fields set there, and E_I's weights.
    for source in (directory, full):
        auto = AutoModelForImageClassification.from_pretrained(
            source, num_labels=2, id2label={0: "normal", 1: "glaucoma"}, label2id={"normal": 0, "glaucoma": 1}
        )
        assert type(auto) is MaskedCLIPForImageClassification
        assert type(auto.config) is MaskedCLIPVisionConfig
        assert auto.config.num_labels == 2 and auto.config.id2label == {0: "normal", 1: "glaucoma"}
        assert auto.classifier.weight.shape == (2, 32)
        assert not auto.vision_model.layernorm.weight.requires_grad
        for (name, a), (_, b) in zip(
            model.maskedclip.vision_model.named_parameters(),
            auto.vision_model.named_parameters(),
            strict=True,
        ):
            assert torch.equal(a, b), name


def test_text_mean_pooling_is_the_padding_masked_token_mean(tiny_config):
    model = _released(tiny_config, text_pooling="mean").eval()
    ids = torch.tensor([[2, 17, 33, 45, 3, 0, 0], [2, 21, 8, 9, 11, 12, 3]])
    mask = (ids != 0).long()
    with torch.no_grad():
        pooled = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        hidden = model.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
        by_hand = torch.stack([hidden[0, :5].mean(0), hidden[1].mean(0)]) @ model.text_projection.weight.t()
        alone = model.get_text_features(input_ids=ids[:1, :5], attention_mask=mask[:1, :5]).pooler_output
    torch.testing.assert_close(pooled, by_hand, rtol=1e-5, atol=1e-6)
    # The embedding of a text does not depend on how much padding its batch adds.
    torch.testing.assert_close(pooled[:1], alone, rtol=1e-4, atol=1e-5)


def test_cls_pooling_of_a_fresh_text_tower_is_constant_and_mean_pooling_is_not(tiny_config):
    """The collapse diagnosed in docs/real_data.md: at init a from-scratch BERT's [CLS] state hardly depends on
    the text, the padding-masked mean does."""
    # Templated prompts: 16 texts sharing 10 of their 12 tokens ("a fundus photograph of {class}").
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 400, (1, 12), generator=generator).repeat(16, 1)
    ids[:, 6:8] = torch.randint(5, 400, (16, 2), generator=generator)

    def mean_pairwise_cosine(model):
        with torch.no_grad():
            e = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        return float((e @ e.t())[~torch.eye(16, dtype=torch.bool)].mean())

    cls = mean_pairwise_cosine(_released(tiny_config, text_pooling="cls").eval())
    mean = mean_pairwise_cosine(_released(tiny_config, text_pooling="mean").eval())
    assert cls > 0.9999  # measured 0.999999: every text gets the same embedding
    assert 1 - mean > 10 * (1 - cls)  # the mean keeps the texts apart (measured 0.986)
