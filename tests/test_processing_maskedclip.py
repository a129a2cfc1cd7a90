"""MaskedCLIPProcessor: text + images, defaults, errors, save/load round trips (offline tiny tokenizer)."""

import json

import numpy as np
import pytest
import torch
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from retvlp.maskedclip.image_processing_fundus import FundusImageProcessor
from retvlp.maskedclip.processing_maskedclip import MaskedCLIPProcessor
from retvlp.tokenization import tiny_tokenizer

CAPTIONS = ["Normal fundus.", "Moderate diabetic retinopathy with microaneurysms and hard exudates."]
LONG_CAPTION = " ".join(["Drusen at the macula with geographic atrophy and haemorrhages."] * 12)


def images(n=2, size=(40, 56)):
    rng = np.random.default_rng(0)
    return [(rng.random((*size, 3)) * 255).astype(np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def processor(tokenizer):
    return MaskedCLIPProcessor(image_processor=FundusImageProcessor(size=32), tokenizer=tokenizer)


def test_text_and_images_together(processor, tokenizer):
    out = processor(text=CAPTIONS, images=images())
    assert set(out.keys()) == {"input_ids", "attention_mask", "token_type_ids", "pixel_values"}
    assert out["pixel_values"].shape == (2, 3, 32, 32) and out["pixel_values"].dtype == torch.float32
    expected = tokenizer(CAPTIONS, padding="longest", truncation=True, max_length=77, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(out[key], expected[key]), key
    assert out["input_ids"][0, 0].item() == tokenizer.cls_token_id == 2
    # padding="longest": the short caption is padded with [PAD]=0 up to the long one, mask 0 there.
    n_short = int(out["attention_mask"][0].sum())
    assert out["input_ids"].shape[1] == int(out["attention_mask"][1].sum()) > n_short
    assert out["input_ids"][0, n_short - 1].item() == tokenizer.sep_token_id
    assert (out["input_ids"][0, n_short:] == 0).all() and (out["attention_mask"][0, n_short:] == 0).all()
    assert torch.equal(out["pixel_values"], processor.image_processor(images())["pixel_values"])


def test_text_only_and_images_only(processor):
    text_only = processor(text="Optic disc cupping.")
    assert "pixel_values" not in text_only and text_only["input_ids"].shape[0] == 1
    tokens = processor.tokenizer.convert_ids_to_tokens(text_only["input_ids"][0])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    image_only = processor(images=images(3))
    assert set(image_only.keys()) == {"pixel_values"} and image_only["pixel_values"].shape == (3, 3, 32, 32)
    as_numpy = processor(text=CAPTIONS, images=images(), return_tensors="np")
    assert isinstance(as_numpy["input_ids"], np.ndarray) and isinstance(as_numpy["pixel_values"], np.ndarray)
    with pytest.raises(ValueError, match="text"):
        processor()


def test_max_length_and_truncation(tokenizer):
    processor = MaskedCLIPProcessor(FundusImageProcessor(size=32), tokenizer, max_length=12)
    untruncated = tokenizer(LONG_CAPTION)["input_ids"]
    assert len(untruncated) > 77
    out = processor(text=[LONG_CAPTION, "Normal fundus."])
    assert out["input_ids"].shape == (2, 12)
    assert out["input_ids"][0, -1].item() == tokenizer.sep_token_id  # truncation keeps [SEP]
    assert out["input_ids"][0, :11].tolist() == untruncated[:11]
    assert out["attention_mask"][0].sum() == 12
    # Default processor: 77 tokens; per-call override of tokenizer arguments.
    default = MaskedCLIPProcessor(FundusImageProcessor(size=32), tokenizer)
    assert default.max_length == 77
    assert default(text=LONG_CAPTION)["input_ids"].shape == (1, 77)
    assert default(text=LONG_CAPTION, max_length=6)["input_ids"].shape == (1, 6)
    assert default(text="Normal fundus.", padding="max_length")["input_ids"].shape == (1, 77)
    with pytest.raises(ValueError, match="max_length"):
        MaskedCLIPProcessor(FundusImageProcessor(), tokenizer, max_length=0)


def test_image_kwargs_go_to_the_image_processor(processor):
    out = processor(text="Normal fundus.", images=images(1), size=48, pad_to_square=True)
    assert out["pixel_values"].shape == (1, 3, 48, 48)
    expected = FundusImageProcessor(size=48, pad_to_square=True)(images(1))["pixel_values"]
    assert torch.equal(out["pixel_values"], expected)
    assert processor.image_processor.size == 32  # not changed by the call


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"text\[0\] is empty"),
        ("   \n\t", r"text\[0\] is empty or whitespace-only"),
        (["Normal fundus.", "Drusen.", "  "], r"text\[2\] is empty"),
        ([], "empty list"),
        (["Normal fundus.", 3], r"text\[1\] must be a string"),
        (42, "string or a list"),
    ],
)
def test_bad_text_raises_value_error_naming_the_index(processor, text, message):
    with pytest.raises(ValueError, match=message):
        processor(text=text)


def test_decode_forwards_to_tokenizer(processor):
    ids = processor(text=CAPTIONS)["input_ids"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == [
        "Normal fundus.",
        "Moderate diabetic retinopathy with microaneurysms and hard exudates.",
    ]
    assert processor.decode(ids[0], skip_special_tokens=True) == "Normal fundus."


def test_default_image_processor_and_missing_tokenizer(tokenizer):
    processor = MaskedCLIPProcessor(tokenizer=tokenizer)
    assert (
        isinstance(processor.image_processor, FundusImageProcessor) and processor.image_processor.size == 224
    )
    with pytest.raises(ValueError, match="tokenizer"):
        MaskedCLIPProcessor(image_processor=FundusImageProcessor())


def test_save_and_load_round_trip(tokenizer, tmp_path):
    processor = MaskedCLIPProcessor(
        FundusImageProcessor(size=40, pad_to_square=True, crop_to_fov=True, image_mean=[0.5, 0.5, 0.5]),
        tokenizer,
        max_length=20,
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["max_length"] == 20 and saved["image_processor"]["size"] == 40
    tokenizer_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert tokenizer_config["do_lower_case"] is False  # cased vocabulary pinned in the saved files

    loaded = MaskedCLIPProcessor.from_pretrained(tmp_path)
    assert loaded.max_length == 20
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab()
    text = CAPTIONS + [LONG_CAPTION]
    original, reloaded = processor(text=text, images=images(3)), loaded(text=text, images=images(3))
    assert original.keys() == reloaded.keys()
    for key in original:
        assert torch.equal(original[key], reloaded[key]), key
    assert original["input_ids"].shape[1] == 20

    image_processor = FundusImageProcessor.from_pretrained(tmp_path)
    assert image_processor.to_dict() == processor.image_processor.to_dict()
    assert MaskedCLIPProcessor.from_pretrained(tmp_path, max_length=9).max_length == 9


def test_class_level_from_pretrained_does_not_need_the_auto_api(tokenizer, tmp_path, monkeypatch):
    processor = MaskedCLIPProcessor(FundusImageProcessor(size=36), tokenizer)
    processor.save_pretrained(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("AutoImageProcessor must not be needed")

    monkeypatch.setattr(AutoImageProcessor, "from_pretrained", refuse)
    loaded = MaskedCLIPProcessor.from_pretrained(tmp_path)
    assert loaded.image_processor.size == 36
    assert torch.equal(loaded(images=images(1))["pixel_values"], processor(images=images(1))["pixel_values"])
