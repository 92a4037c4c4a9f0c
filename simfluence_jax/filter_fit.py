"""Fitting the filter kernel: exact ridge for (A, B), Levenberg-Marquardt on the filter.

The model (``simulators.filter``): rows ``x = [Lp s_t x_t, s_t x_t]`` with
``x_t = sum_k h[k] m(c_{t-k})``, ``h[0] = 1``. For a fixed filter the rows are linear in
``theta = (A, B)``, so ``theta(h)`` is an exact ridge solve, and the fit minimises the
projected objective of the K free taps alone (variable projection, Golub and Pereyra 1973):

    f(h) = sum_j min_theta |y_j - X_j(h) theta|^2 + l2 q(h) |theta|^2   (j: test examples)

**The penalty is on the filtered effects**, ``q(h) = |h|^2``: scaling the filter by c and
(A, B) by 1/c leaves the predictions and ``q |theta|^2`` unchanged, so the fit cannot lower the
penalty by growing the free taps and shrinking (A, B). With ``l2 |theta|^2`` alone it did: on
real AdamW runs (16 fitting runs, l2 = 10) the taps grew to ~2000 and the rollout diverged.
``q = 1`` at ``K = 0`` (plain Linear); a fixed filter h at l2 is the ridge of its rows at
``l2 |h|^2``.

**The ridge for fixed h.** The direct solver builds kernel rows with a recursion that holds
only for the geometric filter, so the normal equations are built here and solved by its
``solve_normal`` (shared eigendecomposition, one N x N Cholesky per test example and l2).
With ``D = F C`` the filtered counts (``F[t, a] = h[t - a]`` for ``0 <= t - a <= K``, within
each run) and row weights ``u_t`` (``s^2``, ``s^2 Lp^2`` or ``s^2 Lp``),

    sum_t u_t D_t D_t^T = sum_a c_a v_a^T,   v = F^T (u * D),

(expand ``D_t = sum_k h[k] c_{t-k}`` and collect by ``a = t - k``); ``c_a`` has B non-zeros,
so each block is a scatter-add of the rows of ``v`` into the ids of their step, O(S B N)
instead of the dense O(S N^2).

**The step on h.** Write ``X_k`` for the rows' derivative in ``h[k]`` (the counts delayed by
k steps) and ``z_k = X_k theta = s_t (Lp a_{t-k} + b_{t-k})`` with the per-step sums
``a_t = A . m(c_t)``, ``b_t = B . m(c_t)``. Differentiating the normal equations
``G theta = X^T y`` (``G = X^T X + l2 q I``) gives ``theta``'s derivative

    d theta / d h[k] = G^-1 (X_k^T r - X^T z_k - 2 l2 h[k] theta),    r = y - X theta,

one more solve with the factorisation already made (the K right-hand sides share it), and
the Jacobian of the augmented residual ``[r; sqrt(l2 q) theta]`` has columns
``[-z_k - X d theta_k; sqrt(l2) (h[k] theta / sqrt(q) + sqrt(q) d theta_k)]`` (Golub and
Pereyra's full Jacobian; Kaufman's approximation drops ``X_k^T r`` and would cost the same).
``J^T [r; sqrt(l2 q) theta] = -z^T r + l2 h |theta|^2`` is the exact gradient of ``f / 2``
(``X^T r = l2 q theta`` at the solve), so the iteration stops where the joint objective in
(h, A, B) is stationary, and ``J^T J`` is a Gauss-Newton model of it that accounts for
(A, B) moving with h, which plain alternation between the two solves does not (it creeps
toward the minimum). Levenberg-Marquardt damping; a step is taken only if it lowers f.
Measured on the tests' late-peak world: ``J^T J`` within 15% of the finite-difference
Hessian of f in every eigenvalue, and 4 steps from the best geometric start to the minimum;
at a strong ridge (l2 = 10 there) it is up to 2x smaller than that Hessian, which holds the
penalty's own curvature in h that Gauss-Newton leaves out (steps are still only taken when
f falls).

**Choosing l2 and the start.** With validation runs, every l2 of the grid gets its own
filter (largest l2 first, each started from the previous filter) and the lowest rollout MSE
on the validation runs wins, as for the other ridge fits. The starting filter is
``filter_init``: a measured response (``h[0] = 1``), a ``mu`` (``h[k] = mu^k``), or by
default the geometric filter of ``MOMENTUM_GRID`` with the lowest f at the first l2.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.fitting.choice import MOMENTUM_GRID, best_on_validation, l2_grid
from simfluence_jax.fitting.ridge import ALPHA_FORMS, lr_reference
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.filter import FilterSimulator
from simfluence_jax.solvers.direct import solve_blocks
from simfluence_jax.solvers.memory import MEMORY_BUDGET_BYTES

#: Filter length of ``linear_filter`` when none is given (capped at T - 1).
DEFAULT_FILTER_LENGTH = 8
#: Most Levenberg-Marquardt iterations per l2.
MAX_ITERATIONS = 100


def _toeplitz(h, T: int):
    """``F [T, T]`` with ``F[t, a] = h[t - a]`` for ``0 <= t - a <= K``, else 0."""
    K = h.shape[0] - 1
    lag = jnp.arange(T)[:, None] - jnp.arange(T)[None, :]
    return jnp.where((lag >= 0) & (lag <= K), h[jnp.clip(lag, 0, K)], 0.0)


def _scatter(ids, w, v, N: int):
    """``sum_a c_a v_a``: ``v [R, T, ...]`` added into the ids of each step -> ``[N, ...]``."""
    upd = w.reshape(w.shape + (1,) * (v.ndim - 2)) * v[:, :, None]
    return jnp.zeros((N,) + v.shape[2:], v.dtype).at[ids].add(upd)


def _blocks(h, data, N: int):
    """``(S0 [N, N], S2 [M, N, N], S1 [M, N, N], r [M, 2N])`` of the rows under filter h."""
    ids, w, Lp, y, s = data
    T = s.shape[1]
    F = _toeplitz(h, T)
    counts = jnp.zeros(s.shape + (N,), Lp.dtype)
    counts = counts.at[jnp.arange(s.shape[0])[:, None, None], jnp.arange(T)[None, :, None],
                       ids].add(w)  # fmt: skip
    D = jnp.einsum("ta,ran->rtn", F, counts)

    def gram(u):  # [R, T] row weights -> sum_t u_t D_t D_t^T
        G = _scatter(ids, w, jnp.einsum("ta,rtn->ran", F, u[..., None] * D), N)
        return 0.5 * (G + G.T)

    def back(u):  # [R, T] -> X^T u for the count part: C^T F^T u
        return _scatter(ids, w, jnp.einsum("ta,rt->ra", F, u), N)

    s2 = s * s

    def per_test(xs):
        lp, yj = xs
        r = jnp.concatenate([back(s * lp * yj), back(s * yj)])
        return gram(s2 * lp * lp), gram(s2 * lp), r

    S2, S1, r = jax.lax.map(per_test, (Lp, y))
    return gram(s2), S2, S1, r


def _predict(theta, h, data, N: int):
    """``X theta [M, R, T]`` and the delayed per-step sums ``(a, b) [M, R, T]``."""
    ids, w, Lp, _, s = data
    a = jnp.einsum("mrtb,rtb->mrt", theta[:, :N][:, ids], w)
    b = jnp.einsum("mrtb,rtb->mrt", theta[:, N:][:, ids], w)
    F = _toeplitz(h, s.shape[1])
    af, bf = jnp.einsum("ta,mra->mrt", F, a), jnp.einsum("ta,mra->mrt", F, b)
    return s * (Lp * af + bf), a, b


def solve_normal(S0, S2, S1, r, l2s) -> jax.Array:
    """``theta [L, M, 2N]`` of ``(G + l2 I) theta = r`` for every l2 of ``l2s [L]``, with
    ``G = [[S2, S1], [S1, S0]]`` (``S0 [N, N]`` shared, ``S2, S1 [M, N, N]``, ``r [M, 2N]``):
    the direct solver's elimination of the shared block (``solvers.direct.solve_blocks``,
    one eigendecomposition of ``S0`` for every test example and l2)."""
    lam, U = jnp.linalg.eigh(S0)
    lam = jnp.maximum(lam, 0.0)  # S0 is PSD; rounding can leave tiny negative eigenvalues
    N = S0.shape[0]
    Q = S1 @ U

    def one_l2(l2):
        def one_test(S2m, Qm, rm):
            return solve_blocks(lam, U, S2m, Qm, rm[:N], rm[N:], l2, True, True)

        return jax.vmap(one_test)(S2, Q, r)

    return jax.lax.map(one_l2, l2s)


@partial(jax.jit, static_argnames=("N",))
def _evaluate(h, data, l2s, *, N: int):
    """``(theta [L, M, 2N], f [L], blocks)``: the ridge solution and objective per l2
    (penalty ``l2 q(h) |theta|^2``, module docstring)."""
    blocks = _blocks(h, data, N)
    q = jnp.sum(h * h)
    theta = solve_normal(*blocks[:3], blocks[3], l2s * q)
    y = data[3]

    def objective(th, l2):
        res = y - _predict(th, h, data, N)[0]
        return jnp.sum(res * res) + l2 * q * jnp.sum(th * th)

    return theta, jax.vmap(objective)(theta, l2s), blocks


@partial(jax.jit, static_argnames=("N",))
def _gauss_newton(h, theta, blocks, data, l2, *, N: int):
    """``(g [K], H [K, K])``: the exact gradient of f / 2 in the free taps and the
    Gauss-Newton matrix of the projected residual (module docstring)."""
    ids, w, Lp, y, s = data
    K, T = h.shape[0] - 1, s.shape[1]
    F = _toeplitz(h, T)
    delays = jnp.stack([jnp.eye(T, k=-k, dtype=s.dtype) for k in range(1, K + 1)])  # [K, T, T]
    q, hk = jnp.sum(h * h), h[1:]
    pred, a, b = _predict(theta, h, data, N)
    res = y - pred
    # z_k = X_k theta = s_t (Lp a_{t-k} + b_{t-k}): [K, M, R, T]
    Z = s * (Lp * jnp.einsum("kta,mra->kmrt", delays, a) + jnp.einsum("kta,mra->kmrt", delays, b))
    norm2 = jnp.sum(theta * theta)
    g = -jnp.einsum("kmrt,mrt->k", Z, res) + l2 * hk * norm2

    def part(c):  # the A (c = Lp) or B (c = 1) block of X_k^T r - X^T z_k: [K, M, N]
        u = jnp.einsum("kta,mrt->kmra", delays, s * c * res)
        u = u - jnp.einsum("ta,kmrt->kmra", F, s * c * Z)
        scatter = jax.vmap(jax.vmap(lambda v: _scatter(ids, w, v, N)))
        return scatter(u)

    rhs = jnp.concatenate([part(Lp), part(1.0)], axis=-1)  # [K, M, 2N]
    rhs = rhs - 2.0 * l2 * hk[:, None, None] * theta
    S0, S2, S1, _ = blocks
    # One factorisation for every tap: only the right-hand sides are batched.
    dtheta = jax.vmap(lambda r: solve_normal(S0, S2, S1, r, (l2 * q)[None])[0])(rhs)
    E = Z + jax.vmap(lambda th: _predict(th, h, data, N)[0])(dtheta)  # -d res / d h_k
    # The penalty's rows sqrt(l2 q) theta, differentiated in h_k: [K, M, 2N]
    P = hk[:, None, None] * theta / jnp.sqrt(q) + jnp.sqrt(q) * dtheta
    H = jnp.einsum("kmrt,lmrt->kl", E, E) + l2 * jnp.einsum("kmp,lmp->kl", P, P)
    return g, H


def _levenberg_marquardt(h, data, l2, N: int, dtype, max_iterations: int = MAX_ITERATIONS):
    """Minimises f over the free taps from ``h``; returns ``(h, theta [M, 2N], f)``."""
    l2s = jnp.asarray([l2], dtype)
    theta, f, blocks = _evaluate(jnp.asarray(h, dtype), data, l2s, N=N)
    theta, f = theta[0], float(f[0])
    K = len(h) - 1
    rtol = 100 * float(np.finfo(dtype).eps)
    lam = 1e-3
    for _ in range(max_iterations if K else 0):
        g, H = _gauss_newton(jnp.asarray(h, dtype), theta, blocks, data, l2s[0], N=N)
        g, H = np.asarray(g, np.float64), np.asarray(H, np.float64)
        improved = False
        while lam < 1e10:
            damped = H + lam * np.diag(np.maximum(np.diag(H), 1e-12 * np.trace(H) / K))
            step = np.linalg.solve(damped, -g)
            trial = h.copy()
            trial[1:] += step
            th_t, f_t, bl_t = _evaluate(jnp.asarray(trial, dtype), data, l2s, N=N)
            f_t = float(f_t[0])
            if np.isfinite(f_t) and f_t < f:
                improved = True
                break
            lam *= 4.0
        if not improved:
            break
        done = f - f_t <= rtol * f_t or np.max(np.abs(step)) <= rtol * (1 + np.max(np.abs(h)))
        h, theta, f, blocks = trial, th_t[0], f_t, bl_t
        lam = max(lam / 3.0, 1e-9)
        if done:
            break
    return h, np.asarray(theta), f


def geometric(mu: float, K: int) -> np.ndarray:
    """``h[k] = mu^k``, ``k = 0..K``: the momentum kernel's filter."""
    return float(mu) ** np.arange(K + 1, dtype=np.float64)


