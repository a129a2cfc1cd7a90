"""KeepFIT V2 losses (METHODS.md §2, Eqs. 2–4, 20–22) against hand-built targets and plain re-implementations."""

import pytest
import torch
import torch.nn.functional as F

from retvlp.keepfit.loss_keepfit import (
    image_text_contrastive_loss,
    knowledge_refinement_loss,
    total_loss,
)


def _embeddings(n=4, d=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=generator, dtype=torch.float64), dim=-1).float()
    text = F.normalize(torch.randn(n, d, generator=generator, dtype=torch.float64), dim=-1).float()
    return image, text


def _soft_target_loss(image, text, scale, target_rows, target_cols=None):
    """½·(−mean_i Σ_j G_ij log softmax_j s_ij) + ½·(same on sᵀ against G for the columns) — written out."""
    target_rows = torch.tensor(target_rows, dtype=torch.float64)
    target_cols = target_rows if target_cols is None else torch.tensor(target_cols, dtype=torch.float64)
    logits = scale * image.double() @ text.double().t()
    image_to_text = -(target_rows * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_to_image = -(target_cols * torch.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * image_to_text + 0.5 * text_to_image


SCALE = torch.tensor(1 / 0.07)


# ------------------------------------------------------------------------------------------ L_itc (Eqs. 2–4)
def test_categorical_targets_against_a_hand_built_matrix():
    image, text = _embeddings()
    labels = torch.tensor([0, 1, 0, 2])
    # samples 0 and 2 share category 0: each row of G holds 1/2 on both; 1 and 3 are alone in theirs
    targets = [
        [1 / 2, 0, 1 / 2, 0],
        [0, 1, 0, 0],
        [1 / 2, 0, 1 / 2, 0],
        [0, 0, 0, 1],
    ]
    loss, logits_per_image, logits_per_text = image_text_contrastive_loss(image, text, SCALE, labels=labels)
    expected = _soft_target_loss(image, text, SCALE, targets)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(logits_per_image, SCALE * image @ text.t(), atol=1e-6)
    assert torch.allclose(logits_per_text, logits_per_image.t(), atol=1e-6)
    # the categorical loss is not the CLIP loss here: the shared category changes it
    clip = _soft_target_loss(image, text, SCALE, torch.eye(4).tolist())
    assert abs(loss.item() - clip.item()) > 1e-3


def test_categorical_targets_with_three_samples_of_one_category():
    image, text = _embeddings(n=5, seed=3)
    labels = torch.tensor([4, 4, 1, 4, 1])
    targets = [
        [1 / 3, 1 / 3, 0, 1 / 3, 0],
        [1 / 3, 1 / 3, 0, 1 / 3, 0],
        [0, 0, 1 / 2, 0, 1 / 2],
        [1 / 3, 1 / 3, 0, 1 / 3, 0],
        [0, 0, 1 / 2, 0, 1 / 2],
    ]
    loss, _, _ = image_text_contrastive_loss(image, text, SCALE, labels=labels)
    assert loss.item() == pytest.approx(_soft_target_loss(image, text, SCALE, targets).item(), rel=1e-6)


def test_multi_hot_labels_match_whole_rows():
    image, text = _embeddings(seed=1)
    # rows 0 and 1 carry the same label set; row 3 shares one class with them, which is not the same category
    labels = torch.tensor([[1, 0, 1], [1, 0, 1], [0, 1, 0], [1, 0, 0]])
    targets = [
        [1 / 2, 1 / 2, 0, 0],
        [1 / 2, 1 / 2, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 1],
    ]
    loss, _, _ = image_text_contrastive_loss(image, text, SCALE, labels=labels)
    assert loss.item() == pytest.approx(_soft_target_loss(image, text, SCALE, targets).item(), rel=1e-6)


def test_unlabelled_rows_are_positive_only_with_their_own_pair():
    image, text = _embeddings(seed=2)
    # rows 1 and 3 are unlabelled (−1): even though their labels are "equal", they are not each other's positives
    labels = torch.tensor([0, -1, 0, -1])
    targets = [
        [1 / 2, 0, 1 / 2, 0],
        [0, 1, 0, 0],
        [1 / 2, 0, 1 / 2, 0],
        [0, 0, 0, 1],
    ]
    loss, _, _ = image_text_contrastive_loss(image, text, SCALE, labels=labels)
    assert loss.item() == pytest.approx(_soft_target_loss(image, text, SCALE, targets).item(), rel=1e-6)

    multi_hot = torch.tensor([[0, 1], [-1, -1], [0, 1], [-1, -1]])
    loss, _, _ = image_text_contrastive_loss(image, text, SCALE, labels=multi_hot)
    assert loss.item() == pytest.approx(_soft_target_loss(image, text, SCALE, targets).item(), rel=1e-6)


def test_identity_targets_are_the_clip_loss():
    image, text = _embeddings(n=6, seed=4)
    loss, _, _ = image_text_contrastive_loss(image, text, SCALE, labels=None)
    logits = SCALE * image @ text.t()
    arange = torch.arange(6)
    clip = 0.5 * (F.cross_entropy(logits, arange) + F.cross_entropy(logits.t(), arange))
    assert loss.item() == pytest.approx(clip.item(), rel=1e-6)
    # all-distinct categories and all-unlabelled rows are the same loss
    distinct, _, _ = image_text_contrastive_loss(image, text, SCALE, labels=torch.arange(6))
    unlabelled, _, _ = image_text_contrastive_loss(image, text, SCALE, labels=torch.full((6,), -1))
    assert distinct.item() == pytest.approx(clip.item(), rel=1e-6)
    assert unlabelled.item() == pytest.approx(clip.item(), rel=1e-6)


def test_contrastive_gradient_matches_the_plain_loss():
    image, text = _embeddings(seed=5)
    labels = torch.tensor([2, 2, 0, 1])
    targets = torch.tensor([[1 / 2, 1 / 2, 0, 0], [1 / 2, 1 / 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    a_image, a_text = image.clone().requires_grad_(), text.clone().requires_grad_()
    b_image, b_text = image.clone().requires_grad_(), text.clone().requires_grad_()
    image_text_contrastive_loss(a_image, a_text, SCALE, labels=labels)[0].backward()
    logits = SCALE * b_image @ b_text.t()
    plain = 0.5 * (
        -(targets * logits.log_softmax(1)).sum(1).mean() - (targets * logits.t().log_softmax(1)).sum(1).mean()
    )
    plain.backward()
    assert torch.allclose(a_image.grad, b_image.grad, atol=1e-6)
    assert torch.allclose(a_text.grad, b_text.grad, atol=1e-6)


def test_contrastive_rejects_mismatched_sizes():
    image, text = _embeddings()
    with pytest.raises(ValueError, match="one text per image"):
        image_text_contrastive_loss(image, text[:3], SCALE)
    with pytest.raises(ValueError, match="labels"):
        image_text_contrastive_loss(image, text, SCALE, labels=torch.tensor([0, 1, 0]))


# ------------------------------------------------------------------------------------ L_EK (Eqs. 20, 21)
def test_knowledge_refinement_loss_by_hand():
    knowledge = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, -1.0]])
    text = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # squared errors: [[1, 4, 0], [4, 9, 4]]; sum 22 over 6 elements; per-sample sums 5 and 17
    assert knowledge_refinement_loss(knowledge, text).item() == pytest.approx(22 / 6)
    assert knowledge_refinement_loss(knowledge, text, reduction="mean").item() == pytest.approx(22 / 6)
    assert knowledge_refinement_loss(knowledge, text, reduction="sum_per_sample").item() == pytest.approx(
        11.0
    )


def test_knowledge_refinement_loss_reductions_differ_by_the_width():
    generator = torch.Generator().manual_seed(0)
    knowledge, text = torch.randn(5, 16, generator=generator), torch.randn(5, 16, generator=generator)
    mean = knowledge_refinement_loss(knowledge, text, "mean")
    per_sample = knowledge_refinement_loss(knowledge, text, "sum_per_sample")
    assert torch.allclose(mean, F.mse_loss(knowledge, text))
    assert torch.allclose(per_sample, ((knowledge - text) ** 2).sum(dim=1).mean())
    assert torch.allclose(per_sample, 16 * mean)


def test_knowledge_refinement_loss_has_no_stop_gradient():
    knowledge = torch.tensor([[1.0, 2.0]], requires_grad=True)
    text = torch.tensor([[0.0, 4.0]], requires_grad=True)
    knowledge_refinement_loss(knowledge, text).backward()
    # d/dk mean((k − t)²) = 2(k − t)/n with n = 2 elements
    assert torch.allclose(knowledge.grad, torch.tensor([[1.0, -2.0]]))
    assert torch.allclose(text.grad, torch.tensor([[-1.0, 2.0]]))


def test_knowledge_refinement_loss_errors():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)"):
        knowledge_refinement_loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="same shape"):
        knowledge_refinement_loss(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="reduction"):
        knowledge_refinement_loss(torch.zeros(2, 4), torch.zeros(2, 4), reduction="sum")


