"""Dual (kernel) ridge solver, for problems with fewer rows than unknowns.

theta = X^T (X X^T + l2 I)^{-1} y. With x_s the row vector of row s (batch counts, or the
optimizer kernel's filtered counts), the Gram matrix of one test example is

    K_st = (use_A * Lp_s Lp_t + use_B) * (x_s . x_t)

where the overlap ``O_st = x_s . x_t`` is shared by every test example. The cost is
O(M S^3) for S = R*T rows instead of O(M P^3) for P unknowns, so it wins only when S < P
(at S = 2,400 rows and P = 400 unknowns it does 200x the work of the direct solver; the
automatic choice keeps it to problems where it is the cheapest, ``solvers.cost``). Test
examples are solved ``chunk`` at a time, each Gram matrix by ``spd.spd_solve``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from simfluence_jax.solvers.common import dense_rows, masked_ids, scatter_rows
from simfluence_jax.solvers.spd import spd_solve


@partial(jax.jit, static_argnames=("num_train", "use_A", "use_B", "chunk"))
def solve_dual(
    ids,
    Lp,
    y,
    l2s,
    kernel=None,
    *,
    num_train: int,
    use_A: bool = True,
    use_B: bool = True,
    chunk: int = 16,
):
    """Exact ridge solutions via the kernel form, for every test example and l2.

    Args:
      ids: ``int32[T, R, B]``.
      Lp, y: ``float[M, T, R]``.
      l2s: ``float[K]``.
      kernel: ``(F [T, T], scales [T, R])`` for the optimizer kernel's rows, or ``None``.
      chunk: test examples solved at once.

    Returns:
      theta: ``float[K, M, P]``.
    """
    ids, w = masked_ids(ids)
    dtype = Lp.dtype
    w = w.astype(dtype)
    T, R = ids.shape[:2]
    X = dense_rows(ids, w, num_train, kernel).reshape(T * R, num_train)
    overlap = X @ X.T
    eye = jnp.eye(T * R, dtype=dtype)

    def one_test(xs):
        lp, yy = xs
        lp_flat = lp.reshape(-1)
        K = overlap * (float(use_A) * lp_flat[:, None] * lp_flat[None, :] + float(use_B))

        def one_l2(l2):
            dual = spd_solve(K + l2 * eye, yy.reshape(-1)).reshape(T, R)
            return scatter_rows(dual, ids, w, lp, num_train, use_A, use_B, kernel)

        return jax.lax.map(one_l2, l2s.astype(dtype))

    theta = jax.lax.map(one_test, (Lp, y), batch_size=min(chunk, Lp.shape[0]))  # [M, K, P]
    return jnp.swapaxes(theta, 0, 1)
