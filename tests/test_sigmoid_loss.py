"""The sigmoid image-text loss option (SigLIP, Zhai et al. 2023; beyond both papers): the loss against a literal
double loop written from its formula, its gradients, 2 gloo processes against one, both families' models with
the learnable bias (init, forward, save / load, softmax checkpoints unchanged), the collapse guard's figures
and a tiny pretraining run of each family."""

import json
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import free_port, make_tiny_config, run_two_processes, tiny_pretrain_dict
from huggingface_hub.errors import StrictDataclassClassValidationError
from test_modeling_keepfit import pretraining_batch
from test_modeling_keepfit import tiny_config as keepfit_config
from test_pretrain_keepfit import keepfit_dict
from torch import nn
from transformers import AutoModel

from retvlp import KeepFitForPreTraining, KeepFitModel, MaskedCLIPForPreTraining, MaskedCLIPModel
from retvlp.common.contrastive import contrastive_loss, label_guided_sigmoid_loss
from retvlp.common.modeling_common import dual_encoder_scores
from retvlp.training import PretrainConfig, pretrain
from retvlp.training.collapse import CollapseGuard, ContrastiveCollapseError, ContrastiveTerm
from retvlp.training.maskedclip_task import MaskedCLIPTask
from retvlp.training.task import constant_embedding_loss

# ---------------------------------------------------------------------------------------------- the literal loss


def _same_label(labels, i, j) -> bool:
    """Positives as the loss defines them: a label ≥ 0 shared (a multi-hot row: every entry ≥ 0, rows equal)."""
    if labels is None:
        return False
    a, b = labels[i], labels[j]
    if isinstance(a, list):
        return all(x >= 0 for x in a) and a == b
    return a >= 0 and a == b


def literal_sigmoid_loss(images, texts, scale, bias, labels=None) -> float:
    """−(1/B) Σ_i Σ_j log σ(s_ij·z_ij), z_ij = scale·⟨x_i, y_j⟩ + bias, s_ij = +1 for the same pair or the same
    label, −1 otherwise; Python floats (float64) and `math` only."""
    total = 0.0
    for i in range(len(images)):
        for j in range(len(texts)):
            z = scale * sum(a * b for a, b in zip(images[i], texts[j], strict=True)) + bias
            s = 1.0 if i == j or _same_label(labels, i, j) else -1.0
            total += -math.log(1.0 / (1.0 + math.exp(-s * z)))
    return total / len(images)


