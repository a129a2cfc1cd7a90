"""StepSampler: equal per-process batches, union over processes == single process, exact epochs, resumable."""

import numpy as np
import pytest

from retvlp.data.sampler import StepSampler


def test_processes_split_the_single_process_batch():
    single = StepSampler(num_rows=37, batch_size=8, world_size=1, seed=3)
    split = StepSampler(num_rows=37, batch_size=4, world_size=2, seed=3)
    for step in range(20):
        parts = [split.indices(step, rank) for rank in range(2)]
        assert all(len(p) == 4 for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), single.indices(step, 0))


def test_every_row_once_per_epoch_and_epochs_roll_over_inside_a_step():
    sampler = StepSampler(num_rows=10, batch_size=3, world_size=1, seed=0)
    stream = np.concatenate([sampler.indices(step) for step in range(10)])  # 30 positions = 3 epochs
    for epoch in range(3):
        assert sorted(stream[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    # epochs are different permutations
    assert not np.array_equal(stream[:10], stream[10:20])
    assert sampler.epoch(5) == pytest.approx(1.5)


def test_rows_depend_only_on_seed_and_step():
    a = StepSampler(num_rows=50, batch_size=7, seed=11)
    b = StepSampler(num_rows=50, batch_size=7, seed=11)
    late = [b.indices(step) for step in (30, 3)]  # b visits steps out of order
    np.testing.assert_array_equal(late[0], a.indices(30))
    np.testing.assert_array_equal(late[1], a.indices(3))
    assert not np.array_equal(StepSampler(num_rows=50, batch_size=7, seed=12).indices(3), a.indices(3))


def test_unshuffled_stream_is_in_order():
    sampler = StepSampler(num_rows=5, batch_size=2, shuffle=False)
    assert [list(sampler.indices(s)) for s in range(3)] == [[0, 1], [2, 3], [4, 0]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        StepSampler(num_rows=0, batch_size=2)
    with pytest.raises(ValueError, match="positive"):
        StepSampler(num_rows=5, batch_size=0)
    with pytest.raises(ValueError, match="rank 2"):
        StepSampler(num_rows=5, batch_size=1, world_size=2).indices(0, rank=2)
