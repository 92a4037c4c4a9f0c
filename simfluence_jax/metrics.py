"""Evaluation metrics for simulated trajectories (docs/design.md, section 6).

Every function takes predicted and true trajectories ``float[R, T+1, M]`` (R held-out runs,
row 0 = L_0, M test examples) and follows the GPTfluence evaluation definitions:

* all-steps MSE / MAE: per (test example, run) trajectory, the mean over steps 1..T of the
  squared / absolute error; mean and std over all R*M trajectories. Step 0 is excluded
  because the simulation copies it from the truth.
* final-step Spearman: per run, Spearman's rho across test examples between L^_T and L_T;
  mean and std over runs.
* change Spearman: the same for L_T - L_0, which a simulator cannot score well by merely
  keeping the initial ranking.
* per-example Spearman: per test example, rho across runs between L^_T and L_T; mean and std
  over test examples.

Spearman's rho is the Pearson correlation of average ranks (ties share their mean rank).
When either side is constant, rho is undefined; we count it as 0 (no ranking information).
"""

from __future__ import annotations

import numpy as np

#: The scalar metrics of ``summary``: (key, label in the paper's terms, higher is better). A
#: row of ``summary`` holds ``<key>_mean`` and ``<key>_std`` of each; tables and reports
#: (``evaluation.format_table``, ``reports``) label and rank them from here.
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("mse", "all-steps MSE", False),
    ("mae", "all-steps MAE", False),
    ("final_spearman", "final-step Spearman", True),
    ("change_spearman", "Spearman of the change", True),
    ("per_example_spearman", "per-example Spearman", True),
)


def _check(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, np.float64)
    true = np.asarray(true, np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"predicted shape {pred.shape} differs from true shape {true.shape}")
    if pred.ndim != 3 or pred.shape[1] < 2:
        raise ValueError(f"trajectories must have shape [R, T+1, M] with T >= 1, got {pred.shape}")
    return pred, true


def rankdata(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Average ranks (1-based) along ``axis``; ties get the mean of their ranks."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    n = x.shape[-1]
    order = np.argsort(x, axis=-1, kind="mergesort")
    sorted_x = np.take_along_axis(x, order, axis=-1)
    ranks_sorted = np.empty_like(sorted_x)
    flat_sorted = sorted_x.reshape(-1, n)
    flat_ranks = ranks_sorted.reshape(-1, n)
    for row, vals in enumerate(flat_sorted):
        # Start of each run of equal values; every member gets the run's mean rank.
        starts = np.r_[0, np.flatnonzero(np.diff(vals)) + 1]
        ends = np.r_[starts[1:], n]
        mean_rank = (starts + ends + 1) / 2.0
        flat_ranks[row] = np.repeat(mean_rank, ends - starts)
    ranks = np.empty_like(ranks_sorted)
    np.put_along_axis(ranks, order, ranks_sorted, axis=-1)
    return np.moveaxis(ranks, -1, axis)


def spearman(a, b, axis: int = -1) -> np.ndarray:
    """Spearman's rho between ``a`` and ``b`` along ``axis`` (0 where undefined)."""
    ra = rankdata(a, axis)
    rb = rankdata(b, axis)
    ra = ra - ra.mean(axis=axis, keepdims=True)
    rb = rb - rb.mean(axis=axis, keepdims=True)
    num = (ra * rb).sum(axis=axis)
    den = np.sqrt((ra * ra).sum(axis=axis) * (rb * rb).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return rho


def _mean_std(x) -> tuple[float, float]:
    x = np.asarray(x, np.float64).reshape(-1)
    return float(x.mean()), float(x.std())


def trajectory_mse(pred, true) -> np.ndarray:
    """``float[R, M]``: mean over steps 1..T of the squared error of each trajectory."""
    pred, true = _check(pred, true)
    return np.mean((pred[:, 1:] - true[:, 1:]) ** 2, axis=1)


def all_steps_mse(pred, true) -> tuple[float, float]:
    """All-steps MSE: (mean, std) over trajectories of the per-trajectory MSE."""
    return _mean_std(trajectory_mse(pred, true))


def all_steps_mae(pred, true) -> tuple[float, float]:
    """All-steps MAE: (mean, std) over trajectories of the per-trajectory MAE."""
    pred, true = _check(pred, true)
    return _mean_std(np.mean(np.abs(pred[:, 1:] - true[:, 1:]), axis=1))


def final_step_spearman(pred, true) -> tuple[float, float]:
    """Per run, rho across test examples of the final losses; (mean, std) over runs."""
    pred, true = _check(pred, true)
    return _mean_std(spearman(pred[:, -1], true[:, -1], axis=-1))


def change_spearman(pred, true) -> tuple[float, float]:
    """Per run, rho across test examples of L_T - L_0; (mean, std) over runs."""
    pred, true = _check(pred, true)
    return _mean_std(spearman(pred[:, -1] - pred[:, 0], true[:, -1] - true[:, 0], axis=-1))


def per_example_spearman(pred, true) -> tuple[float, float]:
    """Per test example, rho across runs of the final losses; (mean, std) over examples."""
    pred, true = _check(pred, true)
    if pred.shape[0] < 3:
        raise ValueError(f"per-example Spearman needs at least 3 runs, got {pred.shape[0]}")
    return _mean_std(spearman(pred[:, -1], true[:, -1], axis=0))


def per_step_error(pred, true) -> dict[str, np.ndarray]:
    """Error curves over steps: ``{"mse": [T+1], "mae": [T+1]}`` averaged over runs and
    test examples (step 0 is 0 by construction)."""
    pred, true = _check(pred, true)
    err = pred - true
    return {"mse": np.mean(err**2, axis=(0, 2)), "mae": np.mean(np.abs(err), axis=(0, 2))}


def summary(pred, true) -> dict[str, float]:
    """Every scalar metric above, as a flat dict of ``<metric>_mean`` / ``<metric>_std``."""
    out: dict[str, float] = {}
    fns = {
        "mse": all_steps_mse,
        "mae": all_steps_mae,
        "final_spearman": final_step_spearman,
        "change_spearman": change_spearman,
    }
    if np.shape(pred)[0] >= 3:
        fns["per_example_spearman"] = per_example_spearman
    for name, fn in fns.items():
        m, s = fn(pred, true)
        out[f"{name}_mean"], out[f"{name}_std"] = m, s
    return out
