"""Fine-tuning (full and LoRA) of the image encoder with a classification head."""

import numpy as np
import pytest
import torch
from conftest import make_tiny_config

from retvlp import MaskedCLIPModel, MaskedCLIPProcessor
from retvlp.evaluation.data import cache_images, geometry_of, normalization_of, read_labelled_records
from retvlp.evaluation.finetune import FinetuneSettings, build_classifier, finetune, parameter_groups
from retvlp.maskedclip import FundusImageProcessor, MaskedCLIPForImageClassification
from retvlp.tokenization import tiny_tokenizer

CLASSES = ["normal", "glaucoma", "cataract"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("ft") / "final"
    MaskedCLIPModel(make_tiny_config()).save_pretrained(directory)
    MaskedCLIPProcessor(FundusImageProcessor(size=32), tiny_tokenizer(), max_length=16).save_pretrained(
        directory
    )
    return directory


@pytest.fixture(scope="module")
def data(synthetic, tmp_path_factory):
    labelled = read_labelled_records([synthetic.paired, synthetic.categorical, synthetic.test])
    store = cache_images(
        labelled,
        geometry_of(FundusImageProcessor(size=32)),
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        show_progress=False,
    )
    mean, std = normalization_of(FundusImageProcessor(size=32))
    indices = np.arange(len(labelled))
    return labelled, store, mean, std, indices[: len(indices) * 3 // 4], indices[len(indices) * 3 // 4 :]


def test_layer_wise_lr_decay_and_weight_decay_groups(checkpoint):
    settings = FinetuneSettings(lr=1.0, layer_decay=0.5, weight_decay=0.05)
    model = build_classifier(checkpoint, CLASSES, multi_label=False, settings=settings)
    depth = model.config.num_hidden_layers  # 2 blocks: stem 0.5^3, block 0 0.5^2, block 1 0.5, head 1
    expected_lr = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("vision_model.embeddings."):
            scale = 0.5 ** (depth + 1)
        elif name.startswith("vision_model.layers."):
            scale = 0.5 ** (depth - int(name.split(".")[2]))
        else:
            scale = 1.0
        decays = parameter.ndim > 1 and "position_embeddings" not in name and "cls_token" not in name
        expected_lr[name] = (scale, 0.05 if decays else 0.0)
    seen = {}
    for group in parameter_groups(model, settings):
        for name in group["names"]:
            seen[name] = (group["lr"], group["weight_decay"])
    assert seen.keys() == expected_lr.keys()
    for name, (lr, wd) in expected_lr.items():
        assert seen[name] == pytest.approx((lr, wd)), name
    # The unused final LayerNorm of the mean-pooling head is frozen, so it is in no group (DDP-safe).
    assert not any(name.startswith("vision_model.layernorm") for name in seen)
    assert model.config.drop_path_rate == pytest.approx(0.1)


def test_full_finetuning_learns_and_saves_a_loadable_classifier(checkpoint, data, tmp_path):
    labelled, store, mean, std, train, test = data
    settings = FinetuneSettings(
        max_steps=24, batch_size=8, lr=2e-3, layer_decay=0.9, drop_path_rate=0.0, seed=0
    )
    result = finetune(
        checkpoint,
        labelled,
        store,
        mean,
        std,
        train,
        test,
        settings,
        output_dir=tmp_path,
        show_progress=False,
    )
    assert result.probabilities.shape == (len(test), len(labelled.class_names))
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, rtol=1e-5)
    assert np.mean(result.losses[-6:]) < np.mean(result.losses[:6])
    reloaded = MaskedCLIPForImageClassification.from_pretrained(result.saved_to).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).logits, result.model.eval()(pixels).logits)
    assert reloaded.config.id2label[0] == labelled.class_names[0]
    # Same seed, same run.
    again = finetune(checkpoint, labelled, store, mean, std, train, test, settings, show_progress=False)
    assert again.losses == result.losses


def test_lora_trains_adapters_and_head_only_and_reloads_and_merges(checkpoint, data, tmp_path):
    from peft import PeftModel

    labelled, store, mean, std, train, test = data
    settings = FinetuneSettings(method="lora", max_steps=6, batch_size=8, lr=5e-3, lora_dropout=0.0, seed=1)
    base_before = build_classifier(checkpoint, labelled.class_names, multi_label=False, settings=settings)
    result = finetune(
        checkpoint,
        labelled,
        store,
        mean,
        std,
        train,
        test,
        settings,
        output_dir=tmp_path,
        show_progress=False,
    )
    trained = result.model.eval()
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n or "fc_norm" in n for n in trainable)
    assert any(".q_proj.lora_A" in n for n in trainable) and any(".o_proj.lora_B" in n for n in trainable)
    # The frozen base weights did not move.
    before = dict(base_before.named_parameters())
    for name, parameter in trained.base_model.model.named_parameters():
        if "lora_" not in name and "modules_to_save" not in name and "original_module" not in name:
            torch.testing.assert_close(parameter, before[name.replace(".base_layer", "")], rtol=0, atol=0)
    assert (result.saved_to / "adapter_config.json").exists()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = trained(pixel_values=pixels).logits
        fresh = build_classifier(checkpoint, labelled.class_names, multi_label=False, settings=settings)
        reloaded = PeftModel.from_pretrained(fresh, result.saved_to).eval()
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits, expected)
        merged = reloaded.merge_and_unload().eval()
        assert isinstance(merged, MaskedCLIPForImageClassification)
        torch.testing.assert_close(merged(pixel_values=pixels).logits, expected, rtol=1e-5, atol=1e-5)


def test_random_init_baseline_differs_from_the_checkpoint(checkpoint):
    pretrained = build_classifier(checkpoint, CLASSES, multi_label=False, settings=FinetuneSettings())
    random = build_classifier(
        checkpoint, CLASSES, multi_label=False, settings=FinetuneSettings(init="random")
    )
    assert not torch.equal(
        pretrained.vision_model.layers[0].attention.q_proj.weight,
        random.vision_model.layers[0].attention.q_proj.weight,
    )


def test_settings_are_validated():
    with pytest.raises(ValueError, match="method"):
        FinetuneSettings(method="adapter")
    with pytest.raises(ValueError, match="layer_decay"):
        FinetuneSettings(layer_decay=0)
