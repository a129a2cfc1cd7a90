"""`optim.contrastive_accumulation` (GradCache): every image–text term over the whole accumulated batch.

In float64, the gradient of every parameter after `contrastive_accumulation_step` over K micro-batches equals
one backward of the accumulated loss `Σ_c w_c·L_c(all K micro-batches' embeddings) + mean_k(per-sample
terms_k)` — for MaskedCLIP (label-guided targets, MAE, FLIP-style CLIP and teacher masks, drop-path and text
dropout on) and KeepFIT V2 (label-guided categorical term, elite term, both knowledge injections, BatchNorm in
training mode, attention dropout on); with dropout off it equals ONE forward over the concatenated batch (for
KeepFIT with the knowledge injection off and BatchNorm on its running statistics: both are per micro-batch by
design). Under 2 gloo processes (DDP through accelerate) the averaged gradients equal the single-process ones
over the global accumulated batch. A run killed in the middle of an accumulated step and resumed equals the
straight run bit for bit.
"""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port, make_tiny_config, run_two_processes, tiny_pretrain_dict
from safetensors.torch import load_file

from retvlp import KeepFitConfig, KeepFitForPreTraining, MaskedCLIPConfig, MaskedCLIPForPreTraining
from retvlp.common.contrastive import label_guided_contrastive_loss
from retvlp.training import PretrainConfig, pretrain
from retvlp.training.checkpointing import checkpoint_steps
from retvlp.training.config import ConfigError
from retvlp.training.contrastive_accumulation import check_supported, contrastive_accumulation_step
from retvlp.training.ibq_task import IBQTokenizerTask
from retvlp.training.keepfit_task import KeepFitTask
from retvlp.training.maskedclip_task import MaskedCLIPTask

K, B, U = 3, 2, 2  # micro-batches, paired (public) rows and unpaired (elite) rows per micro-batch and process
PATCHES = 16  # 32 px, patch 8
SEEDS = [11, 12, 13]


def _accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=True)


# ------------------------------------------------------------------------------------------------------------
# Models and data


def _maskedclip(dropout: bool, **config) -> MaskedCLIPForPreTraining:
    rate = 0.2 if dropout else 0.0
    config = make_tiny_config(
        vision={"drop_path_rate": rate},
        text={"hidden_dropout_prob": rate, "attention_probs_dropout_prob": rate},
        lambda_clip=0.7,
        lambda_mfd=0.3,
        clip_mask_ratio=0.5,
        mfd_teacher_mask_ratio=0.25,
        **config,
    )
    torch.manual_seed(0)
    return MaskedCLIPForPreTraining(config).double().train()


def _keepfit(dropout: bool, injection: bool = True) -> KeepFitForPreTraining:
    rate = 0.2 if dropout else 0.0
    config = KeepFitConfig(
        vision_config={
            "model_type": "resnet",
            "embedding_size": 8,
            "hidden_sizes": [8, 16],
            "depths": [1, 1],
            "layer_type": "basic",
        },
        text_config={
            "model_type": "bert",
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 24,
            "vocab_size": 100,
            "hidden_dropout_prob": rate,
            "attention_probs_dropout_prob": rate,
        },
        projection_dim=8,
        codebook_size=16,
        code_dim=4,
        knowledge_attention_dropout=rate,
        lambda_semantic=2.0,
        lambda_appearance=3.0,
        use_semantic_injection=injection,
        use_appearance_injection=injection,
    )
    torch.manual_seed(0)
    return KeepFitForPreTraining(config).double().train()


