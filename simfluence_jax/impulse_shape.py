"""The shape of impulse responses: how one training example's effect on a test loss unfolds
over the steps after its own, summarised against the optimizer kernel's geometric decay.

Input: impulse responses ``R float[S, T+1, M]`` of ``S`` slots at 0-based steps ``s_n``
(``R[n, t, j] = dL_t[j] / dw[s_n, b_n]``; ``gradients.impulse`` measures them exactly). The
update of step ``s`` is the ``(s+1)``-th, so the first loss it moves is row ``s+1``; lag
``k = t - (s+1)``. Two views of one response:

* the **increment** ``X[n, k, j] = R[n, s+1+k, j] - R[n, s+k, j]`` (``R[n, s] = 0``): the
  slot's effect on the loss change of update ``s+1+k``. This is what the kernel filters
  (docs/design.md: ``beta_t = s_t B . x_t`` with ``x_t = mu x_{t-1} + m(c_t)``, so the
  increment at lag ``k`` is ``s_{s+1+k} mu^k`` times the lag-0 one, ignoring the feedback
  through ``alpha_t``);
* the **level** ``R[n, s+1+k, j] = sum_{k' <= k} X[n, k', j]``: the effect on the loss.

Normalisation (the choice, and why). Per (slot, test) pair the ratio ``X_k / X_0`` is
unstable where the lag-0 effect is tiny, and the sign of an effect differs across test
examples. The **mean shape** aligns each pair's sign with its lag-0 effect and weighs it
by ``|X_0|``:

    h[k] = sum_{n,j} sign(X_0[n,j]) X_k[n,j] / sum_{n,j} |X_0[n,j]|,   h[0] = 1,

the ``|X_0|``-weighted mean of the per-pair ratios ``X_k / X_0`` (pairs with ``X_0 = 0``
weigh nothing). The level shape is its cumulative sum. The spread is the ``|X_0|``-weighted
quantiles of the per-pair ratios. Only slots whose whole horizon ``K`` lies inside the run
(``s + 1 + K <= T``) enter the pooled summaries; every slot gets its own row.

Numbers reported (``summarize``): ``total_over_first = sum_k h[k]`` (the effect at the
horizon over the immediate effect), ``after_fraction = 1 - 1 / total_over_first`` (the share
of the effect at the horizon that arrives after the step itself), the share of
``sum_k |h[k]|`` after lag 0, the peak lag (``argmax h``) and that of the level, and the
best geometric fit ``mu`` (least squares of ``h`` against ``mu^k``, and against
``rbar_k mu^k`` with ``rbar_k`` the weighted mean learning-rate ratio ``eta[s+k] / eta[s]``:
the kernel's ``lr_scaled`` form).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: The grid of ``mu`` searched by the geometric fit (the kernel's own grid is 0..0.95).
MU_GRID = np.round(np.arange(-0.999, 0.9995, 0.0005), 4)
QUANTILES = (0.1, 0.5, 0.9)


def lag_increments(response, steps, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """``(X float64[S, K+1, M], valid bool[S, K+1])``: the increments at lags ``0..K``
    (module docstring); ``valid`` is false (and ``X`` zero) past the end of the run."""
    R = np.asarray(response, np.float64)
    s = np.asarray(steps).reshape(-1)
    if R.ndim != 3 or len(s) != R.shape[0]:
        raise ValueError(f"response must be [S, T+1, M] with S = len(steps), got {R.shape}")
    T = R.shape[1] - 1
    if s.size and (s.min() < 0 or s.max() >= T):
        raise ValueError(f"steps must lie in 0..T-1 = 0..{T - 1}")
    K = int(horizon)
    if K < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    lags = np.arange(K + 1)
    t = s[:, None] + 1 + lags[None]  # [S, K+1] rows of R
    valid = t <= T
    tc = np.minimum(t, T)
    level = np.take_along_axis(R, tc[:, :, None], axis=1)
    prev = np.take_along_axis(R, (tc - 1)[:, :, None], axis=1)
    X = np.where(valid[:, :, None], level - prev, 0.0)
    return X, valid


def mean_shape(X, valid=None) -> np.ndarray:
    """``float64[K+1]``: the sign-aligned, ``|X_0|``-weighted mean shape ``h`` of increments
    ``X float[S, K+1, M]`` (module docstring), each lag over the slots ``valid`` there.
    NaN where no pair with ``X_0 != 0`` is valid."""
    X = np.asarray(X, np.float64)
    valid = np.ones(X.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    x0 = X[:, :1, :]
    num = np.sum(np.where(valid[:, :, None], np.sign(x0) * X, 0.0), axis=(0, 2))
    den = np.sum(np.where(valid[:, :, None], np.abs(x0), 0.0), axis=(0, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_quantiles(values, weights, q) -> np.ndarray:
    """``float64[len(q)]``: quantiles of ``values`` under nonnegative ``weights`` (the
    midpoint rule: the i-th sorted value sits at cumulative weight ``W_i - w_i / 2``)."""
    v = np.asarray(values, np.float64).reshape(-1)
    w = np.asarray(weights, np.float64).reshape(-1)
    keep = (w > 0) & np.isfinite(v)
    if not keep.any():
        return np.full(len(q), np.nan)
    v, w = v[keep], w[keep]
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    pos = (np.cumsum(w) - w / 2) / w.sum()
    return np.interp(np.asarray(q, np.float64), pos, v)


def shape_quantiles(X, valid=None, q=QUANTILES, *, level: bool = False) -> np.ndarray:
    """``float64[len(q), K+1]``: ``|X_0|``-weighted quantiles over (slot, test) pairs of the
    per-pair ratio ``X_k / X_0`` (``level``: of the cumulative sum, the level's ratio)."""
    X = np.asarray(X, np.float64)
    valid = np.ones(X.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    x0 = X[:, 0, :]
    safe = np.where(x0 != 0, x0, 1.0)
    ratio = X / safe[:, None, :]
    if level:
        ratio = np.cumsum(ratio, axis=1)
    out = np.empty((len(q), X.shape[1]))
    for k in range(X.shape[1]):
        w = np.where(valid[:, k, None], np.abs(x0), 0.0)
        out[:, k] = weighted_quantiles(ratio[:, k, :], w, q)
    return out


def rate_ratio(X, valid, steps, learning_rates) -> np.ndarray:
    """``float64[K+1]``: the ``|X_0|``-weighted mean over pairs of ``eta[s+k] / eta[s]``
    (``learning_rates float[T]``, entry ``t`` the rate of update ``t+1``): the kernel's
    ``lr_scaled`` factor at each lag. Slots whose own rate is 0 weigh nothing (``X_0 = 0``)."""
    lr = np.asarray(learning_rates, np.float64)
    s = np.asarray(steps).reshape(-1)
    K = X.shape[1] - 1
    idx = np.minimum(s[:, None] + np.arange(K + 1)[None], len(lr) - 1)
    own = lr[s][:, None]
    r = np.where(own > 0, lr[idx] / np.where(own > 0, own, 1.0), 0.0)  # [S, K+1]
    w = np.where(valid, np.abs(np.asarray(X)[:, :1, :]).sum(axis=2), 0.0)  # [S, K+1]
    den = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (w * r).sum(axis=0) / np.where(den > 0, den, 1.0), np.nan)


def fit_geometric(h, ratio=None) -> tuple[float, float]:
    """``(mu, relative rms error)``: the ``mu`` of ``MU_GRID`` whose ``ratio_k mu^k``
    (``ratio`` default 1) fits the shape ``h float[K+1]`` best in least squares over its
    finite lags, and the fit's rms error over the rms of ``h``."""
    h = np.asarray(h, np.float64)
    r = np.ones_like(h) if ratio is None else np.asarray(ratio, np.float64)
    keep = np.isfinite(h) & np.isfinite(r)
    h, r = h[keep], r[keep]
    k = np.flatnonzero(keep)
    pred = r[None] * MU_GRID[:, None] ** k[None]  # [G, K']
    err = np.sum((pred - h[None]) ** 2, axis=1)
    g = int(np.argmin(err))
    scale = np.sqrt(np.mean(h**2))
    return float(MU_GRID[g]), float(np.sqrt(err[g] / len(h)) / scale) if scale > 0 else np.nan


def shape_numbers(h) -> dict[str, float]:
    """The scalar summaries of a mean shape ``h float[K+1]`` (``h[0] = 1``): the totals,
    after-step fractions, the peak and lowest lag of the increment, the lag where the level
    (the effect on the loss) peaks, the geometric fit."""
    h = np.asarray(h, np.float64)
    h = h[np.isfinite(h)]
    total = float(h.sum())
    absolute = float(np.abs(h).sum())
    mu, rel = fit_geometric(h)
    return {
        "total_over_first": total,
        "after_fraction": float(1.0 - h[0] / total) if total != 0 else float("nan"),
        "after_fraction_abs": float(1.0 - abs(h[0]) / absolute) if absolute else float("nan"),
        "negative_fraction_abs": float(np.abs(h[h < 0]).sum() / absolute) if absolute else 0.0,
        "peak_lag": int(np.argmax(h)),
        "lowest_lag": int(np.argmin(h)),
        "level_peak": float(np.max(np.cumsum(h))),
        "level_peak_lag": int(np.argmax(np.cumsum(h))),
        "mu": mu,
        "mu_rel_rmse": rel,
    }


def _group(X, valid, steps, learning_rates, rows) -> dict:
    """Summary of the slots ``rows`` (complete ones: every lag valid)."""
    Xg, vg, sg = X[rows], valid[rows], np.asarray(steps)[rows]
    h = mean_shape(Xg, vg)
    if not np.isfinite(h[0]):
        return {"num_slots": int(len(rows)), "mean_shape": None}
    r = rate_ratio(Xg, vg, sg, learning_rates)
    mu_lr, rel_lr = fit_geometric(h, r)
    q = shape_quantiles(Xg, vg)
    ql = shape_quantiles(Xg, vg, level=True)
    return {
        "num_slots": int(len(rows)),
        "mean_shape": h.tolist(),
        "level_shape": np.cumsum(h).tolist(),
        "quantiles": {f"q{round(100 * p)}": q[i].tolist() for i, p in enumerate(QUANTILES)},
        "level_quantiles": {f"q{round(100 * p)}": ql[i].tolist() for i, p in enumerate(QUANTILES)},
        "rate_ratio": r.tolist(),
        **shape_numbers(h),
        "mu_lr": mu_lr,
        "mu_lr_rel_rmse": rel_lr,
    }


def _bins(X, losses_at_step, rows, n=3) -> dict:
    """Mean shapes of (slot, test) pairs binned by the test loss before the slot's step."""
    out = {}
    Xr, Lr = X[rows], losses_at_step[rows]  # [S', K+1, M], [S', M]
    edges = np.quantile(Lr, np.linspace(0, 1, n + 1))
    names = ("low", "middle", "high") if n == 3 else tuple(f"bin{i}" for i in range(n))
    for i, name in enumerate(names):
        inside = (Lr >= edges[i]) & ((Lr < edges[i + 1]) if i < n - 1 else (Lr <= edges[i + 1]))
        Xi = np.where(inside[:, None, :], Xr, 0.0)
        h = mean_shape(Xi)
        out[name] = {
            "loss_range": [float(edges[i]), float(edges[i + 1])],
            "pairs": int(inside.sum()),
            "mean_shape": h.tolist(),
            "lag0_abs": float(np.abs(Xr[:, 0, :][inside]).mean()) if inside.any() else 0.0,
            **(shape_numbers(h) if np.isfinite(h[0]) else {}),
        }
    return out


def summarize(response, steps, losses, learning_rates, *, horizon: int) -> dict:
    """The summaries of the impulse responses of one run (JSON-ready; module docstring).

    Args:
      response: ``float[S, T+1, M]`` the impulse responses.
      steps: ``int[S]`` each slot's 0-based step.
      losses: ``float[T+1, M]`` the run's losses (for the loss-level bins: row ``s``), or
        ``float[S, T+1, M]`` each slot's run's (slots pooled over runs of one setting).
      learning_rates: ``float[T]`` the rate of each update (the runs share a schedule).
      horizon: the last lag ``K``.

    Returns:
      ``{"horizon", "num_slots", "num_complete", <the pooled group summary>, "by_step"
      (early / middle / late thirds of the complete slots' steps), "by_loss" (test losses
      before the step in terciles), "per_slot" (every slot over its available lags, with
      the mean absolute effect at lag 0 and at its last lag, unnormalised)}``.

    Raises:
      ValueError: for mismatched shapes, or when no slot has its whole horizon in the run.
    """
    X, valid = lag_increments(response, steps, horizon)
    s = np.asarray(steps).reshape(-1)
    L = np.asarray(losses, np.float64)
    shape = np.asarray(response).shape
    if L.shape == shape[1:]:
        before = L[s]  # [S, M]: each test loss before the slot's update
    elif L.shape == shape:
        before = L[np.arange(len(s)), s]
    else:
        raise ValueError(f"losses must be [T+1, M] or [S, T+1, M] for responses {shape}")
    complete = np.flatnonzero(valid.all(axis=1))
    if not len(complete):
        raise ValueError(
            f"no slot has its whole horizon of {horizon} lags inside the run (steps "
            f"{s.tolist()}); use a shorter horizon or earlier slots"
        )
    out = {"horizon": int(horizon), "num_slots": int(len(s)), "num_complete": int(len(complete))}
    out.update(_group(X, valid, s, learning_rates, complete))
    thirds = np.array_split(complete[np.argsort(s[complete], kind="stable")], 3)
    out["by_step"] = {
        name: {"steps": s[rows].tolist(), **_group(X, valid, s, learning_rates, rows)}
        for name, rows in zip(("early", "middle", "late"), thirds, strict=True)
        if len(rows)
    }
    out["by_loss"] = _bins(X, before, complete)
    per_slot = []
    for n in range(len(s)):
        h = mean_shape(X[n : n + 1], valid[n : n + 1])
        lags = int(valid[n].sum())
        row = {"step": int(s[n]), "lags": lags, "lag0_abs": float(np.abs(X[n, 0]).mean()),
               "level_abs": float(np.abs(X[n, :lags].sum(axis=0)).mean())}  # fmt: skip
        row["mean_shape"] = h[:lags].tolist()
        if np.isfinite(h[0]):
            row.update(shape_numbers(h[:lags]))
        per_slot.append(row)
    out["per_slot"] = per_slot
    return out


def load_shape(path, optimizer: str, *, key: str = "mean_shape") -> np.ndarray:
    """``float32[K+1]`` with ``h[0] = 1``: the measured mean increment shape of ``optimizer``
    from an impulse-response summary file (``experiments/impulse_responses.py`` writes
    ``{"optimizers": {name: {"mean_shape": [...], ...}}}``), as a filter prior for a
    simulator.

    Raises:
      ValueError: if the file holds no such optimizer or its shape is unusable.
    """
    data = json.loads(Path(path).read_text())
    table = data.get("optimizers", {})
    if optimizer not in table:
        raise ValueError(f"{path} holds no shape for {optimizer!r}; it has {sorted(table)}")
    h = np.asarray(table[optimizer].get(key) or [], np.float64)
    if h.ndim != 1 or h.size == 0 or not np.all(np.isfinite(h)) or h[0] == 0:
        raise ValueError(
            f"the {key} of {optimizer!r} in {path} is not a finite shape with h[0] != 0"
        )
    return (h / h[0]).astype(np.float32)
