"""A rank-k Lanczos approximation of ``H`` and the low-rank solve of ``(H + lambda I) X = B``.

The symmetric form of the Arnoldi route of Schioppa et al. (2022, "Scaling Up Influence
Functions"): ``k`` Lanczos steps with full reorthogonalisation give Ritz pairs
``H ~ U^T diag(mu) U`` (``U float32[k, P]`` orthonormal rows), and

    (H + lambda I)^{-1} b ~ b / lambda + U^T [(1/(mu + lambda) - 1/lambda) * (U b)],

i.e. the Ritz approximation on the Krylov space and ``1/lambda`` on its complement (exact
once the space is invariant under ``H``, e.g. ``k = P``). It needs ``lambda > 0``. Its cost
is ``k`` HVPs of one vector, independent of the M right-hand sides, where CG costs M HVPs
per iteration. A non-positive ``min(mu) + lambda`` is reported as negative curvature.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from simfluence_jax.gradients.ihvp.base import Hessian, SolveInfo, SolverConfig, hessian_solver
from simfluence_jax.gradients.ihvp.hvp import Matvec


@dataclasses.dataclass(frozen=True, kw_only=True)
class LanczosConfig(SolverConfig):
    """The Krylov space, besides ``damping`` (here ``> 0``), ``select`` and ``chunk_size``.

    Attributes:
      rank: ``k``, Lanczos steps (and HVPs); capped at ``P``.
      seed: of the random starting vector.
    """

    solver: ClassVar[str] = "lanczos"

    rank: int = 64
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not self.damping > 0:
            raise ValueError(
                "the lanczos solver needs damping > 0 (it inverts lambda I off the Krylov space)"
            )
        if self.rank < 1:
            raise ValueError(f"lanczos rank must be >= 1, got {self.rank}")


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


@hessian_solver
def inverse_hvp(h: Hessian, rhs: jax.Array, config: LanczosConfig) -> tuple[jax.Array, SolveInfo]:
    """``(X float32[M, P], SolveInfo)`` from ``min(rank, P)`` Lanczos steps on ``H``."""
    rank = min(config.rank, h.dim)
    mu, U = jax.jit(
        lambda th, fr, x: lanczos(h.hvp(th, fr, x), h.dim, rank=rank, seed=config.seed)
    )(*h.args)
    X = jax.jit(lambda mu, U, b: solve_lowrank(mu, U, b, damping=config.damping))(mu, U, rhs)
    lowest = float(jnp.min(mu)) + config.damping
    return X, SolveInfo(iterations=rank, residual=float("nan"), negative_curvature=lowest <= 0)
