"""The explicit Hessian and a dense solve of ``(H + lambda I) X = B``.

``H`` is built column by column from ``P`` HVPs on the unit vectors, symmetrised, and
``(H + lambda I) x_j = b_j`` is solved densely. ``O(P^2)`` memory and ``P`` HVPs: for tiny
models or a head-only parameter selection, and as the reference the iterative solvers are
tested against. The smallest eigenvalue of ``H + lambda I`` is checked (in float64) and a
non-positive one is reported as negative curvature.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.gradients.ihvp.base import Hessian, SolveInfo, SolverConfig, hessian_solver
from simfluence_jax.gradients.ihvp.hvp import explicit_matrix


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExactConfig(SolverConfig):
    """The exact solver has only the common fields (``damping``, ``select``, ``chunk_size``)."""

    solver: ClassVar[str] = "exact"


def solve_exact(H: jax.Array, b: jax.Array, *, damping: float) -> jax.Array:
    """``x_j = (H + damping I)^{-1} b_j`` by a dense symmetric solve; ``b float32[M, P]``."""
    A = H + damping * jnp.eye(H.shape[0], dtype=H.dtype)
    A = 0.5 * (A + A.T)
    return jnp.linalg.solve(A, b.T).T


@hessian_solver
def inverse_hvp(h: Hessian, rhs: jax.Array, config: ExactConfig) -> tuple[jax.Array, SolveInfo]:
    """``(X float32[M, P], SolveInfo)`` from the explicit ``P x P`` Hessian."""
    H = jax.jit(lambda th, fr, x: explicit_matrix(h.hvp(th, fr, x), h.dim))(*h.args)
    X = jax.jit(lambda H, b: solve_exact(H, b, damping=config.damping))(H, rhs)
    lowest = float(np.linalg.eigvalsh(np.asarray(H, np.float64))[0]) + config.damping
    return X, SolveInfo(iterations=h.dim, residual=float("nan"), negative_curvature=lowest <= 0)
