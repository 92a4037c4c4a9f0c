"""Direct ridge solver: normal equations, then batched Cholesky solves.

With x_s the row vector of row s (the batch count vector m_s, or the optimizer kernel's
filtered and scaled counts), the normal-equation blocks for one test example are
(docs/design.md, "Fitting")

    G = [[sum Lp^2 x x^T,  sum Lp x x^T],      r = [sum Lp y x,
         [sum Lp x x^T,    sum x x^T    ]]          sum y x     ]

and theta = (G + l2 I)^{-1} r. Plain count rows touch only the B x B entries of their
batch, so their blocks are built by scatter-adds in a ``lax.scan`` over steps (all runs of
a step at once), ``vmap``-ed over test examples; kernel rows are dense (a decaying sum of
recent batches), so their blocks are matrix products of the shared dense rows.
``sum x x^T`` does not depend on the test example and is built once; the additive model (B
only) therefore needs a single Cholesky factorisation, and the full model eliminates the B
block through it (a Schur complement), so each test example needs one N x N factorisation
rather than one of size 2N (about 3x faster, and measured as accurate as the full
factorisation against float64). Every l2 of a path reuses the blocks.
Memory is O(M (2N)^2): use the CG solver for large pools.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from simfluence_jax.solvers.common import dense_rows, masked_ids, rhs_one


def _pair_index(ids, w):
    """Row and column indices and weights of every (slot, slot) pair in each batch."""
    B = ids.shape[-1]
    ii = jnp.broadcast_to(ids[..., :, None], ids.shape + (B,))
    kk = jnp.broadcast_to(ids[..., None, :], ids.shape + (B,))
    pw = w[..., :, None] * w[..., None, :]
    return ii, kk, pw


def shared_block(ids, w, num_train: int, dtype) -> jax.Array:
    """``sum_s m_s m_s^T``: ``[N, N]``, the same for every test example."""

    def step(S0, xs):
        idt, wt = xs
        ii, kk, pw = _pair_index(idt, wt)
        return S0.at[ii, kk].add(pw.astype(dtype)), None

    S0, _ = jax.lax.scan(step, jnp.zeros((num_train, num_train), dtype), (ids, w))
    return S0


def accumulate_one(ids, w, Lp, y, num_train: int, use_A: bool, use_B: bool):
    """Per-test blocks ``(S2, S1, r)`` of plain count rows for one test example."""
    N, dtype = num_train, Lp.dtype

    def step(carry, xs):
        S2, S1 = carry
        idt, wt, lp = xs
        ii, kk, pw = _pair_index(idt, wt)
        if use_A:
            S2 = S2.at[ii, kk].add(pw * (lp * lp)[:, None, None])
        if use_A and use_B:
            S1 = S1.at[ii, kk].add(pw * lp[:, None, None])
        return (S2, S1), None

    shape2 = (N, N) if use_A else (0, 0)
    shape1 = (N, N) if (use_A and use_B) else (0, 0)
    init = (jnp.zeros(shape2, dtype), jnp.zeros(shape1, dtype))
    (S2, S1), _ = jax.lax.scan(step, init, (ids, w, Lp))
    return S2, S1, rhs_one(ids, w, Lp, y, N, use_A, use_B)


def _dense_blocks(X, Lp, y, use_A: bool, use_B: bool):
    """Blocks of dense rows ``X [S, N]`` for one test example (``Lp, y: [S]``)."""
    zero = jnp.zeros((0, 0), X.dtype)
    S2 = (X * (Lp * Lp)[:, None]).T @ X if use_A else zero
    S1 = (X * Lp[:, None]).T @ X if (use_A and use_B) else zero
    parts = ([X.T @ (Lp * y)] if use_A else []) + ([X.T @ y] if use_B else [])
    return S2, S1, jnp.concatenate(parts)


def normal_equations(ids, Lp, y, num_train, use_A, use_B, kernel=None):
    """``(S0 [N, N], S2 [M, N, N], S1 [M, N, N], r [M, P])`` of the problem's rows."""
    ids, w = masked_ids(ids)
    dtype = Lp.dtype
    w = w.astype(dtype)
    if kernel is None:
        S0 = shared_block(ids, w, num_train, dtype)
        S2, S1, r = jax.vmap(accumulate_one, in_axes=(None, None, 0, 0, None, None, None))(
            ids, w, Lp, y, num_train, use_A, use_B
        )
        return S0, S2, S1, r
    X = dense_rows(ids, w, num_train, kernel).reshape(-1, num_train)  # [S, N]
    S0 = X.T @ X
    M = Lp.shape[0]
    S2, S1, r = jax.vmap(partial(_dense_blocks, X, use_A=use_A, use_B=use_B))(
        Lp.reshape(M, -1), y.reshape(M, -1)
    )
    return S0, S2, S1, r


@partial(jax.jit, static_argnames=("num_train", "use_A", "use_B"))
def solve_direct(
    ids, Lp, y, l2s, kernel=None, *, num_train: int, use_A: bool = True, use_B: bool = True
):
    """Exact ridge solutions for every test example and every l2.

    Args:
      ids: ``int32[T, R, B]``.
      Lp, y: ``float[M, T, R]``.
      l2s: ``float[K]`` ridge strengths (> 0).
      kernel: ``(F [T, T], scales [T, R])`` for the optimizer kernel's rows, or ``None``.

    Returns:
      theta: ``float[K, M, P]``, P = N * (use_A + use_B), A block first.
    """
    dtype = Lp.dtype
    S0, S2, S1, r = normal_equations(ids, Lp, y, num_train, use_A, use_B, kernel)
    P = r.shape[-1]
    eye = jnp.eye(P, dtype=dtype)

    if use_B and not use_A:
        # One shared system, M right-hand sides.
        def solve(l2):
            c = jnp.linalg.cholesky(S0 + l2 * eye)
            return jsl.cho_solve((c, True), r.T).T

    elif use_A and not use_B:

        def solve(l2):
            def one(S2j, rj):
                c = jnp.linalg.cholesky(S2j + l2 * eye)
                return jsl.cho_solve((c, True), rj)

            return jax.vmap(one)(S2, r)

    else:
        # Block elimination through the shared block K = S0 + l2 I (factored once):
        #   Schur_j = S2_j + l2 I - S1_j K^-1 S1_j     (S1_j is symmetric)
        #   A_j = Schur_j^-1 (rA_j - S1_j K^-1 rB_j),  B_j = K^-1 (rB_j - S1_j A_j)
        # Two N x N factorisations per test example instead of one 2N x 2N: ~3x faster.
        N = num_train
        eye_n = jnp.eye(N, dtype=dtype)

        def solve(l2):
            L = jnp.linalg.cholesky(S0 + l2 * eye_n)

            def one(S2j, S1j, rj):
                W = jsl.solve_triangular(L, S1j, lower=True)  # L^-1 S1
                c = jnp.linalg.cholesky(S2j + l2 * eye_n - W.T @ W)
                vA, vB = rj[:N], rj[N:]
                a = jsl.cho_solve((c, True), vA - S1j @ jsl.cho_solve((L, True), vB))
                b = jsl.cho_solve((L, True), vB - S1j @ a)
                return jnp.concatenate([a, b])

            return jax.vmap(one)(S2, S1, r)

    return jax.lax.map(solve, l2s.astype(dtype))
