"""Nothing silent, nothing lost: one writer per store, damaged files, careless inputs, full
disks and kills while a folder is replaced.

The store tests use the toy job of ``run_factory_worker.py`` (4 runs x 12 steps, groups of 2,
snapshots every 4 steps, checkpoints at steps 0, 6 and 12).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from run_factory_worker import NUM_STEPS, NUM_TEST, NUM_TRAIN, toy_factory, toy_plan

from simfluence_jax import cli, fileio
from simfluence_jax import counterfactuals as cf
from simfluence_jax.cli import entry as cli_entry
from simfluence_jax.locks import FileLock, StoreBusyError
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.io import load_simulator, save_simulator
from simfluence_jax.store import (
    RunWriter,
    StoreWriteError,
    checkpoint_steps,
    collect,
    create_store,
    load_checkpoint,
    open_store,
    remove_incomplete,
)
from simfluence_jax.synthetic import make_problem
from simfluence_jax.training import produce_runs

WORKER = Path(__file__).with_name("run_factory_worker.py")
ROOT = WORKER.parents[1]
CKPTS = [0, 6, NUM_STEPS]
PRODUCE = dict(group_size=2, snapshot_every=4, checkpoint_steps=CKPTS, progress=False)


@pytest.fixture(scope="module")
def factory():
    return toy_factory()


@pytest.fixture(scope="module")
def reference(factory):
    batches, seeds = toy_plan()
    return factory.run(batches, seeds, group_size=2)


def new_store(path, factory):
    batches, seeds = toy_plan()
    return create_store(
        path,
        batches=batches,
        seeds=seeds,
        num_train=NUM_TRAIN,
        num_test=NUM_TEST,
        fingerprint=factory.fingerprint,
    )


def assert_store_sound(store_dir, reference, runs=(0, 1, 2, 3)):
    """Every complete run equals the uninterrupted record and every checkpoint loads."""
    store = open_store(store_dir)
    assert store.complete_runs() == list(runs)
    np.testing.assert_array_equal(collect(store_dir).losses, reference[list(runs)])
    for run in runs:
        assert checkpoint_steps(store, run) == CKPTS
        for step in CKPTS:
            assert load_checkpoint(store, run, step)["step"] == step


def _worker(store_dir, *args, wait=True):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(WORKER), "--store", str(store_dir), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _finish(proc):
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ---------------------------------------------------------------------------------------------
# One writer per store.


def test_a_second_writer_stops_at_once_naming_the_first(tmp_path, reference):
    store_dir, sync = tmp_path / "s", tmp_path / "sync"
    sync.mkdir()
    first = _worker(store_dir, "--pause-at", f"0:4:{sync}", wait=False)
    try:
        deadline = time.monotonic() + 240
        while not (sync / "ready").exists():
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = _worker(store_dir)  # the first holds the store, paused mid-run
        assert second.returncode == 3, second.stderr[-2000:]
        message = second.stderr.strip().splitlines()[-1]
        assert "is being written by another process" in message
        assert f"pid {first.pid} on host {fileio.hostname()}" in message
        assert "Traceback" not in second.stderr
    finally:
        (sync / "go").write_text("")
    done = _finish(first)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "completed [0, 1, 2, 3]" in done.stdout
    assert_store_sound(store_dir, reference)


@pytest.mark.slow
def test_two_writers_started_together_leave_a_sound_store(tmp_path, reference):
    for round_ in range(3):
        store_dir = tmp_path / f"s{round_}"
        args = ["--wait"] if round_ == 2 else []
        procs = [_worker(store_dir, *args, wait=False) for _ in range(2)]
        results = [_finish(p) for p in procs]
        codes = sorted(r.returncode for r in results)
        if round_ == 2:
            assert codes == [0, 0], [r.stderr[-1500:] for r in results]
        else:
            assert codes in ([0, 0], [0, 3]), [r.stderr[-1500:] for r in results]
        for r, other in zip(results, reversed(procs)):
            if r.returncode == 3:  # the one that did not write says why, naming the other
                assert f"pid {other.pid} on host" in r.stderr and "Traceback" not in r.stderr
        written = [r.stdout for r in results if "completed [0, 1, 2, 3]" in r.stdout]
        assert len(written) == 1, [r.stdout for r in results]
        assert_store_sound(store_dir, reference)


def test_wait_for_the_lock_and_lock_messages(tmp_path):
    path = tmp_path / "LOCK"
    held = FileLock(path, what="the thing", doing="testing").acquire()
    with pytest.raises(StoreBusyError, match="the thing is being written by another process"):
        FileLock(path, what="the thing").acquire()
    with pytest.raises(ValueError, match="testing"):  # StoreBusyError is a ValueError
        FileLock(path, what="the thing").acquire(wait=0.3)
    threading.Timer(0.5, held.release).start()
    waited = FileLock(path, what="the thing").acquire(wait=20)
    assert waited.held
    waited.release()
    # shared holders coexist; an exclusive one is refused while they hold it
    a = FileLock(path, what="x").acquire(shared=True)
    b = FileLock(path, what="x").acquire(shared=True)
    with pytest.raises(StoreBusyError):
        FileLock(path, what="x").acquire()
    a.release()
    b.release()
    FileLock(path, what="x").acquire().release()


def test_store_locks_protect_every_writer(tmp_path, factory, reference):
    store = new_store(tmp_path / "s", factory)
    other = open_store(store.path)  # another writer's view of the same store
    held = other.lock(doing="another job")
    with pytest.raises(StoreBusyError, match="another job"):
        produce_runs(factory, store, **PRODUCE)
    with pytest.raises(StoreBusyError):
        produce_runs(factory, store, process_index=1, process_count=2, **PRODUCE)
    with pytest.raises(StoreBusyError):
        remove_incomplete(store.path)
    held.release()
    # the processes of one job share the store; each run has one writer
    job = other.lock(shared=True, doing="process 0 of 2")
    with other.holding_runs([2, 3], doing="process 0 of 2"):
        with pytest.raises(StoreBusyError, match="run 2 of the run store"):
            produce_runs(factory, store, process_index=1, process_count=2, **PRODUCE)
        with pytest.raises(StoreBusyError):
            store.writer(3)
    report = produce_runs(factory, store, process_index=1, process_count=2, **PRODUCE)
    assert report.completed == [2, 3]
    job.release()
    report = produce_runs(factory, store, **PRODUCE)
    assert report.completed == [0, 1] and report.skipped == [2, 3]
    assert_store_sound(store.path, reference)


def test_incomplete_checkpoint_of_a_complete_run_is_redone(tmp_path, factory, reference):
    store = new_store(tmp_path / "s", factory)
    produce_runs(factory, store, **PRODUCE)
    ckpt = store.run_dir(1) / "checkpoints" / "step_000006.npz"
    _truncate(ckpt)  # what a failing disk might leave
    with pytest.raises(ValueError, match=r"step_000006.npz: the checkpoint is truncated"):
        load_checkpoint(store, 1, 6)
    with pytest.warns(RuntimeWarning, match="run 1 .* is redone"):
        report = produce_runs(factory, store, **PRODUCE)
    assert report.completed == [1] and report.skipped == [0, 2, 3]
    assert_store_sound(store.path, reference)


# ---------------------------------------------------------------------------------------------
# Resume from a mid-run snapshot (snapshots every 4 of 12 steps), killed around a snapshot.


@pytest.mark.parametrize(
    "kill, resumed",
    [
        (["--kill-before-snapshot", "8:2"], {2: 4, 3: 4}),  # group 1, before its step-8 snapshot
        (["--kill-before-snapshot", "8:3"], {2: 0, 3: 0}),  # between the two runs' snapshots
        (["--kill-at", "1:8"], {2: 8, 3: 8}),  # just after both step-8 snapshots
    ],
    ids=["before", "between", "after"],
)
def test_killed_around_a_snapshot_resumes_bit_identically(
    tmp_path, factory, reference, kill, resumed
):
    store_dir = tmp_path / "s"
    killed = _worker(store_dir, *kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    store = open_store(store_dir)
    assert store.complete_runs() == [0, 1] and store.rows_done(2) == 9
    report = produce_runs(factory, store, **PRODUCE)
    assert report.resumed == resumed and report.completed == [2, 3]
    assert_store_sound(store_dir, reference)


# ---------------------------------------------------------------------------------------------
# Every file kind, damaged in every way: a ValueError naming the file.


@pytest.fixture(scope="module")
def originals(tmp_path_factory, factory):
    """A run set, a saved simulator and a run store (runs 0, 1 complete; 2, 3 stopped after
    step 8 with a snapshot), to be copied and damaged."""
    root = tmp_path_factory.mktemp("originals")
    p = make_problem(num_train=12, num_test=4, num_runs=3, seed=1)
    runs = p.runs
    lr = np.full((runs.num_runs, runs.num_steps), 0.1, np.float32)
    RunSet(runs.batches, runs.losses, num_train=12, learning_rates=lr).save(root / "runset")
    save_simulator(p.truth, root / "sim")
    store = new_store(root / "store", factory)

    def stop(group, step):
        if (group, step) == (1, 8):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        produce_runs(factory, store, on_chunk=stop, **PRODUCE)
    return root


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path):
    data = bytearray(path.read_bytes())
    n = max(8, len(data) // 3)
    noise = np.random.default_rng(0).integers(0, 256, n).astype(np.uint8).tobytes()
    data[len(data) // 3 : len(data) // 3 + n] = noise
    path.write_bytes(bytes(data))


def _not_utf8(path):
    path.write_bytes(path.read_bytes().replace(b'"', b'"\xff\xfe', 1))


def _json_list(path):
    path.write_text("[1, 2, 3]")


def _json_edit(**changes):
    def edit(path):
        value = json.loads(path.read_text())
        for key, new in changes.items():
            if new is _DROP:
                del value[key]
            else:
                value[key] = new
        path.write_text(json.dumps(value))

    return edit


_DROP = object()


def _npz_edit(name, fn):
    def edit(path):
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if fn is _DROP:
            del arrays[name]
        else:
            arrays[name] = fn(arrays[name])
        np.savez(path, **arrays)  # object arrays are pickled here: the reader must refuse

    return edit


def _objects(a):
    return np.array([object()] * max(1, a.size), dtype=object)


def _remove(path):
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _state_template(factory):
    import jax

    states = factory.init_states([0])
    return jax.tree_util.tree_map(lambda x: np.asarray(x[0]), jax.device_get(states))


READERS = {
    "runset": lambda root, f: RunSet.load(root / "runset"),
    "sim": lambda root, f: load_simulator(root / "sim"),
    "open": lambda root, f: open_store(root / "store"),
    "collect": lambda root, f: collect(root / "store"),
    "progress": lambda root, f: open_store(root / "store").rows_done(2),
    "state": lambda root, f: RunWriter(open_store(root / "store"), 2).load_state(
        _state_template(f)
    ),
    "checkpoint": lambda root, f: load_checkpoint(root / "store", 0, 6),
}

JSON_DAMAGE = {
    "truncated": _truncate,
    "garbled": _garble,
    "not_utf8": _not_utf8,
    "wrong_json_type": _json_list,
    "missing_file": _remove,
}
NPZ_DAMAGE = {"truncated": _truncate, "garbled": _garble, "missing_file": _remove}
R0, R2 = "store/runs/run_000000", "store/runs/run_000002"
CK = f"{R0}/checkpoints/step_000006.npz"
OTHER_FORMAT = '{"format": "other", "version": 1, "dtypes": [], "tree": null}'

CASES = [
    *[("runset/meta.json", n, d, "runset") for n, d in JSON_DAMAGE.items()],
    ("runset/meta.json", "missing_key", _json_edit(num_train=_DROP), "runset"),
    ("runset/meta.json", "newer_version", _json_edit(version=99), "runset"),
    ("runset/meta.json", "wrong_key_type", _json_edit(num_train="12"), "runset"),
    *[("runset/arrays.npz", n, d, "runset") for n, d in NPZ_DAMAGE.items()],
    ("runset/arrays.npz", "object_array", _npz_edit("losses", _objects), "runset"),
    ("runset/arrays.npz", "missing_array", _npz_edit("losses", _DROP), "runset"),
    ("runset/arrays.npz", "wrong_shape", _npz_edit("test_ids", lambda a: a[:-1]), "runset"),
    ("runset/arrays.npz", "wrong_dtype", _npz_edit("batches", lambda a: a + 0.5), "runset"),
    ("runset/arrays.npz", "not_finite", _npz_edit("losses", lambda a: a * np.nan), "runset"),
    *[("sim/meta.json", n, d, "sim") for n, d in JSON_DAMAGE.items()],
    ("sim/meta.json", "missing_key", _json_edit(fields=_DROP), "sim"),
    ("sim/meta.json", "newer_version", _json_edit(version=2), "sim"),
    ("sim/meta.json", "unknown_class", _json_edit(**{"class": "Nope"}), "sim"),
    *[("sim/arrays.npz", n, d, "sim") for n, d in NPZ_DAMAGE.items()],
    ("sim/arrays.npz", "object_array", _npz_edit("A", _objects), "sim"),
    ("sim/arrays.npz", "missing_array", _npz_edit("A", _DROP), "sim"),
    ("sim/arrays.npz", "A_one_column_short", _npz_edit("A", lambda a: a[:, :-1]), "sim"),
    ("sim/arrays.npz", "wrong_dtype", _npz_edit("A", lambda a: a.astype(np.int32)), "sim"),
    ("sim/arrays.npz", "not_finite", _npz_edit("B", lambda a: np.full_like(a, np.inf)), "sim"),
    *[("store/store.json", n, d, "open") for n, d in JSON_DAMAGE.items()],
    ("store/store.json", "missing_key", _json_edit(num_test=_DROP), "open"),
    ("store/store.json", "newer_version", _json_edit(version=2), "open"),
    ("store/store.json", "wrong_key_type", _json_edit(num_runs="4"), "open"),
    *[("store/plan.npz", n, d, "open") for n, d in NPZ_DAMAGE.items()],
    ("store/plan.npz", "object_array", _npz_edit("seeds", _objects), "open"),
    ("store/plan.npz", "missing_array", _npz_edit("seeds", _DROP), "open"),
    ("store/plan.npz", "wrong_shape", _npz_edit("batches", lambda a: a[:3]), "open"),
    ("store/plan.npz", "wrong_dtype", _npz_edit("batches", lambda a: a * 1.0), "open"),
    ("store/plan.npz", "ids_outside_pool", _npz_edit("batches", lambda a: a + 99), "open"),
    *[(f"{R0}/COMPLETE", n, d, "collect") for n, d in JSON_DAMAGE.items() if n != "missing_file"],
    (f"{R0}/COMPLETE", "missing_key", _json_edit(sha256=_DROP), "collect"),
    (f"{R0}/COMPLETE", "wrong_rows", _json_edit(rows=5), "collect"),
    *[(f"{R0}/meta.json", n, d, "collect") for n, d in JSON_DAMAGE.items()],
    (f"{R0}/meta.json", "wrong_learning_rates", _json_edit(learning_rates=[0.1]), "collect"),
    (f"{R0}/losses.npy", "truncated", _truncate, "collect"),
    (f"{R0}/losses.npy", "missing_file", _remove, "collect"),
    *[(f"{R2}/progress.json", n, d, "progress") for n, d in JSON_DAMAGE.items() if n[0] != "m"],
    (f"{R2}/progress.json", "missing_key", _json_edit(rows=_DROP), "progress"),
    (f"{R2}/progress.json", "rows_out_of_range", _json_edit(rows=99), "progress"),
    *[(f"{R2}/state.npz", n, d, "state") for n, d in NPZ_DAMAGE.items() if n[0] != "m"],
    (f"{R2}/state.npz", "object_array", _npz_edit("step", _objects), "state"),
    (f"{R2}/state.npz", "missing_array", _npz_edit("step", _DROP), "state"),
    (
        f"{R2}/state.npz",
        "wrong_shape",
        _npz_edit("leaf_00000", lambda a: np.stack([a, a])),
        "state",
    ),
    *[(CK, n, d, "checkpoint") for n, d in NPZ_DAMAGE.items() if n[0] != "m"],
    (CK, "object_array", _npz_edit("leaf_00000", _objects), "checkpoint"),
    (CK, "no_tree_description", _npz_edit("tree", _DROP), "checkpoint"),
    (CK, "missing_leaf", _npz_edit("leaf_00001", _DROP), "checkpoint"),
    (CK, "wrong_dtype", _npz_edit("leaf_00000", lambda a: a.astype(np.float64)), "checkpoint"),
    (CK, "other_format", _npz_edit("tree", lambda a: np.asarray(OTHER_FORMAT)), "checkpoint"),
]


@pytest.mark.parametrize(
    "target, damage, reader",
    [(t, d, r) for t, _, d, r in CASES],
    ids=[f"{t}-{n}" for t, n, _, _ in CASES],
)
def test_damaged_file_is_a_value_error_naming_it(
    tmp_path, originals, factory, target, damage, reader
):
    root = tmp_path / "copy"
    shutil.copytree(originals, root)
    path = root / target
    damage(path)
    with pytest.raises(ValueError) as err:
        READERS[reader](root, factory)
    message = str(err.value)
    assert str(path) in message, message
    assert "Traceback" not in message


def test_newer_version_says_so(tmp_path, originals):
    root = tmp_path / "copy"
    shutil.copytree(originals, root)
    for target, reader in [("runset/meta.json", "runset"), ("store/store.json", "open")]:
        _json_edit(version=7)(root / target)
        with pytest.raises(ValueError, match="written by a newer version of simfluence_jax"):
            READERS[reader](root, None)


def test_simulator_arrays_are_checked_against_each_other(tmp_path, originals):
    """The issue's case: ``A`` one column short of the pool loaded and simulated wrong
    numbers; refused here even without the shapes recorded at save time."""
    root = tmp_path / "copy"
    shutil.copytree(originals, root)
    _json_edit(shapes=_DROP, dtypes=_DROP)(root / "sim/meta.json")
    load_simulator(root / "sim")  # old files without recorded shapes still load
    _npz_edit("A", lambda a: a[:, :-1])(root / "sim/arrays.npz")
    with pytest.raises(ValueError, match=r"arrays.npz: .*N = 12 .* but N = 11 in array 'A'"):
        load_simulator(root / "sim")


def test_damaged_partial_files_of_an_incomplete_run_are_redone(
    tmp_path, originals, factory, reference
):
    root = tmp_path / "copy"
    shutil.copytree(originals, root)
    store = open_store(root / "store")
    _garble(store.run_dir(2) / "progress.json")
    _truncate(store.run_dir(3) / "state.npz")
    with pytest.warns(RuntimeWarning) as caught:
        report = produce_runs(factory, store, **PRODUCE)
    messages = " ".join(str(w.message) for w in caught)
    assert "progress.json" in messages and "state.npz" in messages
    assert report.completed == [2, 3] and report.resumed == {2: 0, 3: 0}
    assert_store_sound(store.path, reference)


# ---------------------------------------------------------------------------------------------
# Careless inputs at the public entry points.

C = np.array([[0, 1, 2], [3, 4, 5], [6, 7, -1]], np.int32)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: cf.remove(C, [3, 42]), r"ids \[42\] do not occur in the curriculum"),
        (lambda: cf.duplicate(C, [8]), r"ids \[8\] do not occur"),
        (lambda: cf.move_to_end(C, 1.7), r"must be integers, got \[1.7\]"),
        (lambda: cf.move_to_end(C, True), "must be an integer id"),
        (lambda: cf.move(C, 1, 0.5), "position must be an integer"),
        (lambda: cf.remove(C, [1.5, 2]), r"must be integers, got \[1.5\]"),
        (lambda: cf.remove(C, ["a"]), "non-negative integers"),
        (lambda: cf.remove(C, [1], missing="skip"), "missing must be"),
        (lambda: cf.duplicate(C, [1], times=1.5), "times must be an integer"),
    ],
)
def test_careless_counterfactual_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_counterfactual_ids_missing_ignore_and_integral_floats():
    np.testing.assert_array_equal(cf.remove(C, [3, 42], missing="ignore"), cf.remove(C, [3]))
    np.testing.assert_array_equal(cf.duplicate(C, [8, 0], missing="ignore"), cf.duplicate(C, [0]))
    np.testing.assert_array_equal(cf.remove(C, np.array([3.0])), cf.remove(C, [3]))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    p = make_problem(num_train=30, num_test=6, num_runs=12, subset=16, seed=0)
    runs = p.runs.save(tmp / "runset")
    save_simulator(p.truth, tmp / "sims" / "linear")
    unused = sorted(set(range(30)) - set(p.runs.batches[0].ravel().tolist()))
    return tmp, runs, unused


def _cli(capsys, *args):
    code = cli.main(list(args))
    return code, capsys.readouterr().err.strip().splitlines()


def test_cli_simulate_checks_ids_against_the_pool_and_the_curriculum(saved, capsys):
    tmp, runs, unused = saved
    base = ["simulate", "--simulators", str(tmp / "sims"), "--runs", str(runs), "--run", "0"]
    code, err = _cli(capsys, *base, "--remove", "3,30")
    assert code == 1 and len(err) == 1
    assert "--remove: ids [30] are not in the pool of 30 training examples" in err[0]
    code, err = _cli(capsys, *base, "--remove", str(unused[0]))
    assert code == 1 and f"ids [{unused[0]}] do not occur in the curriculum" in err[0]
    code, err = _cli(capsys, *base, "--move_to_end", "1.7")
    assert code == 1 and "comma-separated integers" in err[0]


def test_cli_turns_bad_gin_values_into_one_line(saved, capsys):
    tmp, runs, _ = saved
    fit = ["fit", "--runs", str(runs), "--out", str(tmp / "fit_out")]
    code, err = _cli(capsys, *fit, "--gin.FitConfig.num_fit='abc'")
    assert code == 1 and len(err) == 1
    assert "FitConfig.num_fit = 'abc' (str); expected int" in err[0]
    code, err = _cli(capsys, *fit, "--gin.FitConfig.num_fit=(1")
    assert code == 1 and len(err) == 1 and "unbalanced parenthesis" in err[0]
    code, err = _cli(capsys, *fit, "--gin.FitConfig.num_fit=(1", "--debug")
    assert code == 1 and "Traceback" in "\n".join(err) and "unbalanced" in err[-1]


def test_cli_storage_and_permission_errors_say_so(saved, capsys, monkeypatch):
    tmp, runs, _ = saved

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "x.npz"))

    monkeypatch.setattr(cli_entry, "cmd_fit", full)  # the parser binds it there
    code, err = _cli(capsys, "fit", "--runs", str(runs), "--out", str(tmp / "o"))
    assert code == 1 and len(err) == 1
    assert "No space left on device writing" in err[0] and "free there" in err[0]
    # simulate on an unreadable simulators folder (root reads anything, so patch the listing)
    real = Path.iterdir

    def denied(self):
        if self == tmp / "sims":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    code, err = _cli(capsys, "simulate", "--simulators", str(tmp / "sims"), "--runs", str(runs))
    assert code == 1 and "permission denied reading the simulators folder" in err[0]
    assert "no saved simulators" not in err[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable folders")
def test_cli_unreadable_simulators_folder(saved, capsys, tmp_path):
    tmp, runs, _ = saved
    sims = tmp_path / "sims"
    shutil.copytree(tmp / "sims", sims)
    sims.chmod(0)
    try:
        code, err = _cli(capsys, "simulate", "--simulators", str(sims), "--runs", str(runs))
    finally:
        sims.chmod(0o755)
    assert code == 1 and "permission denied" in err[0]


# ---------------------------------------------------------------------------------------------
# Storage errors are ours: a full disk during a run write or a checkpoint save.


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (needs root and mount rights), else skip."""
    mount = tmp_path / "disk"
    mount.mkdir()
    ok = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
    )
    if ok.returncode != 0:
        pytest.skip("cannot mount a tmpfs here; test_store.py patches the writer instead")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as err:
                assert err.errno == errno.ENOSPC
    return filler