def _global_rows(family: str, rows: int, seed: int = 1) -> dict:
    """`rows` paired / public rows and as many unpaired / elite rows, float64, labels with a −1 (no label)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 1, 0, 2, -1, 1, 2, 0, 1, 0, 2, 1])[:rows]
    if family == "maskedclip":
        return {
            "pixel_values": torch.randn(rows, 3, 32, 32, generator=g, dtype=torch.float64),
            "input_ids": torch.randint(5, 400, (rows, 7), generator=g),
            "attention_mask": torch.ones(rows, 7, dtype=torch.long),
            "labels": labels,
            "unpaired_pixel_values": torch.randn(rows, 3, 32, 32, generator=g, dtype=torch.float64),
            "paired_noise": torch.rand(rows, PATCHES, generator=g, dtype=torch.float64),
            "unpaired_noise": torch.rand(rows, PATCHES, generator=g, dtype=torch.float64),
            "clip_noise": torch.rand(rows, PATCHES, generator=g, dtype=torch.float64),
            "paired_teacher": torch.rand(rows, PATCHES, generator=g, dtype=torch.float64),
            "unpaired_teacher": torch.rand(rows, PATCHES, generator=g, dtype=torch.float64),
        }
    return {
        "pixel_values": torch.rand(rows, 3, 32, 32, generator=g, dtype=torch.float64),
        "input_ids": torch.randint(5, 100, (rows, 6), generator=g),
        "labels": labels,
        "elite_pixel_values": torch.rand(rows, 3, 32, 32, generator=g, dtype=torch.float64),
        "elite_input_ids": torch.randint(5, 100, (rows, 9), generator=g),
    }


def _model_batch(family: str, rows: dict) -> dict:
    """The forward's arguments for a set of rows (MaskedCLIP: noise of the paired rows, then the unpaired)."""
    if family == "keepfit":
        return dict(rows)
    split = ("paired_noise", "unpaired_noise", "paired_teacher", "unpaired_teacher")
    batch = {k: v for k, v in rows.items() if k not in split}
    batch["noise"] = torch.cat([rows["paired_noise"], rows["unpaired_noise"]])
    batch["teacher_noise"] = torch.cat([rows["paired_teacher"], rows["unpaired_teacher"]])
    return batch


def _rows(data: dict, index) -> dict:
    return {k: v[index] for k, v in data.items()}


def _micro_batches(family: str, data: dict, rank: int = 0, world: int = 1) -> list[dict]:
    """Rank `rank`'s K micro-batches of the global rows, laid out rank-major (rank r holds rows
    [r·K·B, (r+1)·K·B)), as the gathered accumulated batch is."""
    start = rank * K * B
    return [_model_batch(family, _rows(data, slice(start + k * B, start + (k + 1) * B))) for k in range(K)]


def _task(family: str):
    return MaskedCLIPTask() if family == "maskedclip" else KeepFitTask()


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _norm_buffers(model) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers() if "running" in name or "tracked" in name}


# ------------------------------------------------------------------------------------------------------------
# References


def _keep_graph_reference(model, task, micro_batches, seeds, order=None, loss=None):
    """One backward of the accumulated loss through the K micro-batch graphs, all kept: the direct big batch
    with the same random draws per micro-batch. `order` reorders the concatenated contrastive rows (so that
    they are laid out as the multi-process gathered batch); `loss(images, texts, labels)` is the contrastive
    term (default: the papers' label-guided softmax loss). Returns the logged full-batch terms."""
    released = model.released_model

    def contrastive(images, texts, labels):
        if loss is not None:
            return loss(images, texts, labels)
        return label_guided_contrastive_loss(images, texts, released.clamped_logit_scale(), labels=labels)

    model.zero_grad(set_to_none=True)
    weights = task.loss_weights(model)
    names = {field[0] for field in task.contrastive_fields}
    embeds = {field[0]: ([], [], []) for field in task.contrastive_fields}
    per_sample = 0.0
    for batch, seed in zip(micro_batches, seeds, strict=True):
        torch.manual_seed(seed)
        outputs = model(**batch)
        terms = task.outputs_to_terms(outputs)
        # the weights the accumulation uses make the model's own total
        weighted = sum(weights[n] * v for n, v in terms.items() if n != "loss")
        torch.testing.assert_close(weighted, terms["loss"], rtol=1e-6, atol=1e-9)  # float32 loss terms
        per_sample = per_sample + sum(
            weights[n] * v for n, v in terms.items() if n != "loss" and n not in names
        )
        for loss_name, image_name, text_name, label_key in task.contrastive_fields:
            embeds[loss_name][0].append(getattr(outputs, image_name))
            embeds[loss_name][1].append(getattr(outputs, text_name))
            embeds[loss_name][2].append(batch[label_key] if label_key else None)
    total, full = per_sample / len(micro_batches), {}
    for name, (images, texts, labels) in embeds.items():
        images, texts = torch.cat(images), torch.cat(texts)
        labels = None if labels[0] is None else torch.cat(labels)
        if order is not None:
            images, texts = images[order], texts[order]
            labels = None if labels is None else labels[order]
        value, _, _ = contrastive(images, texts, labels)
        full[name] = value.detach()
        total = total + weights[name] * value
    total.backward()
    return full


