"""Matrix-free ridge solver: preconditioned conjugate gradients.

Solves (X^T X + l2 I) theta = X^T y for every test example without forming X^T X: the
matvec gathers the parameters of each row's B ids, forms the row predictions and scatters
them back (``common.predict_rows`` / ``scatter_rows``), so memory is O(N + rows) per test
example. Rows of the optimizer kernel are the count rows filtered along each run
(``x_t = sum_k F[t, k] m(c_k)``), applied as a T x T product between the gather and the
scatter. A block-Jacobi preconditioner (the exact 2x2 block of each id's A and B columns)
removes the near-collinearity of those two columns. The iteration stops when every test
example's relative residual ``|r| / |X^T y|`` is below ``tol`` or after ``maxiter`` steps
(Hestenes & Stiefel, 1952). ``x0`` warm-starts it (e.g. from the solution at a nearby l2 or
momentum).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from simfluence_jax.solvers.common import (
    dense_rows,
    map_chunks,
    masked_ids,
    predict_rows,
    rhs_one,
    scatter_rows,
)


def _block_diag(ids, w, Lp, num_train, kernel, X2=None):
    """Per-id 2x2 diagonal blocks of X^T X for every test example: (d_AA, d_AB, d_BB),
    each ``[M, N]`` (``Lp: [M, T, R]``; ``X2 [T, R, N]``: the kernel rows squared)."""
    if kernel is None:
        # Plain rows: an id present k times in a row contributes k^2 times the row weight.
        same = (ids[..., :, None] == ids[..., None, :]) & (w[..., :, None] > 0)
        k = jnp.sum(same & (w[..., None, :] > 0), axis=-1).astype(Lp.dtype) * w  # [T, R, B]

        def scatter(v):  # v: [T, R] -> [N]
            return jnp.zeros(num_train, Lp.dtype).at[ids].add(k * v[..., None])

        per_test = jax.vmap(lambda lp: (scatter(lp * lp), scatter(lp), scatter(jnp.ones_like(lp))))
        return per_test(Lp)
    return (
        jnp.einsum("mtr,trn->mn", Lp * Lp, X2),
        jnp.einsum("mtr,trn->mn", Lp, X2),
        jnp.broadcast_to(jnp.sum(X2, axis=(0, 1)), (Lp.shape[0], num_train)),
    )


def _preconditioner(blocks, l2, num_train, use_A, use_B):
    """Block-Jacobi inverse: the columns ``Lp x_i`` and ``x_i`` of one id are nearly
    collinear when the loss moves little, so their 2x2 block is inverted exactly."""
    dAA, dAB, dBB = blocks
    N = num_train
    if use_A and use_B:
        a, c, d = dAA + l2, dAB, dBB + l2
        det = a * d - c * c

        def apply(r):
            ra, rb = r[..., :N], r[..., N:]
            return jnp.concatenate([(d * ra - c * rb) / det, (a * rb - c * ra) / det], axis=-1)

        return apply
    diag = dAA + l2 if use_A else dBB + l2
    return lambda r: r / diag


@partial(jax.jit, static_argnames=("num_train", "use_A", "use_B", "maxiter", "chunk"))
def solve_cg(
    ids,
    Lp,
    y,
    l2s,
    kernel=None,
    x0=None,
    *,
    num_train: int,
    use_A: bool = True,
    use_B: bool = True,
    tol: float = 1e-6,
    maxiter: int = 1000,
    chunk: int = 256,
):
    """Ridge solutions by preconditioned CG for every test example and every l2.

    Args:
      ids: ``int32[T, R, B]``.
      Lp, y: ``float[M, T, R]``.
      l2s: ``float[K]``.
      kernel: ``(F [T, T], scales [T, R])`` for the optimizer kernel's rows, or ``None``.
      x0: optional starting point (default zeros): ``float[M, P]`` for every l2, or
        ``float[K, M, P]``, one per l2 (e.g. the solutions of a neighbouring mu).
      chunk: test examples iterated together (``lax.map`` over chunks bounds the memory).

    Returns:
      ``(theta float[K, M, P], iterations int32[K, M], rel_residual float[K, M])``; the
      iteration count is that of the test example's chunk, repeated per test example.
    """
    ids, w = masked_ids(ids)
    dtype = Lp.dtype
    w = w.astype(dtype)
    X2 = None if kernel is None else dense_rows(ids, w, num_train, kernel) ** 2  # [T, R, N]
    l2s = l2s.astype(dtype)
    if x0 is None:
        per_test = (Lp, y)
    else:
        x0 = jnp.asarray(x0, dtype)
        per_test = (Lp, y, x0 if x0.ndim == 2 else jnp.moveaxis(x0, 1, 0))

    def one_chunk(Lp, y, x0=None):
        if x0 is not None and x0.ndim == 3:
            x0 = jnp.moveaxis(x0, 0, 1)
        return _cg_chunk(ids, w, Lp, y, l2s, kernel, X2, x0, num_train, use_A, use_B, tol,
                         maxiter)  # fmt: skip

    return map_chunks(one_chunk, per_test, chunk, test_axis_out=1)


def _cg_chunk(ids, w, Lp, y, l2s, kernel, X2, x0, num_train, use_A, use_B, tol, maxiter):
    """``solve_cg`` on one chunk of test examples (``Lp, y: [m, T, R]``)."""
    dtype = Lp.dtype
    M = Lp.shape[0]
    args = (num_train, use_A, use_B, kernel)

    def gram(theta, lp):
        return scatter_rows(predict_rows(theta, ids, w, lp, *args), ids, w, lp, *args)

    batched_gram = jax.vmap(gram)
    rhs = jax.vmap(lambda lp, yy: rhs_one(ids, w, lp, yy, *args))(Lp, y)
    blocks = _block_diag(ids, w, Lp, num_train, kernel, X2)
    rhs_norm = jnp.maximum(jnp.linalg.norm(rhs, axis=-1), jnp.finfo(dtype).tiny)
    if x0 is None:
        starts = jnp.zeros((l2s.shape[0],) + rhs.shape, dtype)
    else:
        starts = jnp.broadcast_to(x0, (l2s.shape[0],) + rhs.shape) if x0.ndim == 2 else x0

    def solve(args):
        l2, start = args
        precond = _preconditioner(blocks, l2, num_train, use_A, use_B)

        def matvec(x):
            return batched_gram(x, Lp) + l2 * x

        x = start
        r = rhs - matvec(x)
        z = precond(r)
        p = z
        rz = jnp.sum(r * z, axis=-1)

        def cond(state):
            i, x, r, p, rz = state
            res = jnp.linalg.norm(r, axis=-1) / rhs_norm
            return (i < maxiter) & jnp.any(res > tol)

        def body(state):
            i, x, r, p, rz = state
            active = (jnp.linalg.norm(r, axis=-1) / rhs_norm) > tol
            Ap = matvec(p)
            pAp = jnp.sum(p * Ap, axis=-1)
            step = jnp.where(active, rz / jnp.where(active, pAp, 1.0), 0.0)
            x = x + step[:, None] * p
            r = r - step[:, None] * Ap
            z = precond(r)
            rz_new = jnp.sum(r * z, axis=-1)
            beta = jnp.where(active, rz_new / jnp.where(active, rz, 1.0), 0.0)
            p = jnp.where(active[:, None], z + beta[:, None] * p, p)
            return i + 1, x, r, p, jnp.where(active, rz_new, rz)

        i, x, r, _, _ = jax.lax.while_loop(cond, body, (0, x, r, p, rz))
        # Report the true residual, not the recursively updated one.
        true_r = rhs - matvec(x)
        return x, jnp.full((M,), i), jnp.linalg.norm(true_r, axis=-1) / rhs_norm

    return jax.lax.map(solve, (l2s, starts))
