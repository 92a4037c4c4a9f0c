"""The fidelity matrix: one row's numbers on a table written in the test (every branch), and
two tiny rows end to end."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from simfluence_jax.fitting import MOMENTUM_GRID

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_tiny_rows_end_to_end(tmp_path):
    sys.path.insert(0, str(ROOT))
    from experiments import fidelity

    out, cache = tmp_path / "fid", tmp_path / "cache"
    argv = [
        "--gin_file", str(ROOT / "gin_configs/experiments/fidelity_tiny.gin"),
        f"--gin.Fidelity.output_dir='{out}'", f"--gin.Fidelity.cache_dir='{cache}'",
    ]  # fmt: skip
    assert fidelity.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 2
    for res in results.values():
        assert "error" not in res, res
        assert [s["seed"] for s in res["splits"]] == [0, 1]
        for s in res["splits"]:
            t = s["table"]
            assert s["linear"] in ("linear", "linear_kernel")
            assert s["control"] in ("constant", "mean", "shuffled")
            assert t[s["control"]]["mse_mean"] == min(
                t[c]["mse_mean"] for c in ("constant", "mean", "shuffled")
            )
            lin, grads = t[s["linear"]], ("tracin_cp_calibrated", "influence_calibrated")
            best_mse = min(t[g]["mse_mean"] for g in grads)
            assert s["mse_reduction"] == pytest.approx(1 - lin["mse_mean"] / best_mse)
            best_rho = max(t[g]["change_spearman_mean"] for g in grads)
            if best_rho > 0:
                assert s["spearman_ratio"] == pytest.approx(lin["change_spearman_mean"] / best_rho)
            skill = 1 - lin["mse_mean"] / t["mean"]["mse_mean"]
            assert s["mse_skill_vs_mean"] == pytest.approx(skill)
            assert s["beats_best_control_mse"] == (lin["mse_mean"] < t[s["control"]]["mse_mean"])
            assert all(math.isfinite(v["mse_mean"]) for v in t.values())
            paper = s["spearman_ratio"] >= 2.0 and s["mse_reduction"] >= 0.75
            assert s["meets_paper"] == paper
            assert s["kernel_momentum"] in MOMENTUM_GRID
        verdicts = {(s["beats_best_control_mse"], s["meets_paper"]) for s in res["splits"]}
        assert res["verdict_flips"] == (len(verdicts) > 1)
    report = (out / "report.md").read_text()
    assert all(name in report for name in results)
    assert (out / "ratios.png").exists() and (out / "operative_config.gin").exists()
    assert len(list((out / "figures").glob("*.png"))) == 2
    # A second call reuses the cached runs (nothing is trained again).
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert fidelity.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == stamps


# fidelity_row on a table written here, so every number it reports is checked against one
# computed in the test (the metrics themselves are tested in tests/test_metrics.py).


class _Sim:
    def __init__(self, val_mse: float, momentum: float = 0.0):
        self.val_mse, self.momentum = val_mse, momentum


def _row(monkeypatch, table, *, val=(0.2, 0.1), momentum=0.7):
    from simfluence_jax.pipeline import study
    from simfluence_jax.runs import RunSet

    sims = {n: _Sim(1.0) for n in study.ROW_SIMULATORS}
    sims["linear"], sims["linear_kernel"] = _Sim(val[0]), _Sim(val[1], momentum)
    monkeypatch.setattr(study, "scores", lambda s, runs: table)
    monkeypatch.setattr(study, "rollout_mse", lambda sim, runs: sim.val_mse)
    losses = np.array([[[1.0, 2.0], [0.5, 2.5], [0.75, 1.0]]], np.float32)  # R=1, T=2, M=2
    held = RunSet(batches=np.array([[[0], [1]]], np.int32), losses=losses, num_train=2)
    return study.fidelity_row(sims, held, held)


def _table(lin_rho, lin_mse, tracin=(0.2, 0.5), influence=(0.3, 0.8)):
    """``{name: metrics}``: the kernel is the Linear chosen below; plain Linear is worse."""
    rows = {
        "linear": (0.0, 9.0), "linear_kernel": (lin_rho, lin_mse), "constant": (0.0, 2.0),
        "mean": (0.0, 1.0), "shuffled": (0.05, 1.5), "tracin_cp_calibrated": tracin,
        "influence_calibrated": influence,
    }  # fmt: skip
    return {n: {"change_spearman_mean": r, "mse_mean": m} for n, (r, m) in rows.items()}


def test_fidelity_row_numbers(monkeypatch):
    row = _row(monkeypatch, _table(0.6, 0.125))
    assert (row["linear"], row["control"]) == ("linear_kernel", "mean")
    assert (row["gradient_for_spearman"], row["gradient_for_mse"]) == (
        "influence_calibrated",
        "tracin_cp_calibrated",
    )
    assert row["spearman_ratio"] == pytest.approx(2.0)  # 0.6 / 0.3
    assert row["mse_reduction"] == pytest.approx(0.75)  # 1 - 0.125 / 0.5
    assert row["mse_skill_vs_mean"] == pytest.approx(0.875)  # 1 - 0.125 / 1.0
    assert row["beats_best_control_mse"] is True
    assert row["meets_paper"] is True  # both at the paper's bar exactly
    assert row["kernel_momentum"] == 0.7
    # |diff| over steps: (0.5, 0.5), (0.25, 1.5) -> mean 0.6875
    assert row["mean_abs_step_change"] == pytest.approx(0.6875)


@pytest.mark.parametrize(
    ("lin_rho", "lin_mse", "meets"),
    [(0.59, 0.125, False), (0.6, 0.126, False), (0.9, 0.01, True)],
    ids=["ratio-below", "reduction-below", "both-above"],
)
def test_fidelity_row_meets_paper(monkeypatch, lin_rho, lin_mse, meets):
    assert _row(monkeypatch, _table(lin_rho, lin_mse))["meets_paper"] is meets


def test_fidelity_row_nonpositive_gradient_spearman(monkeypatch):
    """With no gradient baseline above 0, the ratio is +inf if Linear's Spearman is positive
    (the paper's bar then rests on the MSE reduction) and NaN if it is not."""
    bad = dict(tracin=(-0.2, 0.5), influence=(0.0, 0.8))
    row = _row(monkeypatch, _table(0.4, 0.1, **bad))
    assert row["spearman_ratio"] == math.inf and row["meets_paper"] is True
    row = _row(monkeypatch, _table(-0.1, 0.1, **bad))
    assert math.isnan(row["spearman_ratio"]) and row["meets_paper"] is False
    row = _row(monkeypatch, _table(0.4, 0.2, **bad), val=(0.1, 0.2))  # plain Linear chosen
    assert row["linear"] == "linear" and math.isnan(row["spearman_ratio"])
    assert row["beats_best_control_mse"] is False and row["mse_skill_vs_mean"] == -8.0
