"""Conjugate gradients for ``(H + lambda I) X = B``, all right-hand sides at once.

Hestenes & Stiefel (1952, "Methods of Conjugate Gradients for Solving Linear Systems").
With ``A = H + lambda I`` each row ``b_j`` of ``B`` runs its own CG recursion (the HVPs of
all active rows are one vmapped call)::

    x_0 = 0, r_0 = p_0 = b
    a_k = (r_k . r_k) / (p_k . A p_k)
    x_{k+1} = x_k + a_k p_k,  r_{k+1} = r_k - a_k A p_k
    p_{k+1} = r_{k+1} + (r_{k+1} . r_{k+1}) / (r_k . r_k) p_k

A row stops once ``|r_j| <= tol |b_j|``. CG needs ``A`` positive definite; a non-positive
curvature ``p^T A p <= 0`` stops that row and is reported. One iteration costs M HVPs.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from simfluence_jax.gradients.ihvp.base import Hessian, SolveInfo, SolverConfig, hessian_solver
from simfluence_jax.gradients.ihvp.hvp import Matvec


@dataclasses.dataclass(frozen=True, kw_only=True)
class CGConfig(SolverConfig):
    """CG's stopping rule, besides ``damping``, ``select`` and ``chunk_size``.

    Attributes:
      tol: stop a row once ``|r_j| <= tol |b_j|``.
      max_iter: at most this many iterations.
    """

    solver: ClassVar[str] = "cg"

    tol: float = 1e-6
    max_iter: int = 200

    def __post_init__(self):
        super().__post_init__()
        if self.max_iter < 1 or not self.tol >= 0:
            raise ValueError(
                f"CG needs max_iter >= 1 and tol >= 0, got {self.max_iter}, {self.tol}"
            )


def solve_damped_cg(
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


@hessian_solver
def inverse_hvp(h: Hessian, rhs: jax.Array, config: CGConfig) -> tuple[jax.Array, SolveInfo]:
    """``(X float32[M, P], SolveInfo)`` by :func:`solve_damped_cg` on the model's HVPs."""

    def cg(th, fr, x, b):
        return solve_damped_cg(
            h.hvp(th, fr, x), b, damping=config.damping, tol=config.tol, max_iter=config.max_iter
        )

    X, (k, res, neg) = jax.jit(cg)(*h.args, rhs)
    return X, SolveInfo(iterations=int(k), residual=float(res), negative_curvature=bool(neg))
