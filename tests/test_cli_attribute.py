"""``simfluence attribute``: the table of the most helpful (harmful) training examples of a
test example and the score matrix, on a saved run set with texts and on imported runs."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

import simfluence_jax as sj
from simfluence_jax import cli
from simfluence_jax.importers import write_gptfluence
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.io import load_simulator
from simfluence_jax.synthetic import make_problem

SPLIT = [
    "--gin.FitConfig.num_fit=8",
    "--gin.FitConfig.num_val=1",
    "--gin.FitConfig.num_heldout=3",
    "--gin.FitConfig.simulators=('linear', 'mean')",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run set whose pool and test examples have texts, and linear + mean fitted on it."""
    tmp = tmp_path_factory.mktemp("attribute")
    runs = make_problem(num_train=30, num_test=6, num_runs=12, seed=0).runs
    texts = {"train_texts": [f"training sentence number {i}" for i in range(30)],
             "test_texts": [f"test sentence {j}" for j in range(6)]}  # fmt: skip
    path = dataclasses.replace(runs, metadata={**runs.metadata, **texts}).save(tmp / "runset")
    assert cli.main(["fit", "--runs", str(path), "--out", str(tmp / "sims"), *SPLIT]) == 0
    return tmp, path


def _table(out: str) -> list[list[str]]:
    lines = out.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("rank"))
    return [line.split() for line in lines[start + 1 :]]


@pytest.mark.parametrize("direction", ["helpful", "harmful"])
def test_top_table_matches_the_api(saved, capsys, direction):
    tmp, path = saved
    argv = ["attribute", "--runs", str(path), "--simulators", str(tmp / "sims"), "--run", "10",
            "--test", "2", "--top", "5", "--horizon", "3", "--direction", direction]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "test sentence 2" in out and f"most {direction}" in out
    rows = _table(out)
    runs = RunSet.load(path)
    sim = load_simulator(tmp / "sims" / "linear")
    eff = sj.removal_effects(sim, runs.batches[10], runs.L0[10], horizon=3)
    ids, delta = sj.top(eff, 2, k=5, direction=direction)
    assert [int(r[1]) for r in rows] == ids.tolist()
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    np.testing.assert_allclose([float(r[2]) for r in rows], delta, atol=1e-5)
    assert all(" ".join(r[3:]).startswith("training sentence number") for r in rows)


def test_all_writes_the_score_matrix(saved, capsys):
    tmp, path = saved
    out = tmp / "scores" / "linear"
    argv = ["attribute", "--runs", str(path), "--simulators", str(tmp / "sims"), "--all",
            "--num_curricula", "20", "--seed", "3", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    assert "it helps" in capsys.readouterr().out
    back = sj.load_scores(out)
    runs = RunSet.load(path)
    sim = load_simulator(tmp / "sims" / "linear")
    want = sj.score_matrix(sim, runs, runs.L0[0], num_curricula=20, seed=3)
    np.testing.assert_allclose(back.scores, want, atol=1e-6)
    assert back.details["num_curricula"] == 20 and back.texts[4] == "training sentence number 4"
    assert out.with_suffix(".csv").read_text().startswith("# simfluence_jax attribution")


def test_imported_runs_have_no_texts(tmp_path, capsys):
    runs = make_problem(num_train=30, num_test=6, num_runs=12, seed=1).runs
    write_gptfluence(runs, tmp_path / "rte", first_step=1)
    imported, sims = tmp_path / "imported", tmp_path / "sims"
    assert cli.main(["import", "gptfluence", str(tmp_path / "rte"), "--out", str(imported)]) == 0
    assert cli.main(["fit", "--runs", str(imported), "--out", str(sims), *SPLIT]) == 0
    capsys.readouterr()
    argv = ["attribute", "--runs", str(imported), "--simulators", str(sims), "--test", "0"]
    assert cli.main(argv) == 0
    rows = _table(capsys.readouterr().out)
    assert len(rows) == 10 and all(len(r) == 3 for r in rows)


def test_bad_arguments_are_clear_errors(saved, capsys):
    tmp, path = saved
    base = ["attribute", "--runs", str(path), "--simulators", str(tmp / "sims")]
    for extra, message in [
        (["--test", "6"], "test index 6 is out of range for M = 6"),
        (["--test", "0", "--horizon", "0"], "horizon must be between 1"),
        (["--test", "0", "--run", "12"], "--run 12 out of range"),
        ([], "give --test"),
        (["--all"], "give --out"),
        (["--test", "0", "--name", "nope"], "no simulator 'nope'"),
    ]:
        assert cli.main(base + extra) == 1, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)


def test_help_has_an_example():
    out = subprocess.run([sys.executable, "-m", "simfluence_jax.cli", "attribute", "--help"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0
    assert "Example:" in out.stdout and "simfluence attribute" in out.stdout
