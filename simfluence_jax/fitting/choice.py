"""How a fit is chosen on validation runs: the l2 and mu grids, and the rollout error that
scores each candidate.

A candidate is scored by the all-steps MSE of its rollout on the validation runs, not the
one-step error (which rewards fits that drift when fed their own predictions).
``path_mse`` rolls out a whole l2 path of Linear simulators in one call.
"""

from __future__ import annotations

import numpy as np

from simfluence_jax import metrics
from simfluence_jax.rollouts import rollout
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.linear import LinearSimulator
from simfluence_jax.solvers.checks import check_l2s, check_momenta

#: l2 used when neither l2 nor validation runs are given.
DEFAULT_L2 = 1e-2
#: l2 grid searched when validation runs are given and l2 is None.
DEFAULT_L2_GRID = tuple(float(x) for x in np.logspace(-4, 2, 7))
#: mu grid searched by ``momentum="auto"``: 0, 0.05, ..., 0.95.
MOMENTUM_GRID = tuple(round(0.05 * k, 2) for k in range(20))


def rollout_mse(sim, runs: RunSet, *, mesh=None) -> float:
    """All-steps MSE of ``sim``'s rollout on ``runs`` (inf if it diverges)."""
    pred = np.asarray(
        rollout(sim, runs.batches, runs.L0, learning_rates=runs.learning_rates, mesh=mesh)
    )
    if not np.all(np.isfinite(pred)):
        return float("inf")
    with np.errstate(over="ignore", invalid="ignore"):
        mse = metrics.all_steps_mse(pred, runs.losses)[0]
    return mse if np.isfinite(mse) else float("inf")


def path_mse(sims: LinearSimulator, K: int, runs: RunSet, *, mesh=None) -> np.ndarray:
    """``float[K]`` all-steps validation MSE of K Linear simulators stacked along the test
    axis (``A: [K*M, N]``), rolled out together in one call (inf where one diverges).

    The rollout runs in float32, so float64 fits are scored with their parameters rounded
    to float32."""
    M = runs.num_test
    sims = sims.replace(A=np.asarray(sims.A, np.float32), B=np.asarray(sims.B, np.float32))
    L0 = np.tile(runs.L0, (1, K))
    pred = np.asarray(
        rollout(sims, runs.batches, L0, learning_rates=runs.learning_rates, mesh=mesh)
    )
    pred = pred.reshape(pred.shape[:2] + (K, M))
    with np.errstate(over="ignore", invalid="ignore"):
        err = (pred[:, 1:] - runs.losses[:, 1:, None, :]) ** 2
        mse = np.mean(err, axis=(0, 1, 3))
    finite = np.all(np.isfinite(pred), axis=(0, 1, 3))
    return np.where(finite & np.isfinite(mse), mse, np.inf)


def best_on_validation(candidates, validation: RunSet, grid, *, mesh=None):
    """The candidate (a pair-effect simulator with ``A``, ``B``; ``candidates`` may be a
    generator, fitted one at a time) whose rollout on ``validation`` has the lowest all-steps
    MSE, scored in float32. ``ValueError`` naming ``grid`` when every one diverges."""
    best, best_score = None, np.inf
    for sim in candidates:
        score = rollout_mse(sim.replace(A=np.float32(sim.A), B=np.float32(sim.B)), validation,
                            mesh=mesh)  # fmt: skip
        if score < best_score:
            best, best_score = sim, score
    if best is None:
        raise ValueError(
            f"every l2 in {np.asarray(grid).tolist()} gives a diverging rollout on validation runs"
        )
    return best


def l2_grid(l2, validation) -> np.ndarray:
    """``float64[K]`` l2 values to fit (``solvers.check_l2s``); several need validation runs."""
    if l2 is None:
        l2 = DEFAULT_L2_GRID if validation is not None else DEFAULT_L2
    grid = check_l2s(l2)
    if grid.size > 1 and validation is None:
        raise ValueError(f"{grid.size} l2 values given but no validation runs to choose among them")
    return grid


def momentum_grid(momentum, validation) -> np.ndarray:
    """``float64[n_mu]`` mu values to fit: ``MOMENTUM_GRID`` for ``"auto"``, else the values
    (``solvers.check_momenta``); several need validation runs."""
    if isinstance(momentum, str):
        if momentum != "auto":
            raise ValueError(f"momentum must be a number in [0, 1) or 'auto', got {momentum!r}")
        if validation is None:
            raise ValueError("momentum='auto' chooses mu on validation runs; pass validation=")
        return np.asarray(MOMENTUM_GRID)
    grid = check_momenta(momentum)
    if grid.size > 1 and validation is None:
        raise ValueError(f"{grid.size} momentum values given but no validation runs")
    return grid
