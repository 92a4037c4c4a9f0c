"""Output folders: one writer each (``--wait``), ``--overwrite`` that replaces only what we
wrote, writers that follow the umask, and the small command-line edges (``--out .``, a gin
typo)."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from simfluence_jax import cli, outputs
from simfluence_jax.locks import FileLock
from simfluence_jax.logger import RunLogger
from simfluence_jax.runs import RunSet
from simfluence_jax.synthetic import make_problem

SPLIT = [
    "--gin.FitConfig.num_fit=8",
    "--gin.FitConfig.num_val=1",
    "--gin.FitConfig.num_heldout=3",
    "--gin.FitConfig.simulators=('linear', 'constant')",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outputs")
    return make_problem(num_train=30, num_test=6, num_runs=12, seed=0).runs.save(tmp / "runset")


def _fit(runs, out, *extra):
    return cli.main(["fit", "--runs", str(runs), "--out", str(out), *SPLIT, *extra])


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_folder_in_use_is_refused_naming_the_holder_and_the_wait_option(saved, tmp_path, capsys):
    out = tmp_path / "sims"
    holder = FileLock(outputs.lock_file(out), what=f"the output folder {out}",
                      doing="simfluence fit").acquire()  # fmt: skip
    try:
        assert _fit(saved, out) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        assert f"the output folder {out} is being written by another process" in err
        assert f"pid {os.getpid()}" in err and "simfluence fit" in err
        assert "--wait" in err and "wait=True" not in err
        assert not out.exists()  # nothing written, not even the folder
        timer = threading.Timer(1.0, holder.release)
        timer.start()
        assert _fit(saved, out, "--wait", "60") == 0
        timer.join()
    finally:
        holder.release()
    assert (out / "linear" / "meta.json").exists() and (out / "operative_config.gin").exists()
    assert _fit(saved, out) == 0  # a folder we wrote is ours to write again


def test_a_folder_we_did_not_write_is_never_touched(saved, tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("my notes")
    before = _listing(user)
    assert _fit(saved, user) == 1
    assert "not empty and was not written by simfluence_jax (it holds notes.txt)" in (
        capsys.readouterr().err
    )
    argv = ["import", "gptfluence", str(tmp_path / "nothing"), "--out", str(user)]
    assert cli.main([*argv, "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "is not a run set written by simfluence_jax (it holds notes.txt)" in err
    assert "not replaced, even with --overwrite" in err
    assert _listing(user) == before and (user / "notes.txt").read_text() == "my notes"

    log = RunLogger(tmp_path / "log", num_test=2, num_train=4)
    log.start_run([1.0, 1.0])
    log.log_step([0, 1], [0.5, 0.5])
    log.end_run()
    log.close()
    logged = _listing(tmp_path / "log")
    assert cli.main([*argv[:3], "--out", str(tmp_path / "log"), "--overwrite"]) == 1
    assert "holds a RunLogger's logs" in capsys.readouterr().err
    assert _listing(tmp_path / "log") == logged


def test_import_replaces_only_its_own_run_set(tmp_path, capsys):
    from simfluence_jax.importers import write_gptfluence

    five = make_problem(num_train=20, num_test=4, num_runs=5, seed=1).runs
    three = make_problem(num_train=20, num_test=4, num_runs=3, seed=2).runs
    for name, runs in (("five", five), ("three", three)):
        write_gptfluence(runs, tmp_path / name)
    out = tmp_path / "imported"
    out.mkdir()  # an empty folder is as good as none
    argv = ["import", "gptfluence"]
    assert cli.main([*argv, str(tmp_path / "five"), "--out", str(out)]) == 0
    assert cli.main([*argv, str(tmp_path / "three"), "--out", str(out)]) == 1
    assert "already holds a run set; pass --overwrite" in capsys.readouterr().err
    assert RunSet.load(out).num_runs == 5
    assert cli.main([*argv, str(tmp_path / "three"), "--out", str(out), "--overwrite"]) == 0
    back = RunSet.load(out)
    assert back.num_runs == 3
    np.testing.assert_array_equal(back.losses, three.losses)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".imported.lock"]


def test_out_dot_and_gin_typos_are_clear(saved, tmp_path, monkeypatch, capsys):
    work = tmp_path / "here"
    work.mkdir()
    monkeypatch.chdir(work)
    assert _fit(saved, ".") == 0
    assert (work / "linear" / "meta.json").exists()
    assert _fit(saved, "", "--gin.FitConfig.l2_gridd=3") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "doesn't have a parameter named 'l2_gridd'" in err and "FitConfig.l2_gridd=3" in err
    with pytest.raises(ValueError, match="must be a folder with a name"):
        outputs.resolve("/")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        outputs.resolve(saved / "meta.json")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_writers_follow_the_umask(saved, tmp_path, umask):
    from simfluence_jax.importers import write_gptfluence

    old = os.umask(umask)
    try:
        log = RunLogger(tmp_path / "log", num_test=2, num_train=4)
        log.start_run([1.0, 1.0])
        log.log_step([0, 1], [0.5, 0.5])
        log.end_run()
        runs = log.close()
        runs.save(tmp_path / "runset")
        assert _fit(saved, tmp_path / "sims") == 0
        argv = ["report", "--runs", str(saved), "--simulators", str(tmp_path / "sims")]
        assert cli.main([*argv, "--out", str(tmp_path / "report"), *SPLIT]) == 0
        write_gptfluence(runs, tmp_path / "gpt")
        argv = ["import", "gptfluence", str(tmp_path / "gpt"), "--out", str(tmp_path / "imp")]
        assert cli.main(argv) == 0
    finally:
        os.umask(old)
    for folder in ("log", "runset", "sims", "report", "gpt", "imp"):
        for path in [tmp_path / folder, *(tmp_path / folder).rglob("*")]:
            if path.name == "LOCK":
                continue  # a lock file must stay writable by whoever takes the lock next
            want = (0o777 if path.is_dir() else 0o666) & ~umask
            assert path.stat().st_mode & 0o777 == want, (path, oct(path.stat().st_mode))


def _generate(out, num_runs):
    return subprocess.Popen(
        [sys.executable, "-m", "simfluence_jax.cli", "generate", "--gin_file", "tiny_test.gin",
         "--out", str(out), "--no_progress", f"--gin.RunsConfig.num_runs={num_runs}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_two_generate_processes_on_one_folder(tmp_path):
    out = tmp_path / "runs"
    first = _generate(out, 4)
    try:
        lock = outputs.lock_file(out)
        deadline = time.monotonic() + 240
        # The first process locks the folder, then writes its operative config: wait for
        # both, or a loaded machine catches it between the two.
        config_file = out / "operative_config.gin"
        while (
            f'"pid": {first.pid}' not in (lock.read_text() if lock.exists() else "")
            or not config_file.exists()
        ):
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first generate never took the folder"
            time.sleep(0.2)
        config = config_file.read_text()
        second = _generate(out, 8)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 1, err[-3000:]
        assert "is being written by another process" in err and f"pid {first.pid}" in err
        assert "--wait" in err and "wait=True" not in err
        assert (out / "operative_config.gin").read_text() == config  # refused before writing
        _, err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, err[-3000:]
    assert RunSet.load(out / "runset").num_runs == 4
    assert "RunsConfig.num_runs = 4" in (out / "operative_config.gin").read_text()
