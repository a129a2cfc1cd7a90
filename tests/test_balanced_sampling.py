"""Class-balanced sampling (`data.balance_classes`, beyond both papers): every label set (and the unlabelled
rows, as one set) gets an equal share of each epoch's draws, the draw depends only on (seed, epoch) — so runs
split over processes and resumed runs read the same rows —, and streams it cannot balance are refused by name."""

from collections import Counter

import numpy as np
import pytest
import torch
from conftest import tiny_pretrain_dict
from safetensors.torch import load_file

from retvlp.data.sampler import StepSampler
from retvlp.training import ConfigError, PretrainConfig, pretrain
from retvlp.training.data import StepBatches, Stream

# a clinic's imbalance: 326 : 59 : 35 : 20
GROUPS = np.repeat(np.arange(4), [326, 59, 35, 20])


def _draws(sampler: StepSampler, steps: int) -> np.ndarray:
    return np.concatenate([sampler.global_indices(step) for step in range(steps)])


def test_every_class_gets_an_equal_share_of_each_epoch():
    sampler = StepSampler(len(GROUPS), batch_size=40, seed=0, groups=GROUPS)
    epoch = sampler.permutation(0)
    assert len(epoch) == sampler.epoch_length == len(GROUPS)  # 440: already a multiple of 4
    assert Counter(GROUPS[epoch].tolist()) == {0: 110, 1: 110, 2: 110, 3: 110}
    # the 20 rows of the rarest class are all drawn (5 or 6 times each), never one left behind
    rare = Counter(epoch[GROUPS[epoch] == 3].tolist())
    assert len(rare) == 20 and set(rare.values()) <= {5, 6}
    # the large class's 326 rows are each drawn once over epochs 0-2 before any is repeated
    common = np.concatenate([sampler.permutation(e)[GROUPS[sampler.permutation(e)] == 0] for e in range(3)])
    times = Counter(common.tolist())
    assert len(times) == 326 and sorted(Counter(times.values()).items()) == [(1, 322), (2, 4)]
    assert StepSampler(10, batch_size=2, groups=[0] * 7 + [1] * 3).epoch_length == 10
    assert StepSampler(11, batch_size=2, groups=[0] * 8 + [1] * 3).epoch_length == 12


def test_balanced_batches_over_many_steps_have_equal_class_frequencies():
    sampler = StepSampler(len(GROUPS), batch_size=32, seed=3, groups=GROUPS)
    frequencies = np.bincount(GROUPS[_draws(sampler, 200)], minlength=4) / (200 * 32)
    np.testing.assert_allclose(frequencies, 0.25, atol=0.01)
    uniform = StepSampler(len(GROUPS), batch_size=32, seed=3)
    assert np.bincount(GROUPS[_draws(uniform, 200)], minlength=4)[3] / (200 * 32) < 0.06  # 20 / 440


def test_balanced_draws_depend_on_seed_and_step_only_and_split_over_processes():
    a = StepSampler(len(GROUPS), batch_size=8, seed=5, groups=GROUPS)
    b = StepSampler(len(GROUPS), batch_size=8, seed=5, groups=GROUPS)
    assert np.array_equal(a.indices(123), b.indices(123))  # a resumed sampler jumps straight to step 123
    two = StepSampler(len(GROUPS), batch_size=4, world_size=2, seed=5, groups=GROUPS)
    for step in (0, 54, 55, 200):
        assert np.array_equal(np.concatenate([two.indices(step, r) for r in (0, 1)]), a.indices(step))
    assert not np.array_equal(StepSampler(len(GROUPS), 8, seed=6, groups=GROUPS).indices(3), a.indices(3))


def test_bad_groups_are_refused():
    with pytest.raises(ValueError, match="one id per row"):
        StepSampler(10, batch_size=2, groups=np.zeros(9))
    with pytest.raises(ValueError, match="shuffle"):
        StepSampler(10, batch_size=2, shuffle=False, groups=np.zeros(10))


def _stream(name, labels):
    return Stream(name, None, np.arange(len(labels)), [None] * len(labels), labels)


def test_label_sets_are_the_groups_and_unlabelled_rows_form_their_own(caplog):
    stream = _stream("paired", [("a",), ("b", "a"), ("a", "b"), ("a",), (), ()])
    with caplog.at_level("INFO", logger="retvlp.training.data"):
        groups = stream.class_groups()
    assert groups[0] == groups[3] and groups[1] == groups[2] and groups[4] == groups[5]
    assert len(set(groups.tolist())) == 3
    assert "'paired' stream over 3 groups" in caplog.text and "'(no label)': 2" in caplog.text
    # a caption-only stream is one group: drawn uniformly, as without balancing
    captions = _stream("paired", [()] * 5)
    assert set(captions.class_groups().tolist()) == {0}
    sampler = captions.sampler(2, 1, seed=0, balance_classes=True)
    assert sorted(sampler.permutation(0).tolist()) == [0, 1, 2, 3, 4]


def test_step_batches_refuse_a_stream_they_do_not_have():
    streams = {"paired": _stream("paired", [("a",), ("b",)])}
    with pytest.raises(ValueError, match=r"names \['categorical'\].*its streams are \['paired'\]"):
        StepBatches(
            streams,
            {"paired": 2},
            rank=0,
            world_size=1,
            seed=0,
            image_mean=0.0,
            image_std=1.0,
            crop_scale=(1.0, 1.0),
            horizontal_flip=False,
            length=1,
            balance_classes=("categorical",),
        )


def test_the_config_field_is_checked(tmp_path, synthetic):
    raw = tiny_pretrain_dict(tmp_path, synthetic, "bad")
    raw["data"]["balance_classes"] = "paired"
    with pytest.raises(ConfigError, match="data.balance_classes expects a list of strings"):
        PretrainConfig.from_dict(raw, source="test")
    raw["data"]["balance_classes"] = [""]
    with pytest.raises(ConfigError, match="data.balance_classes must list stream names"):
        PretrainConfig.from_dict(raw, source="test")


def test_a_balanced_run_resumes_bit_for_bit(tmp_path, synthetic):
    def config(name):
        raw = tiny_pretrain_dict(tmp_path, synthetic, name, optim={"max_steps": 4})
        raw["data"]["balance_classes"] = ["paired"]
        raw["run"]["save_every"] = 2
        return PretrainConfig.from_dict(raw, source="test")

    straight = pretrain(config("straight"), show_progress=False)
    resumed_config = config("resumed")
    pretrain(resumed_config, show_progress=False, stop_after=2)
    resumed = pretrain(resumed_config, resume="latest", show_progress=False)
    a = load_file(str(straight.output_dir / "checkpoint-4" / "model.safetensors"))
    b = load_file(str(resumed.output_dir / "checkpoint-4" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_shard_stream_is_refused_by_name():
    stream = Stream("categorical", None, np.arange(2), [None, None], [("a",), ("b",)], shards=object())
    with pytest.raises(ValueError, match="'categorical' stream, which is read from shard sets"):
        stream.sampler(2, 1, seed=0, balance_classes=True)
