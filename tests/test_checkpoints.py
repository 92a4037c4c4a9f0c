"""Run checkpoints: a ``.npz`` checkpoint reads back bit for bit (bfloat16 included), the
orbax folders of earlier versions still load, and anything else is a ``ValueError`` naming
the file."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_factory_worker import NUM_TEST, NUM_TRAIN, toy_plan

from simfluence_jax import checkpoints as ckpt
from simfluence_jax.store import checkpoint_steps, create_store, load_checkpoint


def _store(path):
    batches, seeds = toy_plan()
    return create_store(path, batches=batches, seeds=seeds, num_train=NUM_TRAIN, num_test=NUM_TEST)


def _run_tree(step, scale=1.0):
    """A tree shaped like a run checkpoint: ``{trainable, learning_rate, step}``."""
    rng = np.random.default_rng(step)
    trainable = {
        "dense": {"kernel": (scale * rng.normal(size=(3, 4))).astype(np.float32)},
        "prompt": rng.normal(size=(2, 3)).astype(np.float32),
    }
    return {
        "trainable": trainable,
        "learning_rate": np.asarray(0.05, np.float32),
        "step": np.asarray(step, np.int32),
    }


def _same_bits(got, want):
    got_leaves, got_def = jax.tree_util.tree_flatten(got)
    want_leaves, want_def = jax.tree_util.tree_flatten(want)
    assert got_def == want_def
    for a, b in zip(got_leaves, want_leaves):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def _orbax_save(folder, tree):
    """An orbax checkpoint folder as earlier versions of the run store wrote it."""
    import orbax.checkpoint as ocp

    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    checkpointer.save(folder.absolute(), args=ocp.args.StandardSave(tree))


def test_npz_checkpoint_round_trips_bit_for_bit(tmp_path):
    bf16 = np.asarray(jnp.array([1.5, -0.0, 3.0e38, np.nan, -np.inf], jnp.bfloat16))
    bf16 = np.concatenate([bf16, np.array([0x7FC1], np.uint16).view(bf16.dtype)])  # NaN payload
    tree = {
        "params": {"w": np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)},
        "bf16": bf16,
        "mixed": [np.arange(5, dtype=np.int8), None, (np.bool_(True), np.complex64(1 - 2j))],
        "empty": {"nothing": np.zeros((0, 3), np.float16)},
        "step": np.asarray(7, np.int32),
    }
    path = tmp_path / "step_000007.npz"
    ckpt.save(path, tree)
    assert sorted(os.listdir(tmp_path)) == ["step_000007.npz"]  # no temporaries left
    got = ckpt.restore(path)
    _same_bits(got, tree)
    assert got["bf16"].dtype == jnp.bfloat16
    assert type(got["mixed"]) is list and type(got["mixed"][2]) is tuple
    assert ckpt.problem(path) is None and ckpt.problem(path, expected=tree) is None
    other = jax.tree_util.tree_map(lambda x: x, tree)
    other["bf16"] = bf16[::-1].copy()
    assert ckpt.problem(path, expected=other) == "differs from the tree it should hold"
    with np.load(path, allow_pickle=False) as z:  # plain npz, bfloat16 kept as its bits
        dtypes = {z[k].dtype for k in z.files}
    assert np.dtype(np.uint16) in dtypes and all(d.kind != "V" for d in dtypes)


def test_save_refuses_what_the_format_cannot_hold(tmp_path):
    path = tmp_path / "step_000001.npz"
    for tree, match in [
        ({"a": object()}, "cannot save a value of type object"),
        ({1: np.ones(2)}, "keys must be strings"),
        ({"a": np.array(["text"])}, "dtype <U4"),
    ]:
        with pytest.raises(ValueError, match=match):
            ckpt.save(path, tree)
    with pytest.raises(ValueError, match=r"must end in \.npz"):
        ckpt.save(tmp_path / "step_000001", {"a": np.ones(2)})
    assert not os.listdir(tmp_path)


def test_a_checkpoint_that_does_not_read_back_is_never_in_place(tmp_path, monkeypatch):
    path = tmp_path / "step_000002.npz"
    ckpt.save(path, _run_tree(2))
    before = path.read_bytes()
    monkeypatch.setattr(ckpt, "_differs", lambda got, want: True)
    with pytest.raises(ValueError, match=r"step_000002.npz: the checkpoint did not read back"):
        ckpt.save(path, _run_tree(2, scale=2.0))
    assert os.listdir(tmp_path) == ["step_000002.npz"] and path.read_bytes() == before


def test_old_orbax_folders_still_load_next_to_npz_files(tmp_path):
    store = _store(tmp_path / "s")
    old = store.run_dir(1) / "checkpoints" / "step_000003"
    _orbax_save(old, _run_tree(3))
    ckpt.save(store.checkpoint_path(1, 5), _run_tree(5))
    assert store.checkpoint_path(1, 3) == old
    assert checkpoint_steps(store, 1) == [3, 5]
    for step in (3, 5):
        got = load_checkpoint(store, 1, step)
        want = _run_tree(step)
        assert got["step"] == step and got["learning_rate"] == pytest.approx(0.05)
        _same_bits(got["trainable"], want["trainable"])

    # A writer keeps an old folder that holds the tree a replay reproduces, and replaces
    # one that does not by a .npz file.
    writer = store.writer(1)
    try:
        writer.save_checkpoint(3, _run_tree(3)["trainable"], 0.05)
        assert old.is_dir() and not old.with_suffix(".npz").exists()
        writer.save_checkpoint(3, _run_tree(3, scale=2.0)["trainable"], 0.05)
    finally:
        writer.close()
    assert not old.exists() and store.checkpoint_path(1, 3) == old.with_suffix(".npz")
    assert checkpoint_steps(store, 1) == [3, 5]
    _same_bits(load_checkpoint(store, 1, 3)["trainable"], _run_tree(3, scale=2.0)["trainable"])


def test_unknown_or_damaged_checkpoint_is_a_value_error_naming_it(tmp_path):
    store = _store(tmp_path / "s")
    folder = store.run_dir(0) / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "step_000001").write_text("not a checkpoint\n")
    (folder / "step_000002.npz").write_bytes(b"\x00garbled" * 32)
    np.savez(folder / "step_000003.npz", trainable=np.ones(3))  # an npz, not ours
    (folder / "step_000004").mkdir()  # an orbax folder with nothing in it
    for step, dtype in [(5, "bfloat16"), (6, "object")]:  # a leaf recorded as another dtype
        path = folder / f"step_{step:06d}.npz"
        ckpt.save(path, _run_tree(step))
        with np.load(path, allow_pickle=False) as z:
            arrays = dict(z)
        arrays["tree"] = np.asarray(str(arrays["tree"]).replace('"float32"', f'"{dtype}"', 1))
        np.savez(path, **arrays)
    assert checkpoint_steps(store, 0) == [1, 2, 3, 4, 5, 6]
    expected = {
        1: "is in an unknown format",
        2: "is truncated or garbled",
        3: "holds no tree description",
        4: "is incomplete",
        5: r"stores leaf \d+ \(bfloat16\) as float32",
        6: r"records leaf \d+ with a dtype it cannot hold: 'object'",
    }
    for step, match in expected.items():
        path = store.checkpoint_path(0, step)
        with pytest.raises(ValueError, match=match) as err:
            load_checkpoint(store, 0, step)
        assert str(err.value).startswith(f"{path}: the checkpoint "), err.value
