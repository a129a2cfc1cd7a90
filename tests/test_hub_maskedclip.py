"""Checkpoints: safetensors round trips, Auto classes, remote code without retvlp, pipelines, towers."""

import json
import os
import textwrap

import numpy as np
import pytest
import torch
from conftest import TINY_HEADS, TINY_VISION, make_tiny_config, run_without_retvlp
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoProcessor,
    BertConfig,
    BertModel,
    ViTMAEConfig,
    ViTMAEForPreTraining,
    pipeline,
)

from retvlp import (
    FundusImageProcessor,
    MaskedCLIPForImageClassification,
    MaskedCLIPForPreTraining,
    MaskedCLIPModel,
    MaskedCLIPProcessor,
    MaskedCLIPVisionModel,
)
from retvlp.tokenization import tiny_tokenizer


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A trained-for-one-step tiny MaskedCLIP pretraining model and its full (pretraining) checkpoint."""
    torch.manual_seed(0)
    model = MaskedCLIPForPreTraining(make_tiny_config()).train()
    batch = dict(
        pixel_values=torch.randn(2, 3, 32, 32),
        input_ids=torch.randint(5, 300, (2, 6)),
        unpaired_pixel_values=torch.randn(2, 3, 32, 32),
    )
    model(**batch).loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(0.1 * p.grad)
    model.update_momentum_encoder(momentum=0.5)  # momentum now differs from the online weights
    directory = tmp_path_factory.mktemp("maskedclip-pretraining")
    model.save_pretrained(directory)
    return model.eval(), directory


@pytest.fixture(scope="module")
def saved_checkpoint(pretrained, tmp_path_factory):
    """The released model of `pretrained` + processor saved like a release."""
    model = pretrained[0].released_model
    directory = tmp_path_factory.mktemp("maskedclip")
    model.save_pretrained(directory)
    processor = MaskedCLIPProcessor(FundusImageProcessor(size=32), tiny_tokenizer(), max_length=16)
    processor.save_pretrained(directory)
    return model.eval(), processor, directory


def _inputs(processor):
    images = [Image.fromarray(np.full((40, 50, 3), value, dtype=np.uint8)) for value in (30, 200)]
    return processor(text=["optic disc cupping", "normal fundus", "hard exudates"], images=images)


def test_release_is_safetensors_without_momentum_encoder(saved_checkpoint, pretrained):
    model, _, directory = saved_checkpoint
    files = set(os.listdir(directory))
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pth")) for f in files)
    weights = load_file(directory / "model.safetensors")
    assert not any(k.startswith(("momentum_", "pixel_decoder.", "feature_decoder.")) for k in weights)
    assert set(weights) == set(model.state_dict())
    assert {k.split(".")[0] for k in weights} == {
        "vision_model",
        "bridge",
        "text_model",
        "visual_projection",
        "text_projection",
        "logit_scale",
    }
    # the pretraining model's own checkpoint keeps everything, the momentum encoder included
    pretraining, full_directory = pretrained
    full = load_file(full_directory / "model.safetensors")
    assert set(full) == set(pretraining.state_dict())
    assert any(k.startswith("momentum_vision_model.") for k in full)
    assert any(k.startswith("momentum_bridge.") for k in full)
    # the code travels with the weights
    assert {
        "configuration_maskedclip.py",
        "modeling_maskedclip.py",
        "loss_maskedclip.py",
        "processing_maskedclip.py",
        "image_processing_fundus.py",
    } <= files
    auto_map = json.loads((directory / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_maskedclip.MaskedCLIPModel"
    assert auto_map["AutoModelForZeroShotImageClassification"] == "modeling_maskedclip.MaskedCLIPModel"
    assert auto_map["AutoModelForPreTraining"] == "modeling_maskedclip.MaskedCLIPForPreTraining"


def test_round_trip_gives_identical_weights_and_outputs(saved_checkpoint, pretrained):
    model, processor, directory = saved_checkpoint
    inputs = _inputs(processor)
    pretraining, full_directory = pretrained
    # the released model, from the release and from the pretraining checkpoint
    for source in (directory, full_directory):
        loaded = AutoModel.from_pretrained(source).eval()
        assert type(loaded) is MaskedCLIPModel
        for (name, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
            assert torch.equal(a, b), name
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits_per_image, loaded(**inputs).logits_per_image)
    # pretraining continues from the release: the momentum encoder is rebuilt as a copy of the loaded E_I and B
    resumed = AutoModelForPreTraining.from_pretrained(directory)
    assert type(resumed) is MaskedCLIPForPreTraining
    for (name, a), (_, b) in zip(
        model.named_parameters(), resumed.maskedclip.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    for online, momentum in resumed._online_and_momentum_pairs():
        assert torch.equal(online, momentum)
    # ... and from its own checkpoint exactly where it stopped, momentum encoder included
    restored = AutoModelForPreTraining.from_pretrained(full_directory)
    assert type(restored) is MaskedCLIPForPreTraining
    for (name, a), (_, b) in zip(pretraining.named_parameters(), restored.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert any(
        not torch.equal(online, momentum) for online, momentum in restored._online_and_momentum_pairs()
    )


def test_release_loads_without_building_the_momentum_encoder(saved_checkpoint, pretrained):
    _, _, directory = saved_checkpoint
    _, full_directory = pretrained
    # the released model has no decoders and no momentum encoder, whichever checkpoint it reads
    for source in (directory, full_directory):
        released, info = MaskedCLIPModel.from_pretrained(source, output_loading_info=True)
        names = {n.split(".")[0] for n in released.state_dict()}
        assert not names & {"pixel_decoder", "feature_decoder", "momentum_vision_model", "momentum_bridge"}
        assert not info["missing_keys"]
    light = MaskedCLIPForPreTraining.from_pretrained(directory, use_mfd=False)
    assert light.momentum_vision_model is None and light.feature_decoder is None


def test_auto_processor_and_image_processor_round_trip(saved_checkpoint):
    _, processor, directory = saved_checkpoint
    assert type(AutoProcessor.from_pretrained(directory)) is MaskedCLIPProcessor
    assert type(AutoImageProcessor.from_pretrained(directory)) is FundusImageProcessor
    again = AutoProcessor.from_pretrained(directory)
    a, b = _inputs(processor), _inputs(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vision_and_classification_models_load_from_the_checkpoint(saved_checkpoint, pretrained):
    model, _, directory = saved_checkpoint
    # from the release and from the pretraining checkpoint (E_I under `maskedclip.`)
    for source in (pretrained[1], directory):
        vision = MaskedCLIPVisionModel.from_pretrained(source)
        classifier = MaskedCLIPForImageClassification.from_pretrained(source, num_labels=3)
        for other in (vision, classifier):
            for (name, a), (_, b) in zip(
                model.vision_model.named_parameters(), other.vision_model.named_parameters(), strict=True
            ):
                assert torch.equal(a, b), name
    images = torch.randn(2, 3, 32, 32)
    out = classifier(images, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.loss > 0
    features = vision(images)
    assert torch.allclose(features.pooler_output, features.last_hidden_state[:, 1:].mean(1))
    classifier.save_pretrained(directory / "classifier")
    reloaded = AutoModelForImageClassification.from_pretrained(directory / "classifier")
    assert type(reloaded) is MaskedCLIPForImageClassification
    assert torch.equal(reloaded.eval()(images).logits, classifier.eval()(images).logits)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys, json
    sys.modules["retvlp"] = None  # make `import retvlp` fail: only the checkpoint's own code may run
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor, pipeline
    directory = sys.argv[1]
    model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
    images = [Image.fromarray(np.full((40, 50, 3), v, dtype=np.uint8)) for v in (30, 200)]
    inputs = processor(text=["optic disc cupping", "normal fundus", "hard exudates"], images=images)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    classifier = pipeline("zero-shot-image-classification", model=directory, trust_remote_code=True,
                          tokenizer=processor.tokenizer, image_processor=processor.image_processor)
    scores = classifier(images[0], candidate_labels=["glaucoma", "normal"])
    print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__,
                      "logits": logits.tolist(), "labels": sorted(s["label"] for s in scores)}))
    """
)