@pytest.mark.parametrize("where", ["run_write", "checkpoint"])
def test_full_disk_is_a_store_write_error_and_keeps_complete_runs(
    small_disk, factory, reference, monkeypatch, where
):
    store = new_store(small_disk / "s", factory)
    filler = None

    def fill_at(group, step):
        nonlocal filler
        if where == "run_write" and (group, step) == (1, 4):
            filler = _fill(small_disk)

    save = RunWriter.save_checkpoint

    def fill_then_save(self, step, trainable, learning_rate):
        nonlocal filler
        if where == "checkpoint" and (self.run, step) == (2, 6) and filler is None:
            filler = _fill(small_disk)
        return save(self, step, trainable, learning_rate)

    monkeypatch.setattr(RunWriter, "save_checkpoint", fill_then_save)
    what = "loss rows of run 2" if where == "run_write" else "the checkpoint of step 6 of run 2"
    with pytest.raises(StoreWriteError) as err:
        produce_runs(factory, store, on_chunk=fill_at, **PRODUCE)
    message = str(err.value)
    assert what in message and "No space left on device" in message, message
    assert "free there" in message and str(store.path) in message
    assert "\n" not in message
    assert_store_sound(store.path, reference, runs=(0, 1))
    filler.unlink()  # space freed: the job resumes
    produce_runs(factory, store, **PRODUCE)
    assert_store_sound(store.path, reference)