def _literal_reference(model, family, data):
    """One forward over the whole concatenated batch, one backward of its `loss`."""
    model.zero_grad(set_to_none=True)
    outputs = model(**_model_batch(family, data))
    outputs.loss.backward()
    return outputs


def _assert_grads_equal(got: dict, want: dict, rtol: float, atol: float) -> None:
    assert got.keys() == want.keys()
    for name, expected in want.items():
        torch.testing.assert_close(got[name], expected, rtol=rtol, atol=atol, msg=name)


def _run_accumulated(model, family, micro_batches, seeds, accelerator=None, guard=False):
    accelerator = accelerator or _accelerator()
    prepared = accelerator.prepare(model) if accelerator.num_processes > 1 else model
    checked = []
    result = contrastive_accumulation_step(
        prepared, _task(family), micro_batches, seeds, accelerator, check=checked.append, guard=guard
    )
    assert len(checked) == len(micro_batches)
    return result


# ------------------------------------------------------------------------------------------------------------
# One process


@pytest.mark.parametrize("family", ["maskedclip", "keepfit"])
def test_gradients_equal_the_accumulated_big_batch_with_dropout_and_masks(family):
    build = _maskedclip if family == "maskedclip" else _keepfit
    data = _global_rows(family, K * B)
    micro = _micro_batches(family, data)
    task = _task(family)

    reference = build(dropout=True)
    full = _keep_graph_reference(reference, task, micro, SEEDS)
    model = build(dropout=True)
    result = _run_accumulated(model, family, micro, SEEDS, guard=True)

    # Bit-identical embeddings in both passes (same draws), so only the order of the gradient sums differs.
    _assert_grads_equal(_grads(model), _grads(reference), rtol=1e-10, atol=1e-13)
    assert "maskedclip.logit_scale" in _grads(model) or "keepfit.logit_scale" in _grads(model)
    # BatchNorm running statistics moved once per micro-batch, as in the reference
    for name, buffer in _norm_buffers(reference).items():
        assert torch.equal(_norm_buffers(model)[name], buffer), name
    # logged: the full-batch contrastive terms; the guard saw the whole accumulated batch
    for terms in result.micro_terms:
        for name, value in full.items():
            assert torch.equal(terms[name], value), name
    assert {t.name for t in result.contrastive} == set(full)
    assert all(t.image_embeds.shape[0] == K * B for t in result.contrastive)


@pytest.mark.skipif(
    "contrastive_loss" not in MaskedCLIPConfig.__dataclass_fields__, reason="no sigmoid loss option yet"
)
def test_the_sigmoid_loss_and_its_bias_accumulate_too():
    data = _global_rows("maskedclip", K * B)
    micro = _micro_batches("maskedclip", data)
    reference = _maskedclip(dropout=True, contrastive_loss="sigmoid")
    model = _maskedclip(dropout=True, contrastive_loss="sigmoid")
    loss = reference.released_model.contrastive_loss
    _keep_graph_reference(reference, _task("maskedclip"), micro, SEEDS, loss=loss)
    _run_accumulated(model, "maskedclip", micro, SEEDS)
    grads = _grads(model)
    assert grads["maskedclip.logit_bias"].abs() > 0
    _assert_grads_equal(grads, _grads(reference), rtol=1e-10, atol=1e-13)


