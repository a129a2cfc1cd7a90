"""KeepFIT V2 model (METHODS.md §2): every part checked against a plain re-implementation written here.

Tiny towers: a 4-stage bottleneck ResNet (64 px images → 2×2 feature maps of 64 channels; bottleneck widths of
4+ channels — width-2 bottlenecks crash torch's channels-last backward on this CPU) and a 2-layer BERT.
"""

import ast
import json
import math
import os
import shutil
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_without_retvlp
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    pipeline,
)

from retvlp import IBQTokenizerConfig, IBQTokenizerModel, KeepFitForImageClassification, KeepFitVisionModel
from retvlp.keepfit import (
    KeepFitAppearanceQuantizer,
    KeepFitConfig,
    KeepFitForPreTraining,
    KeepFitKnowledgeAttention,
    KeepFitModel,
    KeepFitProcessor,
    keepfit_image_processor,
)
from retvlp.tokenization import tiny_tokenizer

VISION = {
    "model_type": "resnet",
    "embedding_size": 16,
    "hidden_sizes": [16, 32, 32, 64],
    "depths": [1, 1, 1, 1],
    "layer_type": "bottleneck",
}
TEXT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "vocab_size": 300,  # tiny_tokenizer()'s size
}
SIZES = dict(projection_dim=16, codebook_size=64, code_dim=8)
D, HEADS = 16, 2
IMAGE = 64


def tiny_config(text=None, **overrides) -> KeepFitConfig:
    return KeepFitConfig(
        vision_config=dict(VISION), text_config={**TEXT, **(text or {})}, **{**SIZES, **overrides}
    )


def tiny_model(seed=0, text=None, **overrides) -> KeepFitForPreTraining:
    """The pretraining model (the released one is `.keepfit`)."""
    torch.manual_seed(seed)
    return KeepFitForPreTraining(tiny_config(text=text, **overrides))


def tiny_released(seed=0, text=None, **overrides) -> KeepFitModel:
    torch.manual_seed(seed)
    return KeepFitModel(tiny_config(text=text, **overrides))


def pretraining_batch(public=3, elite=2, seed=0, labels=True):
    """Odd-sized public and elite batches with padded prompts/captions."""
    generator = torch.Generator().manual_seed(seed)

    def texts(n, length):
        ids = torch.randint(5, 300, (n, length), generator=generator)
        mask = torch.ones(n, length, dtype=torch.long)
        for row in range(n):
            real = length - row  # a different amount of padding per row
            ids[row, real:], mask[row, real:] = 0, 0
        return ids, mask

    input_ids, attention_mask = texts(public, 7)
    elite_input_ids, elite_attention_mask = texts(elite, 9)
    batch = dict(
        pixel_values=torch.rand(public, 3, IMAGE, IMAGE, generator=generator),
        input_ids=input_ids,
        attention_mask=attention_mask,
        elite_pixel_values=torch.rand(elite, 3, IMAGE, IMAGE, generator=generator),
        elite_input_ids=elite_input_ids,
        elite_attention_mask=elite_attention_mask,
    )
    if labels:
        batch["labels"] = torch.tensor([0, 1, 0, 2, 1, 0][:public])
    return batch


def reference_attention(module, query, key, value, scale, heads, over="keys"):
    """Eqs. 5–10 / 16–19 written out with the module's own projection weights (no dropout)."""

    def linear(x, layer):
        return x @ layer.weight.t() + (0 if layer.bias is None else layer.bias)

    q = linear(query, module.q_proj).reshape(query.shape[0], heads, -1)  # (queries, heads, dh)
    k = linear(key, module.k_proj).reshape(key.shape[0], heads, -1)  # (keys, heads, dh)
    v = linear(value, module.v_proj).reshape(value.shape[0], heads, -1)  # (keys, heads, dv)
    scores = scale * torch.einsum("qhd,khd->qhk", q, k)
    weights = scores.softmax(dim=-1 if over == "keys" else 1)
    mixed = torch.einsum("qhk,khd->qhd", weights, v).reshape(query.shape[0], -1)
    return linear(mixed, module.o_proj), weights


def soft_target_clip(image, text, scale, targets):
    logits = scale * image @ text.t()
    return 0.5 * (
        -(targets * logits.log_softmax(1)).sum(1).mean() - (targets * logits.t().log_softmax(1)).sum(1).mean()
    )


def hand_text_pooling(model, input_ids, attention_mask, layers=(1, 2, -1), mode="layers_mean"):
    """The pooled text vector from BertModel's hidden states, computed here."""
    outputs = model.text_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    if mode == "cls":
        return outputs.last_hidden_state[:, 0]
    per_layer = []
    for index in layers:
        states = outputs.hidden_states[index]
        if mode == "reference":
            per_layer.append(states.mean(dim=1))
        else:
            mask = attention_mask.float()[:, :, None]
            per_layer.append((states * mask).sum(dim=1) / mask.sum(dim=1))
    return torch.stack(per_layer).mean(dim=0)


# ------------------------------------------------------------------------------- knowledge cross-attention
@pytest.mark.parametrize("over", ["keys", "heads"])
@pytest.mark.parametrize("bias", [False, True])
def test_knowledge_attention_against_einsum(over, bias):
    torch.manual_seed(0)
    module = KeepFitKnowledgeAttention(
        6,
        5,
        7,
        attention_dim=8,
        output_dim=12,
        num_heads=2,
        scale=0.3,
        dropout=0.5,
        bias=bias,
        softmax_over=over,
    ).eval()
    query, key, value = torch.randn(4, 6), torch.randn(3, 5), torch.randn(3, 7)
    knowledge, weights = module(query, key, value)
    expected, expected_weights = reference_attention(module, query, key, value, scale=0.3, heads=2, over=over)
    assert knowledge.shape == (4, 12) and weights.shape == (4, 2, 3)
    assert torch.allclose(knowledge, expected, atol=1e-6)
    assert torch.allclose(weights, expected_weights, atol=1e-6)
    if over == "keys":  # Eq. 7: a distribution over the elite samples, per query and head
        assert torch.allclose(weights.sum(dim=-1), torch.ones(4, 2), atol=1e-6)
        assert not torch.allclose(weights.sum(dim=1), torch.ones(4, 3), atol=1e-3)
    else:  # KeepFIT V1 reference code: normalised across the heads
        assert torch.allclose(weights.sum(dim=1), torch.ones(4, 3), atol=1e-6)
        assert not torch.allclose(weights.sum(dim=-1), torch.ones(4, 2), atol=1e-3)