def test_checkpoint_storage_failure_is_wrapped_without_tmpfs(tmp_path, factory, monkeypatch):
    """Where no tmpfs can be mounted: the file system's error for a full disk, raised by
    ``fsync`` of a checkpoint file (as with delayed allocation), patched in."""
    store = new_store(tmp_path / "s", factory)
    real = os.fsync

    def fsync(fd):
        if "step_" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StoreWriteError, match=r"checkpoint of step 0 of run 0 .*No space left"):
        produce_runs(factory, store, **PRODUCE)
    assert not list((store.run_dir(0) / "checkpoints").iterdir())  # no half checkpoint left


# ---------------------------------------------------------------------------------------------
# Folders replaced atomically: SIGKILL while a saved simulator is replaced.

_SAVER = """
import sys
import numpy as np
import simfluence_jax.fileio.files as files
from simfluence_jax.simulators.io import save_simulator
from simfluence_jax.simulators.linear import LinearSimulator

path, exchange, mode = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
if not exchange:  # as on a system without renameat2(RENAME_EXCHANGE): rename aside instead
    files._exchange = lambda a, b: False
sims = [LinearSimulator(A=np.full((40, 3000), v, np.float32), B=np.full((40, 3000), v, np.float32),
                        seen=np.ones(3000, bool)) for v in (1.0, 2.0)]
save_simulator(sims[0], path)
if mode == "between_renames":
    import os, signal
    rename = os.rename
    def rename_then_die(a, b):
        rename(a, b)
        if ".old." in str(b):
            os.kill(os.getpid(), signal.SIGKILL)
    os.rename = rename_then_die
    save_simulator(sims[1], path)
print("ready", flush=True)
i = 1
while True:
    save_simulator(sims[i % 2], path)
    i += 1
"""


