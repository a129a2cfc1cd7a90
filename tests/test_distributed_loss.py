"""Global-batch contrastive loss: 2 gloo processes × b samples == 1 process × 2b.

Two linear "encoders" wrapped in DistributedDataParallel stand in for the towers: with embeddings and
labels gathered (with gradients) the per-process losses average to the single-process loss on the global
batch, and DDP's averaged parameter gradients equal the single-process gradients.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import free_port, run_two_processes
from torch import nn

from retvlp.maskedclip.loss_maskedclip import label_guided_contrastive_loss

BATCH, DIM = 3, 5


def _data():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2 * BATCH, DIM, generator=generator)
    texts = torch.randn(2 * BATCH, DIM, generator=generator)
    labels = torch.tensor([0, 1, 0, 2, 1, -1])
    return images, texts, labels


def _encoders():
    torch.manual_seed(1)
    return nn.Linear(DIM, 4), nn.Linear(DIM, 4)


def _loss(image_encoder, text_encoder, images, texts, labels):
    loss, _, _ = label_guided_contrastive_loss(
        F.normalize(image_encoder(images), dim=-1),
        F.normalize(text_encoder(texts), dim=-1),
        torch.tensor(4.0),
        labels,
    )
    return loss


def _worker(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        image_encoder, text_encoder = (nn.parallel.DistributedDataParallel(m) for m in _encoders())
        images, texts, labels = _data()
        part = slice(rank * BATCH, (rank + 1) * BATCH)
        loss = _loss(image_encoder, text_encoder, images[part], texts[part], labels[part])
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        grads = [p.grad.clone() for m in (image_encoder, text_encoder) for p in m.parameters()]
        results[rank] = (mean_loss / 2, grads)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_match_one_process_on_the_global_batch():
    results = mp.Manager().dict()
    run_two_processes(_worker, free_port(), results)
    image_encoder, text_encoder = _encoders()
    loss = _loss(image_encoder, text_encoder, *_data())
    loss.backward()
    expected = [p.grad for m in (image_encoder, text_encoder) for p in m.parameters()]
    for rank in (0, 1):
        rank_loss, rank_grads = results[rank]
        assert torch.allclose(rank_loss, loss.detach(), atol=1e-6)
        for got, want in zip(rank_grads, expected, strict=True):
            assert torch.allclose(got, want, atol=1e-6)


def test_per_process_loss_without_gather_differs():
    """Sanity check that the test above can fail: contrasting within each half is a different loss."""
    image_encoder, text_encoder = _encoders()
    images, texts, labels = _data()
    halves = [
        _loss(image_encoder, text_encoder, images[s], texts[s], labels[s]) for s in (slice(0, 3), slice(3, 6))
    ]
    full = _loss(image_encoder, text_encoder, images, texts, labels)
    assert abs((halves[0] + halves[1]).item() / 2 - full.item()) > 1e-3