def literal_sigmoid_loss_torch(images, texts, log_scale, bias, labels=None) -> torch.Tensor:
    """The same double loop on float64 torch scalars, for autograd: every term built one pair at a time."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(images.shape[0]):
        for j in range(texts.shape[0]):
            z = log_scale.exp() * (images[i] * texts[j]).sum() + bias
            s = 1.0 if i == j or _same_label(labels, i, j) else -1.0
            total = total - torch.log(1.0 / (1.0 + torch.exp(-s * z)))
    return total / images.shape[0]


def _unit(n, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=-1)


LABEL_CASES = {
    "no labels": None,
    "labels": [0, 1, 0, 2, 1],
    "unlabelled rows": [0, -1, 0, -1, 1],  # −1 pairs only with itself, even beside another −1
    "multi-hot": [[1, 0, 1], [0, 1, 0], [1, 0, 1], [-1, -1, -1], [0, 1, 0]],
}


@pytest.mark.parametrize("case", LABEL_CASES)
def test_the_loss_equals_a_literal_double_loop(case):
    labels = LABEL_CASES[case]
    images, texts = _unit(5, 4, 0), _unit(5, 4, 1)
    scale, bias = 7.3, -2.1  # z of both signs, so positives and negatives both weigh
    tensor_labels = None if labels is None else torch.tensor(labels)
    loss, logits_per_image, logits_per_text = label_guided_sigmoid_loss(
        images,
        texts,
        torch.tensor(scale, dtype=torch.float64),
        torch.tensor(bias, dtype=torch.float64),
        tensor_labels,
    )
    want = literal_sigmoid_loss(images.tolist(), texts.tolist(), scale, bias, labels)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert torch.allclose(logits_per_image, scale * images @ texts.t() + bias)
    assert torch.equal(logits_per_text, logits_per_image.t())
    # The dispatching entry point gives the same.
    again, _, _ = contrastive_loss(
        "sigmoid",
        images,
        texts,
        torch.tensor(scale, dtype=torch.float64),
        torch.tensor(bias, dtype=torch.float64),
        tensor_labels,
    )
    assert again.item() == loss.item()


def test_labels_make_positives_so_the_loss_differs_from_plain_pairs():
    images, texts = _unit(5, 4, 0), _unit(5, 4, 1)
    scale, bias = torch.tensor(5.0), torch.tensor(-1.0)
    plain, _, _ = label_guided_sigmoid_loss(images, texts, scale, bias)
    guided, _, _ = label_guided_sigmoid_loss(images, texts, scale, bias, torch.tensor([0, 1, 0, 2, 1]))
    unlabelled, _, _ = label_guided_sigmoid_loss(images, texts, scale, bias, torch.full((5,), -1))
    assert abs(plain.item() - guided.item()) > 1e-3
    assert unlabelled.item() == pytest.approx(plain.item(), rel=1e-12)


@pytest.mark.parametrize("case", LABEL_CASES)
def test_gradients_equal_autograd_of_the_literal_loop(case):
    labels = LABEL_CASES[case]
    tensor_labels = None if labels is None else torch.tensor(labels)
    raw_images, raw_texts = _unit(5, 4, 2) * 1.7, _unit(5, 4, 3) * 0.6  # normalised inside: not unit here

    def leaves():
        return (
            raw_images.clone().requires_grad_(),
            raw_texts.clone().requires_grad_(),
            torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True),
            torch.tensor(-3.0, dtype=torch.float64, requires_grad=True),
        )

    x, y, log_scale, bias = leaves()
    loss, _, _ = label_guided_sigmoid_loss(
        F.normalize(x, dim=-1), F.normalize(y, dim=-1), log_scale.exp(), bias, tensor_labels
    )
    loss.backward()
    lx, ly, l_scale, l_bias = leaves()
    literal = literal_sigmoid_loss_torch(
        F.normalize(lx, dim=-1), F.normalize(ly, dim=-1), l_scale, l_bias, labels
    )
    literal.backward()
    assert loss.item() == pytest.approx(literal.item(), rel=1e-12)
    for got, want in ((x, lx), (y, ly), (log_scale, l_scale), (bias, l_bias)):
        assert torch.allclose(got.grad, want.grad, rtol=1e-10, atol=1e-12)


def test_half_precision_embeddings_give_a_float32_loss_with_the_bias_added_in_float32():
    images, texts = _unit(4, 8, 0).to(torch.bfloat16), _unit(4, 8, 1).to(torch.bfloat16)
    loss, logits, _ = label_guided_sigmoid_loss(images, texts, torch.tensor(10.0), torch.tensor(-10.03125))
    assert loss.dtype == logits.dtype == torch.float32
    want = literal_sigmoid_loss(images.float().tolist(), texts.float().tolist(), 10.0, -10.03125)
    assert loss.item() == pytest.approx(want, rel=2e-2)  # the bf16 matmul; the bias itself is exact


def test_the_entry_point_checks_kind_and_bias():
    images, texts, scale = _unit(3, 4, 0), _unit(3, 4, 1), torch.tensor(2.0)
    with pytest.raises(ValueError, match="needs logit_bias"):
        contrastive_loss("sigmoid", images, texts, scale)
    with pytest.raises(ValueError, match="has no logit bias"):
        contrastive_loss("softmax", images, texts, scale, torch.tensor(0.0))
    with pytest.raises(ValueError, match="one of"):
        contrastive_loss("hinge", images, texts, scale)
    with pytest.raises(ValueError, match="one text per image"):
        label_guided_sigmoid_loss(images, texts[:2], scale, torch.tensor(0.0))


def test_zero_shot_logits_add_the_bias_and_a_softmax_over_texts_ignores_it():
    images, texts, scale, bias = _unit(2, 4, 0), _unit(3, 4, 1), torch.tensor(9.0), torch.tensor(-10.0)
    _, sigmoid_logits, transposed = dual_encoder_scores(images, texts, scale, logit_bias=bias, kind="sigmoid")
    _, softmax_logits, _ = dual_encoder_scores(images, texts, scale)
    assert torch.allclose(sigmoid_logits, softmax_logits + bias)
    assert torch.equal(transposed, sigmoid_logits.t())
    assert torch.allclose(sigmoid_logits.softmax(-1), softmax_logits.softmax(-1))


# ------------------------------------------------------------------------------------------ 2 processes vs 1

BATCH, DIM = 3, 5


class _Towers(nn.Module):
    """Two linear "encoders" and the learnable scale and bias, under one DDP wrapper."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.image, self.text = nn.Linear(DIM, 4), nn.Linear(DIM, 4)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-2.0))

    def forward(self, images, texts):
        return (
            F.normalize(self.image(images), dim=-1),
            F.normalize(self.text(texts), dim=-1),
            self.log_scale.exp(),
            self.bias,
        )