def test_knowledge_attention_dropout_acts_in_training_only_and_after_the_weights():
    torch.manual_seed(0)
    module = KeepFitKnowledgeAttention(8, 8, 8, 8, 8, num_heads=2, scale=1.0, dropout=0.5)
    query, key, value = torch.randn(5, 8), torch.randn(6, 8), torch.randn(6, 8)
    eval_knowledge, eval_weights = module.eval()(query, key, value)
    torch.manual_seed(1)
    train_knowledge, train_weights = module.train()(query, key, value)
    assert torch.equal(train_weights, eval_weights)  # the returned weights are those before dropout
    assert not torch.allclose(train_knowledge, eval_knowledge)
    with pytest.raises(ValueError, match="6 keys.*5 values"):
        module(query, key, value[:5])


def test_model_attentions_use_the_papers_scales():
    """Semantic: 1/√(d/H) = 1/√8; appearance: 1/τ_a — checked through the built modules."""
    inputs = torch.randn(3, D), torch.randn(4, D), torch.randn(4, D)
    codes = torch.randn(3, 8), torch.randn(4, 8), torch.randn(4, D)
    by_temperature = {}
    for temperature in (1.0, 0.25):
        model = tiny_model(appearance_temperature=temperature).eval()
        knowledge, weights = model.semantic_attention(*inputs)
        expected, expected_weights = reference_attention(
            model.semantic_attention, *inputs, scale=1 / math.sqrt(D / HEADS), heads=HEADS
        )
        assert torch.allclose(knowledge, expected, atol=1e-6)
        assert torch.allclose(weights, expected_weights, atol=1e-6)

        knowledge, weights = model.appearance_attention(*codes)
        expected, expected_weights = reference_attention(
            model.appearance_attention, *codes, scale=1 / temperature, heads=HEADS
        )
        assert knowledge.shape == (3, D)
        assert torch.allclose(knowledge, expected, atol=1e-6)
        assert torch.allclose(weights, expected_weights, atol=1e-6)
        by_temperature[temperature] = weights
    # same weights (same seed), only τ_a differs: log-weights scale by 1/τ_a up to a per-row constant
    log_ratio = by_temperature[0.25].log() - 4 * by_temperature[1.0].log()
    assert torch.allclose(log_ratio, log_ratio[..., :1].expand_as(log_ratio), atol=1e-4)
    assert not torch.allclose(by_temperature[0.25], by_temperature[1.0], atol=1e-3)


def test_semantic_softmax_over_heads_is_configurable():
    model = tiny_model(semantic_softmax_over="heads").eval()
    _, weights = model.semantic_attention(torch.randn(3, D), torch.randn(4, D), torch.randn(4, D))
    assert torch.allclose(weights.sum(dim=1), torch.ones(3, 4), atol=1e-6)
    # the appearance attention always normalises over the keys
    _, weights = model.appearance_attention(torch.randn(3, 8), torch.randn(4, 8), torch.randn(4, D))
    assert torch.allclose(weights.sum(dim=-1), torch.ones(3, HEADS), atol=1e-6)


# -------------------------------------------------------------------------------- appearance quantizer
def _quantizer(temperature=0.5):
    torch.manual_seed(0)
    quantizer = KeepFitAppearanceQuantizer(
        in_channels=12, codebook_size=64, code_dim=8, temperature=temperature
    )
    with torch.no_grad():
        quantizer.codebook.copy_(torch.randn(64, 8) / math.sqrt(8))
    return quantizer


def test_quantizer_value_is_argmax_lookup_mean_pooled():
    quantizer = _quantizer()
    feature_map = torch.randn(2, 12, 3, 4)
    descriptor, indices = quantizer(feature_map)
    codebook = quantizer.codebook
    z = F.conv2d(feature_map, quantizer.proj.weight, quantizer.proj.bias).permute(0, 2, 3, 1)  # (2, 3, 4, 8)
    expected_indices = (z @ codebook.t() / 0.5).argmax(dim=-1)
    assert indices.shape == (2, 3, 4)
    assert torch.equal(indices, expected_indices)
    expected = codebook[expected_indices].mean(dim=(1, 2))
    assert descriptor.shape == (2, 8)
    assert torch.allclose(descriptor, expected, atol=1e-6)
    assert len(indices.unique()) > 1


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_quantizer_gradient_reaches_the_conv_through_the_soft_path(temperature):
    quantizer = _quantizer(temperature)
    feature_map = torch.randn(2, 12, 3, 4)
    upstream = torch.randn(2, 8)
    descriptor, _ = quantizer(feature_map)
    (descriptor * upstream).sum().backward()

    weight = quantizer.proj.weight.detach().clone().requires_grad_()
    bias = quantizer.proj.bias.detach().clone().requires_grad_()
    codebook = quantizer.codebook
    z = F.conv2d(feature_map, weight, bias).permute(0, 2, 3, 1)
    logits = z @ codebook.t() / temperature
    hard = codebook[logits.argmax(dim=-1)]
    soft = logits.softmax(dim=-1) @ codebook
    q = hard + (soft - soft.detach())  # value: the lookup; gradient: that of softmax(z·Cᵀ/T)·C
    (q.mean(dim=(1, 2)) * upstream).sum().backward()

    assert quantizer.proj.weight.grad.abs().sum() > 0
    assert torch.allclose(quantizer.proj.weight.grad, weight.grad, atol=1e-6, rtol=1e-5)
    assert torch.allclose(quantizer.proj.bias.grad, bias.grad, atol=1e-6, rtol=1e-5)
    assert quantizer.codebook.grad is None


def test_codebook_is_a_frozen_buffer_through_training_steps():
    model = tiny_model().train()
    parameters = dict(model.named_parameters())
    assert "appearance_quantizer.codebook" not in parameters
    assert "appearance_quantizer.codebook" in dict(model.named_buffers())
    assert "appearance_quantizer.codebook" in model.state_dict()
    assert not model.appearance_quantizer.codebook.requires_grad

    codebook = model.appearance_quantizer.codebook.clone()
    proj = model.appearance_quantizer.proj.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        output = model(**pretraining_batch(seed=step))
        optimizer.zero_grad()
        output.loss.backward()
        assert model.appearance_quantizer.proj.weight.grad.abs().sum() > 0
        optimizer.step()
        model.clamp_logit_scale_()
    assert not torch.equal(model.appearance_quantizer.proj.weight, proj)
    assert torch.equal(model.appearance_quantizer.codebook, codebook)


# ------------------------------------------------------------------------------------------ text pooling
def _text_pair():
    """A short text alone (no padding) and the same text in a batch with a longer one (padded)."""
    short = torch.tensor([[2, 40, 41, 42, 3]])
    long = torch.tensor([[2, 50, 51, 52, 53, 54, 55, 56, 3]])
    batch = torch.cat([F.pad(short, (0, 4)), long])
    mask = torch.tensor([[1] * 5 + [0] * 4, [1] * 9])
    return short, batch, mask


