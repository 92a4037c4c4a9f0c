"""RunSet: validation, splitting, and the versioned, pickle-free on-disk format."""

import json

import numpy as np
import pytest

from simfluence_jax import RunSet


def _arrays(R=3, T=4, B=2, M=5, N=10, seed=0):
    rng = np.random.default_rng(seed)
    batches = rng.integers(0, N, (R, T, B)).astype(np.int32)
    losses = rng.uniform(0.5, 2.0, (R, T + 1, M)).astype(np.float32)
    return batches, losses


def test_minimal_construction_infers_pool_size():
    batches, losses = _arrays()
    rs = RunSet(batches=batches, losses=losses)
    assert rs.num_train == batches.max() + 1
    assert (rs.num_runs, rs.num_steps, rs.batch_size, rs.num_test) == (3, 4, 2, 5)
    np.testing.assert_array_equal(rs.test_ids, np.arange(5))
    np.testing.assert_array_equal(rs.L0, losses[:, 0])


def test_ids_give_the_pool_size():
    batches, losses = _arrays()
    rs = RunSet(batches=batches, losses=losses, train_ids=[f"ex{i}" for i in range(12)])
    assert rs.num_train == 12


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b, l: (b, l[:, :-1]), "T\\+1"),
        (lambda b, l: (b[:2], l), "runs"),
        (lambda b, l: (b[:, :0], l[:, :1]), "empty"),
        (lambda b, l: (b[:0], l[:0]), "empty"),
        (lambda b, l: (b, np.where(np.arange(5) == 3, np.nan, l)), "NaN"),
        (lambda b, l: (b, np.where(np.arange(5) == 1, np.inf, l)), "infinite"),
        (lambda b, l: (np.where(b == b.max(), -3, b), l), "only -1 may pad"),
        (lambda b, l: (b[0], l), "\\[R, T, B\\]"),
        (lambda b, l: (b.astype(np.float32), l), "integer"),
        (lambda b, l: (np.full_like(b, -1), l), "padding"),
    ],
)
def test_bad_input_names_the_problem(mutate, message):
    b, l = mutate(*_arrays())
    with pytest.raises(ValueError, match=message):
        RunSet(batches=b, losses=l)


def test_id_out_of_range_of_the_given_pool():
    batches, losses = _arrays(N=10)
    with pytest.raises(ValueError, match="out of range"):
        RunSet(batches=batches, losses=losses, num_train=3)


def test_all_padding_step_is_rejected():
    batches, losses = _arrays()
    batches[1, 2] = -1
    with pytest.raises(ValueError, match="run 1, step 2 is all padding"):
        RunSet(batches=batches, losses=losses)


def test_split_and_select():
    batches, losses = _arrays(R=10)
    rs = RunSet(batches=batches, losses=losses)
    fit, val, test = rs.split(6, 2, 2)
    assert (fit.num_runs, val.num_runs, test.num_runs) == (6, 2, 2)
    np.testing.assert_array_equal(test.batches, batches[8:])
    f2, _, _ = rs.split(6, 2, seed=1)
    assert not np.array_equal(f2.batches, fit.batches)
    with pytest.raises(ValueError, match="needs"):
        rs.split(8, 2, 2)
    both = RunSet.concatenate([fit, val])
    np.testing.assert_array_equal(both.losses, losses[:8])


def test_per_run_metadata_follows_selection():
    batches, losses = _arrays(R=4)
    rs = RunSet(batches=batches, losses=losses, metadata={"seeds": [10, 11, 12, 13], "x": [1]})
    fit, val, test = rs.split(2, 1, 1)
    assert fit.metadata["seeds"] == [10, 11] and test.metadata["seeds"] == [13]
    assert fit.metadata["x"] == [1]
    assert RunSet.concatenate([val, test]).metadata["seeds"] == [12, 13]


def test_save_load_roundtrip(tmp_path):
    batches, losses = _arrays()
    batches[0, -1, 1] = -1
    rs = RunSet(
        batches=batches,
        losses=losses,
        num_train=12,
        test_ids=["a", "b", "c", "d", "e"],
        metadata={"seed": 3, "lr": [0.1, 0.05]},
    )
    rs.save(tmp_path / "runs")
    back = RunSet.load(tmp_path / "runs")
    np.testing.assert_array_equal(back.batches, rs.batches)
    np.testing.assert_array_equal(back.losses, rs.losses)
    np.testing.assert_array_equal(back.test_ids, rs.test_ids)
    assert back.num_train == 12 and back.metadata == {"seed": 3, "lr": [0.1, 0.05]}
    with pytest.raises(ValueError, match="already exists"):
        rs.save(tmp_path / "runs")


def test_load_rejects_other_versions_and_truncation(tmp_path):
    rs = RunSet(*_arrays())
    path = rs.save(tmp_path / "runs")
    meta = json.loads((path / "meta.json").read_text())
    meta["version"] = 99
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format version 99"):
        RunSet.load(path)
    path2 = rs.save(tmp_path / "runs2")
    data = (path2 / "arrays.npz").read_bytes()
    (path2 / "arrays.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="arrays.npz: the run set arrays file is truncated"):
        RunSet.load(path2)
    with pytest.raises(ValueError, match="not a directory"):
        RunSet.load(tmp_path / "nothing")


def test_failed_save_leaves_existing_run_set_intact(tmp_path, monkeypatch):
    rs = RunSet(*_arrays())
    path = rs.save(tmp_path / "runs")

    def broken(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="No space"):
        rs.save(path, overwrite=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(RunSet.load(path).losses, rs.losses)
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]


@pytest.mark.parametrize("key", ["train_ids", "test_ids"])
def test_duplicate_ids_are_refused(key):
    batches, losses = _arrays()
    ids = {"train_ids": list(range(12)), "test_ids": list("abcde")}
    ids[key] = ids[key][:-1] + ids[key][:1]  # the last repeats the first
    with pytest.raises(ValueError, match=rf"{key} name example .* twice \(positions 0 and"):
        RunSet(batches=batches, losses=losses, num_train=12, **ids)
    same = {"train_ids": [5] * 12, "test_ids": ["x"] * 5}[key]
    with pytest.raises(ValueError, match=f"{key} name example"):
        RunSet(batches=batches, losses=losses, num_train=12, **{key: same})
