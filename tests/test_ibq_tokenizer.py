"""IBQ visual tokenizer: the quantiser and its losses by hand, the model, checkpoints and remote code."""

import json
import math
import os
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import run_without_retvlp
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from retvlp.ibq import (
    IBQTokenizerConfig,
    IBQTokenizerModel,
    IBQTokenizerOutput,
    code_histogram,
    codebook_perplexity,
    codebook_usage,
    entropy_loss,
    ibq_losses,
    ibq_quantize,
)

TINY = dict(
    image_size=32,
    base_channels=8,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    num_mid_res_blocks=1,
    norm_num_groups=4,
    codebook_size=64,
    code_dim=8,
)


def tiny_config(**overrides) -> IBQTokenizerConfig:
    return IBQTokenizerConfig(**{**TINY, **overrides})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny convolutions are fastest on one thread; two threads on a busy 2-core box are 10-30× slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def fixed_images() -> torch.Tensor:
    """Two smooth, distinct 32 px images in [-1, 1]."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    disc = (xs**2 + ys**2 < 0.4).float() * 2 - 1
    return torch.stack([torch.stack([xs, ys, xs * ys]), torch.stack([disc, -xs, torch.sin(3 * ys)])])


# ---------------------------------------------------------------------------------------------- quantiser
def _random_problem(seed=0, shape=(2, 3, 5), num_codes=16, dim=8):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, dim, generator=generator)
    codebook = torch.randn(num_codes, dim, generator=generator)
    return z, codebook


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_quantized_value_is_the_argmax_lookup(temperature):
    z, codebook = _random_problem()
    z.requires_grad_(True)
    codebook.requires_grad_(True)
    result = ibq_quantize(z, codebook, temperature=temperature)
    logits = z.detach() @ codebook.detach().t() / temperature
    expected_indices = logits.argmax(-1)
    assert result.indices.shape == (2, 3, 5) and result.indices.dtype == torch.int64
    assert torch.equal(result.indices, expected_indices)
    assert torch.equal(result.quantized.detach(), codebook.detach()[expected_indices])  # exact, not close
    assert torch.equal(result.hard_quantized.detach(), codebook.detach()[expected_indices])
    assert torch.allclose(result.logits, logits, atol=1e-6)
    assert torch.allclose(result.soft, logits.softmax(-1), atol=1e-6)
    assert result.soft.shape == result.logits.shape == (2, 3, 5, 16)


def test_straight_through_gradient_is_that_of_the_soft_path():
    z, codebook = _random_problem(seed=1)
    upstream = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(2))

    z1, c1 = z.clone().requires_grad_(True), codebook.clone().requires_grad_(True)
    (ibq_quantize(z1, c1, temperature=0.7).quantized * upstream).sum().backward()

    # to the features: exactly the gradient of softmax(z·Cᵀ/T)·C
    z2 = z.clone().requires_grad_(True)
    soft_path = torch.softmax(z2 @ codebook.t() / 0.7, dim=-1) @ codebook
    (soft_path * upstream).sum().backward()
    assert z1.grad.abs().sum() > 0
    assert torch.allclose(z1.grad, z2.grad, atol=1e-6)

    # to the codebook: the literal METHODS formula index = hard − sg(soft) + soft, q = index·C
    z3, c3 = z.clone().requires_grad_(True), codebook.clone().requires_grad_(True)
    logits = z3 @ c3.t() / 0.7
    soft = logits.softmax(-1)
    hard = F.one_hot(logits.argmax(-1), 16).to(soft.dtype)
    ((hard - soft.detach() + soft) @ c3 * upstream).sum().backward()
    assert torch.allclose(z1.grad, z3.grad, atol=1e-6)
    assert torch.allclose(c1.grad, c3.grad, atol=1e-6)
    # every code receives gradient (the point of IBQ), not only the selected ones
    assert (c1.grad.abs().sum(-1) > 0).all()


def test_frozen_codebook_gets_no_gradient_but_features_do():
    z, codebook = _random_problem(seed=3)
    z.requires_grad_(True)
    result = ibq_quantize(z, codebook)
    result.quantized.sum().backward()
    assert codebook.grad is None
    assert z.grad is not None and z.grad.abs().sum() > 0
    with torch.no_grad():
        inference = ibq_quantize(z, codebook)
    assert torch.equal(inference.quantized, result.quantized.detach())


def test_quantize_rejects_mismatched_shapes():
    z, codebook = _random_problem()
    with pytest.raises(ValueError, match=r"expected z of shape \(\.\.\., 8\)"):
        ibq_quantize(z[..., :5], codebook)
    with pytest.raises(ValueError, match="codebook must be"):
        ibq_quantize(z, codebook[0])
    with pytest.raises(ValueError, match="temperature"):
        ibq_quantize(z, codebook, temperature=0.0)


# ---------------------------------------------------------------------------------------------- losses
def test_ibq_losses_by_hand_and_stop_gradients():
    z_value, hard_value = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    # ‖·‖² terms are means over the 2 elements: ((1−0)² + (2−4)²)/2 = 2.5 each
    expected = {"quantization": 2.5, "commitment": 2.5, "codebook": 0.25 * 2.5}

    def leaves():
        z = z_value.clone().requires_grad_(True)
        quantized = hard_value.clone().requires_grad_(True)  # straight-through output: value = q_hard
        hard = hard_value.clone().requires_grad_(True)
        return z, quantized, hard

    z, quantized, hard = leaves()
    losses = ibq_losses(z, quantized, hard, beta=0.25)
    assert losses.total.item() == pytest.approx(sum(expected.values()))
    for name, value in expected.items():
        assert getattr(losses, name).item() == pytest.approx(value)

    difference = z_value - hard_value  # z − q
    # ‖q − z‖²: gradient to both z and q, nothing to q_hard
    z, quantized, hard = leaves()
    ibq_losses(z, quantized, hard).quantization.backward()
    assert torch.allclose(z.grad, difference) and torch.allclose(quantized.grad, -difference)
    assert hard.grad is None
    # ‖sg(q_hard) − z‖²: gradient to z only
    z, quantized, hard = leaves()
    ibq_losses(z, quantized, hard).commitment.backward()
    assert torch.allclose(z.grad, difference) and quantized.grad is None and hard.grad is None
    # β‖q_hard − sg(z)‖²: gradient to q_hard only
    z, quantized, hard = leaves()
    ibq_losses(z, quantized, hard, beta=0.25).codebook.backward()
    assert torch.allclose(hard.grad, -0.25 * difference) and z.grad is None and quantized.grad is None

    with pytest.raises(ValueError, match="one shape"):
        ibq_losses(z_value, hard_value[:, :1], hard_value)


def test_entropy_loss_prefers_diverse_confident_codes():
    num_codes = 4
    diverse = 20.0 * torch.eye(num_codes)  # sample i confidently picks code i
    collapsed = 20.0 * F.one_hot(torch.zeros(num_codes, dtype=torch.long), num_codes).float()
    diverse_loss = entropy_loss(diverse, temperature=1.0)
    collapsed_loss = entropy_loss(collapsed, temperature=1.0)
    assert diverse_loss < collapsed_loss
    assert diverse_loss.item() == pytest.approx(-math.log(num_codes), abs=1e-5)
    assert collapsed_loss.item() == pytest.approx(0.0, abs=1e-5)


def test_entropy_loss_two_codes_by_hand():
    # p1 = (3/4, 1/4), p2 = (1/4, 3/4): per-sample entropy H(3/4), batch average (1/2, 1/2) → log 2
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]])
    per_sample = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    expected = per_sample - math.log(2.0)
    assert entropy_loss(logits, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)
    # the temperature divides the logits
    assert entropy_loss(0.01 * logits, temperature=0.01).item() == pytest.approx(expected, abs=1e-5)
    # the same works on (B, h, w, K) logits
    assert entropy_loss(logits.reshape(1, 2, 1, 2), temperature=1.0).item() == pytest.approx(
        expected, abs=1e-6
    )


def test_codebook_usage_and_perplexity_by_hand():
    uniform_over_four = torch.tensor([[0, 1], [2, 3], [3, 2], [1, 0]])
    assert codebook_usage(uniform_over_four, 8).item() == pytest.approx(0.5)
    assert codebook_perplexity(uniform_over_four, 8).item() == pytest.approx(4.0, rel=1e-6)
    single = torch.full((3, 3), 5)
    assert codebook_usage(single, 8).item() == pytest.approx(1 / 8)
    assert codebook_perplexity(single, 8).item() == pytest.approx(1.0)
    skewed = torch.tensor([0, 0, 0, 1])
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert codebook_perplexity(skewed, 8).item() == pytest.approx(math.exp(entropy), rel=1e-6)
    assert code_histogram(skewed, 4).tolist() == [3, 1, 0, 0]
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        code_histogram(torch.tensor([0, 4]), 4)


# ---------------------------------------------------------------------------------------------- model
def test_forward_shapes_and_loss_terms():
    torch.manual_seed(0)
    model = IBQTokenizerModel(tiny_config(entropy_loss_weight=0.1)).train()
    images = fixed_images()
    output = model(images)
    assert isinstance(output, IBQTokenizerOutput)
    assert output.reconstruction.shape == (2, 3, 32, 32)
    assert output.indices.shape == (2, 16, 16) and output.indices.dtype == torch.int64
    assert model.get_codebook().shape == (64, 8)
    for name in ("loss", "reconstruction_loss", "quantization_loss", "entropy_loss"):
        assert getattr(output, name).shape == () and torch.isfinite(getattr(output, name)), name
    expected = output.reconstruction_loss + output.quantization_loss + 0.1 * output.entropy_loss
    assert torch.allclose(output.loss, expected)
    assert torch.allclose(output.reconstruction_loss, (output.reconstruction - images).abs().mean())
    assert 0 < output.codebook_usage <= 1 and 1 <= output.perplexity <= 64
    assert torch.allclose(output.codebook_usage, codebook_usage(output.indices, 64))

    # eval: no loss unless asked; the entropy loss is skipped when its weight is 0
    model.eval()
    assert model(images).loss is None
    assert model(images, return_loss=True).loss is not None
    plain = IBQTokenizerModel(tiny_config(reconstruction_loss="l2")).train()(images)
    assert plain.entropy_loss is None
    assert torch.allclose(plain.reconstruction_loss, ((plain.reconstruction - images) ** 2).mean())
    assert isinstance(model(images, return_dict=False), tuple)


def test_encode_and_decode_indices_agree_with_forward():
    torch.manual_seed(0)
    model = IBQTokenizerModel(tiny_config(codebook_init="normal")).eval()
    images = fixed_images()
    with torch.no_grad():
        quantized, indices = model.encode(images)
        output = model(images)
        decoded = model.decode_indices(indices)
    assert quantized.shape == (2, 8, 16, 16)
    assert torch.equal(quantized, model.get_codebook()[indices].permute(0, 3, 1, 2))
    assert torch.equal(indices, output.indices)
    assert torch.allclose(decoded, output.reconstruction, atol=1e-6)


def test_training_reduces_the_loss_and_reaches_every_part():
    torch.manual_seed(0)
    model = IBQTokenizerModel(tiny_config()).train()
    images = fixed_images()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for step in range(30):
        output = model(images)
        optimizer.zero_grad()
        output.loss.backward()
        if step == 0:
            for name, parameter in model.named_parameters():
                assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        optimizer.step()
        history.append((output.loss.item(), output.reconstruction_loss.item()))
    assert all(math.isfinite(loss) for loss, _ in history)
    assert history[-1][0] < 0.6 * history[0][0]
    assert history[-1][1] < 0.7 * history[0][1]  # the reconstruction itself improves


def test_frozen_codebook_still_trains_the_encoder():
    torch.manual_seed(0)
    model = IBQTokenizerModel(tiny_config(codebook_init="normal")).train()
    model.get_codebook().requires_grad_(False)
    model(fixed_images()).loss.backward()
    assert model.get_codebook().grad is None
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = IBQTokenizerModel(tiny_config()).train()
    images = fixed_images()
    model(images).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.encoder.levels[0].blocks[0].gradient_checkpointing
    model(images).loss.backward()
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, reference[name], atol=1e-6), name


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def saved_tokenizer(tmp_path_factory):
    """A tiny tokenizer trained for a few steps (codebook far from its initialisation), saved."""
    torch.manual_seed(0)
    model = IBQTokenizerModel(tiny_config()).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(fixed_images()).loss.backward()
        optimizer.step()
    directory = tmp_path_factory.mktemp("ibq")
    model.save_pretrained(directory)
    return model.eval(), directory


def test_round_trip_restores_weights_codebook_and_outputs(saved_tokenizer):
    model, directory = saved_tokenizer
    files = set(os.listdir(directory))
    assert {"config.json", "model.safetensors"} <= files
    assert {"configuration_ibq.py", "modeling_ibq.py", "quantization_ibq.py"} <= files
    saved_config = json.loads((directory / "config.json").read_text())
    assert saved_config["model_type"] == "ibq_tokenizer"
    assert saved_config["auto_map"] == {
        "AutoConfig": "configuration_ibq.IBQTokenizerConfig",
        "AutoModel": "modeling_ibq.IBQTokenizerModel",
    }

    loaded = IBQTokenizerModel.from_pretrained(directory).eval()
    assert loaded.config.channel_multipliers == [1, 2] and loaded.config.codebook_size == 64
    reference = model.state_dict()
    assert set(loaded.state_dict()) == set(reference)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    # the codebook is the trained one, not a fresh U(−1/K, 1/K) draw
    assert torch.equal(loaded.get_codebook(), model.get_codebook())
    assert model.get_codebook().abs().max() > 1 / 64
    images = fixed_images()
    with torch.no_grad():
        expected, actual = model(images), loaded(images)
    assert torch.equal(actual.reconstruction, expected.reconstruction)
    assert torch.equal(actual.indices, expected.indices)


def test_a_checkpoint_without_codebook_gets_a_fresh_initialisation(saved_tokenizer, tmp_path):
    # from_pretrained builds on the meta device: _init_weights must fill the custom codebook parameter
    model, directory = saved_tokenizer
    weights = load_file(directory / "model.safetensors")
    del weights["quantizer.codebook"]
    model.config.save_pretrained(tmp_path)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = IBQTokenizerModel.from_pretrained(tmp_path)
    codebook = loaded.get_codebook()
    assert codebook.shape == (64, 8) and torch.isfinite(codebook).all()
    assert codebook.abs().max() <= 1 / 64 and codebook.abs().max() > 0
    assert torch.equal(loaded.encoder.conv_in.weight, model.encoder.conv_in.weight)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys, json
    sys.modules["retvlp"] = None  # make `import retvlp` fail: only the checkpoint's own code may run
    import torch
    torch.set_num_threads(1)
    from transformers import AutoModel
    directory, images = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
    model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    with torch.no_grad():
        output = model(images)
        codebook = model.get_codebook()
    print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__,
                      "reconstruction": output.reconstruction.tolist(),
                      "indices": output.indices.tolist(), "codebook": codebook.tolist()}))
    """
)