def test_dropout_draws_differ_between_micro_batches_and_matter():
    """The test above could pass with dropout silently off: the same model with other seeds differs."""
    data = _global_rows("maskedclip", K * B)
    micro = _micro_batches("maskedclip", data)
    a, b = _maskedclip(dropout=True), _maskedclip(dropout=True)
    _run_accumulated(a, "maskedclip", micro, SEEDS)
    _run_accumulated(b, "maskedclip", micro, [21, 22, 23])
    ga, gb = _grads(a), _grads(b)
    assert any(not torch.allclose(ga[n], gb[n]) for n in ga)


@pytest.mark.parametrize("family", ["maskedclip", "keepfit"])
def test_gradients_equal_one_forward_over_the_concatenated_batch(family):
    if family == "maskedclip":
        reference, model = _maskedclip(dropout=False), _maskedclip(dropout=False)
    else:
        reference, model = _keepfit(False, injection=False), _keepfit(False, injection=False)
        for m in (reference, model):  # batch statistics are per micro-batch by construction
            m.released_model.vision_model.eval()
    data = _global_rows(family, K * B)
    outputs = _literal_reference(reference, family, data)
    result = _run_accumulated(model, family, _micro_batches(family, data), SEEDS)
    # Float64 rounding only (the concatenated forward multiplies matrices of other shapes): measured up to
    # 7e-15 against gradients up to 10.
    _assert_grads_equal(_grads(model), _grads(reference), rtol=1e-10, atol=1e-12)
    logged = {name: sum(t[name] for t in result.micro_terms) / K for name in result.micro_terms[0]}
    for name in _task(family).loss_terms:
        if getattr(outputs, name, None) is not None:
            torch.testing.assert_close(logged[name], getattr(outputs, name).detach(), rtol=1e-6, atol=1e-9)


def test_refused_where_it_cannot_apply():
    config = SimpleNamespace(source="run.yaml")
    with pytest.raises(ConfigError, match="ibq-tokenizer family has no image–text"):
        check_supported(IBQTokenizerTask(), SimpleNamespace(distributed_type="NO"), config)
    with pytest.raises(ConfigError, match="not with FSDP"):
        check_supported(MaskedCLIPTask(), SimpleNamespace(distributed_type="DistributedType.FSDP"), config)
    check_supported(KeepFitTask(), SimpleNamespace(distributed_type="DistributedType.MULTI_GPU"), config)


# ------------------------------------------------------------------------------------------------------------
# Two processes


def _two_process_models():
    maskedclip = _maskedclip(dropout=False)
    keepfit = _keepfit(dropout=False)
    keepfit.released_model.vision_model.eval()  # per-process batch statistics differ by construction
    return {"maskedclip": maskedclip, "keepfit": keepfit}