def _saver(path, *, exchange: bool, mode: str = "loop"):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", _SAVER, str(path), "1" if exchange else "0", mode]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def _version(path) -> float:
    sim = load_simulator(path)
    values = np.unique(np.asarray(sim.A))
    assert values.size == 1 and values[0] in (1.0, 2.0)
    return float(values[0])


def test_killed_while_replacing_a_saved_simulator_the_old_or_new_version_loads(tmp_path):
    path = tmp_path / "sims" / "linear"
    # deterministic: killed after the old folder was renamed aside, before the new one went in
    proc = _saver(path, exchange=False, mode="between_renames")
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not path.exists()  # the window: only the set-aside old version exists
    assert _version(path) == 1.0  # readers find it
    seen = set()
    rng = np.random.default_rng(0)
    for k in range(6):  # random kills mid-loop, both ways of swapping
        proc = _saver(path, exchange=k % 2 == 0)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.0, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        seen.add(_version(path))
    assert seen <= {1.0, 2.0}
    save_simulator(load_simulator(path), path)  # the next save cleans up after the killed ones
    leftovers = [p.name for p in path.parent.iterdir() if p.name != "linear"]
    assert leftovers == [], leftovers


# ---------------------------------------------------------------------------------------------
# Permissions follow the umask; temporaries of killed saves are removed.