def _check_length(filter_length, T: int) -> int:
    if filter_length is None:
        return min(DEFAULT_FILTER_LENGTH, T - 1)
    if isinstance(filter_length, bool) or not isinstance(filter_length, int | np.integer):
        raise ValueError(f"filter_length must be an integer, got {filter_length!r}")
    if not 0 <= filter_length < T:
        raise ValueError(
            f"filter_length must lie in 0..T-1 = 0..{T - 1} (the runs have T = {T} steps), "
            f"got {filter_length}"
        )
    return int(filter_length)


def _check_init(filter_init, K: int):
    """``None`` (choose a geometric start) or the starting filter ``float64[K+1]``."""
    if filter_init is None or (isinstance(filter_init, str) and filter_init == "auto"):
        return None
    if isinstance(filter_init, int | float | np.floating) and not isinstance(filter_init, bool):
        if not 0 <= filter_init < 1:
            raise ValueError(f"filter_init as a momentum must lie in [0, 1), got {filter_init}")
        return geometric(filter_init, K)
    h = np.asarray(filter_init, np.float64)
    if h.shape != (K + 1,):
        raise ValueError(
            f"filter_init must be 'auto', a momentum in [0, 1) or a filter of shape "
            f"[filter_length + 1] = [{K + 1}], got shape {list(h.shape)}"
        )
    if not np.all(np.isfinite(h)):
        raise ValueError("filter_init must be finite")
    if abs(h[0] - 1.0) > 1e-6:
        raise ValueError(
            f"filter_init must start with h[0] = 1 (divide a measured response by its first "
            f"tap), got h[0] = {h[0]}"
        )
    return h


