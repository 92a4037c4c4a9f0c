"""The run store: step-by-step writes, crash and resume, versions, write errors, collect."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from run_factory_worker import NUM_STEPS, NUM_TEST, NUM_TRAIN, toy_factory, toy_plan

from simfluence_jax.fileio import files as sio_files
from simfluence_jax.store import (
    StoreWriteError,
    checkpoint_steps,
    collect,
    create_store,
    load_checkpoint,
    open_store,
)
from simfluence_jax.training import produce_runs

WORKER = Path(__file__).with_name("run_factory_worker.py")
GROUP = 2
PRODUCE = dict(
    group_size=GROUP, snapshot_every=4, checkpoint_steps=[0, 6, NUM_STEPS], progress=False
)


@pytest.fixture(scope="module")
def factory():
    return toy_factory()


@pytest.fixture(scope="module")
def plan():
    return toy_plan()


@pytest.fixture(scope="module")
def reference(factory, plan):
    """The uninterrupted in-memory runs with the same group size."""
    batches, seeds = plan
    return factory.run(batches, seeds, group_size=GROUP)


def new_store(path, factory, plan, **kwargs):
    batches, seeds = plan
    return create_store(
        path,
        batches=batches,
        seeds=seeds,
        num_train=NUM_TRAIN,
        num_test=NUM_TEST,
        metadata={"task": "toy"},
        fingerprint=factory.fingerprint,
        **kwargs,
    )


def test_store_round_trip_and_run_records(tmp_path, factory, plan, reference):
    store = new_store(tmp_path / "s", factory, plan)
    report = produce_runs(factory, store, config_text="lr = 0.05\n", **PRODUCE)
    assert report.completed == [0, 1, 2, 3] and not report.resumed
    runset = collect(tmp_path / "s", require_all=True)
    np.testing.assert_array_equal(runset.losses, reference)
    np.testing.assert_array_equal(runset.batches, plan[0])
    assert runset.metadata["task"] == "toy" and runset.metadata["seeds"] == list(plan[1])
    lrs = factory.optimizer.learning_rates(NUM_STEPS)
    np.testing.assert_allclose(runset.metadata["learning_rates"], lrs)
    meta = store.run_meta(2)
    assert meta["seed"] == plan[1][2] and meta["git_revision"]
    assert (store.run_dir(2) / "config.txt").read_text() == "lr = 0.05\n"
    assert not (store.run_dir(2) / "state.npz").exists()  # snapshots dropped when complete
    # produce again: nothing to do, nothing rewritten
    before = (store.run_dir(0) / "COMPLETE").stat().st_mtime_ns
    again = produce_runs(factory, store, **PRODUCE)
    assert again.completed == [] and again.skipped == [0, 1, 2, 3]
    assert (store.run_dir(0) / "COMPLETE").stat().st_mtime_ns == before


def test_checkpoints_hold_the_parameters_behind_the_recorded_losses(tmp_path, factory, plan):
    store = new_store(tmp_path / "s", factory, plan)
    produce_runs(factory, store, **PRODUCE)
    runset = collect(store.path)
    assert checkpoint_steps(store, 3) == [0, 6, NUM_STEPS]
    lrs = factory.optimizer.learning_rates(NUM_STEPS + 1)
    for step in (0, 6, NUM_STEPS):
        ckpt = load_checkpoint(store.path, 3, step)
        assert ckpt["step"] == step
        assert ckpt["learning_rate"] == pytest.approx(float(lrs[step]))
        fresh = factory.method.reference_loss(
            factory.model, factory.params, ckpt["trainable"], factory.data.test
        )
        np.testing.assert_allclose(fresh, runset.losses[3, step], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"no checkpoint at step 5; it has steps \[0, 6, 12\]"):
        load_checkpoint(store.path, 3, 5)


def _worker(store_dir, *args):
    env = dict(os.environ, PYTHONPATH=str(WORKER.parents[1]))
    return subprocess.run(
        [sys.executable, str(WORKER), "--store", str(store_dir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_killed_job_resumes_to_the_same_record(tmp_path, factory, plan, reference):
    store_dir = tmp_path / "s"
    killed = _worker(store_dir, "--kill-at", "1:8")  # group 1 = runs 2, 3; after step 8
    assert killed.returncode == -9, killed.stderr[-2000:]
    store = open_store(store_dir)
    assert store.complete_runs() == [0, 1]
    assert store.rows_done(2) == 9 and (store.run_dir(2) / "state.npz").exists()
    partial = collect(store_dir)  # never reads the half-written runs
    assert partial.metadata["runs"] == [0, 1]
    np.testing.assert_array_equal(partial.losses, reference[:2])

    report = produce_runs(factory, store, **PRODUCE)
    assert report.resumed == {2: 8, 3: 8} and report.completed == [2, 3]
    np.testing.assert_array_equal(collect(store_dir, require_all=True).losses, reference)
    ckpt = load_checkpoint(store_dir, 2, 6)  # written before the kill, kept
    assert ckpt["step"] == 6


def test_crash_without_snapshots_replays_from_step_zero(tmp_path, factory, plan, reference):
    store = new_store(tmp_path / "s", factory, plan)

    def crash(group, step):
        if (group, step) == (0, 8):
            raise KeyboardInterrupt

    kwargs = {**PRODUCE, "snapshot_every": None}
    with pytest.raises(KeyboardInterrupt):
        produce_runs(factory, store, on_chunk=crash, **kwargs)
    assert store.complete_runs() == [] and store.rows_done(0) == 9
    with pytest.raises(ValueError, match="resume it with the same value"):
        produce_runs(factory, store, **{**kwargs, "group_size": 4})
    report = produce_runs(factory, store, **kwargs)
    assert report.resumed == {0: 0, 1: 0}
    np.testing.assert_array_equal(collect(store.path).losses, reference)


def test_simulated_full_disk_is_a_clear_error_and_keeps_completed_runs(
    tmp_path, monkeypatch, factory, plan, reference
):
    store = new_store(tmp_path / "s", factory, plan)
    real = sio_files.atomic_write  # where atomic_json finds it

    def full_disk(path, data, **kwargs):
        if "run_000002" in str(path) and path.name == "progress.json" and b'"rows": 5' in data:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, **kwargs)

    monkeypatch.setattr(sio_files, "atomic_write", full_disk)
    with pytest.raises(StoreWriteError, match=r"loss rows of run 2 .*No space left on device"):
        produce_runs(factory, store, **PRODUCE)
    assert store.complete_runs() == [0, 1]
    np.testing.assert_array_equal(collect(store.path).losses, reference[:2])

    monkeypatch.setattr(sio_files, "atomic_write", real)  # space freed: resume
    produce_runs(factory, store, **PRODUCE)
    np.testing.assert_array_equal(collect(store.path, require_all=True).losses, reference)


def test_other_format_version_is_refused(tmp_path, factory, plan):
    store = new_store(tmp_path / "s", factory, plan)
    info = json.loads((store.path / "store.json").read_text())
    info["version"] = 99
    (store.path / "store.json").write_text(json.dumps(info))
    with pytest.raises(
        ValueError, match="format version 99; this version of simfluence_jax reads version 1"
    ):
        open_store(store.path)
    with pytest.raises(ValueError, match="format version 99"):
        collect(store.path)
    with pytest.raises(ValueError, match="no run store at"):
        open_store(tmp_path / "nothing")


def test_store_refuses_other_plans_and_settings(tmp_path, factory, plan):
    batches, seeds = plan
    new_store(tmp_path / "s", factory, plan)
    with pytest.raises(ValueError, match="another plan"):
        new_store(tmp_path / "s", factory, (batches, seeds + 1))
    with pytest.raises(ValueError, match="other training settings"):
        create_store(
            tmp_path / "s",
            batches=batches,
            seeds=seeds,
            num_train=NUM_TRAIN,
            num_test=NUM_TEST,
            fingerprint="something-else",
        )
    other = toy_factory("lora", rank=2)
    with pytest.raises(ValueError, match="other training settings"):
        produce_runs(other, open_store(tmp_path / "s"), **PRODUCE)
    with pytest.raises(ValueError, match="outside the pool of 24 examples"):
        create_store(
            tmp_path / "t",
            batches=batches + 30,
            seeds=seeds,
            num_train=NUM_TRAIN,
            num_test=NUM_TEST,
        )
    with pytest.raises(ValueError, match="one seed per run"):
        create_store(
            tmp_path / "t", batches=batches, seeds=seeds[:1], num_train=NUM_TRAIN, num_test=NUM_TEST
        )


def test_damaged_complete_run_is_detected_and_empty_store_is_an_error(tmp_path, factory, plan):
    store = new_store(tmp_path / "s", factory, plan)
    with pytest.raises(ValueError, match="no complete run"):
        collect(store.path)
    produce_runs(factory, store, **PRODUCE)
    losses = np.load(store.run_dir(1) / "losses.npy", mmap_mode="r+")
    losses[3, 0] += 1.0
    losses.flush()
    del losses
    with pytest.raises(ValueError, match="run 1 .* does not match its completion checksum"):
        collect(store.path)
