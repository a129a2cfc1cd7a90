"""The MaskedCLIP losses against plain, independent computations (loops over the paper's equations)."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from retvlp.maskedclip.loss_maskedclip import (
    label_guided_contrastive_loss,
    masked_feature_distillation_loss,
    masked_image_modeling_loss,
    patchify,
)
from retvlp.maskedclip.modeling_maskedclip import random_masking, sincos_position_table


def _normalized(batch, dim, seed):
    return F.normalize(torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _eq2_to_4_by_loops(images, texts, scale, labels):
    """Eqs. 2–4 written literally: sums over P(x) of log of exp / sum exp, in float64 Python loops."""
    n = len(images)
    s = [[scale * float(images[i] @ texts[j]) for j in range(n)] for i in range(n)]
    i2t = 0.0
    for i in range(n):
        positives = [j for j in range(n) if labels[j] == labels[i]]
        denominator = sum(math.exp(s[i][k]) for k in range(n))
        i2t += sum(math.log(math.exp(s[i][j]) / denominator) for j in positives) / len(positives)
    t2i = 0.0
    for j in range(n):
        positives = [i for i in range(n) if labels[i] == labels[j]]
        denominator = sum(math.exp(s[k][j]) for k in range(n))
        t2i += sum(math.log(math.exp(s[i][j]) / denominator) for i in positives) / len(positives)
    return 0.5 * (-i2t / n) + 0.5 * (-t2i / n)


def test_label_guided_loss_matches_equations_2_to_4():
    images, texts = _normalized(6, 5, 0), _normalized(6, 5, 1)
    labels = [2, 0, 2, 1, 0, 2]
    loss, logits_i, logits_t = label_guided_contrastive_loss(
        images, texts, torch.tensor(7.0), torch.tensor(labels)
    )
    assert loss.item() == pytest.approx(_eq2_to_4_by_loops(images, texts, 7.0, labels), rel=1e-5)
    assert torch.allclose(logits_t, logits_i.t())


def test_label_guided_loss_is_clip_loss_for_unique_labels_or_none():
    images, texts = _normalized(5, 4, 2), _normalized(5, 4, 3)
    logits = 3.0 * images @ texts.t()
    clip = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.t(), torch.arange(5)))
    unique, _, _ = label_guided_contrastive_loss(
        images, texts, torch.tensor(3.0), torch.tensor([4, 0, 3, 1, 2])
    )
    none, _, _ = label_guided_contrastive_loss(images, texts, torch.tensor(3.0), None)
    minus_one, _, _ = label_guided_contrastive_loss(images, texts, torch.tensor(3.0), torch.full((5,), -1))
    for value in (unique, none, minus_one):
        assert value.item() == pytest.approx(clip.item(), rel=1e-6)


def test_pairs_sharing_a_label_are_positives():
    # Hand-worked: two pairs with the same label; every similarity equal → both targets 1/2 and the loss
    # is log 2 per direction exactly (the same batch with distinct labels has the same value: uniform).
    same = torch.ones(2, 1)
    loss, _, _ = label_guided_contrastive_loss(same, same, torch.tensor(1.0), torch.tensor([5, 5]))
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    # Swapping the texts of two same-label pairs leaves the label-guided loss unchanged, but not CLIP's.
    images, texts = _normalized(4, 6, 4), _normalized(4, 6, 5)
    labels = torch.tensor([1, 1, 0, 3])
    swapped = texts[[1, 0, 2, 3]]
    guided = [
        label_guided_contrastive_loss(images, t, torch.tensor(5.0), labels)[0] for t in (texts, swapped)
    ]
    clip = [label_guided_contrastive_loss(images, t, torch.tensor(5.0), None)[0] for t in (texts, swapped)]
    assert guided[0].item() == pytest.approx(guided[1].item(), rel=1e-6)
    assert abs(clip[0].item() - clip[1].item()) > 1e-3


def test_multi_hot_labels_compare_whole_label_sets():
    images, texts = _normalized(4, 3, 6), _normalized(4, 3, 7)
    multi_hot = torch.tensor([[1, 0, 1], [1, 0, 1], [0, 1, 0], [1, 0, 0]])
    as_ids = torch.tensor([0, 0, 1, 2])
    a = label_guided_contrastive_loss(images, texts, torch.tensor(2.0), multi_hot)[0]
    b = label_guided_contrastive_loss(images, texts, torch.tensor(2.0), as_ids)[0]
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_unlabelled_multi_hot_rows_are_positive_only_with_themselves():
    images, texts = _normalized(4, 3, 8), _normalized(4, 3, 9)
    unlabelled = torch.full((4, 3), -1)
    guided = label_guided_contrastive_loss(images, texts, torch.tensor(2.0), unlabelled)[0]
    clip = label_guided_contrastive_loss(images, texts, torch.tensor(2.0), None)[0]
    assert guided.item() == pytest.approx(clip.item(), rel=1e-6)
    mixed = torch.tensor([[1, 0, 1], [1, 0, 1], [-1, -1, -1], [-1, -1, -1]])
    as_ids = torch.tensor([0, 0, -1, -1])
    a = label_guided_contrastive_loss(images, texts, torch.tensor(2.0), mixed)[0]
    b = label_guided_contrastive_loss(images, texts, torch.tensor(2.0), as_ids)[0]
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_indistinguishable_images_make_ln_batch_the_minimum_whatever_the_labels():
    """The collapse the guard watches for, worked by hand (docs/real_data.md §1): when every image has the same
    embedding, each text column's softmax over images is uniform (t2i = ln B), and the i2t rows share one
    distribution q whose best value is the mean target row — which is uniform, 1/B per column, for any labels
    (class c's n_c rows spread 1/n_c over its n_c columns). So the loss is >= ln B, with equality at equal
    logits, and spreading the texts can only raise it: the label-guided loss pushes the texts together until
    the images carry class information."""
    labels = torch.tensor([0] * 9 + [1] * 2 + [2])  # a clinic's imbalance, batch 12
    batch = len(labels)
    images = _normalized(1, 8, 0).expand(batch, -1)
    scale = torch.tensor(14.3)
    for seed in range(5):
        texts = _normalized(batch, 8, seed + 1)
        loss, _, _ = label_guided_contrastive_loss(images, texts, scale, labels)
        assert loss.item() >= math.log(batch) - 1e-6
        assert loss.item() == pytest.approx(
            _eq2_to_4_by_loops(images, texts, 14.3, labels.tolist()), rel=1e-5
        )
    same_texts = _normalized(1, 8, 9).expand(batch, -1)
    loss, _, _ = label_guided_contrastive_loss(images, same_texts, scale, labels)
    assert loss.item() == pytest.approx(math.log(batch), abs=1e-6)


def test_contrastive_loss_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="one text per image"):
        label_guided_contrastive_loss(_normalized(3, 4, 0), _normalized(2, 4, 1), torch.tensor(1.0))
    with pytest.raises(ValueError, match="labels has 2 entries"):
        label_guided_contrastive_loss(
            _normalized(3, 4, 0), _normalized(3, 4, 1), torch.tensor(1.0), torch.tensor([0, 1])
        )


def test_mfd_is_minus_one_for_a_perfect_prediction_and_uses_every_patch():
    target = torch.randn(2, 6, 5)
    assert masked_feature_distillation_loss(3.0 * target, target).item() == pytest.approx(-1.0, abs=1e-6)
    prediction = torch.randn(2, 6, 5)
    by_loop = (
        -sum(
            float(F.cosine_similarity(prediction[b, i], target[b, i], dim=0))
            for b in range(2)
            for i in range(6)
        )
        / 12
    )
    assert masked_feature_distillation_loss(prediction, target).item() == pytest.approx(by_loop, rel=1e-5)
    for patch in range(6):  # every patch, masked or not, moves the loss
        changed = prediction.clone()
        changed[0, patch] = target[0, patch]
        assert masked_feature_distillation_loss(changed, target) < masked_feature_distillation_loss(
            prediction, target
        )


def test_mfd_sends_no_gradient_to_the_target():
    target = torch.randn(1, 4, 3, requires_grad=True)
    prediction = torch.randn(1, 4, 3, requires_grad=True)
    masked_feature_distillation_loss(prediction, target).backward()
    assert target.grad is None and prediction.grad is not None


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mim_matches_per_image_average_over_masked_patches(norm_pix):
    generator = torch.Generator().manual_seed(1)
    prediction = torch.randn(3, 8, 12, generator=generator)
    target = torch.rand(3, 8, 12, generator=generator)
    mask = torch.zeros(3, 8)
    mask[0, [1, 2]] = 1
    mask[1, [0, 5]] = 1
    mask[2, [3, 7]] = 1
    per_image = []
    for b in range(3):
        errors = []
        for p in range(8):
            if mask[b, p]:
                t = target[b, p]
                if norm_pix:  # per-patch standardisation, unbiased variance, eps 1e-6 (MAE)
                    t = (t - t.mean()) / math.sqrt(float(t.var(unbiased=True)) + 1e-6)
                errors.append(float(((prediction[b, p] - t) ** 2).mean()))
        per_image.append(sum(errors) / len(errors))
    expected = sum(per_image) / 3
    got = masked_image_modeling_loss(prediction, target, mask, norm_pix_loss=norm_pix)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_mim_ignores_visible_patches():
    prediction, target = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 0, 1, 1, 0]], dtype=torch.float)
    changed = prediction.clone()
    changed[mask == 0] = 1e3
    assert torch.equal(
        masked_image_modeling_loss(prediction, target, mask),
        masked_image_modeling_loss(changed, target, mask),
    )
    changed[0, 0] = 1e3  # a masked patch does count
    assert masked_image_modeling_loss(changed, target, mask) > masked_image_modeling_loss(
        prediction, target, mask
    )


def test_patchify_matches_vitmae_layout():
    config = ViTMAEConfig(
        image_size=16,
        patch_size=4,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        decoder_hidden_size=8,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=8,
    )
    reference = ViTMAEForPreTraining(config)
    images = torch.randn(2, 3, 16, 16)
    assert torch.equal(patchify(images, 4), reference.patchify(images))
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.randn(1, 3, 10, 16), 4)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.1])
def test_masking_keeps_n_times_one_minus_r_and_ids_restore_inverts(ratio):
    batch, patches, dim = 3, 16, 5
    tokens = (
        torch.arange(patches, dtype=torch.float).repeat(batch, 1)[..., None].expand(-1, -1, dim).contiguous()
    )
    kept, mask, ids_restore = random_masking(tokens, ratio)
    keep = int(patches * (1 - ratio))
    assert kept.shape == (batch, keep, dim)
    assert torch.equal(mask.sum(1), torch.full((batch,), float(patches - keep)))
    for b in range(batch):
        kept_positions = kept[b, :, 0].long()
        assert torch.equal(mask[b, kept_positions], torch.zeros(keep))  # kept ⇔ mask 0
        # Append placeholders for the removed patches, then un-shuffle: every patch returns to its place.
        removed = [p for p in range(patches) if p not in kept_positions.tolist()]
        shuffled = torch.cat([kept_positions, torch.tensor(removed)])
        ids_shuffle = torch.argsort(ids_restore[b])
        assert torch.equal(shuffled.sort().values, torch.arange(patches))
        assert torch.equal(torch.gather(ids_shuffle, 0, ids_restore[b]), torch.arange(patches))
        assert torch.equal(ids_shuffle[:keep], kept_positions)


def test_masking_with_given_noise_is_deterministic():
    tokens = torch.randn(2, 16, 4)
    noise = torch.rand(2, 16)
    a, b = random_masking(tokens, 0.75, noise), random_masking(tokens, 0.75, noise)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="noise must have shape"):
        random_masking(tokens, 0.75, torch.rand(2, 15))


def test_sincos_table_layout():
    table = sincos_position_table(grid_size=3, dim=8)
    assert table.shape == (10, 8)
    assert torch.equal(table[0], torch.zeros(8))
    # patch (row 1, column 2) is index 1*3+2 = 5 (+1 for cls): first half encodes the column, second the row
    omega = torch.tensor([1.0, 1.0 / 100])  # 1/10000^(k/2) for k = 0, 1
    expected = torch.cat(
        [torch.sin(2 * omega), torch.cos(2 * omega), torch.sin(1 * omega), torch.cos(1 * omega)]
    )
    assert torch.allclose(table[6], expected, atol=1e-6)
