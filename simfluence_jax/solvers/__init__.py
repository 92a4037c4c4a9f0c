"""Exact ridge solvers for the teacher-forced Simfluence-Linear fit.

Three solvers give the same answer (tests hold them to each other):

* ``direct``: normal equations (scatters for count rows, occurrence lists for kernel
  rows), the shared block eigendecomposed once for every l2, one batched N x N Cholesky
  per l2; O(M (2N)^2) memory;
* ``cg``: matrix-free preconditioned conjugate gradients; O(M (N + rows)) memory;
* ``dual``: the kernel form, O(M rows^2) memory, when rows < unknowns.

``choose_solver`` picks one by a cost model fitted to measured times (``solvers.cost``)
within a memory budget (``solvers.memory``); ``solve_ridge`` runs it, sharding test
examples over a mesh when one is given. ``solve_ridge_path`` solves a sequence of problems
(one per mu), CG warm-started from the previous problem's solution at the same l2.
``solve_ridge_grid`` solves a whole (mu, l2) grid of the optimizer kernel: the direct solver
in one compiled loop over mu that shares what does not depend on mu, CG and the dual solver
mu by mu (``solve_ridge_path``). ``checks`` holds the checks of the l2 and mu values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from functools import partial

import jax.numpy as jnp
import numpy as np

from simfluence_jax.registry import Registry
from simfluence_jax.sharding import map_over_test
from simfluence_jax.solvers import cost, memory
from simfluence_jax.solvers.cg import solve_cg
from simfluence_jax.solvers.checks import check_l2s, check_momenta
from simfluence_jax.solvers.common import occurrences
from simfluence_jax.solvers.direct import solve_direct, solve_direct_grid
from simfluence_jax.solvers.dual import solve_dual
from simfluence_jax.solvers.problem import RidgeProblem

SOLVERS: Registry = Registry("solver")
SOLVERS.register("direct")(solve_direct)
SOLVERS.register("cg")(solve_cg)
SOLVERS.register("dual")(solve_dual)


def choose_solver(
    problem: RidgeProblem, *, budget_bytes: int | None = None, kernel_rows=None, num_l2: int = 1
) -> str:
    """The solver of least predicted time (``cost.choose``) among those whose memory, one
    chunk of test examples at a time, fits ``budget_bytes`` (default
    ``memory.MEMORY_BUDGET_BYTES``). ``kernel_rows`` (default: whether the problem's rows are
    not plain counts) says whether the rows will be the kernel's; ``num_l2`` how many l2
    values are solved."""
    return cost.choose_for(problem, K=num_l2, kernel=kernel_rows, budget=budget_bytes)


def solve_ridge(
    problem: RidgeProblem,
    l2s,
    *,
    solver: str = "auto",
    mesh=None,
    tol: float | None = None,
    maxiter: int | None = None,
    x0=None,
    chunk: int | None = None,
):
    """Solves the ridge problem for every test example and every l2.

    Args:
      problem: the rows (see ``RidgeProblem``).
      l2s: a float or a sequence of K floats, each > 0.
      solver: ``"auto"``, ``"direct"``, ``"cg"`` or ``"dual"``.
      mesh: optional ``sharding.test_mesh()``; test examples are split over its devices.
      tol, maxiter: CG stopping rule (ignored by the exact solvers).
      x0: CG's starting point, ``float[M, P]`` for every l2 or ``float[K, M, P]`` one per
        l2 (ignored by the exact solvers).
      chunk: test examples solved at once (per device with a mesh); default
        ``memory.default_chunk``: as many as fit ``memory.MEMORY_BUDGET_BYTES``, capped
        where a smaller chunk is faster (direct: per-test matrices within 16 MiB; CG: 8).

    Returns:
      ``(A, B, info)``: ``A, B`` of shape ``[K, M, N]`` (zeros for unknowns the problem
      leaves out) and a dict naming the solver (and CG's iterations and residuals).
    """
    l2s = check_l2s(l2s)
    name = choose_solver(problem, num_l2=len(l2s)) if solver == "auto" else solver
    fn = SOLVERS.get(name)
    kw = _solver_keywords(problem, name, tol, maxiter, chunk, len(l2s))
    info = {"solver": name, "chunk": kw["chunk"]}
    dtype = problem.Lp.dtype
    ids = jnp.asarray(problem.ids)
    l2_arr = jnp.asarray(l2s, dtype)
    kernel = () if problem.plain else tuple(map(jnp.asarray, problem.kernel_arrays(dtype)))
    per_test = (jnp.asarray(problem.Lp), jnp.asarray(problem.y))
    extra = ()
    if name == "cg" and x0 is not None:
        x0 = jnp.asarray(x0, dtype)
        # The test axis of a per-l2 start [K, M, P] goes first for map_over_test.
        per_test += (x0 if x0.ndim == 2 else jnp.moveaxis(x0, 1, 0),)
    if name == "direct":
        extra = tuple(map(jnp.asarray, occurrences(problem.ids, problem.num_train)))
    out = map_over_test(
        partial(_solve_shard, fn, kw, _Layout(len(per_test) == 3, bool(kernel), len(extra))),
        per_test,
        shared=(ids, l2_arr, *kernel, *extra),
        test_axis_out=1,
        mesh=mesh,
    )
    if name == "cg":
        theta, iters, resid = out
        info["iterations"] = np.asarray(iters).max(axis=1).tolist()  # most of any chunk
        info["max_relative_residual"] = np.asarray(resid).max(axis=1).tolist()
    else:
        theta = out
    A, B = problem.split_theta(theta)
    return A, B, info


def solve_ridge_path(
    problems: Iterable[RidgeProblem],
    l2s,
    *,
    solver: str = "auto",
    mesh=None,
    tol: float | None = None,
    maxiter: int | None = None,
    chunk: int | None = None,
) -> Iterator[tuple]:
    """Yields ``solve_ridge(p, l2s, ...)`` for each problem ``p`` of ``problems`` in turn.

    The problems are a path of neighbouring problems (the same rows filtered with one mu
    after another): whenever a problem is solved by CG, the next one CG solves starts every
    l2 from that solution at the same l2. ``problems`` is read lazily, one at a time.

    Args:
      problems: the ridge problems, each with the same unknowns.
      l2s, solver, mesh, tol, maxiter, chunk: as for ``solve_ridge``.

    Yields:
      ``(A, B, info)`` of ``solve_ridge`` for each problem.
    """
    x0 = None
    for problem in problems:
        A, B, info = solve_ridge(problem, l2s, solver=solver, mesh=mesh, tol=tol,
                                 maxiter=maxiter, x0=x0, chunk=chunk)  # fmt: skip
        if info["solver"] == "cg":
            x0 = _theta(problem, A, B)
        yield A, B, info


def solve_ridge_grid(
    problem: RidgeProblem,
    l2s,
    momenta,
    *,
    solver: str = "auto",
    mesh=None,
    tol: float | None = None,
    maxiter: int | None = None,
    chunk: int | None = None,
):
    """Solves the kernel's ridge problem for every (mu, l2) of a grid.

    The rows of ``problem`` are filtered with each ``mu`` in ``momenta`` (its own
    ``momentum`` is ignored; its ``scales`` are kept), so entry ``[i, k]`` equals
    ``solve_ridge(problem.with_kernel(momenta[i], problem.scales), l2s[k])`` to solver
    tolerance.

    Args:
      problem: the rows (see ``RidgeProblem``).
      l2s: a float or a sequence of K floats, each > 0.
      momenta: a sequence of mu values in [0, 1).
      solver: ``"auto"`` (``choose_solver``), ``"direct"``, ``"cg"`` or ``"dual"``.
      mesh, tol, maxiter, chunk: as for ``solve_ridge``.

    Returns:
      ``(A, B, info)``: ``A, B`` of shape ``[n_mu, K, M, N]`` and a dict naming the solver
      (and, for CG, the iterations per mu).
    """
    l2s = check_l2s(l2s)
    mus = check_momenta(momenta)
    name = (
        choose_solver(problem, kernel_rows=True, num_l2=len(l2s) * len(mus))
        if solver == "auto"
        else solver
    )
    SOLVERS.get(name)  # names the known solvers if unknown
    problems = [problem.with_kernel(float(mu), problem.scales) for mu in mus]
    if name != "direct":
        # One solve per mu; CG starts every l2 from the previous mu's solution at that l2.
        As, Bs, info = [], [], {"solver": name}
        for A, B, step in solve_ridge_path(problems, l2s, solver=name, mesh=mesh, tol=tol,
                                           maxiter=maxiter, chunk=chunk):  # fmt: skip
            As.append(A)
            Bs.append(B)
            info["chunk"] = step["chunk"]
            if name == "cg":
                info.setdefault("iterations", []).append(step["iterations"])
        return jnp.stack(As), jnp.stack(Bs), info
    dtype = problem.Lp.dtype
    filters = np.stack([p.kernel_arrays(dtype)[0] for p in problems])
    scales = problems[0].kernel_arrays(dtype)[1]
    rows, weights = occurrences(problem.ids, problem.num_train)
    kw = _solver_keywords(problem, name, tol, maxiter, chunk, len(l2s), kernel=True)
    shared = (problem.ids, l2s.astype(dtype), filters, scales, rows, weights)
    theta = map_over_test(
        lambda Lp, y, ids, l2, F, s, *occ: solve_direct_grid(ids, Lp, y, l2, F, s, occ, **kw),
        (jnp.asarray(problem.Lp), jnp.asarray(problem.y)),
        shared=tuple(map(jnp.asarray, shared)),
        test_axis_out=2,
        mesh=mesh,
    )
    A, B = problem.split_theta(theta)
    return A, B, {"solver": name, "chunk": kw["chunk"]}


def _solver_keywords(
    problem: RidgeProblem, name: str, tol, maxiter, chunk, K: int, kernel=None
) -> dict:
    if chunk is None:
        shared, per_test = memory.problem_bytes(name, problem, K, kernel)
        chunk = memory.default_chunk(name, shared, per_test, problem.num_test)
    elif int(chunk) < 1:
        raise ValueError(f"chunk must be a positive number of test examples, got {chunk!r}")
    kw = dict(num_train=problem.num_train, use_A=problem.use_A, use_B=problem.use_B,
              chunk=int(chunk))  # fmt: skip
    if name == "cg":
        eps = float(np.finfo(problem.Lp.dtype).eps)
        kw["tol"] = tol if tol is not None else max(1e-12, 10 * eps)
        kw["maxiter"] = maxiter if maxiter is not None else max(200, 4 * problem.num_unknowns)
    return kw


def _theta(problem: RidgeProblem, A, B):
    """``[..., P]`` unknowns from ``(A, B)``, the inverse of ``split_theta``."""
    parts = ([A] if problem.use_A else []) + ([B] if problem.use_B else [])
    return jnp.concatenate(parts, axis=-1)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What follows ``Lp, y`` (and CG's start ``x0`` when ``x0``) in the arguments
    ``map_over_test`` passes: ``ids, l2s``, the kernel's ``F, scales`` when ``kernel``, and
    ``occurrences`` arrays (the direct solver's occurrence lists)."""

    x0: bool
    kernel: bool
    occurrences: int


def _solve_shard(fn, kw, layout: _Layout, Lp, y, *rest):
    """Calls solver ``fn`` on one shard of test examples with the arguments of ``layout``."""
    x0 = None
    if layout.x0:
        x0, *rest = rest
        x0 = x0 if x0.ndim == 2 else jnp.moveaxis(x0, 0, 1)
    ids, l2s, *rest = rest
    kernel = tuple(rest[:2]) if layout.kernel else None
    n = layout.occurrences
    extra = {"occ": tuple(rest[len(rest) - n :])} if n else {}
    if x0 is not None:
        return fn(ids, Lp, y, l2s, kernel, x0, **kw)
    return fn(ids, Lp, y, l2s, kernel, **extra, **kw)


__all__ = [
    "RidgeProblem",
    "SOLVERS",
    "check_l2s",
    "check_momenta",
    "choose_solver",
    "solve_ridge",
    "solve_ridge_grid",
    "solve_ridge_path",
]
