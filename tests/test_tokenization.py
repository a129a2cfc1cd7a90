"""Local WordPiece tokenizers: special tokens, case handling, determinism, offline AutoTokenizer round trip."""

import json

import pytest
from transformers import AutoTokenizer, BertTokenizerFast

from retvlp.tokenization import SPECIAL_TOKENS, TINY_CORPUS, build_wordpiece_tokenizer, tiny_tokenizer

SENTENCES = [
    "Normal fundus.",
    "Optic disc cupping suggests glaucoma.",
    "OPTIC DISC oedema; Microaneurysms and hard exudates (DR grade 2).",
    "Drusen at the macula, myopia and cataract.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_special_tokens_and_template(tokenizer):
    assert isinstance(tokenizer, BertTokenizerFast)
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id) == (0, 1)
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id) == (2, 3, 4)
    ids = tokenizer("Normal fundus.")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Normal fundus."
    assert 290 <= len(tokenizer) <= 300


def test_ascii_text_never_maps_to_unk(tokenizer):
    for text in SENTENCES + ["Zyxw QUIRKY Jargon 0123456789 !?#", "xylophone"]:
        assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text


def test_cased_vocabulary_keeps_case_distinctions(tokenizer):
    assert tokenizer.do_lower_case is False
    upper, lower = tokenizer("Optic")["input_ids"], tokenizer("optic")["input_ids"]
    assert upper != lower
    assert tokenizer.convert_ids_to_tokens(lower)[1] == "optic"
    assert tokenizer.decode(tokenizer("OPTIC Disc")["input_ids"], skip_special_tokens=True) == "OPTIC Disc"

    uncased = build_wordpiece_tokenizer(TINY_CORPUS, vocab_size=300, lowercase=True)
    assert uncased.do_lower_case is True
    assert uncased("Optic DISC")["input_ids"] == uncased("optic disc")["input_ids"]
    assert not any(
        any(c.isupper() for c in token) for token in uncased.get_vocab() if not token.startswith("[")
    )


def test_deterministic_ids(tokenizer):
    again = tiny_tokenizer()
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again(SENTENCES)["input_ids"] == tokenizer(SENTENCES)["input_ids"]
    # Pinned ids: the tokenizer must give the same ids in every process (the tokenizers trainer does not).
    ids = tokenizer("Normal fundus.")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "N", "##ormal", "fundus", ".", "[SEP]"]
    assert ids == [2, 112, 259, 244, 80, 3]
    shuffled = build_wordpiece_tokenizer(list(reversed(TINY_CORPUS)), vocab_size=300)
    assert shuffled.get_vocab() == tokenizer.get_vocab()  # order of the training sentences does not matter


def test_round_trip_with_auto_tokenizer_offline(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["do_lower_case"] is False
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert reloaded.do_lower_case is False
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded(SENTENCES)["input_ids"] == tokenizer(SENTENCES)["input_ids"]
    assert reloaded("Optic")["input_ids"] != reloaded("optic")["input_ids"]

    uncased = build_wordpiece_tokenizer(TINY_CORPUS, vocab_size=300, lowercase=True)
    uncased.save_pretrained(tmp_path / "uncased")
    reloaded_uncased = AutoTokenizer.from_pretrained(tmp_path / "uncased", local_files_only=True)
    assert reloaded_uncased(SENTENCES)["input_ids"] == uncased(SENTENCES)["input_ids"]
    assert reloaded_uncased("OPTIC")["input_ids"] == reloaded_uncased("optic")["input_ids"]


def test_vocab_size_min_frequency_and_errors():
    small = build_wordpiece_tokenizer(TINY_CORPUS, vocab_size=200)
    large = build_wordpiece_tokenizer(TINY_CORPUS, vocab_size=500)
    assert len(small) == 200 and 300 < len(large) <= 500
    assert set(small.get_vocab()) < set(large.get_vocab())
    frequent = build_wordpiece_tokenizer(TINY_CORPUS, vocab_size=1000, min_frequency=5)
    assert len(frequent) < len(large)
    with pytest.raises(ValueError, match="no non-empty sentence"):
        build_wordpiece_tokenizer(["", "   "])
    with pytest.raises(ValueError, match="single string"):
        build_wordpiece_tokenizer("Normal fundus.")
    with pytest.raises(ValueError, match="vocab_size"):
        build_wordpiece_tokenizer(TINY_CORPUS, vocab_size=3)