def _worker(rank, port, results):
    os.environ.update(
        ACCELERATE_USE_CPU="1",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    accelerator = _accelerator()
    assert accelerator.num_processes == 2
    out = {}
    for family, model in _two_process_models().items():
        data = _global_rows(family, 2 * K * B)
        micro = _micro_batches(family, data, rank, world=2)
        seeds = [s + 100 * rank for s in SEEDS]
        result = _run_accumulated(model, family, micro, seeds, accelerator, guard=True)
        out[family] = (
            _grads(model),
            {name: float(accelerator.reduce(v, "mean")) for name, v in result.micro_terms[0].items()},
            [(t.name, t.image_embeds.shape[0]) for t in result.contrastive],
        )
    results[rank] = out
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_equal_one_process_over_the_global_accumulated_batch():
    results = mp.Manager().dict()
    run_two_processes(_worker, free_port(), results)
    for family, reference in _two_process_models().items():
        task = _task(family)
        data = _global_rows(family, 2 * K * B)
        # one process: micro-batch k holds both ranks' rows of micro-step k (the multi-process micro-step);
        # the contrastive rows reordered rank-major, as the processes gather them
        micro = [
            _model_batch(
                family,
                _rows(
                    data,
                    torch.cat([torch.arange(r * K * B + k * B, r * K * B + (k + 1) * B) for r in (0, 1)]),
                ),
            )
            for k in range(K)
        ]
        order = torch.tensor([k * 2 * B + r * B + i for r in (0, 1) for k in range(K) for i in range(B)])
        full = _keep_graph_reference(reference, task, micro, SEEDS, order=order)
        expected = _grads(reference)
        if family == "keepfit":
            assert "semantic_attention.k_proj.weight" in expected
        for rank in (0, 1):
            grads, logged, guarded = results[rank][family]
            # float64 rounding (other matrix shapes per process, DDP's averaging): measured up to 1.5e-14
            _assert_grads_equal(grads, expected, rtol=1e-10, atol=1e-12)
            for name, value in full.items():
                assert logged[name] == pytest.approx(float(value), rel=1e-6)  # a float32 log-softmax
                assert (name, 2 * K * B) in guarded


# ------------------------------------------------------------------------------------------------------------
# The loop


def _run_dict(tmp_path, synthetic, name):
    return tiny_pretrain_dict(
        tmp_path,
        synthetic,
        name,
        optim={"max_steps": 4, "gradient_accumulation_steps": 3, "contrastive_accumulation": True},
        run={"save_every": 2},
    )


def test_killed_mid_accumulation_and_resumed_equals_the_straight_run(tmp_path, synthetic, monkeypatch):
    straight = pretrain(
        PretrainConfig.from_dict(_run_dict(tmp_path, synthetic, "straight")), show_progress=False
    )
    logs = [json.loads(x) for x in (straight.output_dir / "logs.jsonl").read_text().splitlines()]
    # the guard and the logged term see the accumulated batch: 3 micro-batches × 4 pairs
    assert logs[0]["loss_clip/ln_batch"] == round(math.log(12), 6)

    config = PretrainConfig.from_dict(_run_dict(tmp_path, synthetic, "killed"))
    calls = {"n": 0}
    original = MaskedCLIPTask.training_forward

    def dies_in_step_3(self, model, batch, device):
        calls["n"] += 1
        if calls["n"] == 2 * 6 + 3 + 2:  # step 3: after pass 1 and one micro-batch of pass 3
            raise KeyboardInterrupt("killed")
        return original(self, model, batch, device)

    monkeypatch.setattr(MaskedCLIPTask, "training_forward", dies_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, show_progress=False)
    monkeypatch.setattr(MaskedCLIPTask, "training_forward", original)
    assert [step for step, _ in checkpoint_steps(config.run.output_dir)] == [2]
    resumed = pretrain(config, resume="latest", show_progress=False)
    assert resumed.steps == 4

    a = load_file(str(straight.output_dir / "checkpoint-4" / "model.safetensors"))
    b = load_file(str(resumed.output_dir / "checkpoint-4" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    resumed_logs = [json.loads(x) for x in (resumed.output_dir / "logs.jsonl").read_text().splitlines()]
    drop = ("samples_per_s",)
    assert [{k: v for k, v in e.items() if k not in drop} for e in logs] == [
        {k: v for k, v in e.items() if k not in drop} for e in resumed_logs
    ]


def test_a_keepfit_run_accumulates_both_terms(tmp_path, synthetic):
    from test_pretrain_keepfit import keepfit_dict

    raw = keepfit_dict(
        tmp_path,
        synthetic,
        optim={"max_steps": 2, "gradient_accumulation_steps": 2, "contrastive_accumulation": True},
    )
    result = pretrain(PretrainConfig.from_dict(raw), show_progress=False)
    logs = [json.loads(x) for x in (result.output_dir / "logs.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logs] == [1, 2]
    for term in ("loss_itc_categorical", "loss_itc_elite"):  # 2 micro-batches × 3 rows
        assert logs[-1][f"{term}/ln_batch"] == round(math.log(6), 6)
        assert math.isfinite(logs[-1][term])
