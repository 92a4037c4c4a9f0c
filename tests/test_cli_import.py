"""``simfluence import``: runs logged elsewhere become a saved run set that ``fit``,
``evaluate``, ``simulate`` and ``report`` use as they use our own; bundled gin configs are
found by name."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simfluence_jax import cli
from simfluence_jax.importers import GPTFLUENCE_LOSSES, write_gptfluence
from simfluence_jax.runs import RunSet
from simfluence_jax.synthetic import make_problem

SPLIT = [
    "--gin.FitConfig.num_fit=8",
    "--gin.FitConfig.num_val=1",
    "--gin.FitConfig.num_heldout=3",
    "--gin.FitConfig.simulators=('linear', 'constant', 'mean')",
]


ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, from any directory
    return subprocess.run(
        [sys.executable, "-m", "simfluence_jax.cli", *args],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """12 runs in GPTfluence's published layout (losses from step 1), one folder each."""
    tmp = tmp_path_factory.mktemp("import")
    runs = make_problem(num_train=30, num_test=6, num_runs=12, seed=0).runs
    write_gptfluence(runs, tmp / "rte", first_step=1)
    return tmp, runs


def test_import_gptfluence_then_fit_evaluate_simulate_report(logged, capsys):
    tmp, source = logged
    imported = tmp / "imported"
    assert cli.main(["import", "gptfluence", str(tmp / "rte"), "--out", str(imported)]) == 0
    assert f"saved to {imported}" in capsys.readouterr().out
    runs = RunSet.load(imported)
    np.testing.assert_array_equal(runs.batches, source.batches)
    np.testing.assert_array_equal(runs.losses, source.losses)

    sims = tmp / "sims"
    assert cli.main(["fit", "--runs", str(imported), "--out", str(sims), *SPLIT]) == 0
    table_file = tmp / "table.json"
    argv = ["evaluate", "--runs", str(imported), "--simulators", str(sims), "--out"]
    assert cli.main([*argv, str(table_file), *SPLIT]) == 0
    table = json.loads(table_file.read_text())
    assert table["linear"]["mse_mean"] < table["constant"]["mse_mean"]
    curve = tmp / "cf.csv"
    argv = ["simulate", "--simulators", str(sims), "--runs", str(imported), "--remove", "1,2"]
    assert cli.main([*argv, "--out", str(curve)]) == 0
    assert curve.read_text().startswith("curriculum,step,test_0")
    report = tmp / "report"
    argv = ["report", "--runs", str(imported), "--simulators", str(sims), "--out", str(report)]
    assert cli.main([*argv, *SPLIT]) == 0
    assert (report / "report.md").exists()


def test_import_accepts_run_dirs_or_a_glob_and_refuses_to_overwrite(logged):
    tmp, source = logged
    out = _run("import", "gptfluence", str(tmp / "rte" / "run_01*"), "--out", str(tmp / "g"))
    assert out.returncode == 0, out.stderr
    assert RunSet.load(tmp / "g").num_runs == 2  # run_010, run_011
    dirs = [str(tmp / "rte" / f"run_{r:03d}") for r in (3, 1)]
    assert cli.main(["import", "gptfluence", *dirs, "--out", str(tmp / "d")]) == 0
    runs = RunSet.load(tmp / "d")
    assert runs.metadata["runs"] == dirs and runs.metadata["first_step"] == 1
    again = _run("import", "gptfluence", *dirs, "--out", str(tmp / "d"))
    assert again.returncode == 1
    assert "already holds a run set; pass --overwrite" in again.stderr
    assert cli.main(["import", "gptfluence", *dirs, "--out", str(tmp / "d"), "--overwrite"]) == 0


def test_import_long_and_malformed_input_is_a_clear_error(tmp_path):
    losses, curricula = tmp_path / "losses.jsonl", tmp_path / "curricula.jsonl"
    rows = [{"run": r, "step": t, "test_id": j, "loss": 1.0 / (t + 1 + j + r)}
            for r in range(2) for t in range(4) for j in range(3)]  # fmt: skip
    losses.write_text("".join(json.dumps(x) + "\n" for x in rows))
    batches = [{"run": r, "step": t, "train_ids": f"{t};{t + r + 1}"}
               for r in range(2) for t in range(1, 4)]  # fmt: skip
    curricula.write_text("".join(json.dumps(x) + "\n" for x in batches))
    argv = ["import", "long", "--losses", str(losses), "--curricula", str(curricula)]
    assert cli.main([*argv, "--out", str(tmp_path / "ok")]) == 0
    runs = RunSet.load(tmp_path / "ok")
    assert (runs.num_runs, runs.num_steps, runs.batch_size, runs.num_test) == (2, 3, 2, 3)

    curricula.write_text("".join(json.dumps(x) + "\n" for x in batches if x["step"] != 2))
    out = _run(*argv, "--out", str(tmp_path / "bad"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"simfluence import: error: {curricula}:2: run '0': the batch of step 2" in out.stderr


def test_import_help_and_errors(logged):
    tmp, _ = logged
    out = _run("import", "--help")
    assert out.returncode == 0
    assert "Example:" in out.stdout and "simfluence import gptfluence" in out.stdout
    assert "gptfluence" in out.stdout and "long" in out.stdout
    (tmp / "broken").mkdir()
    write_gptfluence(make_problem(num_runs=1, seed=3).runs, tmp / "broken")
    path = tmp / "broken" / "run_000" / GPTFLUENCE_LOSSES
    path.write_text(path.read_text()[:-20])
    out = _run("import", "gptfluence", str(tmp / "broken"), "--out", str(tmp / "x"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{path}:8: not valid JSON" in out.stderr


def test_bundled_gin_configs_are_found_by_name_from_anywhere(tmp_path):
    quickstart = cli.GIN_CONFIGS / "experiments" / "quickstart.gin"
    assert quickstart.is_file()
    for name in ("quickstart.gin", "experiments/quickstart.gin",
                 "gin_configs/experiments/quickstart.gin"):  # fmt: skip
        assert cli.find_gin_file(name).resolve() == quickstart.resolve()
    with pytest.raises(ValueError, match="gin file nope.gin does not exist"):
        cli.find_gin_file("nope.gin")
    out = _run("fit", "--gin_file", "quickstart.gin", "--runs", "missing", "--out", "x",
               cwd=tmp_path)  # fmt: skip
    assert out.returncode == 1
    assert "no run set at missing" in out.stderr  # the gin file parsed; the runs are missing
