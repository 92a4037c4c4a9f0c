"""Fitting simulators from logged runs, with l2 chosen on validation runs.

``fit_simulator(name, runs, ...)`` looks the name up in ``SIMULATORS`` and returns a fitted
simulator (a pytree). The ridge-based ones (``linear``, ``additive``, ``multiplicative``,
``shuffled``) solve the teacher-forced regression of DESIGN.md section 4 exactly; when
several l2 values are given (or ``l2=None`` with validation runs) each is fitted and the one
whose rollout on the validation runs has the lowest all-steps MSE wins (not the one-step
error, which rewards fits that drift when fed their own predictions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from simfluence_jax import metrics
from simfluence_jax.registry import Registry
from simfluence_jax.rollout import rollout
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.linear import LinearSimulator, MeanSimulator
from simfluence_jax.solvers import RidgeProblem, solve_ridge

SIMULATORS: Registry[Callable[..., object]] = Registry("simulator")

#: l2 used when neither l2 nor validation runs are given.
DEFAULT_L2 = 1e-2
#: l2 grid searched when validation runs are given and l2 is None.
DEFAULT_L2_GRID = tuple(float(x) for x in np.logspace(-4, 2, 7))

ALPHA_FORMS = {"sum": 0.0, "one_plus_sum": 1.0}


def rollout_mse(sim, runs: RunSet, *, mesh=None) -> float:
    """All-steps MSE of ``sim``'s rollout on ``runs`` (inf if it diverges)."""
    pred = np.asarray(rollout(sim, runs.batches, runs.L0, mesh=mesh))
    if not np.all(np.isfinite(pred)):
        return float("inf")
    with np.errstate(over="ignore", invalid="ignore"):
        mse = metrics.all_steps_mse(pred, runs.losses)[0]
    return mse if np.isfinite(mse) else float("inf")


def _ridge_fit(
    runs: RunSet,
    *,
    name: str,
    alpha0: float,
    use_A: bool,
    use_B: bool,
    l2,
    validation: RunSet | None,
    solver: str,
    mesh,
    dtype=np.float32,
    gradients=None,
    features=None,
) -> LinearSimulator:
    # ``gradients`` and ``features`` belong to other simulators; accepting them here lets
    # one ``fit_all`` call fit ridge, gradient and featurized simulators together.
    del gradients, features
    if l2 is None:
        l2 = DEFAULT_L2_GRID if validation is not None else DEFAULT_L2
    grid = np.atleast_1d(np.asarray(l2, np.float64))
    if grid.size > 1 and validation is None:
        raise ValueError(f"{grid.size} l2 values given but no validation runs to choose among them")
    problem = RidgeProblem.from_runs(runs, alpha0=alpha0, use_A=use_A, use_B=use_B)
    if dtype != np.float32:
        problem = RidgeProblem(
            ids=problem.ids,
            Lp=problem.Lp.astype(dtype),
            y=problem.y.astype(dtype),
            num_train=problem.num_train,
            use_A=use_A,
            use_B=use_B,
        )
    A, B, info = solve_ridge(problem, grid, solver=solver, mesh=mesh)
    seen = runs.used_ids()
    sims = [
        LinearSimulator(A=A[k], B=B[k], seen=seen, alpha0=alpha0, name=name, l2=float(grid[k]))
        for k in range(len(grid))
    ]
    if len(sims) == 1:
        return sims[0]
    scores = [rollout_mse(s, validation, mesh=mesh) for s in sims]
    best = int(np.argmin(scores))
    if not np.isfinite(scores[best]):
        raise ValueError(
            f"every l2 in {grid.tolist()} gives a diverging rollout on validation runs"
        )
    return sims[best]


def _check_runs(runs, validation):
    if not isinstance(runs, RunSet):
        raise ValueError(f"runs must be a RunSet, got {type(runs).__name__}")
    if validation is not None:
        if not isinstance(validation, RunSet):
            raise ValueError(f"validation must be a RunSet, got {type(validation).__name__}")
        if validation.num_test != runs.num_test or validation.num_train != runs.num_train:
            raise ValueError(
                f"validation runs (N={validation.num_train}, M={validation.num_test}) do not "
                f"match the fitting runs (N={runs.num_train}, M={runs.num_test})"
            )


