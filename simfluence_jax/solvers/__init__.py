"""Exact ridge solvers for the teacher-forced Simfluence-Linear fit.

Three solvers give the same answer (tests hold them to each other):

* ``direct``: normal equations by scan + batched Cholesky; O(M (2N)^2) memory;
* ``cg``: matrix-free preconditioned conjugate gradients; O(M (N + rows)) memory;
* ``dual``: the kernel form, O(M rows^2) memory, when rows < unknowns.

``choose_solver`` picks one by problem size; ``solve_ridge`` runs it, sharding test
examples over a mesh when one is given.
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp
import numpy as np

from simfluence_jax.registry import Registry
from simfluence_jax.sharding import map_over_test
from simfluence_jax.solvers.cg import solve_cg
from simfluence_jax.solvers.direct import solve_direct
from simfluence_jax.solvers.dual import solve_dual
from simfluence_jax.solvers.problem import RidgeProblem

SOLVERS: Registry = Registry("solver")
SOLVERS.register("direct")(solve_direct)
SOLVERS.register("cg")(solve_cg)
SOLVERS.register("dual")(solve_dual)

#: Memory the automatic choice allows for one solver's dense matrices, in bytes.
DENSE_BUDGET_BYTES = 2 * 1024**3


def choose_solver(problem: RidgeProblem, *, budget_bytes: int = DENSE_BUDGET_BYTES) -> str:
    """``dual`` when rows < unknowns and its Gram matrices fit; else ``direct`` if its
    normal equations fit the budget; else ``cg``."""
    M, S, P = problem.num_test, problem.num_rows, problem.num_unknowns
    itemsize = np.dtype(problem.Lp.dtype).itemsize
    if S < P and 3 * M * S * S * itemsize <= budget_bytes:
        return "dual"
    if 3 * M * P * P * itemsize <= budget_bytes:
        return "direct"
    return "cg"


def solve_ridge(
    problem: RidgeProblem,
    l2s,
    *,
    solver: str = "auto",
    mesh=None,
    tol: float | None = None,
    maxiter: int | None = None,
    x0=None,
):
    """Solves the ridge problem for every test example and every l2.

    Args:
      problem: the rows (see ``RidgeProblem``).
      l2s: a float or a sequence of K floats, each > 0.
      solver: ``"auto"``, ``"direct"``, ``"cg"`` or ``"dual"``.
      mesh: optional ``sharding.test_mesh()``; test examples are split over its devices.
      tol, maxiter: CG stopping rule (ignored by the exact solvers).
      x0: CG's starting point ``float[M, P]`` (ignored by the exact solvers).

    Returns:
      ``(A, B, info)``: ``A, B`` of shape ``[K, M, N]`` (zeros for unknowns the problem
      leaves out) and a dict naming the solver (and CG's iterations and residuals).
    """
    l2s = np.atleast_1d(np.asarray(l2s, dtype=np.float64))
    if l2s.ndim != 1 or l2s.size == 0:
        raise ValueError(f"l2 must be a float or a non-empty 1-D sequence, got {l2s!r}")
    if not np.all(np.isfinite(l2s)) or np.any(l2s <= 0):
        raise ValueError(f"every l2 must be a finite number > 0, got {l2s.tolist()}")
    name = choose_solver(problem) if solver == "auto" else solver
    fn = SOLVERS.get(name)
    kw = dict(num_train=problem.num_train, use_A=problem.use_A, use_B=problem.use_B)
    info = {"solver": name}
    dtype = problem.Lp.dtype
    if name == "cg":
        eps = float(np.finfo(dtype).eps)
        kw["tol"] = tol if tol is not None else max(1e-12, 10 * eps)
        kw["maxiter"] = maxiter if maxiter is not None else max(200, 4 * problem.num_unknowns)
    ids = jnp.asarray(problem.ids)
    l2_arr = jnp.asarray(l2s, dtype)
    kernel = () if problem.plain else tuple(map(jnp.asarray, problem.kernel_arrays(dtype)))
    per_test = (jnp.asarray(problem.Lp), jnp.asarray(problem.y))
    if name == "cg" and x0 is not None:
        per_test += (jnp.asarray(x0, dtype),)
    out = map_over_test(
        partial(_call, fn, kw, len(per_test) == 3),
        per_test,
        shared=(ids, l2_arr, *kernel),
        test_axis_out=1,
        mesh=mesh,
    )
    if name == "cg":
        theta, iters, resid = out
        info["iterations"] = np.asarray(iters)[:, 0].tolist()
        info["max_relative_residual"] = np.asarray(resid).max(axis=1).tolist()
    else:
        theta = out
    A, B = problem.split_theta(theta)
    return A, B, info


def _call(fn, kw, has_x0, Lp, y, *rest):
    if has_x0:
        x0, ids, l2s, *kernel = rest
        return fn(ids, Lp, y, l2s, tuple(kernel) or None, x0, **kw)
    ids, l2s, *kernel = rest
    return fn(ids, Lp, y, l2s, tuple(kernel) or None, **kw)


__all__ = ["RidgeProblem", "SOLVERS", "choose_solver", "solve_ridge"]
