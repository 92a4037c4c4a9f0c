"""Direct ridge solver: normal equations, the shared block eliminated, one N x N solve.

With x_s the row vector of row s (the batch count vector c_s, or the optimizer kernel's
filtered and scaled counts), the normal-equation blocks for one test example are
(docs/design.md, "Fitting")

    G = [[S2, S1], [S1, S0]] = [[sum Lp^2 x x^T, sum Lp x x^T],    r = [sum Lp y x,
                                [sum Lp x x^T,   sum x x^T   ]]         sum y x     ]

and theta = (G + l2 I)^{-1} r.

**Eliminating the shared block.** ``S0`` does not depend on the test example. Its
eigendecomposition ``S0 = U diag(lam) U^T`` (one per problem, shared by every test example
and every l2) eliminates the B block for every l2 at once: with ``Q_j = S1_j U`` and
``D = diag(1 / (lam + l2))``,

    Schur_j = S2_j + l2 I - Q_j D Q_j^T,      A_j = Schur_j^-1 (rA_j - Q_j D U^T rB_j),
    B_j = U D (U^T rB_j - Q_j^T A_j),

so each l2 costs one N x N product and one N x N Cholesky solve per test example
(``spd.spd_solve``). The additive model (B only) needs only the eigendecomposition: every
l2 is a diagonal rescale.

**Building the blocks from occurrence lists.** Row i of ``sum_s g_s c_s z_s^T`` is the sum,
over the rows s where id i occurs, of ``g_s z_s``: with the occurrence lists of
``common.occurrences`` (O = the most occurrences of an id) it is one batched product of
O x N per id, for any row vectors z. Plain count rows use it with ``z = c`` (``S2``) and
``z = U^T c`` (``Q`` directly, without forming ``S1``): about 4 N^2 O flops per test example
instead of scatters or 2 N^3. Kernel rows ``s_t x_t`` with ``x_t = mu x_{t-1} + c_t`` are
dense, but a weighted sum of their outer products still has a sparse factor. Within one
run, for row weights ``u_t`` (``Lp^2 s^2``, ``Lp s^2`` or ``s^2``),

    sum_t u_t x_t x_t^T = sum_k g_k (c_k v_k^T + v_k c_k^T),
    g_k = sum_{t >= k} mu^(2(t-k)) u_t,   v_k = c_k / 2 + mu x_{k-1},

(expand ``x_t = sum_k mu^(t-k) c_k`` and split the pairs (k, k') at ``max(k, k')``); ``g`` is
the filter ``F^2`` transposed applied to the weights and ``v`` is ``F - I/2`` applied to the
counts, ``F`` the kernel's geometric filter ``F[t, k] = mu^(t-k)``. Memory for the gathered
rows: N x O x N, shared.

**Chunks.** Test examples are solved ``chunk`` at a time (``lax.map``), so the per-test
N x N matrices take ``chunk`` times their size, whatever M (``memory.direct_bytes``).
``solve_direct_grid`` does all of this for several ``mu`` in one compiled ``lax.map``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from simfluence_jax.solvers.common import masked_ids
from simfluence_jax.solvers.spd import spd_solve


def count_rows(ids, w, num_train: int) -> jax.Array:
    """``[T, R, N]`` batch count vectors ``c_t`` of every row."""
    T, R = ids.shape[:2]
    t = jnp.arange(T)[:, None, None]
    r = jnp.arange(R)[None, :, None]
    return jnp.zeros((T, R, num_train), w.dtype).at[t, r, ids].add(w)


def _gather(u, occ):
    """Row values ``u [..., S]`` at the occurrences: ``[..., N, O]`` (0 at padding)."""
    rows, weights = occ
    return u[..., rows] * weights


def _per_id(g, Z):
    """``sum_o g[i, o] Z[i, o, :]`` for every id i: ``g [N, O]``, ``Z [N, O, N]`` -> ``[N, N]``."""
    return jnp.einsum("no,nok->nk", g, Z)


def shared_parts(ids, num_train, occ, kernel, dtype):
    """What every test example shares: ``(lam, U, Z_S2, Z_Q, kernel_V)``.

    ``S0 = U diag(lam) U^T``; ``Z_S2`` and ``Z_Q`` are the gathered row vectors ``[N, O, N]``
    whose per-id sums give ``S2`` and ``Q`` for plain rows; for kernel rows ``Z_S2`` is the
    gathered ``v_k`` (``Z_Q`` unused).
    """
    ids, w = masked_ids(ids)
    w = w.astype(dtype)
    rows, weights = occ
    weights = weights.astype(dtype)
    counts = count_rows(ids, w, num_train)
    T, R, N = counts.shape
    if kernel is None:
        C = counts.reshape(T * R, N)
        S0 = C.T @ C
        lam, U = _eigh(S0)
        return lam, U, C[rows] * weights[..., None], (C @ U)[rows] * weights[..., None]
    F, scales = kernel
    V = jnp.einsum("tk,krn->trn", F - 0.5 * jnp.eye(T, dtype=dtype), counts).reshape(T * R, N)
    V_occ = V[rows] * weights[..., None]
    g0 = jnp.einsum("tk,tr->kr", F * F, scales * scales).reshape(-1)
    Z = _per_id(_gather(g0, (rows, weights)), V_occ)
    lam, U = _eigh(Z + Z.T)
    return lam, U, V_occ, None


def _eigh(S0):
    lam, U = jnp.linalg.eigh(S0)
    # Rounding can leave eigenvalues of the PSD S0 slightly negative; they are zero.
    return jnp.maximum(lam, 0.0), U


def per_test_blocks(shared, occ, Lp, y, kernel, use_A: bool, use_B: bool):
    """One test example's ``(S2 [N, N], Q [N, N], rA [N], rB [N])`` (``Lp, y: [T, R]``);
    blocks the model does not use are empty."""
    lam, U, Z_S2, Z_Q = shared
    rows, weights = occ
    occ = (rows, weights.astype(Lp.dtype))
    dtype = Lp.dtype
    empty = jnp.zeros((0, 0), dtype)
    if kernel is not None:
        F, scales = kernel
        s2 = scales * scales

        def sym(u):  # row weights [T, R] -> sum_t u_t x_t x_t^T
            Z = _per_id(_gather(((F * F).T @ u).reshape(-1), occ), Z_S2)
            return Z + Z.T

        def rhs(u):  # row targets [T, R] -> sum_t u_t x_t
            return jnp.sum(_gather((F.T @ (scales * u)).reshape(-1), occ), axis=-1)

        S2 = sym(Lp * Lp * s2) if use_A else empty
        Q = sym(Lp * s2) @ U if (use_A and use_B) else empty
    else:
        lp = _gather(Lp.reshape(-1), occ)
        S2 = _per_id(lp * lp, Z_S2) if use_A else empty
        Q = _per_id(lp, Z_Q) if (use_A and use_B) else empty

        def rhs(u):
            return jnp.sum(_gather(u.reshape(-1), occ), axis=-1)

    rA = rhs(Lp * y) if use_A else jnp.zeros((0,), dtype)
    rB = rhs(y) if use_B else jnp.zeros((0,), dtype)
    return S2, Q, rA, rB


def solve_blocks(lam, U, S2, Q, rA, rB, l2, use_A: bool, use_B: bool):
    """``theta [P]`` of one test example at one l2 from its blocks (module docstring)."""
    N = U.shape[0]
    eye = jnp.eye(N, dtype=U.dtype)
    if not use_B:
        return spd_solve(S2 + l2 * eye, rA)
    d = 1.0 / (lam + l2)
    rB_hat = rB @ U
    if not use_A:
        return (d * rB_hat) @ U.T
    W = Q * jnp.sqrt(d)
    schur = S2 + l2 * eye - W @ W.T
    a = spd_solve(schur, rA - Q @ (d * rB_hat))
    b = (d * (rB_hat - a @ Q)) @ U.T
    return jnp.concatenate([a, b])


def _solve_all(ids, Lp, y, l2s, kernel, occ, num_train, use_A, use_B, chunk):
    """``theta [K, M, P]``: shared parts once, then ``chunk`` test examples at a time."""
    shared = shared_parts(ids, num_train, occ, kernel, Lp.dtype)
    lam, U = shared[:2]
    l2s = l2s.astype(Lp.dtype)

    def one_test(xs):
        lp, yy = xs
        blocks = per_test_blocks(shared, occ, lp, yy, kernel, use_A, use_B)
        return jax.lax.map(lambda l2: solve_blocks(lam, U, *blocks, l2, use_A, use_B), l2s)

    theta = jax.lax.map(one_test, (Lp, y), batch_size=min(chunk, Lp.shape[0]))  # [M, K, P]
    return jnp.swapaxes(theta, 0, 1)


@partial(jax.jit, static_argnames=("num_train", "use_A", "use_B", "chunk"))
def solve_direct(
    ids,
    Lp,
    y,
    l2s,
    kernel=None,
    occ=None,
    *,
    num_train: int,
    use_A: bool = True,
    use_B: bool = True,
    chunk: int = 64,
):
    """Exact ridge solutions for every test example and every l2.

    Args:
      ids: ``int32[T, R, B]``.
      Lp, y: ``float[M, T, R]``.
      l2s: ``float[K]`` ridge strengths (> 0).
      kernel: ``(F [T, T], scales [T, R])`` for the optimizer kernel's rows, or ``None``.
      occ: ``common.occurrences(ids, num_train)`` (host arrays, needed).
      chunk: test examples solved at once.

    Returns:
      theta: ``float[K, M, P]``, P = N * (use_A + use_B), A block first.
    """
    if occ is None:
        raise ValueError("the direct solver needs occ=common.occurrences(ids, num_train)")
    return _solve_all(ids, Lp, y, l2s, kernel, occ, num_train, use_A, use_B, chunk)


@partial(jax.jit, static_argnames=("num_train", "use_A", "use_B", "chunk"))
def solve_direct_grid(
    ids, Lp, y, l2s, filters, scales, occ, *, num_train: int, use_A=True, use_B=True, chunk=64
):
    """``theta [n_mu, K, M, P]`` for every (mu, l2): ``filters [n_mu, T, T]`` are the kernel
    filters of the mu values, ``scales [T, R]`` the rows' learning-rate scales (ones if the
    fit is not ``lr_scaled``). One compiled loop over mu; the occurrence lists and the
    targets are shared."""

    def one_mu(F):
        return _solve_all(ids, Lp, y, l2s, (F, scales), occ, num_train, use_A, use_B, chunk)

    return jax.lax.map(one_mu, filters)
