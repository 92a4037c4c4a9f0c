"""Influence functions with damped, matrix-free inverse-Hessian-vector products.

Koh & Liang (2017, "Understanding Black-box Predictions via Influence Functions") estimate
the effect of up-weighting training example ``z_i`` on the loss of ``z_test`` as
``-g_test^T H^{-1} g_i``, with ``H`` the Hessian of the training loss. Here

    score[i, j] = g_i^T (H + lambda I)^{-1} g_test_j                 (train x test, [N, M])

so a positive score means up-weighting ``z_i`` lowers the test loss (the sign convention
of ``simfluence_jax.gradients``), ``lambda`` is the damping that makes ``H + lambda I``
positive definite away from an optimum, and

    H = (1/n) sum_{z in hessian inputs} hess_theta l(z; theta)

is the Hessian of the mean training loss on the pool, restricted to the selected parameters.

Only Hessian-vector products are formed, by forward-over-reverse differentiation
(``jax.jvp`` of ``jax.grad``; Pearlmutter, 1994), chunked over the pool. With
``A = H + lambda I`` one solve per test example ``x_j = A^{-1} g_test_j`` is computed by:

* ``cg``: conjugate gradients (Hestenes & Stiefel, 1952) on all M right-hand sides at once;
  needs ``A`` positive definite (a non-positive curvature ``p^T A p`` is reported);
* ``lissa``: the truncated Neumann series of Agarwal et al. (2017, "Second-Order Stochastic
  Optimization for Machine Learning in Linear Time"), ``h_0 = b``,
  ``h_k = b + (I - A / sigma) h_{k-1}``, ``x = h_K / sigma``, with ``sigma`` above the
  largest eigenvalue of ``A``; with minibatch HVPs it is stochastic (average ``repeats``);
  with full-batch HVPs its error is exactly ``(I - A/sigma)^{K+1} x*``;
* ``exact``: the explicit ``P x P`` Hessian (``P`` HVPs) and a dense solve; for tiny models
  or a head-only parameter selection;
* ``lanczos``: a rank-``k`` approximation from ``k`` Lanczos steps with full
  reorthogonalisation (the symmetric form of the Arnoldi route of Schioppa et al., 2022,
  "Scaling Up Influence Functions"): ``H ~ U^T diag(mu) U`` and

      (H + lambda I)^{-1} b ~ b / lambda + U^T [(1/(mu + lambda) - 1/lambda) * (U b)],

  i.e. the Ritz approximation on the Krylov space and ``1/lambda`` on its complement (exact
  once the space is invariant under ``H``, e.g. ``k = P``). Its cost is ``k`` HVPs of one
  vector, independent of M, where CG costs M HVPs per iteration.

Then ``score[:, j] = <g_i, x_j>`` over the N training gradients, chunked, so N solves are
never needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from simfluence_jax.gradients.per_example import (
    LossFn,
    Select,
    dots_with,
    map_chunks,
    per_example_grads,
    restrict,
)

SOLVERS = ("cg", "lissa", "exact", "lanczos")

Matvec = Callable[[jax.Array], jax.Array]


# ---------------------------------------------------------------------------------------------
# Hessian-vector products.


def mean_loss_hvp(
    loss_fn: LossFn, theta: Any, frozen: Any, inputs, *, chunk_size: int | None = 64
) -> Matvec:
    """``hvp(v float32[P]) -> float32[P]``: ``H v`` for the mean loss over ``inputs``.

    ``H = (1/n) sum_i hess l(z_i; theta)`` in the raveled coordinates of ``theta``: the HVP
    of each chunk's summed loss (padding rows weighted 0), accumulated by a ``lax.scan`` over
    chunks, so memory scales with ``chunk_size``. jit-safe; ``jax.vmap`` it over vectors.
    """
    w0, unravel = ravel_pytree(theta)
    leaves = jax.tree_util.tree_leaves(inputs)
    n = leaves[0].shape[0]
    rows = {"inputs": inputs, "weight": jnp.ones((n,), jnp.float32)}

    def hvp(v):
        if chunk_size is None or chunk_size >= n:
            chunks = jax.tree_util.tree_map(lambda x: x[None], rows)
        else:
            n_chunks = -(-n // chunk_size)
            pad = n_chunks * chunk_size - n

            def chunked(x, zero=False):
                if pad:
                    fill = jnp.zeros_like(x[:pad]) if zero else jnp.repeat(x[:1], pad, axis=0)
                    x = jnp.concatenate([x, fill])
                return x.reshape((n_chunks, chunk_size) + x.shape[1:])

            chunks = {
                "inputs": jax.tree_util.tree_map(chunked, inputs),
                "weight": chunked(rows["weight"], zero=True),
            }

        def one_chunk(acc, c):
            grad = jax.grad(
                lambda w: jnp.sum(c["weight"] * loss_fn(unravel(w), frozen, c["inputs"]))
            )
            return acc + jax.jvp(grad, (w0,), (v,))[1], None

        total, _ = jax.lax.scan(one_chunk, jnp.zeros_like(v), chunks)
        return total / n

    return hvp


def explicit_matrix(matvec: Matvec, dim: int, *, chunk_size: int | None = 256) -> jax.Array:
    """``float32[P, P]``: a linear map's matrix from ``P`` matvecs on the unit vectors."""
    eye = jnp.eye(dim, dtype=jnp.float32)
    return map_chunks(jax.vmap(matvec), eye, chunk_size=chunk_size).T


