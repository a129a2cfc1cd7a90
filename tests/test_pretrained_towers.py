"""Each tower from where the run says, for both dual-encoder families: `model.vision_pretrained` alone,
`model.text_pretrained` alone, both or neither, next to `model.config` (what is built fresh); a pretrained
tower's size comes from its checkpoint, and a `model.config` that contradicts it is refused by name before any
data is read. The same through `from_vision_text_pretrained`. All towers are tiny local folders (offline)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_HEADS, TINY_VISION, tiny_pretrain_dict
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    ResNetConfig,
    ResNetModel,
    ViTMAEConfig,
    ViTMAEForPreTraining,
)

from retvlp import KeepFitForPreTraining, MaskedCLIPForPreTraining
from retvlp.common.modeling_common import PretrainedTowerError
from retvlp.maskedclip.configuration_maskedclip import BIO_CLINICAL_BERT_KWARGS
from retvlp.tokenization import tiny_tokenizer
from retvlp.training import ConfigError, PretrainConfig, pretrain
from retvlp.training.keepfit_task import KeepFitTask
from retvlp.training.maskedclip_task import MaskedCLIPTask, model_config
from retvlp.training.task import tokenizer_source

REPO = Path(__file__).resolve().parents[1]
# The checkpoints' towers, and other sizes for the towers built fresh (so a test can tell which is which).
CHECKPOINT_BERT = dict(
    hidden_size=24,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    max_position_embeddings=80,
)
FRESH_TEXT = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=40,
    max_position_embeddings=80,
)
CHECKPOINT_RESNET = dict(
    embedding_size=16, hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1], layer_type="bottleneck"
)
FRESH_RESNET = dict(
    model_type="resnet",
    embedding_size=8,
    hidden_sizes=[8, 16, 16, 32],
    depths=[1, 1, 1, 1],
    layer_type="bottleneck",
)
KEEPFIT_HEADS = dict(projection_dim=16, codebook_size=32, code_dim=8)
CASES = {"neither": (False, False), "vision": (True, False), "text": (False, True), "both": (True, True)}


def _randomized(module):
    """Weights far from any initialisation, so that a loaded tower cannot pass for a fresh one."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_()
    return module