def test_remote_code_loads_in_a_process_without_retvlp(saved_checkpoint, tmp_path):
    model, processor, directory = saved_checkpoint
    report = run_without_retvlp(REMOTE_SCRIPT, tmp_path, str(directory))
    assert "retvlp" not in report["class"] and report["class"].endswith("modeling_maskedclip.MaskedCLIPModel")
    with torch.no_grad():
        expected = model(**_inputs(processor)).logits_per_image
    assert torch.allclose(torch.tensor(report["logits"]), expected, atol=1e-5)
    assert report["labels"] == ["glaucoma", "normal"]


def test_zero_shot_pipeline(saved_checkpoint):
    model, processor, directory = saved_checkpoint
    classifier = pipeline(
        "zero-shot-image-classification",
        model=str(directory),
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    image = Image.fromarray(np.full((40, 50, 3), 120, dtype=np.uint8))
    labels = ["glaucoma", "diabetic retinopathy", "normal"]
    scores = classifier(image, candidate_labels=labels, hypothesis_template="a fundus photograph of {}")
    assert sorted(s["label"] for s in scores) == sorted(labels)
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-5)
    # same probabilities as scoring by hand
    texts = [f"a fundus photograph of {label}" for label in labels]
    with torch.no_grad():
        probs = model(**processor(text=texts, images=[image])).logits_per_image.softmax(-1)[0]
    by_label = {s["label"]: s["score"] for s in scores}
    assert [by_label[label] for label in labels] == pytest.approx(probs.tolist(), abs=1e-5)