def test_saved_files_and_folders_follow_the_umask(tmp_path, originals):
    old = os.umask(0o002)
    try:
        runs = RunSet.load(originals / "runset")
        path = runs.save(tmp_path / "runset")
        sim = save_simulator(load_simulator(originals / "sim"), tmp_path / "sim")
        fileio.atomic_write(tmp_path / "file.txt", "x")
    finally:
        os.umask(old)
    for folder in (path, sim):
        assert folder.stat().st_mode & 0o777 == 0o775
        for f in folder.iterdir():
            assert f.stat().st_mode & 0o777 == 0o664, f
    assert (tmp_path / "file.txt").stat().st_mode & 0o777 == 0o664


def test_temporaries_of_a_killed_merge_are_removed_by_the_next_save(tmp_path, originals):
    runs = RunSet.load(originals / "runset")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".runset.new.{dead}@{fileio.hostname()}~0badc0de"
    live = tmp_path / f".runset.new.{os.getpid()}@{fileio.hostname()}~0badc0de"
    other_host = tmp_path / f".runset.new.{dead}@elsewhere~0badc0de"
    for p in (stale, live, other_host):
        p.mkdir()
    runs.save(tmp_path / "runset")
    assert not stale.exists() and live.exists() and other_host.exists()
    assert RunSet.load(tmp_path / "runset").num_runs == runs.num_runs


def test_git_revision_has_one_type():
    rev = fileio.git_revision()
    assert isinstance(rev, str) and rev
    assert fileio.git_revision("/") == "unknown"
    assert fileio.split_revision("abc+dirty") == ("abc", True)
