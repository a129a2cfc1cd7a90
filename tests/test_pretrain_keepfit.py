"""The KeepFIT V2 and IBQ-tokenizer modes of the pretraining loop: two 1:1 streams, the frozen codebook taken
from a trained tokenizer, exact resume, the text-pretraining init, and data-routing errors."""

import json

import pytest
import torch
from conftest import fit_warmup, tiny_pretrain_dict
from safetensors.torch import load_file

from retvlp import KeepFitForPreTraining, KeepFitModel
from retvlp.training import PretrainConfig, pretrain
from retvlp.training.checkpointing import latest_checkpoint

TINY_RESNET = {
    "model_type": "resnet",
    "embedding_size": 16,
    "hidden_sizes": [16, 32, 32, 64],
    "depths": [1, 1, 1, 1],
    "layer_type": "bottleneck",
}
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
TINY_IBQ = {
    "base_channels": 8,
    "channel_multipliers": [1, 2],
    "num_res_blocks": 1,
    "num_mid_res_blocks": 1,
    "norm_num_groups": 4,
    "codebook_size": 32,
    "code_dim": 8,
}


def keepfit_dict(tmp_path, synthetic, name="keepfit", model_config=None, **sections):
    raw = tiny_pretrain_dict(tmp_path, synthetic, name)
    raw["model"] = {
        "family": "keepfit",
        "tokenizer": "build",
        "tokenizer_vocab_size": 300,
        "max_text_length": 48,
        "config": {
            "vision_config": dict(TINY_RESNET),
            "text_config": dict(TINY_BERT),
            "projection_dim": 16,
            "codebook_size": 32,
            "code_dim": 8,
            **(model_config or {}),
        },
    }
    del raw["maskedclip"]  # a KeepFIT run file may not have MaskedCLIP's section
    raw["keepfit"] = {"categorical_batch_size": 3, "paired_batch_size": 3}
    raw["data"].update(pad_to_square=True)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return fit_warmup(raw)


def ibq_dict(tmp_path, synthetic, name="ibq", **sections):
    raw = tiny_pretrain_dict(tmp_path, synthetic, name)
    raw["model"] = {"family": "ibq-tokenizer", "config": dict(TINY_IBQ)}
    del raw["maskedclip"]
    raw["ibq-tokenizer"] = {"image_batch_size": 4}
    raw["optim"].update(max_steps=2, gradient_accumulation_steps=1)
    raw["run"].update(save_every=2)
    for section, values in sections.items():
        raw[section].update(values)
    return fit_warmup(raw)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, synthetic):
    tmp_path = tmp_path_factory.mktemp("ibq")
    result = pretrain(PretrainConfig.from_dict(ibq_dict(tmp_path, synthetic)), show_progress=False)
    return result.final_dir