def _global_batch():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2 * BATCH, DIM, generator=generator)
    texts = torch.randn(2 * BATCH, DIM, generator=generator)
    return images, texts, torch.tensor([0, 1, 0, 2, 1, -1])


def _sigmoid_worker(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        towers = nn.parallel.DistributedDataParallel(_Towers())
        images, texts, labels = _global_batch()
        part = slice(rank * BATCH, (rank + 1) * BATCH)
        loss, logits_per_image, logits_per_text = label_guided_sigmoid_loss(
            *towers(images[part], texts[part]), labels[part]
        )
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        grads = [p.grad.clone() for p in towers.parameters()]
        results[rank] = (mean_loss / 2, grads, logits_per_image.detach(), logits_per_text.detach())
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_match_one_process_on_the_global_batch():
    results = mp.Manager().dict()
    run_two_processes(_sigmoid_worker, free_port(), results)
    towers = _Towers()
    images, texts, labels = _global_batch()
    loss, logits, _ = label_guided_sigmoid_loss(*towers(images, texts), labels)
    loss.backward()
    expected = [p.grad for p in towers.parameters()]
    for rank in (0, 1):
        rank_loss, rank_grads, rank_logits, rank_text_logits = results[rank]
        assert torch.allclose(rank_loss, loss.detach(), atol=1e-6)
        for got, want in zip(rank_grads, expected, strict=True):
            assert torch.allclose(got, want, atol=1e-6)
        rows = slice(rank * BATCH, (rank + 1) * BATCH)
        assert rank_logits.shape == rank_text_logits.shape == (BATCH, 2 * BATCH)
        assert torch.allclose(rank_logits, logits.detach()[rows], atol=1e-6)
        assert torch.allclose(rank_text_logits, logits.detach().t()[rows], atol=1e-6)
    # Contrasting within each half would be another loss: the comparison above can fail.
    halves = [
        label_guided_sigmoid_loss(*towers(images[s], texts[s]), labels[s])[0].item()
        for s in (slice(0, BATCH), slice(BATCH, 2 * BATCH))
    ]
    assert abs(sum(halves) / 2 - loss.item()) > 1e-3


# ---------------------------------------------------------------------------------------------- the models


def test_configs_take_siglips_init_for_sigmoid_and_check_the_kind():
    for config_of in (make_tiny_config, keepfit_config):
        softmax, sigmoid = config_of(), config_of(contrastive_loss="sigmoid")
        assert softmax.logit_scale_init_value == pytest.approx(math.log(1 / 0.07))
        assert sigmoid.logit_scale_init_value == pytest.approx(math.log(10.0))
        assert sigmoid.logit_bias_init_value == -10.0
        assert sigmoid.to_diff_dict()["logit_scale_init_value"] == pytest.approx(math.log(10.0))  # stated
        explicit = config_of(
            contrastive_loss="sigmoid", logit_scale_init_value=1.5, logit_bias_init_value=-4.0
        )
        assert (explicit.logit_scale_init_value, explicit.logit_bias_init_value) == (1.5, -4.0)
        with pytest.raises(StrictDataclassClassValidationError, match="contrastive_loss must be one of"):
            config_of(contrastive_loss="hinge")


FAMILIES = {
    "maskedclip": (lambda **kw: MaskedCLIPModel(make_tiny_config(**kw)), MaskedCLIPModel),
    "keepfit": (lambda **kw: KeepFitModel(keepfit_config(**kw)), KeepFitModel),
}


def _inputs(family, n=4):
    generator = torch.Generator().manual_seed(0)
    size = 32 if family == "maskedclip" else 64
    return dict(
        pixel_values=torch.rand(n, 3, size, size, generator=generator),
        input_ids=torch.randint(5, 300, (n, 7), generator=generator),
        attention_mask=torch.ones(n, 7, dtype=torch.long),
        labels=torch.tensor([0, 1, 0, -1][:n]),
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_released_model_builds_the_bias_only_for_sigmoid_and_its_loss_is_the_sigmoid_loss(family):
    build, _ = FAMILIES[family]
    torch.manual_seed(0)
    assert build().logit_bias is None
    model = build(contrastive_loss="sigmoid").eval()
    assert model.logit_bias.item() == -10.0
    assert model.logit_scale.item() == pytest.approx(math.log(10.0))
    inputs = _inputs(family)
    out = model(**inputs, return_loss=True)
    scale = model.clamped_logit_scale()
    want, _, _ = label_guided_sigmoid_loss(
        out.image_embeds, out.text_embeds, scale, model.logit_bias, inputs["labels"]
    )
    assert torch.allclose(out.loss, want)
    method, logits, _ = model.contrastive_loss(out.image_embeds, out.text_embeds, inputs["labels"])
    assert torch.allclose(method, want)
    assert torch.allclose(logits, scale * out.image_embeds @ out.text_embeds.t() + model.logit_bias)
    out.loss.backward()
    assert model.logit_bias.grad is not None and model.logit_bias.grad.abs() > 0
    plain = model(**{k: v for k, v in inputs.items() if k != "labels"})
    assert torch.allclose(plain.logits_per_image, logits, atol=1e-6)  # zero-shot logits: t·cos + b


def test_both_pretraining_forwards_use_the_released_models_contrastive_loss():
    torch.manual_seed(0)
    maskedclip = MaskedCLIPForPreTraining(make_tiny_config(contrastive_loss="sigmoid")).eval()
    inputs = _inputs("maskedclip")
    out = maskedclip(**inputs)
    want, _, _ = maskedclip.released_model.contrastive_loss(
        out.image_embeds, out.text_embeds, inputs["labels"]
    )
    assert torch.allclose(out.loss_clip, want) and out.loss_clip.item() > math.log(
        4
    )  # b = −10: far from ln B

    torch.manual_seed(0)
    keepfit = KeepFitForPreTraining(keepfit_config(contrastive_loss="sigmoid")).eval()
    batch = pretraining_batch()
    out = keepfit(**batch)
    released = keepfit.released_model
    want, _, _ = released.contrastive_loss(out.image_embeds, out.text_embeds, batch["labels"])
    elite, _, _ = released.contrastive_loss(out.elite_image_embeds, out.elite_text_embeds)
    assert torch.allclose(out.loss_itc_categorical, want)
    assert torch.allclose(out.loss_itc_elite, elite)
    out.loss.backward()
    assert released.logit_bias.grad.abs() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_keep_the_bias_and_softmax_checkpoints_load_without_one(family, tmp_path, hf_caplog):
    build, released_class = FAMILIES[family]
    torch.manual_seed(0)
    model = build(contrastive_loss="sigmoid")
    with torch.no_grad():
        model.logit_bias.fill_(-7.25)
        model.logit_scale.fill_(1.75)
    model.save_pretrained(tmp_path / "sigmoid")
    saved = json.loads((tmp_path / "sigmoid" / "config.json").read_text())
    assert saved["contrastive_loss"] == "sigmoid"
    assert saved["logit_scale_init_value"] == pytest.approx(math.log(10.0))
    loaded, info = released_class.from_pretrained(tmp_path / "sigmoid", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.logit_bias.item() == -7.25 and loaded.logit_scale.item() == 1.75
    assert type(AutoModel.from_pretrained(tmp_path / "sigmoid")).__name__ == released_class.__name__

    torch.manual_seed(0)
    build().save_pretrained(tmp_path / "softmax")
    softmax, info = released_class.from_pretrained(tmp_path / "softmax", output_loading_info=True)
    assert softmax.logit_bias is None and softmax.config.contrastive_loss == "softmax"
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert softmax.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    # A softmax checkpoint continued with the sigmoid loss: the bias is new and gets SigLIP's init (built on
    # the meta device by from_pretrained, so _init_weights must fill it).
    switched, info = released_class.from_pretrained(
        tmp_path / "softmax", contrastive_loss="sigmoid", output_loading_info=True
    )
    assert set(info["missing_keys"]) == {"logit_bias"}
    assert switched.logit_bias.item() == -10.0


REMOTE_SCRIPT = """
import json, sys
sys.modules["retvlp"] = None  # only the checkpoint's own code may run
import torch
from transformers import AutoModel
report = {}
for family, (directory, size) in json.loads(sys.argv[1]).items():
    model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    g = torch.Generator().manual_seed(0)
    inputs = dict(pixel_values=torch.rand(3, 3, size, size, generator=g), input_ids=torch.randint(5, 300, (3, 7), generator=g))
    with torch.no_grad():
        out = model(**inputs, labels=torch.tensor([0, 1, 0]), return_loss=True)
    report[family] = dict(module=type(model).__module__, kind=model.config.contrastive_loss,
                          bias=model.logit_bias.item(), loss=out.loss.item())
print(json.dumps(report))
"""
SIZES = {"maskedclip": 32, "keepfit": 64}


@pytest.fixture(scope="module")
def remote_sigmoid(tmp_path_factory):
    """Both families' sigmoid checkpoints (bias moved off its init) loaded in one interpreter that cannot import
    retvlp: the models and what it reported."""
    from conftest import run_without_retvlp

    tmp_path = tmp_path_factory.mktemp("remote_sigmoid")
    models, jobs = {}, {}
    for family, (build, _) in FAMILIES.items():
        torch.manual_seed(0)
        model = build(contrastive_loss="sigmoid").eval()
        with torch.no_grad():
            model.logit_bias.fill_(-4.5)
        model.save_pretrained(tmp_path / family)
        models[family], jobs[family] = model, (str(tmp_path / family), SIZES[family])
    return models, run_without_retvlp(REMOTE_SCRIPT, tmp_path, json.dumps(jobs))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_sigmoid_checkpoint_runs_as_remote_code_without_retvlp(family, remote_sigmoid):
    models, reports = remote_sigmoid
    model, report, size = models[family], reports[family], SIZES[family]
    generator = torch.Generator().manual_seed(0)
    inputs = dict(
        pixel_values=torch.rand(3, 3, size, size, generator=generator),
        input_ids=torch.randint(5, 300, (3, 7), generator=generator),
    )
    with torch.no_grad():
        want = model(**inputs, labels=torch.tensor([0, 1, 0]), return_loss=True).loss.item()
    assert not report["module"].startswith("retvlp")
    assert report["kind"] == "sigmoid" and report["bias"] == -4.5
    assert report["loss"] == pytest.approx(want, rel=1e-5)


def test_pretraining_checkpoint_loads_into_the_released_class_with_its_bias(tmp_path):
    torch.manual_seed(0)
    model = MaskedCLIPForPreTraining(make_tiny_config(contrastive_loss="sigmoid"))
    with torch.no_grad():
        model.released_model.logit_bias.fill_(-3.5)
    model.save_pretrained(tmp_path)
    released = MaskedCLIPModel.from_pretrained(tmp_path)
    assert released.logit_bias.item() == -3.5


def test_the_bias_has_no_weight_decay():
    model = MaskedCLIPForPreTraining(make_tiny_config(contrastive_loss="sigmoid"))
    decay, no_decay = MaskedCLIPTask().parameter_groups(model, 0.05)
    assert any(p is model.released_model.logit_bias for p in no_decay["params"])
    assert not any(p is model.released_model.logit_bias for p in decay["params"])


# ------------------------------------------------------------------------------------------ the collapse guard


def test_constant_embedding_value_by_hand():
    """Every image one vector u, every text one vector v: each logit is t·⟨u, v⟩ + b, and the loss is
    −(1/B) Σ_i [P_i log σ(z) + (B − P_i) log σ(−z)], P_i the positives of row i."""
    model = MaskedCLIPModel(make_tiny_config(contrastive_loss="sigmoid"))
    images, texts = _unit(6, 8, 0).float(), _unit(6, 8, 1).float()
    labels = torch.tensor([0, 0, 1, -1, 1, 0])
    got = constant_embedding_loss(model, images, texts, labels)
    u, v = F.normalize(images.mean(0), dim=-1), F.normalize(texts.mean(0), dim=-1)
    z = model.clamped_logit_scale().item() * float(u @ v) + model.logit_bias.item()
    positives = [3, 3, 2, 1, 2, 3]
    sigma = 1.0 / (1.0 + math.exp(-z))
    want = -sum(p * math.log(sigma) + (6 - p) * math.log(1 - sigma) for p in positives) / 6
    assert got == pytest.approx(want, rel=1e-5)
    # A collapsed batch's loss is exactly that value.
    collapsed = images[:1].expand(6, -1)
    loss, _, _ = model.contrastive_loss(collapsed, texts[:1].expand(6, -1), labels)
    assert constant_embedding_loss(model, collapsed, texts[:1].expand(6, -1), labels) == pytest.approx(
        loss.item(), rel=1e-5
    )


def test_the_guard_compares_a_sigmoid_term_with_its_constant_embedding_value():
    guard = CollapseGuard(action="stop", window=2)
    healthy = ContrastiveTerm("loss_clip", 4.0, torch.eye(8), torch.eye(8), constant=9.0)
    figures = guard.update(1, [healthy])
    assert figures["loss_clip/constant"] == 9.0 and figures["loss_clip/over_constant"] == pytest.approx(4 / 9)
    assert "loss_clip/ln_batch" not in figures and "loss_clip/floor" not in figures
    assert figures["collapse/streak"] == 0
    # ln(8) is no symptom for a sigmoid term; its constant-embedding value is.
    at_ln_b = ContrastiveTerm("loss_clip", math.log(8), torch.eye(8), torch.eye(8), constant=9.0)
    assert guard.update(2, [at_ln_b])["collapse/streak"] == 0
    stuck = ContrastiveTerm("loss_clip", 9.001, torch.eye(8), torch.eye(8), constant=9.0)
    guard.update(3, [stuck])
    with pytest.raises(
        ContrastiveCollapseError, match="the value of a constant embedding at this step's logit scale"
    ):
        guard.update(4, [stuck])


# ------------------------------------------------------------------------------------------ tiny runs


def test_a_tiny_maskedclip_run_trains_the_bias(tmp_path, synthetic):
    raw = tiny_pretrain_dict(
        tmp_path, synthetic, "sigmoid", optim={"max_steps": 2, "gradient_accumulation_steps": 1}
    )
    raw["model"]["config"]["contrastive_loss"] = "sigmoid"
    result = pretrain(PretrainConfig.from_dict(raw, source="test"), show_progress=False)
    logs = [json.loads(line) for line in (tmp_path / "sigmoid" / "logs.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logs] == [1, 2]
    assert logs[0]["logit_scale"] == pytest.approx(10.0, rel=1e-2)
    assert all("loss_clip/constant" in entry and "loss_clip/ln_batch" not in entry for entry in logs)
    released = MaskedCLIPModel.from_pretrained(result.final_dir)
    assert released.config.contrastive_loss == "sigmoid"
    assert released.logit_bias.item() != -10.0 and logs[-1]["logit_bias"] == pytest.approx(
        released.logit_bias.item(), abs=1e-4
    )


def test_a_tiny_keepfit_run_trains_the_bias(tmp_path, synthetic):
    raw = keepfit_dict(
        tmp_path,
        synthetic,
        "keepfit_sigmoid",
        model_config={"contrastive_loss": "sigmoid"},
        optim={"max_steps": 2, "gradient_accumulation_steps": 1},
    )
    result = pretrain(PretrainConfig.from_dict(raw, source="test"), show_progress=False)
    logs = [
        json.loads(line) for line in (tmp_path / "keepfit_sigmoid" / "logs.jsonl").read_text().splitlines()
    ]
    for term in ("loss_itc_categorical", "loss_itc_elite"):
        assert all(f"{term}/constant" in entry for entry in logs)
    released = KeepFitModel.from_pretrained(result.final_dir)
    assert released.config.contrastive_loss == "sigmoid"
    assert released.logit_bias.item() != -10.0
    assert 0.0 <= released.logit_scale.item() <= math.log(100.0)  # the [0, ln 100] clamp still applies


@pytest.mark.parametrize("family", ["maskedclip", "keepfit"])
def test_the_sigmoid_forward_compiles_without_a_graph_break(family):
    torch.manual_seed(0)
    if family == "maskedclip":
        model = MaskedCLIPForPreTraining(make_tiny_config(contrastive_loss="sigmoid")).train()
        batch = _inputs("maskedclip")
    else:
        model, batch = (
            KeepFitForPreTraining(keepfit_config(contrastive_loss="sigmoid")).train(),
            pretraining_batch(),
        )
    model(**batch)  # transformers installs its output-capturing hooks on the first call
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(**batch)
    assert explanation.graph_break_count == 0, [str(b.reason)[:200] for b in explanation.break_reasons]