# ----------------------------------------------------------------------------------------- total (Eq. 22)
TERMS = {
    "itc_categorical": torch.tensor(1.5),
    "itc_elite": torch.tensor(0.25),
    "semantic": torch.tensor(0.01),
    "appearance": torch.tensor(2e-5),
}


def test_total_loss_is_eq_22():
    total = total_loss(TERMS, lambda_semantic=100.0, lambda_appearance=1e4)
    assert total.item() == pytest.approx(1.5 + 0.25 + 100 * 0.01 + 1e4 * 2e-5)


@pytest.mark.parametrize(
    "name, lambda_name", [("semantic", "lambda_semantic"), ("appearance", "lambda_appearance")]
)
def test_each_lambda_weights_its_own_term(name, lambda_name):
    base = dict(lambda_semantic=100.0, lambda_appearance=1e4)
    doubled = {**base, lambda_name: 2 * base[lambda_name]}
    difference = total_loss(TERMS, **doubled) - total_loss(TERMS, **base)
    assert difference.item() == pytest.approx(base[lambda_name] * TERMS[name].item(), rel=1e-5)
    # λ = 0 removes exactly that term
    without = total_loss({k: v for k, v in TERMS.items() if k != name}, **base)
    assert total_loss(TERMS, **{**base, lambda_name: 0.0}).item() == pytest.approx(without.item(), rel=1e-6)


def test_total_loss_sums_only_the_terms_present_and_keeps_gradients():
    categorical = torch.tensor(0.7, requires_grad=True)
    semantic = torch.tensor(0.2, requires_grad=True)
    total = total_loss({"itc_categorical": categorical, "semantic": semantic}, 100.0, 1e4)
    assert total.item() == pytest.approx(0.7 + 100 * 0.2)
    total.backward()
    assert categorical.grad.item() == 1.0 and semantic.grad.item() == pytest.approx(100.0)
    assert total_loss({"itc_elite": torch.tensor(3.0)}, 100.0, 1e4).item() == 3.0


def test_total_loss_rejects_unknown_terms():
    with pytest.raises(ValueError, match="semantics"):
        total_loss({"itc_categorical": torch.tensor(1.0), "semantics": torch.tensor(1.0)}, 100.0, 1e4)
