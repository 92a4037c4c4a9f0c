"""The fidelity matrix end to end on two tiny rows: structure, and ratios that equal the
metrics they are computed from."""

import json
import math
import sys
from pathlib import Path

import pytest

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
    report = (out / "report.md").read_text()
    assert all(name in report for name in results)
    assert (out / "ratios.png").exists() and (out / "operative_config.gin").exists()
    assert len(list((out / "figures").glob("*.png"))) == 2
    # A second call reuses the cached runs (nothing is trained again).
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert fidelity.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == stamps