@pytest.fixture(scope="module")
def three_layer_models():
    """Three text-pooling variants sharing one set of weights (3 layers: layers 1, 2, −1 all differ)."""
    models = {}
    for mode in ("layers_mean", "reference", "cls"):
        models[mode] = tiny_released(text={"num_hidden_layers": 3}, text_pooling=mode).eval()
        if mode != "layers_mean":
            models[mode].load_state_dict(models["layers_mean"].state_dict())
    return models


def test_layers_mean_pooling_is_a_masked_mean_and_padding_invariant(three_layer_models):
    model = three_layer_models["layers_mean"]
    short, batch, mask = _text_pair()
    weight = model.text_projection.weight
    with torch.no_grad():
        features = model.get_text_features(batch, attention_mask=mask).pooler_output
        alone = model.get_text_features(short).pooler_output
        pooled = hand_text_pooling(model, batch, mask, layers=(1, 2, 3))
    assert torch.allclose(features, F.normalize(pooled, dim=-1) @ weight.t(), atol=1e-5)
    assert torch.allclose(alone[0], features[0], atol=1e-5)


def test_text_pooling_layers_are_configurable():
    model = tiny_released(text={"num_hidden_layers": 3}, text_pooling_layers=[0, -2]).eval()
    _, batch, mask = _text_pair()
    with torch.no_grad():
        features = model.get_text_features(batch, attention_mask=mask).pooler_output
        pooled = hand_text_pooling(model, batch, mask, layers=(0, 2))
    assert torch.allclose(features, F.normalize(pooled, dim=-1) @ model.text_projection.weight.t(), atol=1e-5)


def test_reference_pooling_averages_padding_too(three_layer_models):
    model = three_layer_models["reference"]
    short, batch, mask = _text_pair()
    with torch.no_grad():
        features = model.get_text_features(batch, attention_mask=mask).pooler_output
        alone = model.get_text_features(short).pooler_output
        pooled = hand_text_pooling(model, batch, mask, layers=(1, 2, 3), mode="reference")
        masked = three_layer_models["layers_mean"].get_text_features(batch, attention_mask=mask).pooler_output
    assert torch.allclose(features, F.normalize(pooled, dim=-1) @ model.text_projection.weight.t(), atol=1e-5)
    assert not torch.allclose(alone[0], features[0], atol=1e-3)  # the batch's padding changes the embedding
    assert torch.allclose(features[1], masked[1], atol=1e-5)  # the unpadded text is the same either way
    assert torch.allclose(
        alone[0], three_layer_models["layers_mean"].get_text_features(short).pooler_output[0]
    )


def test_cls_pooling_is_the_last_layers_first_token(three_layer_models):
    model = three_layer_models["cls"]
    short, batch, mask = _text_pair()
    with torch.no_grad():
        features = model.get_text_features(batch, attention_mask=mask).pooler_output
        alone = model.get_text_features(short).pooler_output
        cls = hand_text_pooling(model, batch, mask, mode="cls")
    assert torch.allclose(features, F.normalize(cls, dim=-1) @ model.text_projection.weight.t(), atol=1e-5)
    assert torch.allclose(alone[0], features[0], atol=1e-5)


# ------------------------------------------------------------------------------- projections, logit scale
def test_embeddings_are_normalised_projections_of_normalised_features():
    model = tiny_released().eval()
    batch = pretraining_batch()
    with torch.no_grad():
        output = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
        )
        pooled = model.vision_model(pixel_values=batch["pixel_values"]).pooler_output.flatten(1)
        image_features = model.get_image_features(batch["pixel_values"])
        text_pooled = hand_text_pooling(model, batch["input_ids"], batch["attention_mask"])
    assert pooled.shape == (3, 64) and image_features.last_hidden_state.shape == (3, 64, 2, 2)
    projected = F.normalize(pooled, dim=-1) @ model.visual_projection.weight.t()
    assert torch.allclose(image_features.pooler_output, projected, atol=1e-5)  # not yet normalised
    assert torch.allclose(output.image_embeds, F.normalize(projected, dim=-1), atol=1e-5)
    text_projected = F.normalize(text_pooled, dim=-1) @ model.text_projection.weight.t()
    assert torch.allclose(output.text_embeds, F.normalize(text_projected, dim=-1), atol=1e-5)
    for embeds in (output.image_embeds, output.text_embeds):
        assert torch.allclose(embeds.norm(dim=-1), torch.ones(3), atol=1e-6)
    scale = 1 / 0.07
    assert torch.allclose(
        output.logits_per_image, scale * output.image_embeds @ output.text_embeds.t(), atol=1e-4
    )
    assert torch.equal(output.logits_per_text, output.logits_per_image.t())
    assert output.loss is None
    # the linear-probe feature; not bit-equal: the dual encoder may run the ResNet channels-last, and oneDNN
    # picks a different convolution kernel for that layout with one thread
    assert torch.allclose(output.vision_model_output.pooler_output, pooled, rtol=0, atol=1e-6)


def test_released_forward_gives_the_contrastive_loss_on_request():
    """KeepFitModel(return_loss=True): L_itc, label-guided with labels (the pretraining model's L_itc^p)."""
    model = tiny_released().eval()
    batch = pretraining_batch()
    inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
    with torch.no_grad():
        output = model(**inputs, labels=batch["labels"], return_loss=True)
        plain = model(**inputs, return_loss=True)
    categorical = torch.tensor([[1 / 2, 0, 1 / 2], [0, 1, 0], [1 / 2, 0, 1 / 2]])  # labels [0, 1, 0]
    scale = torch.tensor(1 / 0.07)
    expected = soft_target_clip(output.image_embeds, output.text_embeds, scale, categorical)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    expected_plain = soft_target_clip(plain.image_embeds, plain.text_embeds, scale, torch.eye(3))
    assert plain.loss.item() == pytest.approx(expected_plain.item(), rel=1e-5)
    assert torch.allclose(
        output.logits_per_image, scale * output.image_embeds @ output.text_embeds.t(), atol=1e-4
    )