def test_remote_code_loads_in_a_process_without_retvlp(saved_tokenizer, tmp_path):
    model, directory = saved_tokenizer
    images = fixed_images()
    report = run_without_retvlp(REMOTE_SCRIPT, tmp_path, str(directory), json.dumps(images.tolist()))
    assert "retvlp" not in report["class"] and report["class"].endswith("modeling_ibq.IBQTokenizerModel")
    with torch.no_grad():
        expected = model(images)
    assert torch.allclose(torch.tensor(report["reconstruction"]), expected.reconstruction, atol=1e-5)
    assert torch.equal(torch.tensor(report["indices"]), expected.indices)
    assert torch.equal(torch.tensor(report["codebook"]), model.get_codebook().detach())


def test_auto_model_loads_with_remote_code_in_process(saved_tokenizer):
    model, directory = saved_tokenizer
    loaded = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(fixed_images()).reconstruction, model(fixed_images()).reconstruction)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(image_size=33), "image_size"),
        (dict(channel_multipliers=()), "channel_multipliers"),
        (dict(channel_multipliers=(1, 0)), "channel_multipliers"),
        (dict(norm_num_groups=3), "norm_num_groups"),
        (dict(codebook_size=0), "codebook_size"),
        (dict(code_dim=0), "code_dim"),
        (dict(num_res_blocks=0), "num_res_blocks"),
        (dict(reconstruction_loss="l3"), "reconstruction_loss"),
        (dict(codebook_init="zeros"), "codebook_init"),
        (dict(beta=-0.1), "beta"),
        (dict(quantizer_temperature=0.0), "quantizer_temperature"),
        (dict(entropy_temperature=-1.0), "entropy_temperature"),
        (dict(entropy_loss_weight=-1.0), "entropy_loss_weight"),
        (dict(quantization_loss_weight=-1), "quantization_loss_weight"),
        (dict(codebook_size="big"), "codebook_size"),
    ],
)
def test_bad_config_values_are_rejected(overrides, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**overrides)


