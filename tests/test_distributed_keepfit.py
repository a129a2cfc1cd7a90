"""KeepFIT under torch.distributed: 2 gloo processes × b samples == 1 process × 2b.

Both contrastive terms are computed against the global batch, and both knowledge cross-attentions read the
GLOBAL elite batch (keys and values gathered with gradients), so the mean of the per-process losses equals
the single-process loss and DDP's averaged gradients equal the single-process gradients. BatchNorm runs on
its running statistics and attention dropout is off here: per-process batch statistics would differ by
construction (the reference code has the same property; SyncBatchNorm is the cure, not tested here).
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port, run_two_processes
from torch import nn

from retvlp import KeepFitConfig, KeepFitForPreTraining

HALF = 3


def _config(gather: bool = True) -> KeepFitConfig:
    return KeepFitConfig(
        vision_config={
            "model_type": "resnet",
            "embedding_size": 16,
            "hidden_sizes": [16, 32, 32, 64],
            "depths": [1, 1, 1, 1],
            "layer_type": "bottleneck",
        },
        text_config={
            "model_type": "bert",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 37,
            "vocab_size": 100,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        projection_dim=16,
        codebook_size=32,
        code_dim=8,
        knowledge_attention_dropout=0.0,
        gather_distributed=gather,
    )


def _model(gather: bool = True) -> KeepFitForPreTraining:
    torch.manual_seed(0)
    model = KeepFitForPreTraining(_config(gather))
    model.train()
    model.released_model.vision_model.eval()  # BatchNorm on running statistics (see the module docstring)
    return model


def _batch():
    g = torch.Generator().manual_seed(1)
    return {
        "pixel_values": torch.rand(2 * HALF, 3, 64, 64, generator=g),
        "input_ids": torch.randint(5, 100, (2 * HALF, 6), generator=g),
        "labels": torch.tensor([0, 1, 0, 2, 1, 0]),
        "elite_pixel_values": torch.rand(2 * HALF, 3, 64, 64, generator=g),
        "elite_input_ids": torch.randint(5, 100, (2 * HALF, 9), generator=g),
    }


def _slice(batch, rank):
    part = slice(rank * HALF, (rank + 1) * HALF)
    return {key: value[part] for key, value in batch.items()}


TERMS = ("loss", "loss_itc_categorical", "loss_itc_elite", "loss_semantic", "loss_appearance")


def _worker(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        model = nn.parallel.DistributedDataParallel(_model())
        outputs = model(**_slice(_batch(), rank))
        outputs.loss.backward()
        terms = torch.stack([getattr(outputs, name).detach() for name in TERMS])
        dist.all_reduce(terms)
        grads = {name: p.grad.clone() for name, p in model.module.named_parameters() if p.grad is not None}
        results[rank] = (terms / 2, grads)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_match_one_process_on_the_global_batch():
    results = mp.Manager().dict()
    run_two_processes(_worker, free_port(), results)
    model = _model()
    outputs = model(**_batch())
    outputs.loss.backward()
    expected_terms = torch.stack([getattr(outputs, name).detach() for name in TERMS])
    expected = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert "semantic_attention.k_proj.weight" in expected and "appearance_quantizer.proj.weight" in expected
    for rank in (0, 1):
        terms, grads = results[rank]
        torch.testing.assert_close(terms, expected_terms, rtol=1e-5, atol=1e-6)
        assert grads.keys() == expected.keys()
        for name, want in expected.items():
            # float32 summation-order noise scales with the loss, which λ_a = 1e4 makes ~640 here (terms of that
            # size cancel into gradients of 0.01-3): measured up to 7e-5 (≈ 1e-7 × loss) on the word embeddings
            # on an AMX CPU, as oneDNN's kernels and their rounding depend on the CPU. A per-process instead of
            # global attention changes the gradients by O(their size).
            atol = 1e-6 * max(1.0, want.abs().max().item(), expected_terms[0].item())
            torch.testing.assert_close(grads[name], want, rtol=1e-4, atol=atol, msg=name)


def test_per_process_knowledge_differs_from_the_global_one():
    """The test above can fail: attending over each half of the elite batch is a different loss."""
    model = _model()
    batch = _batch()
    full = model(**batch)
    halves = [model(**_slice(batch, rank)) for rank in (0, 1)]
    for name in ("loss_semantic", "loss_appearance", "loss_itc_categorical"):
        per_process = (getattr(halves[0], name) + getattr(halves[1], name)) / 2
        assert abs(per_process.item() - getattr(full, name).item()) > 1e-6, name
