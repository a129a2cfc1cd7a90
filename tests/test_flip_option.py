"""The FLIP-style options of MaskedCLIP (beyond both papers): `clip_mask_ratio` encodes a random subset of the
paired image's patches for the contrastive branch, `mfd_teacher_mask_ratio` a subset for the momentum teacher.
At 0 (the default) the forward is the paper's, bit for bit; above 0 the embeddings and L_mfd are checked
against a plain re-computation of the masked passes."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_pretrain_dict
from safetensors.torch import load_file

from retvlp import MaskedCLIPForPreTraining
from retvlp.data.sampler import StepSampler
from retvlp.maskedclip.loss_maskedclip import label_guided_contrastive_loss
from retvlp.training import PretrainConfig, pretrain
from retvlp.training.maskedclip_task import MaskedCLIPStepBatches


def _model(make, **kwargs):
    torch.manual_seed(0)
    return MaskedCLIPForPreTraining(make(**kwargs)).train()


def _noise(batch, seed):
    return torch.rand(batch, 16, generator=torch.Generator().manual_seed(seed))


def _encode_subset(vision_model, pixels, keep_ids):
    """E_I on the patches `keep_ids` `(batch, kept)` (in that order) + cls, written out layer by layer."""
    embeddings = vision_model.embeddings
    tokens = embeddings.patch_embeddings(pixels) + embeddings.position_embeddings[:, 1:]
    tokens = torch.stack([tokens[i, keep_ids[i]] for i in range(pixels.shape[0])])
    cls = (embeddings.cls_token + embeddings.position_embeddings[:, :1]).expand(pixels.shape[0], -1, -1)
    hidden = torch.cat([cls, tokens], dim=1)
    for layer in vision_model.layers:
        hidden, _ = layer(hidden)
    return vision_model.layernorm(hidden)


def test_ratio_zero_is_the_paper_path_bit_for_bit(tiny_config, tiny_batch):
    paper = _model(tiny_config)
    flip_off = _model(tiny_config, clip_mask_ratio=0.0, mfd_teacher_mask_ratio=0.0)
    a = paper(**tiny_batch, noise=_noise(7, 3))
    # noise for the FLIP passes is ignored at ratio 0
    b = flip_off(**tiny_batch, noise=_noise(7, 3), clip_noise=_noise(4, 5), teacher_noise=_noise(7, 6))
    for name in ("loss", "loss_mim", "loss_clip", "loss_mfd", "image_embeds"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    released = paper.maskedclip
    with torch.no_grad():
        assert torch.equal(
            released.masked_image_features(tiny_batch["pixel_values"], 0.0),
            released.get_image_features(tiny_batch["pixel_values"]).pooler_output,
        )


def test_clip_mask_ratio_embeds_a_random_subset_of_patches(tiny_config, tiny_batch):
    model = _model(tiny_config, clip_mask_ratio=0.5)
    clip_noise = _noise(4, 5)
    out = model(**tiny_batch, noise=_noise(7, 3), clip_noise=clip_noise)

    released = model.maskedclip
    keep = torch.argsort(clip_noise, dim=1)[:, :8]  # 16 patches, half kept: the lowest noise
    with torch.no_grad():
        tokens = released.bridge(_encode_subset(released.vision_model, tiny_batch["pixel_values"], keep))
        expected = F.normalize(released.visual_projection(tokens[:, 0]), dim=-1)
        text = F.normalize(released.get_text_features(tiny_batch["input_ids"]).pooler_output, dim=-1)
        loss, _, _ = label_guided_contrastive_loss(
            expected, text, released.clamped_logit_scale(), labels=tiny_batch["labels"]
        )
    torch.testing.assert_close(out.image_embeds.detach(), expected, rtol=1e-5, atol=1e-6)
    assert out.loss_clip.item() == pytest.approx(loss.item(), rel=1e-5)
    # a different subset gives a different embedding; the inference path still sees the whole image
    other = model(**tiny_batch, noise=_noise(7, 3), clip_noise=_noise(4, 9))
    assert (other.image_embeds - out.image_embeds).abs().max() > 1e-4
    with torch.no_grad():
        whole = F.normalize(released.get_image_features(tiny_batch["pixel_values"]).pooler_output, dim=-1)
    assert (whole - out.image_embeds).abs().max() > 1e-4
    out.loss.backward()
    assert released.visual_projection.weight.grad.abs().sum() > 0


def test_mfd_teacher_mask_ratio_distils_only_where_the_teacher_saw(tiny_config, tiny_batch):
    model = _model(tiny_config, mfd_teacher_mask_ratio=0.5)
    noise, teacher_noise = _noise(7, 3), _noise(7, 6)
    out = model(**tiny_batch, noise=noise, teacher_noise=teacher_noise)

    pixels = torch.cat([tiny_batch["pixel_values"], tiny_batch["unpaired_pixel_values"]])
    with torch.no_grad():
        encoded = model.maskedclip.vision_model(pixels, mask_ratio=0.75, noise=noise)
        predicted = model.feature_decoder(encoded.last_hidden_state, encoded.ids_restore).logits
        keep = torch.argsort(teacher_noise, dim=1)[:, :8]
        teacher = model.momentum_bridge(_encode_subset(model.momentum_vision_model, pixels, keep))[:, 1:]
        total = 0.0
        for i in range(pixels.shape[0]):
            for slot, patch in enumerate(keep[i].tolist()):
                total += -F.cosine_similarity(predicted[i, patch], teacher[i, slot], dim=0).item()
    assert out.loss_mfd.item() == pytest.approx(total / (pixels.shape[0] * 8), rel=1e-5)
    paper = _model(tiny_config)(**tiny_batch, noise=noise)
    assert abs(paper.loss_mfd.item() - out.loss_mfd.item()) > 1e-5
    assert torch.equal(paper.loss_mim, out.loss_mim)


@pytest.mark.parametrize(
    "bad", [{"clip_mask_ratio": 1.0}, {"clip_mask_ratio": -0.1}, {"mfd_teacher_mask_ratio": 0.99}]
)
def test_bad_ratios_are_refused_naming_the_field(tiny_config, bad):
    (name,) = bad
    with pytest.raises(Exception, match=name):  # huggingface_hub wraps the ValueError
        tiny_config(**bad)


def test_step_noise_is_drawn_for_the_global_batch_and_sliced_per_rank():
    def batches(rank, world_size):
        step_batches = MaskedCLIPStepBatches.__new__(MaskedCLIPStepBatches)
        step_batches.samplers = {"paired": StepSampler(40, 4 // world_size, world_size, seed=0)}
        step_batches.seed, step_batches.rank, step_batches.num_patches = 7, rank, 16
        return step_batches

    single = batches(0, 1)._noise(5, 2, "paired")
    halves = torch.cat([batches(r, 2)._noise(5, 2, "paired") for r in (0, 1)])
    assert single.shape == (4, 16) and torch.equal(single, halves)
    assert not torch.equal(single, batches(0, 1)._noise(6, 2, "paired"))  # a new subset every step


def test_a_flip_run_resumes_bit_for_bit(tmp_path, synthetic):
    def config(name):
        raw = tiny_pretrain_dict(tmp_path, synthetic, name, optim={"max_steps": 4})
        raw["model"]["config"].update(clip_mask_ratio=0.5, mfd_teacher_mask_ratio=0.5)
        raw["run"]["save_every"] = 2
        return PretrainConfig.from_dict(raw, source="test")

    straight = pretrain(config("straight"), show_progress=False)
    resumed_config = config("resumed")
    pretrain(resumed_config, show_progress=False, stop_after=2)
    resumed = pretrain(resumed_config, resume="latest", show_progress=False)
    a = load_file(str(straight.output_dir / "checkpoint-4" / "model.safetensors"))
    b = load_file(str(resumed.output_dir / "checkpoint-4" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