def test_default_config_is_the_papers_codebook():
    config = IBQTokenizerConfig()
    assert (config.codebook_size, config.code_dim, config.beta) == (16384, 256, 0.25)
    assert config.downsampling_factor == 16 and config.num_tokens == 256
    assert config.entropy_temperature == 0.01 and config.reconstruction_loss == "l1"


def test_bad_inputs_are_rejected():
    model = IBQTokenizerModel(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"has 1 channels.*\(batch, 3, height, width\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="multiples of the downsampling factor 2"):
        model(torch.randn(1, 3, 31, 32))
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="integer tensor of shape"):
        model.decode_indices(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode_indices(torch.full((1, 4, 4), 64))
    with pytest.raises(ValueError, match=r"\(batch, 8, h, w\)"):
        model.decode(torch.zeros(1, 4, 4, 4))
    # any multiple of the downsampling factor works (fully convolutional)
    assert model.decode_indices(torch.zeros(1, 3, 5, dtype=torch.long)).shape == (1, 3, 6, 10)


def test_auto_classes_load_a_saved_tokenizer_without_remote_code(tmp_path):
    from transformers import AutoConfig, AutoModel

    import retvlp  # noqa: F401  (registers the family)

    model = IBQTokenizerModel(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), IBQTokenizerConfig)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is IBQTokenizerModel
    assert torch.equal(loaded.get_codebook(), model.get_codebook())


def test_straight_through_gradient_under_bf16_autocast_matches_the_literal_formula():
    z, codebook = _random_problem(seed=4)
    upstream = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(5))
    grads = []
    for literal in (False, True):
        z1 = z.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if literal:
                logits = z1 @ codebook.t()
                soft = logits.softmax(-1)
                hard = F.one_hot(logits.argmax(-1), 16).to(soft.dtype)
                quantized = (hard - soft.detach() + soft) @ codebook
            else:
                quantized = ibq_quantize(z1, codebook).quantized
        (quantized.float() * upstream).sum().backward()
        grads.append(z1.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=2e-2, atol=2e-2)
