"""optim.logit_scale_lr_multiplier: the contrastive temperature (and a sigmoid loss's bias) in an optimizer group of
its own at a multiple of the learning rate; 1 leaves the groups as they were."""

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_pretrain_dict

from retvlp.training import PretrainConfig, pretrain
from retvlp.training.config import ConfigError
from retvlp.training.trainer import temperature_group


class TwoTower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3, 3))
        self.norm_bias = torch.nn.Parameter(torch.zeros(3))
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.0))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))


def groups_of(model):
    return [
        {"params": [model.weight], "weight_decay": 0.05},
        {"params": [model.norm_bias, model.logit_scale, model.logit_bias], "weight_decay": 0.0},
    ]


def test_multiplier_one_leaves_the_groups_alone():
    model = TwoTower()
    groups = groups_of(model)
    assert temperature_group(groups, model, 1e-3, SimpleNamespace(logit_scale_lr_multiplier=1.0)) is groups


def test_temperature_moves_multiplier_times_further_in_one_adam_step():
    model = TwoTower()
    groups = temperature_group(groups_of(model), model, 1e-3, SimpleNamespace(logit_scale_lr_multiplier=30.0))
    assert [len(g["params"]) for g in groups] == [1, 1, 2]
    assert groups[-1]["lr"] == pytest.approx(3e-2) and groups[-1]["weight_decay"] == 0.0
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    (model.weight.sum() + model.norm_bias.sum() + model.logit_scale + model.logit_bias).backward()
    optimizer.step()
    # Adam's first step moves every parameter by lr (sign of the gradient): 30 × for the temperature and the bias
    assert model.logit_scale.item() == pytest.approx(-3e-2, rel=1e-4)
    assert model.logit_bias.item() == pytest.approx(-10.0 - 3e-2, rel=1e-6)
    assert model.norm_bias[0].item() == pytest.approx(-1e-3, rel=1e-4)


def test_a_run_trains_the_temperature_at_the_multiplied_rate(tmp_path, synthetic):
    raw = tiny_pretrain_dict(tmp_path, synthetic, "fast_temperature")
    raw["optim"].update(
        max_steps=2,
        warmup_steps=0,
        gradient_accumulation_steps=1,
        schedule="constant",
        logit_scale_lr_multiplier=50.0,
    )
    # mean text pooling: the tiny tower's [CLS] texts are all equal, where the temperature gets no gradient
    raw["model"]["config"].update(
        logit_scale_init_value=1.0, text_pooling="mean"
    )  # inside the [0, ln 100] clamp
    raw["run"]["save_every"] = 2
    result = pretrain(PretrainConfig.from_dict(raw, source="test"), show_progress=False)
    logs = [json.loads(line) for line in (result.output_dir / "logs.jsonl").read_text().splitlines()]
    scales = [entry["logit_scale"] for entry in logs if "logit_scale" in entry]
    # two Adam steps of 50 × 1e-3 on τ (1 at init) move it by about ±0.1, far past the 2e-3 of lr alone
    assert abs(torch.tensor(scales[-1]).log().item() - 1.0) > 0.05


def test_a_non_positive_multiplier_is_refused():
    raw = {"model": {"family": "maskedclip"}, "data": {"train": [{"path": "rows.csv"}]}}
    raw["optim"] = {"max_steps": 1, "logit_scale_lr_multiplier": 0}
    with pytest.raises(ConfigError, match="logit_scale_lr_multiplier"):
        PretrainConfig.from_dict(raw)