def test_ibq_tokenizer_mode_trains_on_every_role_and_saves_a_loadable_tokenizer(tokenizer_dir):
    from transformers import AutoModel

    logs = [json.loads(line) for line in (tokenizer_dir.parent / "logs.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logs] == [1, 2]
    for key in ("loss", "reconstruction_loss", "quantization_loss", "codebook_usage", "perplexity"):
        assert key in logs[-1]
    summary = json.loads((tokenizer_dir / "training_summary.json").read_text())
    assert summary["unused_rows_by_role"] == {}
    tokenizer = AutoModel.from_pretrained(tokenizer_dir)
    assert tokenizer.get_codebook().shape == (32, 8)


def test_keepfit_trains_with_the_frozen_codebook_of_a_trained_tokenizer(tmp_path, synthetic, tokenizer_dir):
    raw = keepfit_dict(tmp_path, synthetic, model_config={"ibq_tokenizer_path": str(tokenizer_dir)})
    result = pretrain(PretrainConfig.from_dict(raw), show_progress=False)

    codebook = load_file(tokenizer_dir / "model.safetensors")["quantizer.codebook"]
    at_3 = load_file(result.output_dir / "checkpoint-3" / "model.safetensors")
    at_6 = load_file(result.output_dir / "checkpoint-6" / "model.safetensors")
    # Between optimizer steps 3 and 6 the 1×1 conv trains while the codebook stays the tokenizer's, bit for bit.
    assert torch.equal(at_3["appearance_quantizer.codebook"], codebook)
    assert torch.equal(at_6["appearance_quantizer.codebook"], codebook)
    assert not torch.equal(at_3["appearance_quantizer.proj.weight"], at_6["appearance_quantizer.proj.weight"])
    # final/ is the released dual encoder: no knowledge modules, no codebook; its config keeps the tokenizer path
    final = load_file(result.final_dir / "model.safetensors")
    assert not any(k.startswith(("appearance_", "semantic_")) for k in final)
    model = KeepFitModel.from_pretrained(result.final_dir)
    assert set(final) == set(model.state_dict())
    assert model.config.ibq_tokenizer_path == str(tokenizer_dir)
    # ... so pretraining that continues from final/ takes the same frozen codebook again
    from transformers import AutoTokenizer

    from retvlp.training.keepfit_task import KeepFitTask

    continued_raw = keepfit_dict(tmp_path, synthetic, "continued")
    continued_raw["model"] = {"family": "keepfit", "pretrained": str(result.final_dir), "max_text_length": 48}
    continued = KeepFitTask().build_model(
        PretrainConfig.from_dict(continued_raw), AutoTokenizer.from_pretrained(result.final_dir)
    )
    assert type(continued) is KeepFitForPreTraining
    assert torch.equal(continued.appearance_quantizer.codebook, codebook)
    for key, value in model.state_dict().items():
        assert torch.equal(continued.keepfit.state_dict()[key], value), key

    logs = [json.loads(line) for line in (result.output_dir / "logs.jsonl").read_text().splitlines()]
    for key in ("loss_itc_categorical", "loss_itc_elite", "loss_semantic", "loss_appearance", "logit_scale"):
        assert key in logs[-1]
    summary = json.loads((result.final_dir / "training_summary.json").read_text())
    unused = summary["unused_rows_by_role"]
    assert set(unused) == {"unpaired"} and unused["unpaired"] > 0  # KeepFIT has no image-only stream: counted


def test_keepfit_resume_is_bit_identical(tmp_path, synthetic):
    straight = pretrain(
        PretrainConfig.from_dict(keepfit_dict(tmp_path, synthetic, "straight")), show_progress=False
    )
    raw = keepfit_dict(tmp_path, synthetic, "resumed")
    pretrain(PretrainConfig.from_dict(raw), show_progress=False, stop_after=3)
    assert latest_checkpoint(tmp_path / "resumed").name == "checkpoint-3"
    resumed = pretrain(PretrainConfig.from_dict(raw), resume="latest", show_progress=False)
    a = load_file(latest_checkpoint(straight.output_dir) / "model.safetensors")
    b = load_file(latest_checkpoint(resumed.output_dir) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_keepfit_text_encoder_starts_from_the_text_mlm_output(tmp_path, synthetic):
    """The textual-pretraining init: a real `text-mlm` run's final/ becomes KeepFIT's E_t, weight for weight;
    the vision tower comes from a saved ResNet the same way."""
    from transformers import BertForMaskedLM, ResNetConfig, ResNetModel

    mlm_raw = {
        "model": {"family": "text-mlm", "tokenizer": "build", "tokenizer_vocab_size": 150, "max_text_length": 32,
                  "config": dict(TINY_BERT)},
        "data": {"train": [{"path": str(synthetic.paired), "text_column": "text"}]},
        "text-mlm": {"text_batch_size": 4},
        "optim": {"lr": 1e-3, "max_steps": 3, "warmup_steps": 0},
        "run": {"output_dir": str(tmp_path / "mlm"), "save_every": 3, "tensorboard": False, "num_threads": 1},
    }  # fmt: skip
    mlm_dir = pretrain(PretrainConfig.from_dict(mlm_raw), show_progress=False).final_dir
    vision_dir = tmp_path / "resnet"
    vision = ResNetModel(ResNetConfig(**{k: v for k, v in TINY_RESNET.items() if k != "model_type"}))
    vision.save_pretrained(vision_dir)

    raw = keepfit_dict(tmp_path, synthetic, optim={"max_steps": 1, "gradient_accumulation_steps": 1})
    raw["model"] = {
        "family": "keepfit",
        "vision_pretrained": str(vision_dir),
        "text_pretrained": str(mlm_dir),
        "max_text_length": 32,
        "config": {"projection_dim": 16, "codebook_size": 32, "code_dim": 8},
    }
    from transformers import AutoTokenizer

    from retvlp.training.keepfit_task import KeepFitTask

    config = PretrainConfig.from_dict(raw)
    tokenizer = AutoTokenizer.from_pretrained(mlm_dir)  # what the trainer loads: model.text_pretrained's
    model = KeepFitTask().build_model(config, tokenizer)
    trained = BertForMaskedLM.from_pretrained(mlm_dir).bert.state_dict()
    assert type(model) is KeepFitForPreTraining
    for key, value in model.released_model.text_model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    for key, value in model.released_model.vision_model.state_dict().items():
        assert torch.equal(value, vision.state_dict()[key]), key


def test_keepfit_without_elite_pairs_names_the_missing_stream(tmp_path, synthetic):
    raw = keepfit_dict(tmp_path, synthetic)
    raw["data"]["train"] = [{"path": str(synthetic.categorical)}]
    with pytest.raises(ValueError, match=r"paired.*roles"):
        pretrain(PretrainConfig.from_dict(raw), show_progress=False)


def test_keepfit_needs_both_batch_sizes(tmp_path, synthetic):
    from retvlp.training import ConfigError

    raw = keepfit_dict(tmp_path, synthetic)
    raw["keepfit"]["paired_batch_size"] = 0
    with pytest.raises(ConfigError, match=r"categorical_batch_size and keepfit\.paired_batch_size"):
        PretrainConfig.from_dict(raw)


def test_an_invalid_model_config_is_a_config_error_naming_the_field(tmp_path, synthetic):
    from retvlp.training import ConfigError

    raw = keepfit_dict(tmp_path, synthetic, model_config={"text_pooling": "max"})
    with pytest.raises(ConfigError, match=r"(?s)model\.config.*text_pooling"):
        pretrain(PretrainConfig.from_dict(raw), show_progress=False)


def test_from_vision_text_pretrained_takes_both_towers_and_the_codebook(tmp_path, tokenizer_dir):
    """The Hub-loading constructor on local directories: ResNet weights, BERT weights from a BertForMaskedLM
    (MLM output) directory, and the IBQ codebook from a tokenizer directory."""
    from transformers import BertConfig, BertForMaskedLM, ResNetConfig, ResNetModel

    torch.manual_seed(5)
    vision = ResNetModel(ResNetConfig(**{k: v for k, v in TINY_RESNET.items() if k != "model_type"}))
    vision.save_pretrained(tmp_path / "resnet")
    mlm = BertForMaskedLM(BertConfig(vocab_size=90, **TINY_BERT))
    mlm.save_pretrained(tmp_path / "mlm")
    model = KeepFitForPreTraining.from_vision_text_pretrained(
        str(tmp_path / "resnet"),
        str(tmp_path / "mlm"),
        ibq_tokenizer_path=str(tokenizer_dir),
        projection_dim=16,
        codebook_size=32,
        code_dim=8,
    )
    assert type(model) is KeepFitForPreTraining
    for key, value in vision.state_dict().items():
        assert torch.equal(model.keepfit.vision_model.state_dict()[key], value), key
    for key, value in mlm.bert.state_dict().items():
        assert torch.equal(model.keepfit.text_model.state_dict()[key], value), key
    codebook = load_file(tokenizer_dir / "model.safetensors")["quantizer.codebook"]
    assert torch.equal(model.appearance_quantizer.codebook, codebook)
    assert model.config.ibq_tokenizer_path == str(tokenizer_dir)