def _assert_equal_states(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(3)
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(root / "tokenizer")
    mae = _randomized(ViTMAEForPreTraining(ViTMAEConfig(**TINY_VISION, layer_norm_eps=1e-6)))
    mae.save_pretrained(root / "mae")
    bert = _randomized(
        BertModel(BertConfig(vocab_size=len(tokenizer), **CHECKPOINT_BERT), add_pooling_layer=False)
    )
    bert.save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")  # a checkpoint folder with its tokenizer, as on the Hub
    bert.save_pretrained(root / "bert_without_tokenizer")
    resnet = _randomized(ResNetModel(ResNetConfig(**CHECKPOINT_RESNET)))
    resnet.save_pretrained(root / "resnet")
    return SimpleNamespace(root=root, tokenizer=tokenizer, mae=mae, bert=bert, resnet=resnet)


def _paths(towers, family, case):
    use_vision, use_text = CASES[case]
    vision = (towers.root / ("mae" if family == "maskedclip" else "resnet")) if use_vision else None
    text = towers.root / "bert" if use_text else None
    return (None if vision is None else str(vision)), (None if text is None else str(text))


def _check_towers(model, family, case, towers, fresh):
    """Loaded towers hold the checkpoint's weights and sizes; fresh ones are those of `fresh` (the same config
    built under the same seed: initialised as configured)."""
    use_vision, use_text = CASES[case]
    released = model.released_model
    config = model.config
    if family == "maskedclip":
        expected_vision = (
            towers.mae.vit.state_dict() if use_vision else fresh.released_model.vision_model.state_dict()
        )
        _assert_equal_states(released.vision_model.state_dict(), expected_vision)
        _assert_equal_states(
            model.momentum_vision_model.state_dict(), expected_vision
        )  # the teacher starts as E_I
        assert config.vision_config.hidden_size == 32
    else:
        expected_vision = (
            towers.resnet.state_dict() if use_vision else fresh.released_model.vision_model.state_dict()
        )
        _assert_equal_states(released.vision_model.state_dict(), expected_vision)
        assert (
            config.vision_config.hidden_sizes
            == (CHECKPOINT_RESNET if use_vision else FRESH_RESNET)["hidden_sizes"]
        )
    expected_text = towers.bert.state_dict() if use_text else fresh.released_model.text_model.state_dict()
    _assert_equal_states(released.text_model.state_dict(), expected_text)
    assert config.text_config.hidden_size == (CHECKPOINT_BERT if use_text else FRESH_TEXT)["hidden_size"]
    assert (
        config.text_config.num_hidden_layers
        == (CHECKPOINT_BERT if use_text else FRESH_TEXT)["num_hidden_layers"]
    )


# ------------------------------------------------------------------------------------------------ classmethods
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", ["maskedclip", "keepfit"])
def test_from_vision_text_pretrained_takes_each_tower_from_where_it_is_given(towers, family, case):
    vision_path, text_path = _paths(towers, family, case)
    text_config = {**FRESH_TEXT, "vocab_size": len(towers.tokenizer)} if text_path is None else None
    if family == "maskedclip":
        cls, kwargs = MaskedCLIPForPreTraining, dict(TINY_HEADS)
        # With a checkpoint, vision_config may only set what does not shape E_I: here the pixel decoder's size.
        decoder = {k: v for k, v in TINY_VISION.items() if k.startswith("decoder_")}
        vision_config = dict(TINY_VISION) if vision_path is None else decoder
    else:
        cls, kwargs = KeepFitForPreTraining, dict(KEEPFIT_HEADS)
        vision_config = dict(FRESH_RESNET) if vision_path is None else None
    torch.manual_seed(0)
    model = cls.from_vision_text_pretrained(
        vision_path, text_path, vision_config=vision_config, text_config=text_config, **kwargs
    )
    torch.manual_seed(0)
    fresh = cls(model.config)
    assert type(model) is cls
    _check_towers(model, family, case, towers, fresh)
    if case == "neither":
        _assert_equal_states(model.state_dict(), fresh.state_dict())
    if family == "maskedclip" and vision_path is not None:  # the MAE decoder, asked for at its own size
        _assert_equal_states(model.pixel_decoder.state_dict(), towers.mae.decoder.state_dict())
    # the config alone, without weights, is the same
    assert (
        cls.config_from_pretrained_towers(
            vision_path, text_path, vision_config=vision_config, text_config=text_config, **kwargs
        ).to_dict()
        == model.config.to_dict()
    )


def test_a_tower_setting_that_contradicts_its_checkpoint_is_named(towers):
    bert, resnet, mae = (str(towers.root / name) for name in ("bert", "resnet", "mae"))
    with pytest.raises(PretrainedTowerError) as error:
        MaskedCLIPForPreTraining.from_vision_text_pretrained(
            None,
            bert,
            vision_config=dict(TINY_VISION),
            text_config={"hidden_size": 64, "num_hidden_layers": 2},  # the second restates the checkpoint's
            **TINY_HEADS,
        )
    message = str(error.value)
    assert "config.text_config.hidden_size is 64, the checkpoint has 24" in message
    assert "num_hidden_layers" not in message
    assert "remove config.text_config.hidden_size (or set it to the checkpoint's value)" in message
    assert "leave out text_model_name_or_path" in message
    # A config object states the values that differ from its class's defaults.
    with pytest.raises(
        PretrainedTowerError, match=r"text_config\.hidden_size is 64, the checkpoint has 24\. "
    ):
        MaskedCLIPForPreTraining.config_from_pretrained_towers(
            None, bert, vision_config=dict(TINY_VISION), text_config=BertConfig(hidden_size=64), **TINY_HEADS
        )
    # Every disagreement at once; the image and patch size shape E_I too.
    with pytest.raises(
        PretrainedTowerError, match=r"image_size is 64, the checkpoint has 32; .*patch_size is 16"
    ):
        MaskedCLIPForPreTraining.config_from_pretrained_towers(
            mae, None, vision_config={"image_size": 64, "patch_size": 16}, **TINY_HEADS
        )
    # Regularisation and what is built around the tower may differ: applied.
    built = MaskedCLIPForPreTraining.config_from_pretrained_towers(
        mae,
        bert,
        vision_config={
            "mask_ratio": 0.5,
            "drop_path_rate": 0.1,
            "decoder_num_hidden_layers": 2,
            "hidden_size": 32,
        },
        text_config={"hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.2, "hidden_size": 24},
        **TINY_HEADS,
    )
    assert built.vision_config.mask_ratio == 0.5 and built.vision_config.drop_path_rate == 0.1
    assert built.vision_config.decoder_num_hidden_layers == 2
    assert (
        built.text_config.hidden_dropout_prob == 0.3 and built.text_config.attention_probs_dropout_prob == 0.2
    )
    with pytest.raises(
        PretrainedTowerError,
        match=r"vision_config\.hidden_sizes is \[8, 16, 16, 32\], the checkpoint has \[16, 32, 32, 64\]",
    ):
        KeepFitForPreTraining.config_from_pretrained_towers(
            resnet, None, vision_config=FRESH_RESNET, **KEEPFIT_HEADS
        )
    # A checkpoint of the wrong kind, or none at all.
    with pytest.raises(
        PretrainedTowerError,
        match=r"text_model_name_or_path=.*is a 'resnet' checkpoint; the text tower takes bert",
    ):
        KeepFitForPreTraining.config_from_pretrained_towers(None, resnet, **KEEPFIT_HEADS)
    with pytest.raises(PretrainedTowerError, match=r"is a 'bert' checkpoint; the vision tower takes vit_mae"):
        MaskedCLIPForPreTraining.config_from_pretrained_towers(bert, None, **TINY_HEADS)
    with pytest.raises(
        PretrainedTowerError, match=r"vision_model_name_or_path=.*missing.*cannot read its config"
    ):
        MaskedCLIPForPreTraining.config_from_pretrained_towers(str(towers.root / "missing"), None)


# ------------------------------------------------------------------------------------------------ run files
def _run_dict(tmp_path, synthetic, family, towers, case, **sections):
    """A tiny run file of `family` with the towers of `case` from the local checkpoints."""
    vision_path, text_path = _paths(towers, family, case)
    raw = tiny_pretrain_dict(tmp_path, synthetic, f"{family}-{case}", **sections)
    config = (
        {"vision_config": dict(TINY_VISION), **TINY_HEADS}
        if family == "maskedclip"
        else {"vision_config": dict(FRESH_RESNET), **KEEPFIT_HEADS}
    )
    if vision_path is not None:
        config.pop("vision_config")
    if text_path is None:
        config["text_config"] = dict(FRESH_TEXT)
    raw["model"] = {"family": family, "max_text_length": 32, "config": config}
    if vision_path is not None:
        raw["model"]["vision_pretrained"] = vision_path
    if text_path is not None:
        raw["model"]["text_pretrained"] = text_path  # the tokenizer: the checkpoint folder's
    else:
        raw["model"]["tokenizer"] = str(towers.root / "tokenizer")
    if family == "keepfit":
        del raw["maskedclip"]
        raw["keepfit"] = {"categorical_batch_size": 3, "paired_batch_size": 3}
    return raw


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", ["maskedclip", "keepfit"])
def test_a_run_file_takes_each_tower_from_where_it_says(tmp_path, synthetic, towers, family, case):
    config = PretrainConfig.from_dict(_run_dict(tmp_path, synthetic, family, towers, case))
    task = MaskedCLIPTask() if family == "maskedclip" else KeepFitTask()
    task.check_model(config)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(config))
    assert tokenizer.get_vocab() == towers.tokenizer.get_vocab()
    torch.manual_seed(0)
    model = task.build_model(config, tokenizer)
    torch.manual_seed(0)
    fresh = type(model)(model.config)
    _check_towers(model, family, case, towers, fresh)
    assert model.config.text_config.vocab_size == len(tokenizer)
    if case == "neither":  # as before towers could be given alone: the model of model.config, seed for seed
        _assert_equal_states(model.state_dict(), fresh.state_dict())


def test_the_run_names_the_key_both_values_and_the_fix_before_reading_any_data(tmp_path, synthetic, towers):
    raw = _run_dict(tmp_path, synthetic, "maskedclip", towers, "text")
    raw["model"]["config"]["text_config"] = {"hidden_size": 64}
    raw["data"]["train"] = [{"path": str(tmp_path / "never_read.csv")}]  # the model check comes first
    with pytest.raises(ConfigError) as error:
        pretrain(PretrainConfig.from_dict(raw), show_progress=False)
    message = str(error.value)
    assert f"model.text_pretrained={str(towers.root / 'bert')!r} supplies the text tower" in message
    assert "model.config.text_config.hidden_size is 64, the checkpoint has 24" in message
    assert (
        "remove model.config.text_config.hidden_size" in message
        and "leave out model.text_pretrained" in message
    )

    raw = _run_dict(tmp_path, synthetic, "keepfit", towers, "vision")
    raw["model"]["config"]["vision_config"] = dict(FRESH_RESNET)
    raw["data"]["train"] = [{"path": str(tmp_path / "never_read.csv")}]
    with pytest.raises(
        ConfigError, match=r"model\.config\.vision_config\.embedding_size is 8, the checkpoint has 16"
    ):
        pretrain(PretrainConfig.from_dict(raw), show_progress=False)


def test_a_pretrained_vit_must_match_the_image_size(tmp_path, synthetic, towers):
    raw = _run_dict(tmp_path, synthetic, "maskedclip", towers, "vision")
    raw["data"]["image_size"] = 64
    with pytest.raises(
        ConfigError, match=r"model\.vision_pretrained=.* is a ViT for image_size=32, but data\.image_size=64"
    ):
        MaskedCLIPTask().check_model(PretrainConfig.from_dict(raw))


def test_the_tokenizer_comes_from_the_text_checkpoint_or_is_asked_for(tmp_path, synthetic, towers):
    raw = _run_dict(tmp_path, synthetic, "maskedclip", towers, "text")
    assert tokenizer_source(PretrainConfig.from_dict(raw)) == str(towers.root / "bert")
    raw["model"]["tokenizer"] = str(towers.root / "tokenizer")  # an explicit tokenizer wins
    assert tokenizer_source(PretrainConfig.from_dict(raw)) == str(towers.root / "tokenizer")
    raw["model"]["tokenizer"] = None
    raw["model"]["text_pretrained"] = str(towers.root / "bert_without_tokenizer")
    with pytest.raises(
        ConfigError,
        match=r"model\.text_pretrained=.*bert_without_tokenizer.*holds none.*set model\.tokenizer",
    ):
        MaskedCLIPTask().check_model(PretrainConfig.from_dict(raw))
    raw["model"]["tokenizer"] = "build"  # a new vocabulary cannot feed a pretrained text tower
    with pytest.raises(ConfigError, match=r"model\.tokenizer: build trains a new vocabulary"):
        PretrainConfig.from_dict(raw)


@pytest.fixture(scope="module")
def mlm_final(tmp_path_factory, synthetic):
    """The package's own text-MLM stage, two steps on the synthetic captions: a BertForMaskedLM + tokenizer."""
    tmp_path = tmp_path_factory.mktemp("text_mlm")
    raw = {
        "model": {"family": "text-mlm", "tokenizer": "build", "tokenizer_vocab_size": 150, "max_text_length": 32,
                  "config": dict(CHECKPOINT_BERT)},
        "data": {"train": [{"path": str(synthetic.paired), "text_column": "text"}]},
        "text-mlm": {"text_batch_size": 4},
        "optim": {"lr": 1e-3, "max_steps": 2, "warmup_steps": 0},
        "run": {"output_dir": str(tmp_path / "mlm"), "save_every": 2, "tensorboard": False, "num_threads": 1},
    }  # fmt: skip
    return pretrain(PretrainConfig.from_dict(raw), show_progress=False).final_dir


def test_a_maskedclip_run_starts_from_a_text_mlm_output_alone(tmp_path, synthetic, mlm_final):
    """The paper's shape at tiny size: E_I from scratch, E_T (and its tokenizer) from the text-MLM stage."""
    raw = tiny_pretrain_dict(
        tmp_path, synthetic, optim={"max_steps": 2, "warmup_steps": 0, "gradient_accumulation_steps": 1},
        run={"save_every": 2},
    )  # fmt: skip
    raw["model"] = {
        "text_pretrained": str(mlm_final),
        "max_text_length": 32,
        "config": {"vision_config": dict(TINY_VISION), **TINY_HEADS},
    }
    config = PretrainConfig.from_dict(raw)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(config))
    model = MaskedCLIPTask().build_model(config, tokenizer)
    trained = BertForMaskedLM.from_pretrained(mlm_final).bert.state_dict()
    for key, value in model.maskedclip.text_model.state_dict().items():
        assert torch.equal(value, trained[key]), key  # the MLM head and BERT's pooler are left behind

    result = pretrain(config, show_progress=False)
    assert result.steps == 2
    final = MaskedCLIPForPreTraining.from_pretrained(result.final_dir).config
    assert final.text_config.hidden_size == CHECKPOINT_BERT["hidden_size"]
    assert final.vision_config.hidden_size == TINY_VISION["hidden_size"]
    assert AutoTokenizer.from_pretrained(result.final_dir).get_vocab() == tokenizer.get_vocab()


