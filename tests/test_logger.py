"""RunLogger: a framework-free run logger that survives SIGKILL, and its README example.

The kill test trains logistic regression by SGD on scikit-learn's bundled digits in a
subprocess (``tests/logger_worker.py``, with JAX and Flax blocked), kills it mid-run,
resumes it, and checks the record equals an uninterrupted run's; then fits and evaluates.
"""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from simfluence_jax import evaluate, fit_simulator
from simfluence_jax.logger import RunLogger
from simfluence_jax.runs import RunSet

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("logger_worker.py")
BLOCK_JAX = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = ("jax", "jaxlib", "flax")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{name} is blocked")
    sys.meta_path.insert(0, Block())
    sys.path.insert(0, __ROOT__)
    """
)
NO_JAX_LEFT = "\nassert not [m for m in sys.modules if m.split('.')[0] in BLOCKED]\n"


def _python(code: str, cwd: Path):
    return subprocess.run(
        [sys.executable, "-c", BLOCK_JAX.replace("__ROOT__", repr(str(ROOT))) + code + NO_JAX_LEFT],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _worker(log: Path, *args: str):
    return subprocess.run(
        [sys.executable, str(WORKER), "--log", str(log), *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_killed_training_loop_resumes_to_the_same_record_then_fits(tmp_path):
    whole = _worker(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _worker(tmp_path / "killed", "--kill-after", "17")  # run 1, after its step 5
    assert killed.returncode == -9, killed.stderr[-3000:]
    runs_dir = tmp_path / "killed" / "runs"
    assert (runs_dir / "run_000000" / "COMPLETE").exists()
    assert not (runs_dir / "run_000001" / "COMPLETE").exists()
    assert len((runs_dir / "run_000001" / "steps.jsonl").read_text().splitlines()) == 5
    with pytest.raises(ValueError, match="was logged with metadata"):  # other settings
        RunLogger(tmp_path / "killed", num_test=20, num_train=60)
    resumed = _worker(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "run 1: replaying 5 logged steps" in resumed.stdout

    a, b = RunSet.load(tmp_path / "whole"), RunSet.load(tmp_path / "killed")
    assert (a.num_runs, a.num_steps, a.batch_size, a.num_train, a.num_test) == (6, 12, 4, 60, 20)
    np.testing.assert_array_equal(a.batches, b.batches)
    np.testing.assert_array_equal(a.losses, b.losses)
    np.testing.assert_array_equal(a.learning_rates, b.learning_rates)
    np.testing.assert_allclose(a.learning_rates[0], np.linspace(0.5, 0.05, 12), rtol=1e-6)
    assert b.metadata["task"] == "digits 0-4 vs 5-9"

    fit, val, heldout = b.split(4, 1, 1)
    linear = fit_simulator("linear", fit, validation=val)
    scores = evaluate(linear, heldout)
    assert np.isfinite(scores["mse_mean"])
    assert scores["mse_mean"] < evaluate(fit_simulator("constant", fit), heldout)["mse_mean"]


def test_logger_and_importers_run_without_jax(tmp_path):
    code = textwrap.dedent(
        """
        import numpy as np
        from simfluence_jax.logger import RunLogger
        from simfluence_jax.importers import read_gptfluence, write_gptfluence
        from simfluence_jax.runs import RunSet
        log = RunLogger("log", num_test=3, test_ids=["a", "b", "c"])
        for run in range(2):
            log.start_run(initial_losses=[1.0, 2.0, 3.0])
            for t in range(4):
                log.log_step([t, t + 1], np.full(3, 1.0 / (t + 2)), learning_rate=0.1)
            log.end_run()
        runs = log.close()
        assert RunSet.load("log").num_runs == 2
        back = read_gptfluence(write_gptfluence(runs, "gpt"))
        assert (back.batches == runs.batches).all()
        print("ok", runs)
        """
    )
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok RunSet(R=2, T=4, B=2, N=5, M=3)" in out.stdout


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if "RunLogger(" in b]
    assert len(found) == 1, "README should hold one RunLogger example"
    return found[0]


def test_readme_example_runs_with_numpy_only(tmp_path):
    code = _readme_example()
    out = _python(code + "\nprint(runs)\n", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    comment = re.search(r"# (RunSet\(.*?\))", code).group(1)
    assert comment in out.stdout
    assert repr(RunSet.load(tmp_path / "runs" / "logreg")) == comment
    again = _python(code + "\nprint(runs)\n", tmp_path)  # all runs complete: nothing to redo
    assert again.returncode == 0 and comment in again.stdout


# ---------------------------------------------------------------------------------------------
# In-process checks of the log format and the errors.


def _log_run(log, L0, steps, *, lr=None):
    log.start_run(initial_losses=L0)
    for batch, losses in steps:
        log.log_step(batch, losses, learning_rate=lr)
    return log.end_run()


def _steps(seed, T=5, M=3, B=2, N=10):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, N, B), rng.random(M) + 0.1) for _ in range(T)]


def test_torn_last_line_is_cut_and_the_run_replays(tmp_path):
    log = RunLogger(tmp_path, num_test=3, num_train=10)
    _log_run(log, [1.0, 1.0, 1.0], _steps(0))
    steps = _steps(1)
    log.start_run(initial_losses=[2.0, 2.0, 2.0])
    for batch, losses in steps[:3]:
        log.log_step(batch, losses)
    log.release()  # the process dies while writing step 4 (the kernel drops its lock):
    steps_file = tmp_path / "runs" / "run_000001" / "steps.jsonl"
    with open(steps_file, "ab") as f:
        f.write(b'{"step": 4, "batch": [3, ')

    log = RunLogger(tmp_path, num_test=3, num_train=10)
    assert log.num_complete == 1
    assert log.start_run(initial_losses=[2.0, 2.0, 2.0]) == 3
    assert steps_file.read_bytes().endswith(b"}\n")  # the torn line is gone
    with pytest.raises(ValueError, match="replayed batch .* differs from the logged one"):
        log.log_step(steps[0][0] + 1, steps[0][1])
    for batch, losses in steps:
        log.log_step(batch, losses)
    log.end_run()
    runs = log.close()
    expected = np.stack([[b for b, _ in _steps(0)], [b for b, _ in steps]])
    np.testing.assert_array_equal(runs.batches, expected)
    np.testing.assert_array_equal(runs.losses[1, 1:], np.float32([x for _, x in steps]))
    assert runs.learning_rates is None
    _assert_loads_as(tmp_path, runs)


def test_skip_logged_steps_when_the_loop_restores_its_own_checkpoint(tmp_path):
    log = RunLogger(tmp_path, num_test=3)
    steps = _steps(2)
    log.start_run(initial_losses=[1.0, 1.0, 1.0])
    for batch, losses in steps[:2]:
        log.log_step(batch, losses, learning_rate=0.5)
    log.release()  # the process dies
    log = RunLogger(tmp_path, num_test=3)
    assert log.start_run(initial_losses=[1.0, 1.0, 1.0], skip_logged=True) == 2
    for batch, losses in steps[2:]:
        log.log_step(batch, losses, learning_rate=0.5)
    log.end_run()
    runs = log.close()
    np.testing.assert_array_equal(runs.batches[0], [b for b, _ in steps])
    np.testing.assert_array_equal(runs.learning_rates, np.full((1, 5), 0.5, np.float32))


def _assert_loads_as(path, runs):
    loaded = RunSet.load(path)
    np.testing.assert_array_equal(loaded.batches, runs.batches)
    np.testing.assert_array_equal(loaded.losses, runs.losses)
    assert loaded.metadata == runs.metadata


def test_schedules_ragged_batches_and_names(tmp_path):
    log = RunLogger(tmp_path, num_test=2, train_ids=list("abcdef"), test_ids=["x", "y"])
    log.start_run(initial_losses=[1.0, 2.0], learning_rates=[0.3, 0.2, 0.1])
    log.log_step(np.array([0, 1, 2]), [0.9, 1.9])
    log.log_step([3, -1, -1], [0.8, 1.8], learning_rate=0.2)  # -1 pads; rate as scheduled
    with pytest.raises(ValueError, match="learning_rate 0.5 differs from the schedule's 0.1"):
        log.log_step([4], [0.7, 1.7], learning_rate=0.5)
    log.log_step([4, 4], [0.7, 1.7])
    log.end_run()
    runs = log.close()
    np.testing.assert_array_equal(runs.batches[0], [[0, 1, 2], [3, -1, -1], [4, 4, -1]])
    np.testing.assert_allclose(runs.learning_rates, [[0.3, 0.2, 0.1]])
    assert runs.train_ids.tolist() == list("abcdef") and runs.test_ids.tolist() == ["x", "y"]


def test_errors_name_the_problem(tmp_path):
    log = RunLogger(tmp_path, num_test=2, num_train=5)
    with pytest.raises(ValueError, match="no run is open; call start_run"):
        log.log_step([0], [1.0, 1.0])
    with pytest.raises(ValueError, match="initial_losses must hold num_test = 2 losses, got 3"):
        log.start_run(initial_losses=[1.0, 1.0, 1.0])
    log.start_run(initial_losses=[1.0, 1.0])
    with pytest.raises(ValueError, match="run 0 is still open"):
        log.start_run(initial_losses=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"step 1: losses: the loss of test example 1 is nan"):
        log.log_step([0], [1.0, np.nan])
    with pytest.raises(ValueError, match="step 1: training id 5 is outside the pool"):
        log.log_step([0, 5], [1.0, 1.0])
    with pytest.raises(ValueError, match="step 1: the batch is empty"):
        log.log_step([-1, -1], [1.0, 1.0])
    with pytest.raises(ValueError, match="batch_ids must be integers"):
        log.log_step([0.5], [1.0, 1.0])
    with pytest.raises(ValueError, match="run 0 has no steps"):
        log.end_run()
    log.log_step([0], [0.5, 0.5], learning_rate=0.1)
    with pytest.raises(ValueError, match="give a learning_rate at every step of a run or at none"):
        log.log_step([1], [0.4, 0.4])
    with pytest.raises(ValueError, match="run 0 is open; call end_run"):
        log.close()
    log.end_run()
    log.release()
    with pytest.raises(ValueError, match=r"was logged with num_test = 2, not 3"):
        RunLogger(tmp_path, num_test=3, num_train=5)
    with pytest.raises(ValueError, match="holds no complete run"):
        RunLogger(tmp_path / "empty", num_test=1).close()


def test_different_lengths_need_pad_and_interrupted_runs_are_left_out(tmp_path):
    log = RunLogger(tmp_path, num_test=3, num_train=10)
    _log_run(log, [1.0] * 3, _steps(0, T=5))
    _log_run(log, [1.0] * 3, _steps(1, T=4))
    with pytest.raises(
        ValueError, match=r"run 1: the run has 4 steps but run 0 has 5; .* pad=True"
    ):
        log.close()
    log.start_run(initial_losses=[1.0] * 3)  # interrupted, never resumed
    log.log_step([1], [0.5] * 3)
    log.release()  # the process dies
    log = RunLogger(tmp_path, num_test=3, num_train=10)
    with pytest.warns(RuntimeWarning, match="run 2 .* was interrupted and is left out"):
        runs = log.close(pad=True)
    assert runs.num_runs == 2 and runs.num_steps == 4
    assert runs.metadata["logged_steps"] == [5, 4]


def test_a_run_damaged_after_it_ended_is_detected(tmp_path):
    log = RunLogger(tmp_path, num_test=3, num_train=10)
    _log_run(log, [1.0] * 3, _steps(0))
    steps_file = tmp_path / "runs" / "run_000000" / "steps.jsonl"
    lines = steps_file.read_text().splitlines()
    step = json.loads(lines[0])
    step["losses"][0] = 9.0
    steps_file.write_text("\n".join([json.dumps(step), *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="does not match its completion checksum"):
        log.close()


# One writer, atomic close ---------------------------------------------------------------------


def test_a_second_process_on_a_log_in_use_is_refused_and_the_first_record_is_whole(tmp_path):
    go = tmp_path / "go"
    slow = subprocess.Popen(
        [sys.executable, str(WORKER), "--log", str(tmp_path / "log"), "--hold", str(go)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert slow.stdout.readline().strip() == "logging"
        second = _worker(tmp_path / "log")
        assert second.returncode != 0
        last = second.stderr.strip().splitlines()[-1]
        assert "StoreBusyError" in last and f"pid {slow.pid}" in last, last
        assert "logging runs" in last and "wait=True" in last
        go.touch()
        out, err = slow.communicate(timeout=300)
    finally:
        slow.kill()
    assert slow.returncode == 0, err[-3000:]
    whole = _worker(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = RunSet.load(tmp_path / "whole"), RunSet.load(tmp_path / "log")
    assert b.num_runs == 6
    np.testing.assert_array_equal(a.batches, b.batches)
    np.testing.assert_array_equal(a.losses, b.losses)
    np.testing.assert_array_equal(a.learning_rates, b.learning_rates)


def test_one_logger_per_path_in_a_process_and_waiting_for_it(tmp_path):
    import os
    import threading

    from simfluence_jax.locks import StoreBusyError

    first = RunLogger(tmp_path, num_test=3, num_train=10)
    busy = rf"run log {re.escape(str(tmp_path))} .*pid {os.getpid()}"
    with pytest.raises(StoreBusyError, match=busy):
        RunLogger(tmp_path, num_test=3, num_train=10)
    _log_run(first, [1.0] * 3, _steps(0))  # the refused one changed nothing
    timer = threading.Timer(0.5, first.release)
    timer.start()
    second = RunLogger(tmp_path, num_test=3, num_train=10, wait=30)
    timer.join()
    assert second.num_complete == 1
    with pytest.raises(ValueError, match="was closed; open a new RunLogger"):
        first.start_run([1.0] * 3)
    runs = second.close()
    assert runs.num_runs == 1
    with pytest.raises(ValueError, match="was closed"):
        second.close()
    with RunLogger(tmp_path, num_test=3, num_train=10) as third:  # close released the lock
        assert third.num_complete == 1
    RunLogger(tmp_path, num_test=3, num_train=10).release()  # and so did the with block


CLOSE_KILLED = """
import os, signal
import numpy as np
from simfluence_jax.logger import RunLogger
log = RunLogger({path!r}, num_test=3, num_train=10)
rng = np.random.default_rng(7)
for _ in range(2):
    log.start_run(initial_losses=[1.0, 1.0, 1.0])
    for t in range(5):
        log.log_step(rng.integers(0, 10, 2), rng.random(3) + 0.1)
    log.end_run()