@SIMULATORS.register("linear")
def fit_linear(runs, *, l2=None, validation=None, solver="auto", mesh=None, alpha="sum", **kw):
    """Simfluence-Linear: alpha = alpha0 + sum A_i, beta = sum B_i, fitted by ridge."""
    if alpha not in ALPHA_FORMS:
        raise ValueError(f"unknown alpha form {alpha!r}; known: {', '.join(ALPHA_FORMS)}")
    name = "linear" if alpha == "sum" else "linear_one_plus_sum"
    return _ridge_fit(
        runs, name=name, alpha0=ALPHA_FORMS[alpha], use_A=True, use_B=True, l2=l2,
        validation=validation, solver=solver, mesh=mesh, **kw,
    )  # fmt: skip


@SIMULATORS.register("additive")
def fit_additive(runs, *, l2=None, validation=None, solver="auto", mesh=None, **kw):
    """Additive (TracIn-like): L_t = L_{t-1} + sum B_i."""
    return _ridge_fit(
        runs, name="additive", alpha0=1.0, use_A=False, use_B=True, l2=l2,
        validation=validation, solver=solver, mesh=mesh, **kw,
    )  # fmt: skip


@SIMULATORS.register("multiplicative")
def fit_multiplicative(runs, *, l2=None, validation=None, solver="auto", mesh=None, **kw):
    """Multiplicative: L_t = (sum A_i) L_{t-1}."""
    return _ridge_fit(
        runs, name="multiplicative", alpha0=0.0, use_A=True, use_B=False, l2=l2,
        validation=validation, solver=solver, mesh=mesh, **kw,
    )  # fmt: skip


@SIMULATORS.register("constant")
def fit_constant(runs, **_):
    """Control: L^_t = L_0 for every curriculum."""
    zeros = np.zeros((runs.num_test, runs.num_train), np.float32)
    return LinearSimulator(A=zeros, B=zeros, seen=np.ones(runs.num_train, bool), alpha0=1.0,
                           name="constant")  # fmt: skip


@SIMULATORS.register("mean")
def fit_mean(runs, **_):
    """Control: the mean per-step change over the fitting runs, ignoring the curriculum."""
    delta = np.diff(runs.losses, axis=1).mean(axis=0).T  # [M, T]
    return MeanSimulator(delta=delta.astype(np.float32))


@SIMULATORS.register("shuffled")
def fit_shuffled(runs, *, seed: int = 0, **kw):
    """Control: Linear with its fitted (A_i, B_i) permuted across the training ids it saw.

    If this control does as well as Linear, per-example information is not being used.
    """
    sim = fit_linear(runs, **kw)
    seen = np.flatnonzero(np.asarray(sim.seen))
    perm = np.arange(sim.num_train)
    perm[seen] = np.random.default_rng(seed).permutation(seen)
    A, B = np.asarray(sim.A)[:, perm], np.asarray(sim.B)[:, perm]
    return sim.replace(A=A, B=B, name="shuffled")


def fit_simulator(name: str, runs: RunSet, *, validation: RunSet | None = None, **kwargs):
    """Fits the simulator registered as ``name`` on ``runs``.

    Args:
      name: one of ``SIMULATORS.names()`` (``linear``, ``additive``, ``multiplicative``,
        ``constant``, ``mean``, ``shuffled``, ...).
      runs: the fitting runs.
      validation: runs to choose l2 on (rollout all-steps MSE).
      **kwargs: ``l2`` (float, sequence, or None for the default), ``solver`` (``auto``,
        ``direct``, ``cg``, ``dual``), ``mesh`` (shard test examples), ``alpha``
        (``sum`` or ``one_plus_sum``, linear only), ``seed`` (shuffled only).

    Returns:
      A fitted simulator pytree; ridge-based ones record their chosen ``l2``.
    """
    fit = SIMULATORS.get(name)
    _check_runs(runs, validation)
    return fit(runs, validation=validation, **kwargs)


def fit_all(
    names: Sequence[str], runs: RunSet, *, validation: RunSet | None = None, **kwargs
) -> dict[str, object]:
    """``{name: fit_simulator(name, ...)}`` for several names."""
    return {n: fit_simulator(n, runs, validation=validation, **kwargs) for n in names}