def test_logit_scale_clamp():
    model = tiny_released()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.clamped_logit_scale().item() == pytest.approx(100.0, rel=1e-6)
    assert model.logit_scale.item() == 10.0  # the clamp in the forward does not touch the parameter
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == pytest.approx(math.log(100.0), rel=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(-2.0)
    assert model.clamped_logit_scale().item() == pytest.approx(1.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == 0.0
    # the pretraining model's clamp (the trainer's after_optimizer_step) acts on the released logit scale
    pretraining = tiny_model()
    with torch.no_grad():
        pretraining.keepfit.logit_scale.fill_(10.0)
    pretraining.clamp_logit_scale_()
    assert pretraining.keepfit.logit_scale.item() == pytest.approx(math.log(100.0), rel=1e-6)


# ---------------------------------------------------------------------------------- pretraining forward
def test_training_forward_computes_every_term_of_eq_22():
    model = tiny_model(knowledge_attention_dropout=0.0).train()
    batch = pretraining_batch()
    output = model(**batch)
    terms = (output.loss_itc_categorical, output.loss_itc_elite, output.loss_semantic, output.loss_appearance)
    assert all(term is not None and term.dim() == 0 for term in terms)
    p, m, s, a = terms
    assert output.loss.item() == pytest.approx((p + m + 100 * s + 1e4 * a).item(), rel=1e-6)

    scale = torch.tensor(1 / 0.07)
    # L_itc^p with the hand-built target of labels [0, 1, 0], L_itc^m with the identity
    categorical = torch.tensor([[1 / 2, 0, 1 / 2], [0, 1, 0], [1 / 2, 0, 1 / 2]])
    expected_p = soft_target_clip(output.image_embeds, output.text_embeds, scale, categorical)
    expected_m = soft_target_clip(output.elite_image_embeds, output.elite_text_embeds, scale, torch.eye(2))
    assert p.item() == pytest.approx(expected_p.item(), rel=1e-5)
    assert m.item() == pytest.approx(expected_m.item(), rel=1e-5)

    # EK_s: query V_p, key V_m, value T_m
    expected_semantic, _ = reference_attention(
        model.semantic_attention,
        output.image_embeds,
        output.elite_image_embeds,
        output.elite_text_embeds,
        scale=1 / math.sqrt(D / HEADS),
        heads=HEADS,
    )
    assert torch.allclose(output.semantic_knowledge, expected_semantic, atol=1e-6)
    # EK_a: query/key = mean-pooled codes of the public/elite images (public first in appearance_indices)
    codebook = model.appearance_quantizer.codebook
    assert output.appearance_indices.shape == (5, 2, 2)
    codes = codebook[output.appearance_indices].mean(dim=(1, 2))
    expected_appearance, _ = reference_attention(
        model.appearance_attention, codes[:3], codes[3:], output.elite_text_embeds, scale=1.0, heads=HEADS
    )
    assert torch.allclose(output.appearance_knowledge, expected_appearance, atol=1e-6)
    assert s.item() == pytest.approx(F.mse_loss(expected_semantic, output.text_embeds).item(), rel=1e-5)
    assert a.item() == pytest.approx(F.mse_loss(expected_appearance, output.text_embeds).item(), rel=1e-5)
    assert output.semantic_attention.shape == output.appearance_attention.shape == (3, HEADS, 2)

    output.loss.backward()
    for name in (
        "semantic_attention.q_proj.weight",
        "appearance_attention.k_proj.weight",
        "appearance_quantizer.proj.weight",
        "keepfit.visual_projection.weight",
        "keepfit.text_projection.weight",
        "keepfit.logit_scale",
    ):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_config_lambdas_and_reduction_reach_the_loss():
    model = tiny_model(lambda_semantic=3.0, lambda_appearance=7.0, knowledge_loss_reduction="sum_per_sample")
    output = model.train()(**pretraining_batch())
    p, m, s, a = (
        output.loss_itc_categorical,
        output.loss_itc_elite,
        output.loss_semantic,
        output.loss_appearance,
    )
    assert output.loss.item() == pytest.approx((p + m + 3 * s + 7 * a).item(), rel=1e-6)
    expected_s = ((output.semantic_knowledge - output.text_embeds) ** 2).sum(dim=1).mean()
    assert s.item() == pytest.approx(expected_s.item(), rel=1e-5)


def test_without_labels_the_categorical_term_is_clip():
    model = tiny_model().train()
    output = model(**pretraining_batch(labels=False))
    expected = soft_target_clip(output.image_embeds, output.text_embeds, torch.tensor(1 / 0.07), torch.eye(3))
    assert output.loss_itc_categorical.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("semantic, appearance", [(False, True), (True, False), (False, False)])
def test_ablation_switches(semantic, appearance):
    model = tiny_model(use_semantic_injection=semantic, use_appearance_injection=appearance).train()
    names = set(model.state_dict())
    assert (model.semantic_attention is not None) == semantic
    assert any(n.startswith("semantic_attention.") for n in names) == semantic
    assert (model.appearance_quantizer is not None) == appearance
    assert (model.appearance_attention is not None) == appearance
    assert any(n.startswith("appearance_") for n in names) == appearance
    assert {n.split(".")[0] for n in model.keepfit.state_dict()} == {
        "vision_model",
        "text_model",
        "visual_projection",
        "text_projection",
        "logit_scale",
    }  # the released model is the same whatever the switches

    output = model(**pretraining_batch())
    assert output.loss_itc_elite is not None
    assert (output.loss_semantic is not None) == semantic and (
        output.semantic_knowledge is not None
    ) == semantic
    assert (output.loss_appearance is not None) == appearance
    assert (output.appearance_indices is not None) == appearance
    expected = output.loss_itc_categorical + output.loss_itc_elite
    if semantic:
        expected = expected + 100 * output.loss_semantic
    if appearance:
        expected = expected + 1e4 * output.loss_appearance
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_without_injection_and_elite_batch_only_the_categorical_term_remains():
    model = tiny_model(use_semantic_injection=False, use_appearance_injection=False).train()
    batch = {k: v for k, v in pretraining_batch().items() if not k.startswith("elite_")}
    output = model(**batch)
    assert output.loss_itc_elite is None and output.loss_semantic is None and output.loss_appearance is None
    assert output.elite_image_embeds is None and output.elite_text_embeds is None
    assert torch.equal(output.loss, output.loss_itc_categorical)


# ------------------------------------------------------------------------------------------- the codebook
TINY_IBQ = dict(
    image_size=32,
    base_channels=8,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    num_mid_res_blocks=1,
    norm_num_groups=4,
    codebook_size=64,
    code_dim=8,
)


@pytest.fixture(scope="module")
def ibq_directory(tmp_path_factory):
    torch.manual_seed(3)
    tokenizer = IBQTokenizerModel(IBQTokenizerConfig(**TINY_IBQ))
    directory = tmp_path_factory.mktemp("ibq")
    tokenizer.save_pretrained(directory)
    return tokenizer.get_codebook().detach().clone(), directory


def test_codebook_is_loaded_from_an_ibq_tokenizer(ibq_directory, tmp_path):
    codebook, directory = ibq_directory
    copy = tmp_path / "ibq-copy"
    shutil.copytree(directory, copy)
    # building a model never reads files, even when the config names a tokenizer: load_codebook does
    model = tiny_model(ibq_tokenizer_path=str(copy))
    assert not torch.equal(model.appearance_quantizer.codebook, codebook)
    returned = model.load_codebook(model.config.ibq_tokenizer_path)
    assert torch.equal(model.appearance_quantizer.codebook, codebook)
    assert returned is model.appearance_quantizer.codebook
    assert model.config.ibq_tokenizer_path == str(copy)
    # ... and saved with the KeepFIT pretraining checkpoint: it loads after the tokenizer directory is gone
    model.save_pretrained(tmp_path / "keepfit")
    shutil.rmtree(copy)
    loaded = KeepFitForPreTraining.from_pretrained(tmp_path / "keepfit")
    assert torch.equal(loaded.appearance_quantizer.codebook, codebook)
    # the released checkpoint has no codebook (nor any other knowledge module)
    model.released_model.save_pretrained(tmp_path / "released")
    assert {n.split(".")[0] for n in KeepFitModel.from_pretrained(tmp_path / "released").state_dict()} == {
        "vision_model",
        "text_model",
        "visual_projection",
        "text_projection",
        "logit_scale",
    }

    other = tiny_model(seed=5)
    assert not torch.equal(other.appearance_quantizer.codebook, codebook)
    returned = other.load_codebook(str(directory))
    assert other.config.ibq_tokenizer_path == str(directory)
    assert (
        torch.equal(other.appearance_quantizer.codebook, codebook)
        and returned is other.appearance_quantizer.codebook
    )


@pytest.mark.parametrize(
    "overrides, shape", [(dict(codebook_size=32), "(32, 8)"), (dict(code_dim=4), "(64, 4)")]
)
def test_codebook_shape_mismatch_names_both_shapes(ibq_directory, overrides, shape):
    _, directory = ibq_directory
    with pytest.raises(ValueError) as error:
        tiny_model(**overrides).load_codebook(str(directory))
    assert "(64, 8)" in str(error.value) and shape in str(error.value)


def test_codebook_errors(tmp_path, ibq_directory):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        tiny_model().load_codebook(str(tmp_path / "missing"))
    not_a_tokenizer = tmp_path / "keepfit"
    tiny_model().save_pretrained(not_a_tokenizer)
    with pytest.raises(ValueError, match="not an IBQ tokenizer"):
        tiny_model().load_codebook(str(not_a_tokenizer))
    with pytest.raises(ValueError, match="use_appearance_injection=False"):
        tiny_model(use_appearance_injection=False).load_codebook(str(ibq_directory[1]))


# ----------------------------------------------------------------------------------- checkpoints, hub use
TEXTS = ["optic disc cupping", "normal fundus", "hard exudates at the macula"]


def _images():
    generator = np.random.default_rng(0)
    return [Image.fromarray(generator.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(2)]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny KeepFIT pretraining model trained for one step (BatchNorm statistics moved) and its full
    (pretraining) checkpoint."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(text={"vocab_size": len(tokenizer)}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(**pretraining_batch()).loss.backward()
    optimizer.step()
    model.clamp_logit_scale_()
    directory = tmp_path_factory.mktemp("keepfit-pretraining")
    model.save_pretrained(directory)
    return model.eval(), directory


@pytest.fixture(scope="module")
def saved_checkpoint(pretrained, tmp_path_factory):
    """The released model of `pretrained` + its processor, saved like a release."""
    model = pretrained[0].released_model
    tokenizer = tiny_tokenizer()
    directory = tmp_path_factory.mktemp("keepfit")
    model.save_pretrained(directory)
    processor = KeepFitProcessor(keepfit_image_processor(size=IMAGE), tokenizer)
    processor.save_pretrained(directory)
    return model.eval(), processor, directory


def test_checkpoint_carries_its_code(saved_checkpoint):
    _, _, directory = saved_checkpoint
    for name in (
        "configuration_keepfit.py",
        "modeling_keepfit.py",
        "loss_keepfit.py",
        "contrastive.py",
        "modeling_common.py",
        "quantization_ibq.py",
        "configuration_support.py",  # our code in place of transformers' private classes
        "modeling_support.py",
        "resnet_blocks.py",
        "processing_keepfit.py",
        "processing_fundus.py",  # the shared processor base (was processing_maskedclip.py)
        "image_processing_fundus.py",
    ):
        path = directory / name
        assert path.is_file() and not os.path.islink(path), name
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module)
        assert not any(module.split(".")[0] == "retvlp" for module in imported), name
    auto_map = json.loads((directory / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_keepfit.KeepFitModel"
    assert auto_map["AutoModelForZeroShotImageClassification"] == "modeling_keepfit.KeepFitModel"
    assert auto_map["AutoModelForPreTraining"] == "modeling_keepfit.KeepFitForPreTraining"
    assert not (directory / "processing_maskedclip.py").exists()  # KeepFIT no longer needs MaskedCLIP's file


def test_save_load_round_trip(saved_checkpoint):
    model, processor, directory = saved_checkpoint
    inputs = processor(text=TEXTS, images=_images())
    with torch.no_grad():
        expected = model(**inputs)
    reference = model.state_dict()
    for loaded in (KeepFitModel.from_pretrained(directory), AutoModel.from_pretrained(directory)):
        assert type(loaded) is KeepFitModel
        state = loaded.state_dict()
        assert set(state) == set(reference)
        for name, tensor in reference.items():
            assert torch.equal(state[name], tensor), name
        with torch.no_grad():
            output = loaded.eval()(**inputs)
        assert torch.equal(output.logits_per_image, expected.logits_per_image)
        assert torch.equal(output.image_embeds, expected.image_embeds)
    zero_shot = AutoModelForZeroShotImageClassification.from_pretrained(directory)
    assert type(zero_shot) is KeepFitModel


def test_released_checkpoint_has_no_knowledge_modules(saved_checkpoint):
    _, _, directory = saved_checkpoint
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert {key.split(".")[0] for key in keys} == {
        "vision_model",
        "text_model",
        "visual_projection",
        "text_projection",
        "logit_scale",
    }


def test_pretraining_checkpoint_round_trip(pretrained, saved_checkpoint):
    """The full checkpoint keeps everything (knowledge modules, codebook); AutoModel reads the released model
    out of it and AutoModelForPreTraining the pretraining model out of either kind."""
    model, directory = pretrained
    _, processor, released_directory = saved_checkpoint
    reference = model.state_dict()
    assert "appearance_quantizer.codebook" in reference
    for loaded in (
        KeepFitForPreTraining.from_pretrained(directory),
        AutoModelForPreTraining.from_pretrained(directory),
    ):
        assert type(loaded) is KeepFitForPreTraining
        state = loaded.state_dict()
        assert set(state) == set(reference)
        for name, tensor in reference.items():
            assert torch.equal(state[name], tensor), name
    released = AutoModel.from_pretrained(directory)
    assert type(released) is KeepFitModel
    assert set(released.state_dict()) == set(model.keepfit.state_dict())
    for name, tensor in model.keepfit.state_dict().items():
        assert torch.equal(released.state_dict()[name], tensor), name
    inputs = processor(text=TEXTS, images=_images())
    with torch.no_grad():
        assert torch.equal(
            released.eval()(**inputs).logits_per_image, model.keepfit(**inputs).logits_per_image
        )
    # a released checkpoint continues pretraining: the released weights load, the knowledge modules start fresh
    resumed, info = KeepFitForPreTraining.from_pretrained(released_directory, output_loading_info=True)
    assert type(AutoModelForPreTraining.from_pretrained(released_directory)) is KeepFitForPreTraining
    assert {key.split(".")[0] for key in info["missing_keys"]} == {
        "semantic_attention",
        "appearance_quantizer",
        "appearance_attention",
    }
    for name, tensor in model.keepfit.state_dict().items():
        assert torch.equal(resumed.keepfit.state_dict()[name], tensor), name


def test_processor_round_trip(saved_checkpoint):
    _, processor, directory = saved_checkpoint
    loaded = AutoProcessor.from_pretrained(directory)
    assert type(loaded) is KeepFitProcessor and loaded.max_length == 256
    ip = loaded.image_processor
    assert (ip.size, ip.pad_to_square, ip.do_normalize) == (IMAGE, True, False)
    a, b = processor(text=TEXTS, images=_images()), loaded(text=TEXTS, images=_images())
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# Both remote-code loads of this module (the released model with its processor and pipeline; the classifier built
# from it and a fine-tuned one) run in one interpreter without retvlp: one start-up of torch and transformers.
REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys, json, logging
    sys.modules["retvlp"] = None  # make `import retvlp` fail: only the checkpoint's own code may run
    import numpy as np, torch
    torch.set_num_threads(1)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    from PIL import Image
    from transformers import AutoModel, AutoModelForImageClassification, AutoProcessor, pipeline
    directory, texts, finetuned = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]

    model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
    generator = np.random.default_rng(0)
    images = [Image.fromarray(generator.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(2)]
    inputs = processor(text=texts, images=images)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    classifier = pipeline("zero-shot-image-classification", model=directory, trust_remote_code=True,
                          tokenizer=processor.tokenizer, image_processor=processor.image_processor)
    scores = classifier(images[0], candidate_labels=texts, hypothesis_template="{}")
    released = {"class": type(model).__module__ + "." + type(model).__name__,
                "processor": type(processor).__module__ + "." + type(processor).__name__,
                "logits": logits.tolist(), "scores": {s["label"]: s["score"] for s in scores}}

    messages.clear()  # the classifier loads below must not mention the codebook
    pixels = torch.from_numpy(np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32))
    fresh = AutoModelForImageClassification.from_pretrained(directory, num_labels=3, trust_remote_code=True)
    tuned = AutoModelForImageClassification.from_pretrained(finetuned, trust_remote_code=True)
    with torch.no_grad():
        features = fresh.eval().vision_model(pixel_values=pixels).pooler_output.flatten(1)
        tuned_logits = tuned.eval()(pixels).logits
    classifiers = {"classes": [type(m).__module__ + "." + type(m).__name__ for m in (fresh, tuned)],
                   "num_labels": fresh.config.num_labels, "features": features.tolist(),
                   "logits": tuned_logits.tolist(), "codebook_messages": [m for m in messages if "codebook" in m]}
    print(json.dumps({"released": released, "classifiers": classifiers}))
    """
)


@pytest.fixture(scope="module")
def remote_loads(saved_checkpoint, tmp_path_factory):
    """`(report, classifier)`: what REMOTE_SCRIPT printed, and the 2-class classifier (seed 1) it loaded as the
    fine-tuned one."""
    _, _, directory = saved_checkpoint
    tmp_path = tmp_path_factory.mktemp("keepfit_remote")
    torch.manual_seed(1)
    classifier = KeepFitForImageClassification.from_pretrained(directory, num_labels=2)
    classifier.save_pretrained(tmp_path / "classifier")
    report = run_without_retvlp(
        REMOTE_SCRIPT, tmp_path, str(directory), json.dumps(TEXTS), str(tmp_path / "classifier")
    )
    return report, classifier


def test_remote_code_loads_in_a_process_without_retvlp(saved_checkpoint, remote_loads):
    model, processor, _ = saved_checkpoint
    report = remote_loads[0]["released"]
    assert "retvlp" not in report["class"] and report["class"].endswith("modeling_keepfit.KeepFitModel")
    assert "retvlp" not in report["processor"] and report["processor"].endswith("KeepFitProcessor")
    with torch.no_grad():
        expected = model(**processor(text=TEXTS, images=_images())).logits_per_image
    assert torch.allclose(torch.tensor(report["logits"]), expected, atol=1e-5)
    probabilities = expected[0].softmax(-1)
    assert [report["scores"][t] for t in TEXTS] == pytest.approx(probabilities.tolist(), abs=1e-5)


def test_zero_shot_pipeline_matches_hand_scoring(saved_checkpoint):
    model, processor, directory = saved_checkpoint
    classifier = pipeline(
        "zero-shot-image-classification",
        model=str(directory),
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    image = _images()[1]
    labels = ["glaucoma", "diabetic retinopathy", "normal"]
    scores = classifier(image, candidate_labels=labels, hypothesis_template="A fundus photograph of {}")
    assert sorted(s["label"] for s in scores) == sorted(labels)
    # by hand: each prompt embedded ALONE (no padding), softmax over exp(τ)·cos
    with torch.no_grad():
        image_embed = F.normalize(model.get_image_features(**processor(images=[image])).pooler_output, dim=-1)
        text_embeds = torch.cat(
            [
                F.normalize(
                    model.get_text_features(
                        **processor(text=f"A fundus photograph of {label}")
                    ).pooler_output,
                    dim=-1,
                )
                for label in labels
            ]
        )
        probabilities = (model.logit_scale.exp() * image_embed @ text_embeds.t()).softmax(-1)[0]
    by_label = {s["label"]: s["score"] for s in scores}
    assert [by_label[label] for label in labels] == pytest.approx(probabilities.tolist(), abs=1e-5)


# ------------------------------------------------------------------------------------------ the processor
def test_processor_defaults_are_the_reference_preprocessing():
    image_processor = keepfit_image_processor()
    assert image_processor.size == 512 and image_processor.pad_to_square and not image_processor.do_normalize
    tall = np.full((100, 50, 3), 200, dtype=np.uint8)  # H × W: padded on the right
    wide = np.full((50, 100, 3), 200, dtype=np.uint8)  # padded at the bottom
    pixels = image_processor([tall, wide], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 512, 512)
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert torch.allclose(pixels[0, :, :, :256], torch.tensor(200 / 255), atol=1.5 / 255)
    assert torch.all(pixels[0, :, :, 256:] == 0)
    assert torch.allclose(pixels[1, :, :256, :], torch.tensor(200 / 255), atol=1.5 / 255)
    assert torch.all(pixels[1, :, 256:, :] == 0)

    processor = KeepFitProcessor(tokenizer=tiny_tokenizer())
    assert processor.max_length == 256 and processor.image_processor.size == 512
    assert processor.image_processor.pad_to_square and not processor.image_processor.do_normalize
    long_caption = " ".join(["retina"] * 400)
    assert processor(text=[long_caption, "disc"])["input_ids"].shape == (2, 256)


def test_processor_rejects_empty_captions():
    processor = KeepFitProcessor(keepfit_image_processor(size=IMAGE), tiny_tokenizer())
    with pytest.raises(ValueError, match="empty"):
        processor(text=["optic disc", "   "])
    with pytest.raises(ValueError, match="empty"):
        processor(text=[])


# ------------------------------------------------------------------------------------------- bad inputs
def test_bad_forward_inputs_raise_clear_errors():
    model = tiny_model().train()
    batch = pretraining_batch()
    with pytest.raises(ValueError, match=r"3 images \(pixel_values\) but 2 texts \(input_ids\)"):
        model(**{**batch, "input_ids": batch["input_ids"][:2], "attention_mask": batch["attention_mask"][:2]})
    with pytest.raises(ValueError, match=r"elite_pixel_values.*elite_input_ids"):
        model(**{**batch, "elite_input_ids": batch["elite_input_ids"][:1]})
    with pytest.raises(ValueError, match="labels has 2 rows for 3"):
        model(**{**batch, "labels": torch.tensor([0, 1])})
    without_elite = {k: v for k, v in batch.items() if not k.startswith("elite_")}
    with pytest.raises(ValueError, match="elite_pixel_values.*knowledge injection"):
        model(**without_elite)
    with pytest.raises(ValueError, match="needs both pixel_values and input_ids"):
        model(pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="needs both elite_pixel_values and elite_input_ids"):
        model(**{**batch, "elite_input_ids": None})
    released = model.keepfit.eval()
    with pytest.raises(ValueError, match=r"pixel_values must be \(batch, channels, height, width\)"):
        released(pixel_values=torch.rand(3, IMAGE, IMAGE))
    with pytest.raises(ValueError, match="non-empty input_ids"):
        released(input_ids=torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="one text per image"):
        released(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"][:2], return_loss=True)
    with pytest.raises(ValueError, match="return_loss needs both pixel_values and input_ids"):
        released(pixel_values=batch["pixel_values"], return_loss=True)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(text_pooling="max"), "text_pooling must be one of"),
        (dict(text_pooling_layers=[1, 3]), "text_pooling_layers"),
        (dict(text_pooling_layers=[-4]), "text_pooling_layers"),
        (dict(text_pooling_layers=[]), "text_pooling_layers"),
        (dict(projection_dim=15), "projection_dim"),
        (dict(code_dim=7), "code_dim"),
        (dict(lambda_semantic=-1.0), "lambda_semantic"),
        (dict(lambda_appearance=-0.5), "lambda_appearance"),
        (dict(semantic_softmax_over="queries"), "semantic_softmax_over"),
        (dict(knowledge_loss_reduction="sum"), "knowledge_loss_reduction"),
        (dict(knowledge_attention_dropout=1.0), "knowledge_attention_dropout"),
        (dict(appearance_temperature=0.0), "appearance_temperature"),
        (dict(logit_scale_init_value=5.0), "logit_scale_max"),
    ],
)
def test_bad_config_values_are_rejected(overrides, message):
    with pytest.raises((ValueError, StrictDataclassClassValidationError)) as error:
        tiny_config(**overrides)
    assert message in str(error.value) and "KeepFitConfig" in str(error.value)


def test_default_config_is_the_papers():
    config = KeepFitConfig()
    vision, text = config.vision_config, config.text_config
    assert vision.model_type == "resnet" and vision.layer_type == "bottleneck"
    assert list(vision.hidden_sizes) == [256, 512, 1024, 2048] and list(vision.depths) == [3, 4, 6, 3]
    assert vision.embedding_size == 64 and config.image_feature_size == 2048
    assert text.model_type == "bert" and text.vocab_size == 28996
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (768, 12, 12)
    assert config.projection_dim == 512
    assert config.knowledge_num_heads == 2 and config.knowledge_attention_dropout == 0.5
    assert not config.knowledge_attention_bias
    assert config.semantic_softmax_over == "keys"
    assert (config.codebook_size, config.code_dim) == (16384, 256)
    assert (config.lambda_semantic, config.lambda_appearance) == (100, 1e4)
    assert config.logit_scale_init_value == pytest.approx(math.log(1 / 0.07))
    assert config.logit_scale_max == pytest.approx(math.log(100))
    assert config.text_pooling == "layers_mean" and list(config.text_pooling_layers) == [1, 2, -1]
    assert config.use_semantic_injection and config.use_appearance_injection
    assert config.appearance_temperature == 1.0 and config.quantizer_temperature == 1.0
    assert config.knowledge_loss_reduction == "mean"
    again = KeepFitConfig.from_dict(config.to_dict())
    assert (
        list(again.vision_config.hidden_sizes) == [256, 512, 1024, 2048]
        and again.text_config.vocab_size == 28996
    )


def test_appearance_codes_are_assigned_in_float32_under_bf16_autocast():
    """Under bf16 autocast the codebook arg-max must be the float32 one (bf16 logits move some codes)."""
    torch.manual_seed(0)
    quantizer = KeepFitAppearanceQuantizer(in_channels=32, codebook_size=256, code_dim=16, temperature=1.0)
    torch.nn.init.normal_(quantizer.codebook)
    feature_map = torch.randn(4, 32, 6, 6)
    with torch.no_grad():
        z = torch.nn.functional.conv2d(feature_map, quantizer.proj.weight, quantizer.proj.bias)
        expected = (z.permute(0, 2, 3, 1) @ quantizer.codebook.t()).argmax(dim=-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, indices = quantizer(feature_map)
    assert torch.equal(indices, expected)


# --------------------------------------------------------------------- image-only models for fine-tuning


def _pixels(n=2, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((n, 3, IMAGE, IMAGE), dtype=np.float32))


def _assert_same_resnet(model, other):
    reference = model.vision_model.state_dict()  # includes the BatchNorm running statistics
    state = other.vision_model.state_dict()
    assert set(state) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(state[name], tensor), name


def test_vision_and_classification_models_load_the_image_encoder(saved_checkpoint, hf_caplog):
    caplog = hf_caplog
    model, _, directory = saved_checkpoint
    with caplog.at_level("WARNING"):
        vision = KeepFitVisionModel.from_pretrained(directory)
        classifier = KeepFitForImageClassification.from_pretrained(directory, num_labels=4)
    assert "codebook" not in caplog.text  # no IBQ codebook is built, loaded or warned about
    assert vision.main_input_name == classifier.main_input_name == "pixel_values"
    assert {n.split(".")[0] for n in vision.state_dict()} == {"vision_model"}
    assert {n.split(".")[0] for n in classifier.state_dict()} == {"vision_model", "classifier"}
    assert classifier.classifier.weight.shape == (4, 64) and classifier.config.num_labels == 4
    pixels = _pixels()
    with torch.no_grad():
        encoded = model(pixel_values=pixels).vision_model_output
        pooled, feature_map = encoded.pooler_output, encoded.last_hidden_state
        features = vision.eval()(pixels)
        hidden = classifier.eval().vision_model(pixel_values=pixels).pooler_output.flatten(1)
        logits = classifier(pixels).logits
    for other in (vision, classifier):
        _assert_same_resnet(model, other)
    # closeness, not bit-equality: the models may run the ResNet in different memory layouts (channels-last)
    for got, expected in (
        (features.pooler_output, pooled),
        (hidden, pooled),
        (features.last_hidden_state, feature_map),
    ):
        assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    assert feature_map.shape == (2, 64, 2, 2)
    expected = pooled @ classifier.classifier.weight.t() + classifier.classifier.bias
    assert torch.allclose(logits, expected, atol=1e-6)
    as_tuple = vision(pixels, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], features.pooler_output)
    assert len(vision(pixels, output_hidden_states=True).hidden_states) == 5  # stem + 4 stages


def test_image_models_ignore_the_ibq_tokenizer_path(saved_checkpoint, tmp_path, hf_caplog):
    """A checkpoint whose config names an IBQ tokenizer that is not there: the image-only models never read it."""
    caplog = hf_caplog
    _, _, directory = saved_checkpoint
    moved = tmp_path / "keepfit"
    shutil.copytree(directory, moved)
    config = json.loads((moved / "config.json").read_text())
    config["ibq_tokenizer_path"] = str(tmp_path / "missing-ibq")
    (moved / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        KeepFitVisionModel.from_pretrained(moved)
        KeepFitForImageClassification.from_pretrained(moved, num_labels=2)
        KeepFitForImageClassification(KeepFitConfig.from_pretrained(moved))
        # nor do the dual encoder and the pretraining model: building or loading a model never reads files
        KeepFitModel.from_pretrained(moved)
        pretraining = KeepFitForPreTraining.from_pretrained(moved)
        KeepFitForPreTraining(KeepFitConfig.from_pretrained(moved))
    # loading the pretraining model from a released checkpoint reports its knowledge weights (the codebook
    # among them) as newly initialised; that is expected. What must not appear is an attempt to read the path.
    assert "missing-ibq" not in caplog.text
    assert "ibq_tokenizer_path" not in caplog.text
    assert "quantizer.codebook" in caplog.text  # control: the capture works
    # control: the path is really missing, the pretraining side's load_codebook fails on it
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        pretraining.load_codebook(pretraining.config.ibq_tokenizer_path)


def test_classification_losses():
    pixels = _pixels(3)
    torch.manual_seed(0)
    single = KeepFitForImageClassification(tiny_config(num_labels=3)).eval()
    labels = torch.tensor([0, 2, 1])
    output = single(pixels, labels=labels)
    assert output.logits.shape == (3, 3)
    assert output.loss.item() == pytest.approx(F.cross_entropy(output.logits, labels).item(), rel=1e-6)

    multi = KeepFitForImageClassification(
        tiny_config(num_labels=3, problem_type="multi_label_classification")
    ).eval()
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    output = multi(pixels, labels=targets)
    expected = F.binary_cross_entropy_with_logits(output.logits, targets)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)

    regression = KeepFitForImageClassification(tiny_config(num_labels=1)).eval()
    values = torch.tensor([0.5, -1.0, 2.0])
    output = regression(pixels, labels=values)
    assert output.loss.item() == pytest.approx(F.mse_loss(output.logits.squeeze(-1), values).item(), rel=1e-6)
    assert regression(pixels).loss is None

    output.loss.backward()
    assert regression.classifier.weight.grad is not None
    no_grad = [n for n, p in regression.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def test_classifier_dropout_is_a_validated_config_field():
    assert KeepFitConfig().classifier_dropout == 0.0
    classifier = KeepFitForImageClassification(tiny_config(num_labels=2, classifier_dropout=0.25))
    assert classifier.dropout.p == 0.25
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="classifier_dropout"):
        tiny_config(classifier_dropout=1.0)


def test_auto_model_for_image_classification_round_trip(saved_checkpoint, tmp_path):
    model, _, directory = saved_checkpoint
    auto_map = json.loads((directory / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "modeling_keepfit.KeepFitForImageClassification"
    classifier = AutoModelForImageClassification.from_pretrained(directory, num_labels=3)
    assert type(classifier) is KeepFitForImageClassification and classifier.config.num_labels == 3
    _assert_same_resnet(model, classifier)
    classifier.save_pretrained(tmp_path / "classifier")
    saved_map = json.loads((tmp_path / "classifier" / "config.json").read_text())["auto_map"]
    assert saved_map["AutoModelForImageClassification"] == "modeling_keepfit.KeepFitForImageClassification"
    assert (tmp_path / "classifier" / "modeling_keepfit.py").is_file()
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "classifier")
    assert type(reloaded) is KeepFitForImageClassification
    assert set(reloaded.state_dict()) == set(classifier.state_dict())
    pixels = _pixels()
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(pixels).logits, classifier.eval()(pixels).logits)


def test_classifier_loads_as_remote_code_without_retvlp(saved_checkpoint, remote_loads):
    model, _, _ = saved_checkpoint
    report, classifier = remote_loads[0]["classifiers"], remote_loads[1]
    for name in report["classes"]:
        assert "retvlp" not in name and name.endswith("modeling_keepfit.KeepFitForImageClassification")
    assert report["num_labels"] == 3 and report["codebook_messages"] == []
    pixels = _pixels()
    with torch.no_grad():
        pooled = model(pixel_values=pixels).vision_model_output.pooler_output
        logits = classifier.eval()(pixels).logits
    assert torch.allclose(torch.tensor(report["features"]), pooled, atol=1e-6)
    assert torch.allclose(torch.tensor(report["logits"]), logits, atol=1e-6)
