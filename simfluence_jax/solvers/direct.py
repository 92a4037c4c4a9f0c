"""Direct ridge solver: normal equations, then batched Cholesky solves.

With x_s the row vector of row s (the batch count vector m_s, or the optimizer kernel's
filtered and scaled counts), the normal-equation blocks for one test example are
(docs/design.md, "Fitting")

    G = [[sum Lp^2 x x^T,  sum Lp x x^T],      r = [sum Lp y x,
         [sum Lp x x^T,    sum x x^T    ]]          sum y x     ]

and theta = (G + l2 I)^{-1} r.

**Building the blocks.** Plain count rows touch only the B x B entries of their batch, so
their blocks are built by scatter-adds in a ``lax.scan`` over steps (all runs of a step at
once), ``vmap``-ed over test examples. Kernel rows ``s_t x_t`` with ``x_t = mu x_{t-1} +
c_t`` are dense (a decaying sum of recent batches), but a weighted sum of their outer
products still has a sparse factor. Within one run, for row weights ``u_t`` (``Lp^2 s^2``,
``Lp s^2`` or ``s^2``),

    sum_t u_t x_t x_t^T = sum_k g_k (c_k v_k^T + v_k c_k^T),
    g_k = sum_{t >= k} mu^(2(t-k)) u_t,   v_k = c_k / 2 + mu x_{k-1},

(expand ``x_t = sum_k mu^(t-k) c_k`` and split the pairs (k, k') at ``max(k, k')``). ``c_k``
has B non-zeros, so row i of ``sum_k g_k c_k v_k^T`` is the sum, over the rows where id i
occurs, of ``g_k v_k``: with the occurrence lists of ``common.occurrences`` (shared by every
``mu``) that is one batched matrix product of O x N per id, O the most occurrences of an
id, instead of the S x N of the dense rows (measured 6-10x faster at N=200, S=2400, O=66;
memory N x O x N for the gathered rows).
``g`` is the filter ``F^2`` transposed applied to the weights, and ``v`` is ``F - I/2``
applied to the counts; ``F`` must be the kernel's geometric filter ``F[t, k] = mu^(t-k)``.

**Solving the l2 path.** ``S0 = sum s^2 x x^T`` does not depend on the test example. Its
eigendecomposition ``S0 = U diag(lam) U^T`` (one per problem, shared by every test example
and every l2) eliminates the B block for every l2 at once: with ``S1h_j = U^T S1_j``,

    Schur_j(l2) = S2_j + l2 I - S1h_j^T diag(1 / (lam + l2)) S1h_j,
    A_j = Schur_j^-1 (rA_j - S1h_j^T D rBh_j),   B_j = U D (rBh_j - S1h_j A_j),

``D = diag(1 / (lam + l2))``, ``rBh = U^T rB``. Each l2 then costs one matrix product and
one N x N Cholesky factorisation per test example (no triangular solve with N right-hand
sides, which XLA runs at a fraction of matrix-product speed). The additive model (B only)
needs only the shared eigendecomposition: every l2 is a diagonal rescale.

``solve_direct_grid`` does all of this for several ``mu`` in one compiled ``lax.map``,
sharing the occurrence lists and the counts. Memory is O(M (2N)^2): use the CG solver for
large pools.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from simfluence_jax.solvers.common import masked_ids, rhs_one


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


def count_rows(ids, w, num_train: int) -> jax.Array:
    """``[T, R, N]`` batch count vectors ``m(c_t)`` of every row."""
    T, R = ids.shape[:2]
    t = jnp.arange(T)[:, None, None]
    r = jnp.arange(R)[None, :, None]
    return jnp.zeros((T, R, num_train), w.dtype).at[t, r, ids].add(w)


def kernel_blocks(occ, counts, Lp, y, F, scales, use_A: bool, use_B: bool):
    """``(S0, S2, S1, r)`` of the kernel rows by the occurrence recursion (module docstring).

    Args:
      occ: ``(rows int32[N, O], weights [N, O])`` from ``common.occurrences``.
      counts: ``[T, R, N]`` from ``count_rows``.
      Lp, y: ``[M, T, R]``.
      F: ``[T, T]`` geometric filter ``mu^(t-k)``; scales: ``[T, R]``.
    """
    rows, weights = occ
    T, R, N = counts.shape
    M, S, dtype = Lp.shape[0], T * R, Lp.dtype
    weights = weights.astype(dtype)
    V = jnp.einsum("tk,krn->trn", F - 0.5 * jnp.eye(T, dtype=dtype), counts).reshape(S, N)
    V_occ = V[rows] * weights[..., None]  # [N, O, N]: v_k of every occurrence of each id
    F2, s2 = F * F, scales * scales

    def tails(u):  # [P, T, R] row weights -> g [S, P]
        return jnp.einsum("tk,ptr->krp", F2, u).reshape(S, u.shape[0])

    def sym_blocks(g):  # g [S, P] -> [P, N, N]: sum_k g_k (c_k v_k^T + v_k c_k^T)
        Z = jnp.einsum("nop,nok->npk", g[rows], V_occ)  # [N, P, N], batched over ids
        return jnp.transpose(Z, (1, 0, 2)) + jnp.transpose(Z, (1, 2, 0))

    S0 = sym_blocks(tails(s2[None]))[0]
    per_test = ([Lp * Lp * s2] if use_A else []) + ([Lp * s2] if (use_A and use_B) else [])
    zero = jnp.zeros((M, 0, 0), dtype)
    S2 = S1 = zero
    if per_test:
        blocks = sym_blocks(tails(jnp.concatenate(per_test)))
        S2 = blocks[:M]
        S1 = blocks[M:] if (use_A and use_B) else zero
    targets = ([Lp * y] if use_A else []) + ([y] if use_B else [])
    u = scales * jnp.concatenate(targets)  # [P*M, T, R]
    q = jnp.einsum("tk,ptr->krp", F, u).reshape(S, -1)  # F^T applied along each run
    r = jnp.einsum("nop,no->pn", q[rows], weights)  # [P*M, N]
    r = jnp.concatenate(jnp.split(r, len(targets)), axis=-1)  # [M, P]
    return S0, S2, S1, r


def normal_equations(ids, Lp, y, num_train, use_A, use_B, kernel=None, occ=None):
    """``(S0 [N, N], S2 [M, N, N], S1 [M, N, N], r [M, P])`` of the problem's rows.

    Kernel rows need ``occ = common.occurrences(ids, num_train)`` (host arrays).
    """
    ids, w = masked_ids(ids)
    dtype = Lp.dtype
    w = w.astype(dtype)
    if kernel is None:
        S0 = shared_block(ids, w, num_train, dtype)
        S2, S1, r = jax.vmap(accumulate_one, in_axes=(None, None, 0, 0, None, None, None))(
            ids, w, Lp, y, num_train, use_A, use_B
        )
        return S0, S2, S1, r
    if occ is None:
        raise ValueError("kernel rows need occ=common.occurrences(ids, num_train)")
    F, scales = kernel
    counts = count_rows(ids, w, num_train)
    return kernel_blocks(occ, counts, Lp, y, F, scales, use_A, use_B)


def solve_normal(S0, S2, S1, r, l2s, *, use_A: bool, use_B: bool) -> jax.Array:
    """``theta [K, M, P]`` of ``(G + l2 I) theta = r`` for every l2 (module docstring)."""
    dtype = r.dtype
    l2s = l2s.astype(dtype)
    if use_A and not use_B:
        eye = jnp.eye(r.shape[-1], dtype=dtype)

        def solve_A(l2):
            c = jnp.linalg.cholesky(S2 + l2 * eye)
            return jsl.cho_solve((c, True), r[..., None])[..., 0]

        return jax.lax.map(solve_A, l2s)
    lam, U = jnp.linalg.eigh(S0)
    # Rounding can leave eigenvalues of the PSD S0 slightly negative; they are zero.
    lam = jnp.maximum(lam, 0.0)
    N = S0.shape[0]
    rB_hat = r[:, -N:] @ U  # U^T rB per test example
    if use_B and not use_A:
        return jax.vmap(lambda l2: (rB_hat / (lam + l2)) @ U.T)(l2s)
    S1_hat = U.T @ S1
    rA = r[:, :N]
    eye = jnp.eye(N, dtype=dtype)

    def solve(l2):
        d = 1.0 / (lam + l2)
        W = S1_hat * jnp.sqrt(d)[:, None]
        schur = S2 + l2 * eye - jnp.swapaxes(W, -1, -2) @ W
        c = jnp.linalg.cholesky(schur)
        rhs = rA - jnp.einsum("mki,mk->mi", S1_hat, d * rB_hat)
        a = jsl.cho_solve((c, True), rhs[..., None])[..., 0]
        b = (d * (rB_hat - jnp.einsum("mij,mj->mi", S1_hat, a))) @ U.T
        return jnp.concatenate([a, b], axis=-1)

    return jax.lax.map(solve, l2s)


@partial(jax.jit, static_argnames=("num_train", "use_A", "use_B"))
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
):
    """Exact ridge solutions for every test example and every l2.

    Args:
      ids: ``int32[T, R, B]``.
      Lp, y: ``float[M, T, R]``.
      l2s: ``float[K]`` ridge strengths (> 0).
      kernel: ``(F [T, T], scales [T, R])`` for the optimizer kernel's rows, or ``None``.
      occ: ``common.occurrences(ids, num_train)``; needed with ``kernel``.

    Returns:
      theta: ``float[K, M, P]``, P = N * (use_A + use_B), A block first.
    """
    S0, S2, S1, r = normal_equations(ids, Lp, y, num_train, use_A, use_B, kernel, occ)
    return solve_normal(S0, S2, S1, r, l2s, use_A=use_A, use_B=use_B)


@partial(jax.jit, static_argnames=("num_train", "use_A", "use_B"))
def solve_direct_grid(
    ids, Lp, y, l2s, filters, scales, occ, *, num_train: int, use_A=True, use_B=True
):
    """``theta [n_mu, K, M, P]`` for every (mu, l2): ``filters [n_mu, T, T]`` are the kernel
    filters of the mu values, ``scales [T, R]`` the rows' learning-rate scales (ones if the
    fit is not ``lr_scaled``). One compiled loop over mu; the counts, the occurrence lists
    and the targets are shared."""
    ids, w = masked_ids(ids)
    counts = count_rows(ids, w.astype(Lp.dtype), num_train)

    def one_mu(F):
        S0, S2, S1, r = kernel_blocks(occ, counts, Lp, y, F, scales, use_A, use_B)
        return solve_normal(S0, S2, S1, r, l2s, use_A=use_A, use_B=use_B)

    return jax.lax.map(one_mu, filters)
