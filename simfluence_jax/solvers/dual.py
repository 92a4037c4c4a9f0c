"""Dual (kernel) ridge solver, for problems with fewer rows than unknowns.

theta = X^T (X X^T + l2 I)^{-1} y. With m_s the count vector of row s, the Gram matrix of
one test example is

    K_st = (use_A * Lp_s Lp_t + use_B) * (m_s . m_t)

where the overlap ``O_st = m_s . m_t`` is shared by every test example. The cost is
O(M S^3) for S = R*T rows instead of O(M P^3) for P unknowns, so it wins when S < P.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from simfluence_jax.solvers.common import masked_ids, scatter_rows


@partial(jax.jit, static_argnames=("num_train", "use_A", "use_B"))
def solve_dual(ids, Lp, y, l2s, *, num_train: int, use_A: bool = True, use_B: bool = True):
    """Exact ridge solutions via the kernel form, for every test example and l2.

    Args:
      ids: ``int32[T, R, B]``.
      Lp, y: ``float[M, T, R]``.
      l2s: ``float[K]``.

    Returns:
      theta: ``float[K, M, P]``.
    """
    ids, w = masked_ids(ids.reshape(-1, ids.shape[-1]))
    dtype = Lp.dtype
    w = w.astype(dtype)
    M = Lp.shape[0]
    Lp = Lp.reshape(M, -1)
    y = y.reshape(M, -1)
    S = ids.shape[0]
    counts = jnp.zeros((S, num_train), dtype).at[jnp.arange(S)[:, None], ids].add(w)
    overlap = counts @ counts.T
    eye = jnp.eye(S, dtype=dtype)

    def solve(l2):
        def one(lp, yy):
            K = overlap * (float(use_A) * lp[:, None] * lp[None, :] + float(use_B))
            c = jnp.linalg.cholesky(K + l2 * eye)
            dual = jsl.cho_solve((c, True), yy)
            return scatter_rows(dual, ids, w, lp, num_train, use_A, use_B)

        return jax.vmap(one)(Lp, y)

    return jax.lax.map(solve, l2s.astype(dtype))