def test_image_feature_extraction_pipeline(saved_checkpoint):
    _, processor, directory = saved_checkpoint
    vision = MaskedCLIPVisionModel.from_pretrained(directory).eval()
    extractor = pipeline("image-feature-extraction", model=vision, image_processor=processor.image_processor)
    image = Image.fromarray(np.full((40, 50, 3), 120, dtype=np.uint8))
    pooled = extractor(image, pool=True, return_tensors=True)
    with torch.no_grad():
        expected = vision(**processor.image_processor(image)).pooler_output
    assert torch.allclose(pooled.reshape(-1), expected.reshape(-1), atol=1e-5)


def test_builds_from_pretrained_vit_mae_and_bert_directories(tmp_path):
    vit_config = ViTMAEConfig(**TINY_VISION, layer_norm_eps=1e-6)
    torch.manual_seed(1)
    mae = ViTMAEForPreTraining(vit_config)
    with torch.no_grad():
        for p in mae.parameters():
            p.normal_()
    mae.save_pretrained(tmp_path / "mae")
    bert = BertModel(
        BertConfig(
            vocab_size=300, hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48
        ),
        add_pooling_layer=False,
    )
    bert.save_pretrained(tmp_path / "bert")

    model = MaskedCLIPForPreTraining.from_vision_text_pretrained(
        str(tmp_path / "mae"),
        str(tmp_path / "bert"),
        vision_config_overrides={k: v for k, v in TINY_VISION.items() if k.startswith("decoder_")},
        **TINY_HEADS,
    )
    assert type(model) is MaskedCLIPForPreTraining
    assert model.config.vision_config.hidden_size == 32 and model.config.text_config.vocab_size == 300
    for name, tensor in mae.vit.state_dict().items():
        assert torch.equal(model.maskedclip.vision_model.state_dict()[name], tensor), name
        assert torch.equal(model.momentum_vision_model.state_dict()[name], tensor), name
    for name, tensor in mae.decoder.state_dict().items():
        assert torch.equal(model.pixel_decoder.state_dict()[name], tensor), name
    for name, tensor in bert.state_dict().items():
        assert torch.equal(model.maskedclip.text_model.state_dict()[name], tensor), name
    # with the paper's default pixel-decoder size, the MAE decoder (other size) is not loaded
    default = MaskedCLIPForPreTraining.from_vision_text_pretrained(
        str(tmp_path / "mae"), str(tmp_path / "bert")
    )
    assert default.config.vision_config.decoder_hidden_size == 384


def test_retfound_weights_load_into_the_image_encoder(tmp_path):
    model = MaskedCLIPForPreTraining(make_tiny_config(vision={"hidden_size": 32, "num_attention_heads": 4}))
    dim, depth, patches = 32, 2, 16
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    state = {
        "cls_token": rand(1, 1, dim),
        "pos_embed": rand(1, patches + 1, dim),
        "patch_embed.proj.weight": rand(dim, 3, 8, 8),
        "patch_embed.proj.bias": rand(dim),
        "norm.weight": rand(dim),
        "norm.bias": rand(dim),
        "decoder_embed.weight": rand(16, dim),
    }
    for i in range(depth):
        state.update(
            {
                f"blocks.{i}.norm1.weight": rand(dim),
                f"blocks.{i}.norm1.bias": rand(dim),
                f"blocks.{i}.attn.qkv.weight": rand(3 * dim, dim),
                f"blocks.{i}.attn.qkv.bias": rand(3 * dim),
                f"blocks.{i}.attn.proj.weight": rand(dim, dim),
                f"blocks.{i}.attn.proj.bias": rand(dim),
                f"blocks.{i}.norm2.weight": rand(dim),
                f"blocks.{i}.norm2.bias": rand(dim),
                f"blocks.{i}.mlp.fc1.weight": rand(64, dim),
                f"blocks.{i}.mlp.fc1.bias": rand(64),
                f"blocks.{i}.mlp.fc2.weight": rand(dim, 64),
                f"blocks.{i}.mlp.fc2.bias": rand(dim),
            }
        )
    torch.save({"model": state}, tmp_path / "RETFound_cfp_weights.pth")
    info = model.load_retfound_weights(str(tmp_path / "RETFound_cfp_weights.pth"), num_attention_heads=4)
    assert "decoder_embed.weight" in info["unused_keys"]
    encoder = model.maskedclip.vision_model
    assert torch.equal(encoder.embeddings.position_embeddings, state["pos_embed"])
    assert torch.equal(
        encoder.layers[1].attention.v_proj.weight, state["blocks.1.attn.qkv.weight"][2 * dim :]
    )
    assert torch.equal(model.momentum_vision_model.layers[1].mlp.fc2.bias, state["blocks.1.mlp.fc2.bias"])
