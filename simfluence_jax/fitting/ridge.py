"""The ridge fit of the Simfluence-Linear family over a grid of (mu, l2).

For each mu the teacher-forced regression of docs/design.md ("Fitting") is solved exactly
for the whole l2 path at once (the normal equations are shared); with several candidates the
one whose rollout on the validation runs has the lowest all-steps MSE wins
(``choice.path_mse``). A prior mean for (A, B) makes the ridge shrink toward it instead of 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from simfluence_jax.fitting.choice import l2_grid, momentum_grid, path_mse
from simfluence_jax.rollouts import teacher_forced
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.linear import LinearSimulator
from simfluence_jax.solvers import RidgeProblem, solve_ridge_grid, solve_ridge_path

#: Most bytes of candidate parameters a (mu, l2) grid holds at once; larger grids are
#: solved in chunks of mu values.
GRID_CHUNK_BYTES = 256 * 1024**2

ALPHA_FORMS = {"sum": 0.0, "one_plus_sum": 1.0}


def _check_prior(prior, runs: RunSet, use_A: bool, use_B: bool):
    """A prior mean for (A, B): a ``LinearSimulator`` over the same pool and test examples."""
    if prior is None:
        return None
    if not isinstance(prior, LinearSimulator):
        raise ValueError(f"prior must be a LinearSimulator, got {type(prior).__name__}")
    shape = (runs.num_test, runs.num_train)
    if np.shape(prior.A) != shape or np.shape(prior.B) != shape:
        raise ValueError(f"prior A and B must have shape [M, N] = {list(shape)}")
    A = np.asarray(prior.A, np.float32) if use_A else np.zeros(shape, np.float32)
    B = np.asarray(prior.B, np.float32) if use_B else np.zeros(shape, np.float32)
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B))):
        raise ValueError("prior A and B must be finite")
    return prior.replace(A=A, B=B)


def lr_reference(runs: RunSet, validation: RunSet | None) -> float:
    for what, rs in (("fitting", runs), ("validation", validation)):
        if rs is not None and rs.learning_rates is None:
            raise ValueError(
                f"lr_scaled=True needs the learning rates of the {what} runs "
                "(RunSet.learning_rates is None)"
            )
    ref = float(np.max(runs.learning_rates))
    if not ref > 0:
        raise ValueError("lr_scaled=True needs a positive learning rate in the fitting runs")
    return ref


def ridge_fit(
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
    momentum=0.0,
    lr_scaled: bool = False,
    dtype=np.float32,
    prior: LinearSimulator | None = None,
) -> LinearSimulator:
    grid = l2_grid(l2, validation)
    mus = momentum_grid(momentum, validation)
    if not isinstance(lr_scaled, bool):
        raise ValueError(f"lr_scaled must be True or False, got {lr_scaled!r}")
    lr_ref = lr_reference(runs, validation) if lr_scaled else None
    base = RidgeProblem.from_runs(runs, alpha0=alpha0, use_A=use_A, use_B=use_B, lr_ref=lr_ref)
    if np.dtype(dtype) != np.float32:
        base = base.astype(dtype)
    seen = runs.used_ids()
    common = dict(seen=seen, alpha0=alpha0, name=name, lr_scaled=lr_scaled)
    if lr_scaled:
        common["lr_ref"] = lr_ref
    prior = _check_prior(prior, runs, use_A, use_B)
    if len(grid) * len(mus) == 1:
        A, B = next(_candidates(base, grid, mus, runs, prior, solver=solver, mesh=mesh,
                                alpha0=alpha0, lr_scaled=lr_scaled, lr_ref=lr_ref))[1:]  # fmt: skip
        return LinearSimulator(A=A[0], B=B[0], momentum=float(mus[0]), l2=float(grid[0]), **common)
    best, best_score = None, np.inf
    for mu, A, B in _candidates(base, grid, mus, runs, prior, solver=solver, mesh=mesh,
                                alpha0=alpha0, lr_scaled=lr_scaled, lr_ref=lr_ref):  # fmt: skip
        K, M, N = A.shape
        stacked = LinearSimulator(
            A=np.asarray(A).reshape(K * M, N), B=np.asarray(B).reshape(K * M, N),
            momentum=mu, **common,
        )  # fmt: skip
        scores = path_mse(stacked, K, validation, mesh=mesh)
        k = int(np.argmin(scores))
        if scores[k] < best_score:
            best_score = scores[k]
            best = LinearSimulator(A=A[k], B=B[k], momentum=mu, l2=float(grid[k]), **common)
    if best is None:
        raise ValueError(
            f"every l2 in {grid.tolist()} (momentum {mus.tolist()}) gives a diverging rollout "
            "on validation runs"
        )
    return best


def _candidates(base, grid, mus, runs, prior, *, solver, mesh, alpha0, lr_scaled, lr_ref):
    """Yields ``(mu, A [K, M, N], B [K, M, N])`` for every mu of ``mus``, the whole l2 path
    of each.

    Without a prior and with several mu, the grid is solved by ``solve_ridge_grid`` (the
    direct solver shares across mu what does not depend on it, in one compiled loop over
    mu), in chunks of at most ``GRID_CHUNK_BYTES`` of parameters. With a prior the target
    depends on mu, so each mu is its own solve (CG warm-started from the previous mu).
    """
    if prior is None and len(mus) > 1:
        K, M, P = len(grid), base.num_test, base.num_unknowns
        per_mu = K * M * max(P, 1) * np.dtype(base.Lp.dtype).itemsize
        size = int(max(1, min(len(mus), GRID_CHUNK_BYTES // per_mu)))
        for start in range(0, len(mus), size):
            chunk = mus[start : start + size]
            # Pad the last chunk with its last mu: one compiled shape for every chunk.
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk))])
            A, B, _ = solve_ridge_grid(base, grid, padded, solver=solver, mesh=mesh)
            for i, mu in enumerate(chunk):
                yield float(mu), A[i], B[i]
        return

    def problem_at(mu):
        problem = base.with_kernel(mu, base.scales)
        if prior is None:
            return problem
        # Shrink toward the prior: solve for theta - theta0 against y - X theta0.
        p0 = prior.replace(momentum=mu, alpha0=alpha0, lr_scaled=lr_scaled,
                           lr_ref=lr_ref if lr_scaled else np.nan)  # fmt: skip
        X_theta0 = teacher_forced(p0, runs) - alpha0 * runs.losses[:, :-1]  # [R, T, M]
        y = problem.y - np.transpose(X_theta0, (2, 1, 0)).astype(problem.y.dtype)
        return dataclasses.replace(problem, y=y)

    # CG starts every l2 of the next mu from this mu's solution at the same l2.
    problems = (problem_at(float(mu)) for mu in mus)
    for mu, (A, B, _) in zip(mus, solve_ridge_path(problems, grid, solver=solver, mesh=mesh)):
        if prior is not None:
            A, B = A + np.asarray(prior.A)[None], B + np.asarray(prior.B)[None]
        yield float(mu), A, B