calls = []
real_replace = os.replace
def replace(src, dst):
    calls.append(dst)
    if len(calls) == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.replace = replace
log.close()
"""


@pytest.mark.parametrize("kill_at", [1, 2])
def test_a_kill_inside_close_leaves_the_old_record_and_the_next_open_cleans_up(tmp_path, kill_at):
    old = RunLogger(tmp_path, num_test=3, num_train=10)
    _log_run(old, [1.0] * 3, _steps(0))
    _log_run(old, [1.0] * 3, _steps(1))
    old_runs = old.close()
    killed = _python(CLOSE_KILLED.format(path=str(tmp_path), kill_at=kill_at), tmp_path)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temporaries were left
    _assert_loads_as(tmp_path, old_runs)  # the old record whole, not a mix

    log = RunLogger(tmp_path, num_test=3, num_train=10)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    new_runs = log.close()
    assert new_runs.num_runs == 4
    _assert_loads_as(tmp_path, new_runs)
    assert len(list(tmp_path.glob("arrays*.npz"))) == 1


def test_a_folder_whose_arrays_and_metadata_disagree_is_refused(tmp_path):
    log = RunLogger(tmp_path / "a", num_test=3, num_train=10)
    _log_run(log, [1.0] * 3, _steps(0))
    one = log.close()
    log = RunLogger(tmp_path / "a", num_test=3, num_train=10)
    _log_run(log, [1.0] * 3, _steps(1))
    _log_run(log, [1.0] * 3, _steps(2))
    log.close()
    # What the old close() could leave: the arrays of one save next to the metadata of another.
    one.save(tmp_path / "b")
    (tmp_path / "a" / "meta.json").write_bytes((tmp_path / "b" / "meta.json").read_bytes())
    with pytest.raises(ValueError, match=r"arrays.npz: run set arrays file is missing"):
        RunSet.load(tmp_path / "a")
    arrays = next((tmp_path / "a").glob("arrays.*.npz"))
    arrays.rename(tmp_path / "a" / "arrays.npz")
    with pytest.raises(ValueError, match=r"arrays.npz does not match .*meta.json"):
        RunSet.load(tmp_path / "a")
