"""The simfluence CLI: help texts, clear errors without tracebacks, and the subcommands on a
saved synthetic run set (the end-to-end run with real training is in test_pipeline.py)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from simfluence_jax import cli
from simfluence_jax.runs import RunSet
from simfluence_jax.synthetic import make_problem


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "simfluence_jax.cli", *args], capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_help_says_what_each_subcommand_does_with_an_example():
    out = _run("--help")
    assert out.returncode == 0
    for sub in ("run", "generate", "fit", "evaluate", "simulate", "report"):
        assert sub in out.stdout
        sub_help = _run(sub, "--help")
        assert sub_help.returncode == 0
        assert "Example:" in sub_help.stdout and f"simfluence {sub}" in sub_help.stdout


def test_unknown_subcommand_is_a_clear_error():
    out = _run("bogus")
    assert out.returncode == 2
    assert "invalid choice: 'bogus'" in out.stderr and "Traceback" not in out.stderr


def test_missing_gin_binding_is_a_clear_error():
    out = _run("run", "--gin_file", "gin_configs/experiments/base.gin")
    assert out.returncode == 1
    assert "output_dir" in out.stderr and "REQUIRED" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    p = make_problem(num_train=30, num_test=6, num_runs=12, seed=0)
    path = p.runs.save(tmp / "runset")
    return tmp, path


def _split_args():
    return ["--gin.FitConfig.num_fit=8", "--gin.FitConfig.num_val=1",
            "--gin.FitConfig.num_heldout=3"]  # fmt: skip


def test_fit_evaluate_simulate_report_on_a_saved_run_set(saved, capsys):
    tmp, runs = saved
    sims = tmp / "sims"
    assert cli.main(["fit", "--runs", str(runs), "--out", str(sims), *_split_args()]) == 0
    assert (sims / "linear" / "meta.json").exists()
    table_file = tmp / "table.json"
    assert cli.main(["evaluate", "--runs", str(runs), "--simulators", str(sims),
                     "--out", str(table_file), *_split_args()]) == 0  # fmt: skip
    table = json.loads(table_file.read_text())
    assert set(table) >= {"linear", "additive", "constant", "mean", "shuffled"}
    assert all(np.isfinite(row["mse_mean"]) for row in table.values())
    curve = tmp / "cf.csv"
    in_run_0 = np.unique(RunSet.load(runs).batches[0])
    remove = ",".join(str(i) for i in in_run_0[in_run_0 >= 0][:4])
    assert (
        cli.main(
            [
                "simulate",
                "--simulators",
                str(sims),
                "--name",
                "linear",
                "--runs",
                str(runs),
                "--run",
                "0",
                "--remove",
                remove,
                "--out",
                str(curve),
            ]
        )
        == 0
    )
    assert "given curriculum" in capsys.readouterr().out
    assert curve.read_text().startswith("curriculum,step,test_0")
    report = tmp / "report"
    assert cli.main(["report", "--runs", str(runs), "--simulators", str(sims), "--out",
                     str(report), *_split_args()]) == 0  # fmt: skip
    assert (report / "report.md").exists() and (report / "results.csv").exists()


def test_unreadable_curriculum_file_is_a_clear_error(saved, tmp_path):
    tmp, runs = saved
    sims = tmp / "sims2"
    assert cli.main(["fit", "--runs", str(runs), "--out", str(sims), *_split_args()]) == 0
    bad = tmp_path / "curriculum.txt"
    bad.write_text("1 2 x 4\n")
    out = _run("simulate", "--simulators", str(sims), "--runs", str(runs),
               "--curriculum", str(bad))  # fmt: skip
    assert out.returncode == 1
    assert str(bad) in out.stderr and "Traceback" not in out.stderr
    missing = _run("simulate", "--simulators", str(sims), "--runs", str(runs),
                   "--curriculum", str(tmp_path / "nope.txt"))  # fmt: skip
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