def _data(runs: RunSet, alpha0: float, lr_ref, dtype):
    """``(ids, w, Lp, y, s)``: ids and weights ``[R, T, B]``, ``Lp, y [M, R, T]``,
    learning-rate scales ``s [R, T]``."""
    b = np.asarray(runs.batches)
    ids, w = np.where(b >= 0, b, 0).astype(np.int32), (b >= 0).astype(dtype)
    L = np.transpose(np.asarray(runs.losses, np.float64), (2, 0, 1))  # [M, R, T+1]
    Lp, y = L[..., :-1], L[..., 1:] - alpha0 * L[..., :-1]
    R, T = b.shape[:2]
    s = np.ones((R, T)) if lr_ref is None else np.asarray(runs.learning_rates) / lr_ref
    return tuple(jnp.asarray(x) for x in (ids, w, Lp.astype(dtype), y.astype(dtype),
                                          s.astype(dtype)))  # fmt: skip


def fit_filter(
    runs: RunSet,
    *,
    filter_length=None,
    filter_init=None,
    l2=None,
    validation: RunSet | None = None,
    alpha: str = "sum",
    lr_scaled: bool = False,
    dtype=np.float32,
    mesh=None,
    name: str = "linear_filter",
    learn_filter: bool = True,
) -> FilterSimulator:
    """Fits ``FilterSimulator`` (A, B and the filter jointly) on ``runs``; see the module
    docstring for the scheme. ``filter_length``: K in ``0..T-1`` (default
    ``min(DEFAULT_FILTER_LENGTH, T - 1)``); ``filter_init``: ``"auto"``/``None``, a mu, or
    a measured response ``[K+1]`` with ``h[0] = 1``; ``l2``, ``validation`` as for
    ``fit_linear``; ``learn_filter=False`` keeps the starting filter and fits only (A, B)."""
    if alpha not in ALPHA_FORMS:
        raise ValueError(f"unknown alpha form {alpha!r}; known: {', '.join(ALPHA_FORMS)}")
    if not isinstance(lr_scaled, bool):
        raise ValueError(f"lr_scaled must be True or False, got {lr_scaled!r}")
    T = runs.num_steps
    K = _check_length(filter_length, T)
    h0 = _check_init(filter_init, K)
    grid = np.sort(l2_grid(l2, validation))[::-1]
    lr_ref = lr_reference(runs, validation) if lr_scaled else None
    N, M = runs.num_train, runs.num_test
    need = 3 * M * N * N * np.dtype(dtype).itemsize
    if need > MEMORY_BUDGET_BYTES:
        raise ValueError(
            f"the filter kernel's fit holds the normal equations of all {M} test examples "
            f"({need / 2**30:.1f} GiB, over {MEMORY_BUDGET_BYTES / 2**30:.0f} GiB); fit the "
            "test examples in groups (RunSet.select_test) or use the momentum kernel"
        )
    alpha0 = ALPHA_FORMS[alpha]
    data = _data(runs, alpha0, lr_ref, dtype)
    if h0 is None:
        mus = MOMENTUM_GRID if K else (0.0,)
        l2s = jnp.asarray(grid[:1], dtype)
        f = [float(_evaluate(jnp.asarray(geometric(mu, K), dtype), data, l2s, N=N)[1][0])
             for mu in mus]  # fmt: skip
        h0 = geometric(mus[int(np.nanargmin(f))], K)
    common = dict(seen=runs.used_ids(), alpha0=alpha0, lr_scaled=lr_scaled, name=name)
    if lr_scaled:
        common["lr_ref"] = lr_ref

    def candidates():
        h = h0
        for l2_value in grid:
            h, theta, _ = _levenberg_marquardt(
                h, data, float(l2_value), N, dtype, MAX_ITERATIONS if learn_filter else 0
            )
            yield FilterSimulator(
                A=theta[:, :N], B=theta[:, N:], filter=h.astype(np.float32), l2=float(l2_value),
                **common,
            )  # fmt: skip

    if len(grid) == 1:
        return next(candidates())
    return best_on_validation(candidates(), validation, grid, mesh=mesh)