def test_the_paper_recipe_builds_a_vit_l_from_scratch_around_bio_clinicalbert(tmp_path):
    config = PretrainConfig.from_yaml(REPO / "training/configs/maskedclip_vitl16.yaml")
    m, settings, optim = config.model, config.family_settings, config.optim
    assert m.text_pretrained == "emilyalsentzer/Bio_ClinicalBERT"
    assert m.vision_pretrained is None and m.pretrained is None and m.tokenizer is None  # Bio_ClinicalBERT's
    assert config.data.image_size == 224
    assert 4 * settings.paired_batch_size == 720 and 4 * settings.unpaired_batch_size == 720  # 4 GPUs
    assert optim.gradient_accumulation_steps == 1
    assert optim.lr == 1.5e-4 and optim.epochs == 200 and optim.warmup_epochs == 40
    assert optim.schedule == "cosine"
    # Offline, a folder with Bio_ClinicalBERT's config.json stands in for the Hub id (no weights needed).
    BertConfig(**BIO_CLINICAL_BERT_KWARGS).save_pretrained(tmp_path / "bio_clinicalbert")
    m.text_pretrained = str(tmp_path / "bio_clinicalbert")
    built = model_config(config, vocab_size=None)
    vision = built.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size) == (
        1024, 24, 16, 4096,
    )  # fmt: skip
    assert (vision.patch_size, vision.image_size, vision.mask_ratio) == (16, 224, 0.75)
    assert (built.text_config.hidden_size, built.text_config.vocab_size) == (768, 28996)
    assert built.text_pooling == "cls" and built.lambda_clip == built.lambda_mfd == 0.01
