"""Reports: every file is written, its numbers equal metrics computed here with NumPy and
scipy (not through ``simfluence_jax.metrics``), divergence is survivable."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import spearmanr

import simfluence_jax as sj
from simfluence_jax import counterfactuals as cf
from simfluence_jax.reports import Counterfactual, best_by_metric, write_report
from simfluence_jax.synthetic import make_problem

NAMES = ("linear", "additive", "multiplicative", "constant", "mean", "shuffled")
GROUPS = {
    "linear": "fitted",
    "additive": "fitted",
    "multiplicative": "fitted",
    "constant": "control",
    "mean": "control",
    "shuffled": "control",
}


def _rho(a, b) -> float:
    """scipy's Spearman rho; 0 where it is undefined (a constant side), the documented
    convention of the report's metrics."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def reference_metrics(pred, true) -> dict[str, float]:
    """The report's metrics from their definitions (docs/design.md, section 6), written out:
    per-trajectory mean over steps 1..T of the squared / absolute error, then mean and std
    over the R x M trajectories; Spearman per run across test examples of the final loss
    and of its change; Spearman per test example across runs of the final loss."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    R, _, M = pred.shape
    err = pred[:, 1:] - true[:, 1:]
    values = {
        "mse": (err**2).mean(axis=1),
        "mae": np.abs(err).mean(axis=1),
        "final_spearman": [_rho(pred[r, -1], true[r, -1]) for r in range(R)],
        "change_spearman": [
            _rho(pred[r, -1] - pred[r, 0], true[r, -1] - true[r, 0]) for r in range(R)
        ],
        "per_example_spearman": [_rho(pred[:, -1, j], true[:, -1, j]) for j in range(M)],
    }
    out = {}
    for key, v in values.items():
        out[f"{key}_mean"], out[f"{key}_std"] = float(np.mean(v)), float(np.std(v))
    return out


@pytest.fixture(scope="module")
def problem():
    p = make_problem(num_train=24, num_test=6, num_runs=16, subset=16, noise=0.01, seed=3)
    fit, val, test = p.runs.split(10, 2, 4)
    sims = sj.fit_all(NAMES, fit, validation=val)
    preds = {n: sj.predict(s, test) for n, s in sims.items()}
    return p, test, sims, preds


def _counterfactual(p, test, sims, *, retrained=True):
    lin = sims["linear"]
    base = test.batches[0]
    j = 2
    ids = np.unique(cf.flatten(base))[:4]
    edited = cf.remove(base, ids)
    sim_traj = sj.simulate(lin, cf.stack([base, edited]), test.L0[0])
    T_edit = edited.shape[0]
    real = None
    if retrained:
        # The synthetic truth stands in for a real retraining on the edited curriculum.
        real = np.asarray(sj.simulate(p.truth, edited, test.L0[0]))[:, j]
    return Counterfactual(
        test_index=j,
        removed_ids=ids,
        observed=test.losses[0, :, j],
        simulated_original=sim_traj[0, :, j],
        simulated_edited=sim_traj[1, : T_edit + 1, j],
        retrained=real,
        test_text="a test sentence about films",
        removed_texts=[f"training text {i}" for i in ids],
        simulator="linear",
        run_index=0,
    )


def test_report_files_and_numbers(problem, tmp_path):
    p, test, sims, preds = problem
    out = write_report(
        tmp_path / "rep",
        heldout=test,
        predictions=preds,
        groups=GROUPS,
        counterfactual=_counterfactual(p, test, sims),
        config_text="fit.l2 = 0.01\n",
        test_texts=[f"test sentence number {j}" for j in range(test.num_test)],
        setup={"fitting runs": 10},
    )
    files = ["report.md", "results.json", "results.csv", "operative_config.gin"]
    files += ["trajectories.png", "per_step_error.png", "counterfactual.png"]
    for f in files:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    for f in files[-3:]:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp*")), "temporary files left behind"

    res = json.loads((out / "results.json").read_text())
    assert set(res["simulators"]) == set(NAMES)
    for n in NAMES:
        expected = reference_metrics(preds[n], test.losses)
        got = res["simulators"][n]["metrics"]
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (n, k)
        assert got["diverged_fraction"] == 0.0
        assert res["simulators"][n]["group"] == GROUPS[n]
        err = np.asarray(preds[n], np.float64) - test.losses
        curves = res["simulators"][n]["per_step_error"]
        np.testing.assert_allclose(curves["mse"], (err**2).mean(axis=(0, 2)), rtol=1e-9)
        np.testing.assert_allclose(curves["mae"], np.abs(err).mean(axis=(0, 2)), rtol=1e-9)
    assert res["sizes"] == {"R": 4, "T": 4, "B": 4, "N": 24, "M": 6}
    assert res["git_hash"] and res["date"]
    # The "best" entries are computed from the numbers, not named in advance.
    mses = {n: res["simulators"][n]["metrics"]["mse_mean"] for n in NAMES}
    assert res["best"]["mse"] == [min(mses, key=mses.get)]
    rhos = {n: res["simulators"][n]["metrics"]["final_spearman_mean"] for n in NAMES}
    assert max(rhos[n] for n in res["best"]["final_spearman"]) == max(rhos.values())
    c = res["counterfactual"]
    assert c["predicted_change"] == pytest.approx(
        c["simulated_edited"][-1] - c["simulated_original"][-1]
    )
    assert c["achieved_change"] == pytest.approx(c["retrained"][-1] - c["observed"][-1])
    H = min(8, len(c["observed"]) - 1, len(c["simulated_edited"]) - 1)
    w = c["window"]
    assert w["steps"] == H
    assert w["predicted_change"] == pytest.approx(
        np.mean(c["simulated_edited"][-H:]) - np.mean(c["simulated_original"][-H:])
    )
    assert w["achieved_change"] == pytest.approx(
        np.mean(c["retrained"][-H:]) - np.mean(c["observed"][-H:])
    )

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["simulator"] for r in rows] == list(res["simulators"])
    assert len(rows) == len(NAMES)
    for r in rows:
        assert float(r["mse_mean"]) == pytest.approx(mses[r["simulator"]], rel=1e-12)

    md = (out / "report.md").read_text()
    for n in NAMES:
        assert f"| {n} |" in md
    for png in ("trajectories.png", "per_step_error.png", "counterfactual.png"):
        assert f"]({png})" in md
    assert res["git_hash"] in md
    assert "```gin\nfit.l2 = 0.01\n```" in md
    assert (out / "operative_config.gin").read_text() == "fit.l2 = 0.01\n"
    best_mse = res["best"]["mse"][0]
    assert f"Lowest all-steps MSE: **{best_mse} [{GROUPS[best_mse]}]** at" in md
    assert (
        f"Predicted change of the final-step loss by **linear**: {c['predicted_change']:+.4f}" in md
    )
    achieved = "Achieved change of the final-step loss after retraining for real"
    assert f"{achieved}: {c['achieved_change']:+.4f}" in md
    assert f"averaged over the last {H} steps: {w['predicted_change']:+.4f}" in md
    assert f"averaged over the last {H} steps: {w['achieved_change']:+.4f}" in md
    # Without simulators there is no Attribution section and no scores file.
    assert "## Attribution" not in md and res["attribution"] is None
    assert not list(out.glob("attribution_scores.*"))
    assert "R = 4" in md and "N = 24" in md and "M = 6" in md


def test_diverged_simulator_is_reported_not_plotted(problem, tmp_path):
    _, test, _, preds = problem
    bad = np.array(preds["linear"], copy=True)
    bad[1, 3:, 0] = np.nan
    bad[2, 2:, 4] = np.inf
    huge = np.array(preds["additive"], copy=True)
    huge[0, -1, 1] = 1e9  # finite but beyond the divergence bound
    predictions = {"linear": preds["linear"], "broken": bad, "huge": huge}
    out = write_report(tmp_path, heldout=test, predictions=predictions)
    res = json.loads((out / "results.json").read_text())  # strict JSON: no NaN tokens
    broken = res["simulators"]["broken"]
    assert broken["diverged"] and broken["per_step_error"] is None
    assert broken["metrics"]["diverged_fraction"] == pytest.approx(2 / (4 * 6))
    assert broken["metrics"]["mse_mean"] is None  # infinite
    assert res["simulators"]["huge"]["diverged"]
    assert res["best"]["mse"] == ["linear"]
    assert res["trajectory_figure"]["simulators"] == ["linear"]
    md = (out / "report.md").read_text()
    assert "broken (diverged: 8.3%)" in md and "| diverged |" in md
    assert "left out of the figures" in md
    with open(out / "results.csv") as f:
        rows = {r["simulator"]: r for r in csv.DictReader(f)}
    assert float(rows["broken"]["mse_mean"]) == float("inf")


def test_all_diverged_gives_table_without_figures(problem, tmp_path):
    _, test, _, preds = problem
    bad = np.full_like(preds["linear"], np.nan)
    out = write_report(tmp_path, heldout=test, predictions={"nan": bad})
    assert (out / "report.md").is_file()
    assert not (out / "trajectories.png").exists()
    assert json.loads((out / "results.json").read_text())["best"] == {}


def test_writing_twice_replaces_the_report(problem, tmp_path):
    p, test, sims, preds = problem
    (tmp_path / "runs.txt").write_text("not ours")
    write_report(
        tmp_path, heldout=test, predictions=preds, counterfactual=_counterfactual(p, test, sims)
    )
    assert (tmp_path / "counterfactual.png").exists()
    subset = {n: preds[n] for n in ("linear", "constant")}
    write_report(tmp_path, heldout=test, predictions=subset, title="second")
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["simulators"]) == {"linear", "constant"} and res["title"] == "second"
    assert (tmp_path / "report.md").read_text().startswith("# second")
    assert not (tmp_path / "counterfactual.png").exists(), "stale figure left from first report"
    assert (tmp_path / "runs.txt").read_text() == "not ours"
    assert sorted(f.name for f in tmp_path.iterdir() if f.name.startswith(".")) == []


def test_given_table_rows_and_extra_tables(problem, tmp_path):
    p, test, sims, preds = problem
    table = sj.evaluate_all({"linear": sims["linear"]}, test)
    table["truth (noise floor)"] = sj.evaluate(p.truth, test)
    out = write_report(
        tmp_path,
        heldout=test,
        predictions={"linear": preds["linear"], "mean": preds["mean"]},
        table=table,
        exclude_from_best=["truth (noise floor)"],
        unseen_tables={"Unseen training examples": {"featurized": table["linear"]}},
        extra_sections=[("Runtime", "fit 1.0 s")],
        counterfactual=_counterfactual(p, test, sims, retrained=False),
    )
    res = json.loads((out / "results.json").read_text())
    assert list(res["simulators"]) == ["linear", "truth (noise floor)", "mean"]
    assert res["simulators"]["truth (noise floor)"]["per_step_error"] is None
    assert "truth (noise floor)" not in sum(res["best"].values(), [])
    md = (out / "report.md").read_text()
    assert "## Unseen training examples" in md and "| featurized |" in md
    assert "## Runtime\n\nfit 1.0 s" in md
    assert "No real retraining" in md
    assert res["counterfactual"]["achieved_change"] is None


def test_bad_input_raises(problem, tmp_path):
    _, test, _, preds = problem
    with pytest.raises(ValueError, match="shape"):
        write_report(tmp_path, heldout=test, predictions={"x": preds["linear"][:, :-1]})
    with pytest.raises(ValueError, match="groups"):
        write_report(tmp_path, heldout=test, predictions=preds, groups={"lnear": "fitted"})
    with pytest.raises(ValueError, match="nothing to report"):
        write_report(tmp_path, heldout=test, predictions={})
    with pytest.raises(ValueError, match="trajectory_run"):
        write_report(tmp_path, heldout=test, predictions=preds, trajectory_run=9)
    with pytest.raises(ValueError, match="test_texts"):
        write_report(tmp_path, heldout=test, predictions=preds, test_texts=["only one"])
    with pytest.raises(ValueError, match="example_ids"):
        write_report(tmp_path, heldout=test, predictions=preds, example_ids=[99])
    with pytest.raises(ValueError, match="examples"):
        write_report(tmp_path, heldout=test, predictions=preds, examples=0)
    assert not (tmp_path / "report.md").exists()
    T1 = test.num_steps + 1
    with pytest.raises(ValueError, match="simulated_original"):
        Counterfactual(0, [1], np.ones(T1), np.ones(T1 + 1), np.ones(T1))
    with pytest.raises(ValueError, match="retrained"):
        Counterfactual(0, [1], np.ones(T1), np.ones(T1), np.ones(T1), retrained=np.ones(3))
    with pytest.raises(ValueError, match="observed"):
        Counterfactual(0, [1], np.full(T1, np.nan), np.ones(T1), np.ones(T1))


def test_best_by_metric_ties_and_exclusions():
    rows = {
        "a": {"mse_mean": 1.0, "final_spearman_mean": 0.5},
        "b": {"mse_mean": 1.0, "final_spearman_mean": 0.9, "diverged_fraction": 0.1},
        "c": {"mse_mean": 2.0, "final_spearman_mean": 0.7},
        "ref": {"mse_mean": 0.1, "final_spearman_mean": 1.0},
    }
    best = best_by_metric(rows, exclude=["ref"])
    assert best == {"mse": ["a"], "final_spearman": ["c"]}
    rows["c"]["mse_mean"] = 1.0
    assert best_by_metric(rows, exclude=["ref"])["mse"] == ["a", "c"]


def test_reports_leave_the_matplotlib_backend_alone(problem, tmp_path):
    """Neither the core nor the reports import pyplot or switch the global backend."""
    # The raw rcParams entry: matplotlib.get_backend() would itself import pyplot to resolve it.
    code = (
        "import sys, matplotlib; raw = lambda: dict.__getitem__(matplotlib.rcParams, 'backend'); "
        "before = raw(); import simfluence_jax; "
        "assert 'matplotlib.pyplot' not in sys.modules, 'core imported pyplot'; "
        "import simfluence_jax.reports; from simfluence_jax.reports import plots; "
        "import numpy as np; plots.plot_per_step_error({'a': np.linspace(0, 1, 5)}); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'reports imported pyplot'; "
        "assert raw() == before, 'backend changed'; print('ok')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