# ---------------------------------------------------------------------------------------------
# Solvers for (H + lambda I) X = B, B float32[M, P], one right-hand side per row.


@dataclasses.dataclass(frozen=True)
class SolveInfo:
    """Diagnostics of an iterative solve.

    Attributes:
      iterations: iterations run.
      residual: ``max_j |A x_j - b_j| / |b_j|`` at the end (``nan`` if not measured).
      negative_curvature: ``A`` is not positive definite (raise the damping): CG met
        ``p^T A p <= 0`` (the affected columns stopped there), or the exact / Lanczos solver
        found a non-positive (Ritz) eigenvalue of ``A``.
    """

    iterations: int
    residual: float
    negative_curvature: bool = False


def solve_cg(
    matvec: Matvec,
    b: jax.Array,
    *,
    damping: float,
    tol: float = 1e-6,
    max_iter: int = 100,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    """Conjugate gradients for ``(H + damping I) x_j = b_j``, all rows of ``b`` at once.

    Args:
      matvec: ``v float32[P] -> H v``; vmapped over the rows.
      b: ``float32[M, P]``.
      damping: ``lambda >= 0``.
      tol: stop a row once ``|r_j| <= tol |b_j|``.
      max_iter: at most this many iterations.

    Returns:
      ``(x float32[M, P], (iterations, max relative residual, negative curvature seen))``.
      jit-safe (a ``lax.while_loop``).
    """
    A = jax.vmap(lambda v: matvec(v) + damping * v)
    dot = lambda u, v: jnp.sum(u * v, axis=1)
    b_norm = jnp.sqrt(dot(b, b))
    x = jnp.zeros_like(b)
    r = b
    p = r
    rs = dot(r, r)
    active = b_norm > 0
    negative = jnp.zeros((), bool)

    def cond(state):
        k, _, _, _, _, active, _ = state
        return (k < max_iter) & jnp.any(active)

    def body(state):
        k, x, r, p, rs, active, negative = state
        Ap = A(p)
        curvature = dot(p, Ap)
        bad = active & (curvature <= 0)
        active = active & ~bad
        step = jnp.where(active, rs / jnp.where(active, curvature, 1.0), 0.0)
        x = x + step[:, None] * p
        r = r - step[:, None] * Ap
        rs_new = dot(r, r)
        beta = jnp.where(active, rs_new / jnp.where(rs > 0, rs, 1.0), 0.0)
        p = jnp.where(active[:, None], r + beta[:, None] * p, p)
        active = active & (jnp.sqrt(rs_new) > tol * b_norm)
        return k + 1, x, r, p, rs_new, active, negative | jnp.any(bad)

    k, x, _, _, _, _, negative = jax.lax.while_loop(cond, body, (0, x, r, p, rs, active, negative))
    true_res = jnp.sqrt(dot(A(x) - b, A(x) - b)) / jnp.where(b_norm > 0, b_norm, 1.0)
    return x, (k, jnp.max(true_res), negative)


def solve_lissa(
    matvec: Matvec,
    b: jax.Array,
    *,
    damping: float,
    scale: float,
    depth: int,
) -> jax.Array:
    """Truncated Neumann series (LiSSA) for ``(H + damping I) x_j = b_j``.

    ``h_0 = b``, ``h_k = b + h_{k-1} - (H h_{k-1} + damping h_{k-1}) / scale`` for
    ``k = 1..depth``, ``x = h_depth / scale``. With ``A = H + damping I`` and ``x* = A^{-1} b``,
    ``x* - x = (I - A/scale)^{depth+1} x*``: it converges iff every eigenvalue of ``A`` lies
    in ``(0, 2 scale)``, geometrically with ratio ``max |1 - mu/scale|``.

    Returns ``float32[M, P]``; jit-safe. :func:`lissa_stochastic` is the minibatch version.
    """
    if not scale > 0 or depth < 0:
        raise ValueError(f"LiSSA needs scale > 0 and depth >= 0, got {scale}, {depth}")
    A = jax.vmap(lambda v: matvec(v) + damping * v)

    def body(_, h):
        return b + h - A(h) / scale

    h = jax.lax.fori_loop(0, depth, body, b)
    return h / scale


def top_eigenvalue(matvec: Matvec, dim: int, *, iters: int = 30, seed: int = 0) -> jax.Array:
    """The largest ``|eigenvalue|`` of a symmetric map by power iteration (a lower bound)."""
    v = jax.random.normal(jax.random.PRNGKey(seed), (dim,), jnp.float32)
    v = v / jnp.linalg.norm(v)

    def body(_, state):
        v, _ = state
        w = matvec(v)
        lam = jnp.linalg.norm(w)
        return w / jnp.where(lam > 0, lam, 1.0), lam

    _, lam = jax.lax.fori_loop(0, iters, body, (v, jnp.zeros((), jnp.float32)))
    return lam


def lanczos(matvec: Matvec, dim: int, *, rank: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """``(mu float32[k], U float32[k, P])``: Ritz pairs of a symmetric map after ``k`` steps.

    Lanczos iteration from a random unit vector with full reorthogonalisation (twice, for
    float32 stability), then the eigendecomposition of the tridiagonal ``T = Q H Q^T``; the
    Ritz vectors are ``U = V^T Q``. When the new direction is below ``1e-4 |H q|`` (an
    invariant subspace, to float32 precision) the iteration restarts from a random
    direction orthogonal to ``Q`` with ``beta = 0``. jit-safe.
    """
    if not 1 <= rank <= dim:
        raise ValueError(f"lanczos rank must be in 1..{dim}, got {rank}")
    key = jax.random.PRNGKey(seed)
    q0 = jax.random.normal(key, (dim,), jnp.float32)
    Q = jnp.zeros((rank + 1, dim), jnp.float32).at[0].set(q0 / jnp.linalg.norm(q0))

    def orthogonalise(Q, w):
        w = w - Q.T @ (Q @ w)
        return w - Q.T @ (Q @ w)

    def body(i, state):
        Q, alpha, beta = state
        q = Q[i]
        Hq = matvec(q)
        a = jnp.dot(Hq, q)
        w = orthogonalise(Q, Hq)
        b = jnp.linalg.norm(w)
        ok = b > 1e-4 * jnp.linalg.norm(Hq)
        # Breakdown (an invariant subspace, to float32 precision): restart from a random
        # direction orthogonal to Q with beta = 0, so T stays exact block by block.
        fresh = orthogonalise(Q, jax.random.normal(jax.random.fold_in(key, i + 1), (dim,)))
        w = jnp.where(ok, w, fresh)
        Q = Q.at[i + 1].set(w / jnp.linalg.norm(w))
        return Q, alpha.at[i].set(a), beta.at[i].set(jnp.where(ok, b, 0.0))

    init = (Q, jnp.zeros((rank,), jnp.float32), jnp.zeros((rank,), jnp.float32))
    Q, alpha, beta = jax.lax.fori_loop(0, rank, body, init)
    off = beta[:-1]
    T = jnp.diag(alpha) + jnp.diag(off, 1) + jnp.diag(off, -1)
    mu, V = jnp.linalg.eigh(T)
    return mu, V.T @ Q[:rank]


def solve_lowrank(mu: jax.Array, U: jax.Array, b: jax.Array, *, damping: float) -> jax.Array:
    """``(U^T diag(mu) U + damping I)^{-1} b_j`` for orthonormal rows ``U``; ``b float32[M, P]``."""
    coef = 1.0 / (mu + damping) - 1.0 / damping
    return b / damping + ((b @ U.T) * coef) @ U


def solve_exact(H: jax.Array, b: jax.Array, *, damping: float) -> jax.Array:
    """``x_j = (H + damping I)^{-1} b_j`` by a dense symmetric solve; ``b float32[M, P]``."""
    A = H + damping * jnp.eye(H.shape[0], dtype=H.dtype)
    A = 0.5 * (A + A.T)
    return jnp.linalg.solve(A, b.T).T


# ---------------------------------------------------------------------------------------------
# Influence scores.


@dataclasses.dataclass(frozen=True)
class InfluenceConfig:
    """How the inverse-Hessian-vector products are computed.

    Attributes:
      solver: ``cg``, ``lissa``, ``exact`` or ``lanczos``.
      damping: ``lambda`` in ``H + lambda I``.
      select: which parameters enter ``g`` and ``H`` (``per_example.param_mask``).
      chunk_size: examples per chunk for gradients and HVPs.
      cg_tol, cg_max_iter: CG stopping rule.
      lissa_depth: Neumann terms.
      lissa_scale: ``sigma``; ``None`` = 1.1 x (power-iteration top eigenvalue + damping).
      lissa_batch_size: examples per stochastic HVP (``None``: full batch, deterministic).
      lissa_repeats: independent stochastic estimates averaged.
      lanczos_rank: ``k``, Lanczos steps (and HVPs) of the low-rank solver.
      seed: for the power iteration and the stochastic minibatches.
    """

    solver: str = "cg"
    damping: float = 1e-3
    select: Select = None
    chunk_size: int | None = 64
    cg_tol: float = 1e-6
    cg_max_iter: int = 200
    lissa_depth: int = 200
    lissa_scale: float | None = None
    lissa_batch_size: int | None = None
    lissa_repeats: int = 1
    lanczos_rank: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown influence solver {self.solver!r}; known: {SOLVERS}")
        if not self.damping >= 0:
            raise ValueError(f"damping must be >= 0, got {self.damping}")
        if self.solver == "lanczos" and not self.damping > 0:
            raise ValueError(
                "the lanczos solver needs damping > 0 (it inverts lambda I off the Krylov space)"
            )


def inverse_hvp(
    loss_fn: LossFn,
    theta: Any,
    frozen: Any,
    hessian_inputs,
    rhs: jax.Array,
    *,
    config: InfluenceConfig,
) -> tuple[jax.Array, SolveInfo]:
    """``float32[M, P]``: ``(H + lambda I)^{-1} rhs_j`` for the mean loss on ``hessian_inputs``.

    ``theta`` is the differentiated pytree (already restricted; ``config.select`` is not
    applied here) and ``rhs`` rows live in its raveled coordinates. Parameters and inputs
    enter the compiled solvers as arguments, never as constants.
    """
    c = config
    P = rhs.shape[1]

    def hvp_of(th, fr, x):
        return mean_loss_hvp(loss_fn, th, fr, x, chunk_size=c.chunk_size)

    args = (theta, frozen, hessian_inputs)
    if c.solver == "exact":
        H = jax.jit(lambda th, fr, x: explicit_matrix(hvp_of(th, fr, x), P))(*args)
        X = jax.jit(lambda H, b: solve_exact(H, b, damping=c.damping))(H, rhs)
        lowest = float(np.linalg.eigvalsh(np.asarray(H, np.float64))[0]) + c.damping
        return X, SolveInfo(iterations=P, residual=float("nan"), negative_curvature=lowest <= 0)
    if c.solver == "lanczos":
        rank = min(c.lanczos_rank, P)
        mu, U = jax.jit(lambda th, fr, x: lanczos(hvp_of(th, fr, x), P, rank=rank, seed=c.seed))(
            *args
        )
        X = jax.jit(lambda mu, U, b: solve_lowrank(mu, U, b, damping=c.damping))(mu, U, rhs)
        lowest = float(jnp.min(mu)) + c.damping
        return X, SolveInfo(iterations=rank, residual=float("nan"), negative_curvature=lowest <= 0)
    if c.solver == "cg":

        def cg(th, fr, x, b):
            return solve_cg(
                hvp_of(th, fr, x), b, damping=c.damping, tol=c.cg_tol, max_iter=c.cg_max_iter
            )

        X, (k, res, neg) = jax.jit(cg)(*args, rhs)
        return X, SolveInfo(iterations=int(k), residual=float(res), negative_curvature=bool(neg))
    scale = c.lissa_scale
    if scale is None:
        top = jax.jit(lambda th, fr, x: top_eigenvalue(hvp_of(th, fr, x), P, seed=c.seed))(*args)
        scale = 1.1 * (float(top) + c.damping)
    if c.lissa_batch_size is None:

        def lissa(th, fr, x, b):
            return solve_lissa(
                hvp_of(th, fr, x), b, damping=c.damping, scale=scale, depth=c.lissa_depth
            )

        X = jax.jit(lissa)(*args, rhs)
    else:
        X = lissa_stochastic(
            loss_fn,
            theta,
            frozen,
            hessian_inputs,
            rhs,
            damping=c.damping,
            scale=scale,
            depth=c.lissa_depth,
            batch_size=c.lissa_batch_size,
            repeats=c.lissa_repeats,
            seed=c.seed,
        )
    return X, SolveInfo(iterations=c.lissa_depth, residual=float("nan"))


def lissa_stochastic(
    loss_fn: LossFn,
    theta: Any,
    frozen: Any,
    inputs,
    rhs: jax.Array,
    *,
    damping: float,
    scale: float,
    depth: int,
    batch_size: int,
    repeats: int = 1,
    seed: int = 0,
) -> jax.Array:
    """Stochastic LiSSA: iteration k uses the HVP of a fresh random minibatch.

    Each ``H_k`` is an unbiased estimate of ``H`` drawn independently, so the expectation of
    ``prod_k (I - A_k/scale)`` is ``(I - A/scale)^depth`` and the estimate is unbiased for the
    truncated series; ``repeats`` independent estimates are averaged. ``float32[M, P]``.
    """
    n = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"lissa batch_size must be in 1..{n}, got {batch_size}")
    if repeats < 1:
        raise ValueError(f"lissa repeats must be >= 1, got {repeats}")

    @jax.jit
    def one_estimate(theta, frozen, inputs, rhs, key):
        w0, unravel = ravel_pytree(theta)

        def minibatch_hvp(v, ids):
            rows = jax.tree_util.tree_map(lambda x: jnp.take(x, ids, axis=0), inputs)
            grad = jax.grad(lambda w: jnp.mean(loss_fn(unravel(w), frozen, rows)))
            return jax.jvp(grad, (w0,), (v,))[1]

        def body(k, h):
            ids = jax.random.choice(jax.random.fold_in(key, k), n, (batch_size,), replace=False)
            Ah = jax.vmap(lambda v: minibatch_hvp(v, ids))(h) + damping * h
            return rhs + h - Ah / scale

        return jax.lax.fori_loop(0, depth, body, rhs) / scale

    keys = jax.random.split(jax.random.PRNGKey(seed), repeats)
    return sum(one_estimate(theta, frozen, inputs, rhs, k) for k in keys) / repeats


def influence_scores(
    loss_fn: LossFn,
    theta: Any,
    frozen: Any,
    train_inputs,
    test_inputs,
    *,
    hessian_inputs=None,
    config: InfluenceConfig | None = None,
) -> tuple[np.ndarray, SolveInfo]:
    """``float32[N, M]``: ``g_i^T (H + lambda I)^{-1} g_test_j`` (positive lowers the test loss).

    Args:
      loss_fn: ``loss_fn(theta, frozen, inputs) -> float32[B]``.
      theta: the parameters (usually the final model); ``config.select`` picks the ones
        entering gradients and Hessian.
      frozen: passed to ``loss_fn``.
      train_inputs, test_inputs: the pool (N) and test (M) examples.
      hessian_inputs: examples whose mean loss defines ``H`` (default ``train_inputs``).
      config: solver and damping (default ``InfluenceConfig()``).

    Returns:
      ``(scores, SolveInfo)``.
    """
    config = InfluenceConfig() if config is None else config
    r = restrict(loss_fn, theta, frozen, select=config.select)
    hessian_inputs = train_inputs if hessian_inputs is None else hessian_inputs
    grads = jax.jit(
        lambda th, fr, x: per_example_grads(r.loss_fn, th, fr, x, chunk_size=config.chunk_size)
    )
    G_test = grads(r.theta, r.frozen, test_inputs)
    X, info = inverse_hvp(r.loss_fn, r.theta, r.frozen, hessian_inputs, G_test, config=config)
    if info.negative_curvature:
        raise ValueError(
            f"H + {config.damping:g} I is not positive definite at these parameters (the "
            f"{config.solver} solver met non-positive curvature); raise the damping"
        )
    if not bool(jnp.all(jnp.isfinite(X))):
        raise ValueError(
            f"the {config.solver} solve diverged (non-finite values): H + {config.damping:g} I "
            "must be positive definite and, for LiSSA, below 2 x lissa_scale"
        )
    dots = jax.jit(
        lambda th, fr, x, V: dots_with(r.loss_fn, th, fr, x, V, chunk_size=config.chunk_size)
    )
    scores = np.asarray(dots(r.theta, r.frozen, train_inputs, X), np.float32)
    return scores, info
