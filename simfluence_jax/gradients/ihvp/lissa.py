"""LiSSA: the truncated Neumann series for ``(H + lambda I) X = B``.

Agarwal, Bullins & Hazan (2017, "Second-Order Stochastic Optimization for Machine Learning
in Linear Time"). With ``A = H + lambda I`` and ``sigma`` above the largest eigenvalue of
``A``::

    h_0 = b,  h_k = b + (I - A / sigma) h_{k-1}  (k = 1..K),  x = h_K / sigma

With full-batch HVPs the error is exactly ``x* - x = (I - A/sigma)^{K+1} x*``: it converges
iff every eigenvalue of ``A`` lies in ``(0, 2 sigma)``, geometrically with ratio
``max |1 - mu/sigma|``. With minibatch HVPs (``batch_size``) every term uses a fresh
random minibatch, and ``repeats`` independent estimates are averaged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from simfluence_jax.gradients.ihvp.base import Hessian, SolveInfo, SolverConfig, hessian_solver
from simfluence_jax.gradients.ihvp.hvp import Matvec
from simfluence_jax.gradients.per_example import LossFn


@dataclasses.dataclass(frozen=True, kw_only=True)
class LissaConfig(SolverConfig):
    """LiSSA's series, besides ``damping``, ``select`` and ``chunk_size``.

    Attributes:
      depth: ``K``, the Neumann terms.
      scale: ``sigma``; ``None`` = 1.1 x (power-iteration top eigenvalue of ``H`` + damping).
      batch_size: examples per stochastic HVP (``None``: full batch, deterministic).
      repeats: independent stochastic estimates averaged.
      seed: for the power iteration and the stochastic minibatches.
    """

    solver: ClassVar[str] = "lissa"

    depth: int = 200
    scale: float | None = None
    batch_size: int | None = None
    repeats: int = 1
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.depth < 0 or (self.scale is not None and not self.scale > 0):
            raise ValueError(
                f"LiSSA needs depth >= 0 and scale > 0, got {self.depth}, {self.scale}"
            )
        if self.repeats < 1:
            raise ValueError(f"lissa repeats must be >= 1, got {self.repeats}")


def solve_lissa(
    matvec: Matvec,
    b: jax.Array,
    *,
    damping: float,
    scale: float,
    depth: int,
) -> jax.Array:
    """Truncated Neumann series (LiSSA) for ``(H + damping I) x_j = b_j``.

    ``h_0 = b``, ``h_k = b + h_{k-1} - (H h_{k-1} + damping h_{k-1}) / scale`` for
    ``k = 1..depth``, ``x = h_depth / scale``. With ``A = H + damping I`` and ``x* = A^{-1} b``,
    ``x* - x = (I - A/scale)^{depth+1} x*``: it converges iff every eigenvalue of ``A`` lies
    in ``(0, 2 scale)``, geometrically with ratio ``max |1 - mu/scale|``.

    Returns ``float32[M, P]``; jit-safe. :func:`lissa_stochastic` is the minibatch version.
    """
    if not scale > 0 or depth < 0:
        raise ValueError(f"LiSSA needs scale > 0 and depth >= 0, got {scale}, {depth}")
    A = jax.vmap(lambda v: matvec(v) + damping * v)

    def body(_, h):
        return b + h - A(h) / scale

    h = jax.lax.fori_loop(0, depth, body, b)
    return h / scale


def top_eigenvalue(matvec: Matvec, dim: int, *, iters: int = 30, seed: int = 0) -> jax.Array:
    """The largest ``|eigenvalue|`` of a symmetric map by power iteration (a lower bound)."""
    v = jax.random.normal(jax.random.PRNGKey(seed), (dim,), jnp.float32)
    v = v / jnp.linalg.norm(v)

    def body(_, state):
        v, _ = state
        w = matvec(v)
        lam = jnp.linalg.norm(w)
        return w / jnp.where(lam > 0, lam, 1.0), lam

    _, lam = jax.lax.fori_loop(0, iters, body, (v, jnp.zeros((), jnp.float32)))
    return lam


def lissa_stochastic(
    loss_fn: LossFn,
    theta: Any,
    frozen: Any,
    inputs,
    rhs: jax.Array,
    *,
    damping: float,
    scale: float,
    depth: int,
    batch_size: int,
    repeats: int = 1,
    seed: int = 0,
) -> jax.Array:
    """Stochastic LiSSA: iteration k uses the HVP of a fresh random minibatch.

    Each ``H_k`` is an unbiased estimate of ``H`` drawn independently, so the expectation of
    ``prod_k (I - A_k/scale)`` is ``(I - A/scale)^depth`` and the estimate is unbiased for the
    truncated series; ``repeats`` independent estimates are averaged. ``float32[M, P]``.
    """
    n = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"lissa batch_size must be in 1..{n}, got {batch_size}")
    if repeats < 1:
        raise ValueError(f"lissa repeats must be >= 1, got {repeats}")

    @jax.jit
    def one_estimate(theta, frozen, inputs, rhs, key):
        w0, unravel = ravel_pytree(theta)

        def minibatch_hvp(v, ids):
            rows = jax.tree_util.tree_map(lambda x: jnp.take(x, ids, axis=0), inputs)
            grad = jax.grad(lambda w: jnp.mean(loss_fn(unravel(w), frozen, rows)))
            return jax.jvp(grad, (w0,), (v,))[1]

        def body(k, h):
            ids = jax.random.choice(jax.random.fold_in(key, k), n, (batch_size,), replace=False)
            Ah = jax.vmap(lambda v: minibatch_hvp(v, ids))(h) + damping * h
            return rhs + h - Ah / scale

        return jax.lax.fori_loop(0, depth, body, rhs) / scale

    keys = jax.random.split(jax.random.PRNGKey(seed), repeats)
    return sum(one_estimate(theta, frozen, inputs, rhs, k) for k in keys) / repeats


@hessian_solver
def inverse_hvp(h: Hessian, rhs: jax.Array, config: LissaConfig) -> tuple[jax.Array, SolveInfo]:
    """``(X float32[M, P], SolveInfo)`` by full-batch or stochastic LiSSA.

    ``sigma`` is ``config.scale``, or 1.1 x (the power-iteration top eigenvalue of ``H`` plus
    the damping) when that is ``None``. The residual is not measured (``nan``).
    """
    c, hvp, args = config, h.hvp, h.args
    scale = c.scale
    if scale is None:
        top = jax.jit(lambda th, fr, x: top_eigenvalue(hvp(th, fr, x), h.dim, seed=c.seed))(*args)
        scale = 1.1 * (float(top) + c.damping)
    if c.batch_size is None:

        def lissa(th, fr, x, b):
            return solve_lissa(hvp(th, fr, x), b, damping=c.damping, scale=scale, depth=c.depth)

        X = jax.jit(lissa)(*args, rhs)
    else:
        X = lissa_stochastic(
            h.loss_fn,
            *args,
            rhs,
            damping=c.damping,
            scale=scale,
            depth=c.depth,
            batch_size=c.batch_size,
            repeats=c.repeats,
            seed=c.seed,
        )
    return X, SolveInfo(iterations=c.depth, residual=float("nan"))
