"""The collapse guard: embedding-spread figures against plain computations, the window logic, and a tiny run
whose contrastive branch is forced into collapse."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from conftest import tiny_pretrain_dict

from retvlp.training import PretrainConfig, pretrain
from retvlp.training.collapse import (
    CollapseGuard,
    ContrastiveCollapseError,
    ContrastiveTerm,
    embedding_spread,
    label_guided_floor,
)
from retvlp.training.config import ConfigError


def test_embedding_spread_matches_a_plain_computation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5)) + 2.0  # a shared offset: clearly positive mean cosine
    e = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = e @ e.T
    mean_cosine = cos[~np.eye(7, dtype=bool)].mean()
    s = np.linalg.svd(e, compute_uv=False)
    p = s / s.sum()
    rank = math.exp(-(p * np.log(p)).sum())
    got = embedding_spread(torch.tensor(x, dtype=torch.float32) * 3.0)  # scale does not matter
    assert got["mean_cosine"] == pytest.approx(mean_cosine, abs=1e-5)
    assert got["dim_std"] == pytest.approx(e.std(axis=0, ddof=1).mean(), abs=1e-5)
    assert got["effective_rank"] == pytest.approx(rank, abs=1e-4)


def test_embedding_spread_of_a_constant_and_of_an_orthonormal_batch():
    constant = embedding_spread(torch.ones(6, 4))
    assert constant["mean_cosine"] == pytest.approx(1.0)
    assert constant["dim_std"] == pytest.approx(0.0, abs=1e-7)
    assert constant["effective_rank"] == pytest.approx(1.0, abs=1e-5)
    basis = embedding_spread(torch.eye(4))
    assert basis["mean_cosine"] == pytest.approx(0.0, abs=1e-7)
    assert basis["effective_rank"] == pytest.approx(4.0, abs=1e-5)


def test_label_guided_floor_by_hand():
    # Labels [0, 0, 0, 1]: |P| = 3, 3, 3, 1 → mean ln|P| = 3·ln 3 / 4.
    labels = torch.tensor([0, 0, 0, 1])
    positives = labels[:, None] == labels[None, :]
    assert label_guided_floor(positives) == pytest.approx(3 * math.log(3) / 4)
    assert label_guided_floor(torch.eye(5, dtype=torch.bool)) == 0.0


def _term(value, image, text):
    return ContrastiveTerm("loss_clip", value, image, text, floor=0.0)


def _healthy():
    return _term(1.0, torch.eye(8), torch.eye(8))


def _collapsed():
    return _term(math.log(8), torch.eye(8), torch.ones(8, 8))


def test_guard_warns_once_after_a_full_window(caplog):
    guard = CollapseGuard(action="warn", window=3, knobs="lower optim.lr")
    with caplog.at_level(logging.WARNING, logger="retvlp.training.collapse"):
        guard.update(10, [_collapsed()])
        guard.update(20, [_healthy()])  # a healthy step resets the window
        for step in (30, 40):
            assert "collapse/warned" not in guard.update(step, [_collapsed()])
        figures = guard.update(50, [_collapsed()])
        guard.update(60, [_collapsed()])
    assert figures["collapse/warned"] == 1 and figures["collapse/streak"] == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "steps 30–50" in warnings[0] and "text embeddings nearly constant" in warnings[0]
    assert "ln(B = 8)" in warnings[0] and "lower optim.lr" in warnings[0]
    assert figures["loss_clip/over_ln_batch"] == pytest.approx(1.0)
    assert figures["loss_clip/text_mean_cosine"] == pytest.approx(1.0)
    assert figures["loss_clip/image_mean_cosine"] == pytest.approx(0.0, abs=1e-6)


def test_guard_stop_raises_and_off_only_records():
    stopping = CollapseGuard(action="stop", window=2)
    stopping.update(1, [_collapsed()])
    with pytest.raises(ContrastiveCollapseError, match="run.collapse_guard: stop"):
        stopping.update(2, [_collapsed()])
    quiet = CollapseGuard(action="off", window=1)
    assert quiet.update(1, [_collapsed()])["collapse/streak"] == 1
    grace = CollapseGuard(action="stop", window=1, grace_steps=5)
    grace.update(4, [_collapsed()])  # inside the grace period: no stop
    with pytest.raises(ContrastiveCollapseError):
        grace.update(5, [_collapsed()])


def _run_config(tmp_path, synthetic, name, **run):
    # lr 0: the from-scratch BERT's [CLS] state is the same for every text at init (cos 1.0000), and stays so.
    raw = tiny_pretrain_dict(
        tmp_path,
        synthetic,
        name,
        optim={"lr": 0.0, "max_steps": 4, "warmup_steps": 0, "gradient_accumulation_steps": 1},
        run={"collapse_window": 2, **run},
    )
    raw["model"]["config"]["text_pooling"] = "cls"
    return PretrainConfig.from_dict(raw, source="test")


def test_a_forced_collapse_stops_the_run_with_its_figures_logged(tmp_path, synthetic):
    config = _run_config(tmp_path, synthetic, "stop", collapse_guard="stop")
    with pytest.raises(ContrastiveCollapseError, match="text embeddings nearly constant") as caught:
        pretrain(config, show_progress=False)
    assert "optimizer steps 1–2" in str(caught.value) and "text_pooling" in str(caught.value)
    logs = [json.loads(line) for line in (tmp_path / "stop" / "logs.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logs] == [1, 2]
    assert logs[-1]["loss_clip/text_mean_cosine"] > 0.999
    assert logs[-1]["loss_clip/ln_batch"] == pytest.approx(math.log(4))
    assert logs[-1]["collapse/streak"] == 2


def test_a_forced_collapse_warns_once_and_trains_on(tmp_path, synthetic, caplog):
    config = _run_config(tmp_path, synthetic, "warn")
    with caplog.at_level(logging.WARNING, logger="retvlp.training.collapse"):
        result = pretrain(config, show_progress=False)
    assert result.steps == 4
    assert len([r for r in caplog.records if "Contrastive collapse" in r.getMessage()]) == 1


def test_guard_config_is_checked(tmp_path, synthetic):
    for bad in ({"collapse_guard": "panic"}, {"collapse_window": 0}, {"collapse_cosine": 1.5}):
        raw = tiny_pretrain_dict(tmp_path, synthetic, run=bad)
        with pytest.raises(ConfigError, match="run.collapse"):
            PretrainConfig.from_dict(raw, source="test")