#: Kernels of ``fit_linear(kernel=...)``.
KERNELS = ("momentum", "filter")


def fit_linear_kernel_filter(runs, *, kernel, momentum, prior, solver, **kwargs):
    """``fit_linear(..., kernel="filter")``: the options the filter kernel cannot take are
    refused by name, the rest go to ``fit_filter``."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(KERNELS)}")
    if kernel != "filter":
        raise ValueError("filter_length= and filter_init= need kernel='filter'")
    if isinstance(momentum, str) or np.any(np.asarray(momentum) != 0.0):
        raise ValueError(
            "kernel='filter' learns the filter; give a starting momentum as filter_init=mu "
            f"instead of momentum={momentum!r}"
        )
    if prior is not None:
        raise ValueError("kernel='filter' takes no prior= (it shrinks (A, B) toward zero)")
    if solver not in ("auto", "direct"):
        raise ValueError(
            f"kernel='filter' solves its normal equations directly; solver={solver!r} is not "
            "available for it (use 'auto' or 'direct')"
        )
    return fit_filter(runs, **kwargs)


def fit_linear_filter(
    runs, *, l2=None, validation=None, solver="auto", mesh=None, alpha=None, filter_length=None,
    filter_init=None, lr_scaled=None, dtype=np.float32,
):  # fmt: skip
    """Simfluence-Linear with the filter kernel (``fit_filter``), with ``linear_kernel``'s
    defaults: effects scaled by the learning rate when the runs carry their learning rates
    (``lr_scaled=None``), in the ``one_plus_sum`` form when scaled."""
    if lr_scaled is None:
        lr_scaled = runs.learning_rates is not None and (
            validation is None or validation.learning_rates is not None
        )
    if alpha is None:
        alpha = "one_plus_sum" if lr_scaled else "sum"
    return fit_linear_kernel_filter(
        runs, kernel="filter", momentum=0.0, prior=None, solver=solver, l2=l2,
        validation=validation, mesh=mesh, alpha=alpha, filter_length=filter_length,
        filter_init=filter_init, lr_scaled=lr_scaled, dtype=dtype,
    )  # fmt: skip
