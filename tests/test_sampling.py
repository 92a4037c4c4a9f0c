"""Curriculum sampler and curriculum files."""

import json

import numpy as np
import pytest

from simfluence_jax.sampling import (
    load_curricula,
    sample_curricula,
    save_curricula,
    validate_curricula,
)


def test_gptfluence_protocol_shape_and_content():
    b = sample_curricula(
        num_runs=3, pool_size=200, subset_size=128, batch_size=4, num_steps=96, seed=0
    )
    assert b.shape == (3, 96, 4) and b.dtype == np.int32
    for run in b:
        ids = run.reshape(-1)
        assert (ids >= 0).all()
        subset = np.unique(ids)
        assert len(subset) == 128  # one subset per run
        # 96 steps x 4 = 3 epochs of the 128 examples, each seen once per epoch
        for epoch in range(3):
            chunk = run[epoch * 32 : (epoch + 1) * 32].reshape(-1)
            assert sorted(chunk) == sorted(subset)
        # epochs are reshuffled
        assert not np.array_equal(run[:32], run[32:64])
    assert not np.array_equal(b[0], b[1])


def test_seeded_and_independent_of_run_count():
    a = sample_curricula(num_runs=4, pool_size=30, subset_size=10, batch_size=3, seed=5)
    b = sample_curricula(num_runs=2, pool_size=30, subset_size=10, batch_size=3, seed=5)
    c = sample_curricula(num_runs=2, pool_size=30, subset_size=10, batch_size=3, seed=6)
    np.testing.assert_array_equal(a[:2], b)
    assert not np.array_equal(b, c)


def test_ragged_last_batch_is_padded_every_epoch():
    b = sample_curricula(num_runs=1, pool_size=20, subset_size=10, batch_size=4, epochs=2, seed=0)
    assert b.shape == (1, 6, 4)
    assert (b[0, 2, 2:] == -1).all() and (b[0, 5, 2:] == -1).all()
    assert (b[0, [0, 1, 3, 4]] >= 0).all()
    assert (b[0, [2, 5], :2] >= 0).all()


def test_num_steps_cuts_the_last_epoch():
    b = sample_curricula(num_runs=2, pool_size=20, subset_size=8, batch_size=4, num_steps=5)
    assert b.shape == (2, 5, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=40), "batch size 40 is larger"),
        (dict(subset_size=50), "subset_size must be between"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(num_steps=0), "num_steps must be >= 1"),
    ],
)
def test_bad_sampler_settings(kwargs, message):
    base = dict(num_runs=2, pool_size=30, subset_size=20, batch_size=4, seed=0)
    with pytest.raises(ValueError, match=message):
        sample_curricula(**{**base, **kwargs})


def test_validate_rejects_unknown_ids_and_empty_steps():
    with pytest.raises(ValueError, match=r"ids \[12\] that are not in the pool of 10"):
        validate_curricula(np.array([[[1, 12]]]), pool_size=10)
    with pytest.raises(ValueError, match="negative ids"):
        validate_curricula(np.array([[[1, -3]]]))
    with pytest.raises(ValueError, match="holds only padding"):
        validate_curricula(np.array([[[1, 2], [-1, -1]]]))
    with pytest.raises(ValueError, match="larger than the pool"):
        validate_curricula(np.zeros((1, 2, 5), int), pool_size=3)


def test_text_file_round_trip(tmp_path):
    path = tmp_path / "curr.txt"
    path.write_text("# run 0\n0 1 2\n3, 4\n\n5 6 7\n8 9 0\n")
    b = load_curricula(path, pool_size=10)
    np.testing.assert_array_equal(b, [[[0, 1, 2], [3, 4, -1]], [[5, 6, 7], [8, 9, 0]]])
    out = tmp_path / "curr.json"
    save_curricula(out, b)
    np.testing.assert_array_equal(load_curricula(out), b)


def test_json_single_run_and_errors(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps([[0, 1], [2]]))
    np.testing.assert_array_equal(load_curricula(path), [[[0, 1], [2, -1]]])
    path.write_text(json.dumps({"runs": [[[0, 1]], [[2], [3]]]}))
    with pytest.raises(ValueError, match="same number of steps"):
        load_curricula(path)
    path.write_text(json.dumps([[[0, 1]], [[2, 30]]]))
    with pytest.raises(ValueError, match="not in the pool of 5"):
        load_curricula(path, pool_size=5)
    bad = tmp_path / "bad.txt"
    bad.write_text("0 1\nzero one\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: not a list of integer ids"):
        load_curricula(bad)
