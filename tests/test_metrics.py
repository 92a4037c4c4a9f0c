"""Metrics follow docs/design.md, section 6; Spearman is checked against scipy."""

import numpy as np
import pytest
from scipy import stats

from simfluence_jax import metrics


def _pair(R=5, T=6, M=7, seed=0):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(R, T + 1, M))
    pred = true + 0.3 * rng.normal(size=true.shape)
    pred[:, 0] = true[:, 0]
    return pred, true


def test_all_steps_mse_and_mae_exclude_step_zero():
    pred, true = _pair()
    pred[:, 0] += 100.0  # must not matter
    per_traj = np.mean((pred[:, 1:] - true[:, 1:]) ** 2, axis=1)
    assert metrics.all_steps_mse(pred, true) == pytest.approx((per_traj.mean(), per_traj.std()))
    per_traj_abs = np.mean(np.abs(pred[:, 1:] - true[:, 1:]), axis=1)
    assert metrics.all_steps_mae(pred, true)[0] == pytest.approx(per_traj_abs.mean())


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, size=(4, 30)).astype(float)
    b = a + rng.integers(0, 3, size=a.shape)
    ours = metrics.spearman(a, b)
    ref = [stats.spearmanr(x, y).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    np.testing.assert_allclose(metrics.rankdata(a), stats.rankdata(a, axis=-1))


def test_final_change_and_per_example_spearman():
    pred, true = _pair()
    rhos = [stats.spearmanr(pred[r, -1], true[r, -1]).statistic for r in range(5)]
    assert metrics.final_step_spearman(pred, true) == pytest.approx((np.mean(rhos), np.std(rhos)))
    d_p, d_t = pred[:, -1] - pred[:, 0], true[:, -1] - true[:, 0]
    rhos = [stats.spearmanr(d_p[r], d_t[r]).statistic for r in range(5)]
    assert metrics.change_spearman(pred, true)[0] == pytest.approx(np.mean(rhos))
    rhos = [stats.spearmanr(pred[:, -1, m], true[:, -1, m]).statistic for m in range(7)]
    assert metrics.per_example_spearman(pred, true)[0] == pytest.approx(np.mean(rhos))


def test_constant_prediction_has_zero_rho_not_nan():
    pred, true = _pair()
    pred[:] = pred[:, :1]  # constant trajectories: the change is identically 0
    assert metrics.change_spearman(pred, true) == (0.0, 0.0)


def test_per_step_error_and_summary():
    pred, true = _pair()
    curve = metrics.per_step_error(pred, true)
    assert curve["mse"].shape == (7,) and curve["mse"][0] == 0.0
    np.testing.assert_allclose(curve["mse"][1:].mean(), metrics.all_steps_mse(pred, true)[0])
    s = metrics.summary(pred, true)
    assert set(s) >= {"mse_mean", "final_spearman_std", "change_spearman_mean"}
    # METRICS, the table every table and report labels from, names exactly these metrics.
    assert set(s) == {f"{k}_{x}" for k, _, _ in metrics.METRICS for x in ("mean", "std")}


def test_shape_errors():
    pred, true = _pair()
    with pytest.raises(ValueError, match="differs"):
        metrics.all_steps_mse(pred[:, :-1], true)
    with pytest.raises(ValueError, match="\\[R, T\\+1, M\\]"):
        metrics.all_steps_mse(pred[0], true[0])
    with pytest.raises(ValueError, match="at least 3 runs"):
        metrics.per_example_spearman(pred[:2], true[:2])
