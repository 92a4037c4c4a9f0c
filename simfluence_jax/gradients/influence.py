"""Influence functions: ``g_i^T (H + lambda I)^{-1} g_test_j`` through a registered solver.

Koh & Liang (2017, "Understanding Black-box Predictions via Influence Functions") estimate
the effect of up-weighting training example ``z_i`` on the loss of ``z_test`` as
``-g_test^T H^{-1} g_i``, with ``H`` the Hessian of the training loss. Here

    score[i, j] = g_i^T (H + lambda I)^{-1} g_test_j                 (train x test, [N, M])

so a positive score means up-weighting ``z_i`` lowers the test loss (the sign convention
of ``simfluence_jax.gradients``), ``lambda`` is the damping that makes ``H + lambda I``
positive definite away from an optimum, and

    H = (1/n) sum_{z in hessian inputs} hess_theta l(z; theta)

is the Hessian of the mean training loss on the pool, restricted to the selected parameters.

One solve per test example, ``x_j = (H + lambda I)^{-1} g_test_j``, by the solver the config
names (``simfluence_jax.gradients.ihvp``: ``cg``, ``lissa``, ``exact``, ``lanczos``); then
``score[:, j] = <g_i, x_j>`` over the N training gradients, chunked, so N solves are never
needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.gradients.ihvp import IHVP_SOLVERS, SolveInfo, SolverConfig
from simfluence_jax.gradients.per_example import (
    LossFn,
    Restricted,
    dots_with,
    per_example_grads,
    restrict,
)


def InfluenceConfig(solver: str = "cg", **fields) -> SolverConfig:
    """The config of the named solver (``CGConfig``, ``LissaConfig``, ``ExactConfig``,
    ``LanczosConfig``), from the flat form a gin file or a dict gives.

    ``InfluenceConfig(solver="lanczos", damping=0.01, lanczos_rank=32)`` is
    ``LanczosConfig(damping=0.01, rank=32)``: a field may carry the solver's name as a
    prefix (``cg_tol``, ``lissa_depth``, ``lanczos_rank``). A field the solver does not
    have raises a ``TypeError`` listing the ones it has; an unknown solver a ``ValueError``
    listing the registered ones.
    """
    config = IHVP_SOLVERS.get(solver).config
    prefix = f"{solver}_"
    kwargs: dict[str, Any] = {}
    for key, value in fields.items():
        name = key.removeprefix(prefix)
        if name in kwargs:
            raise TypeError(f"{key!r} repeats the {solver} field {name!r}")
        kwargs[name] = value
    known = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise TypeError(
            f"the {solver} influence solver has no field(s) {unknown}; it has {known} "
            f"(optionally prefixed {prefix!r})"
        )
    return config(**kwargs)


def inverse_hvp(
    loss_fn: LossFn,
    theta: Any,
    frozen: Any,
    hessian_inputs,
    rhs: jax.Array,
    *,
    config: SolverConfig,
) -> tuple[jax.Array, SolveInfo]:
    """``float32[M, P]``: ``(H + lambda I)^{-1} rhs_j`` for the mean loss on ``hessian_inputs``,
    by the solver of ``config`` (``ihvp.Solver``: ``config.select`` is not applied here)."""
    solver = IHVP_SOLVERS.get(config.solver)
    if not isinstance(config, solver.config):
        raise TypeError(f"{type(config).__name__} is not a {solver.config.__name__}")
    return solver.inverse_hvp(loss_fn, theta, frozen, hessian_inputs, rhs, config=config)


def influence_scores(
    loss_fn: LossFn,
    theta: Any,
    frozen: Any,
    train_inputs,
    test_inputs,
    *,
    hessian_inputs=None,
    config: SolverConfig | None = None,
) -> tuple[np.ndarray, SolveInfo]:
    """``float32[N, M]``: ``g_i^T (H + lambda I)^{-1} g_test_j`` (positive lowers the test loss).

    Args:
      loss_fn: ``loss_fn(theta, frozen, inputs) -> float32[B]``.
      theta: the parameters (usually the final model); ``config.select`` picks the ones
        entering gradients and Hessian.
      frozen: passed to ``loss_fn``.
      train_inputs, test_inputs: the pool (N) and test (M) examples.
      hessian_inputs: examples whose mean loss defines ``H`` (default ``train_inputs``).
      config: a solver's config (default ``InfluenceConfig()``, CG).

    Returns:
      ``(scores, SolveInfo)``. Raises ``ValueError`` if the solver met non-positive
      curvature or its solution is not finite.
    """
    config = InfluenceConfig() if config is None else config
    r = restrict(loss_fn, theta, frozen, select=config.select)
    hessian_inputs = train_inputs if hessian_inputs is None else hessian_inputs

    def inverse(G_test):
        X, info = inverse_hvp(r.loss_fn, r.theta, r.frozen, hessian_inputs, G_test, config=config)
        if info.negative_curvature:
            raise ValueError(
                f"H + {config.damping:g} I is not positive definite at these parameters (the "
                f"{config.solver} solver met non-positive curvature); raise the damping"
            )
        if not bool(jnp.all(jnp.isfinite(X))):
            raise ValueError(
                f"the {config.solver} solve diverged (non-finite values): H + {config.damping:g} I "
                "must be positive definite and, for LiSSA, its eigenvalues below 2 x the scale"
            )
        return X, info

    return scores_through(r, train_inputs, test_inputs, inverse, chunk_size=config.chunk_size)


def scores_through(
    r: Restricted,
    train_inputs,
    test_inputs,
    inverse: Callable[[jax.Array], tuple[jax.Array, Any]],
    *,
    chunk_size: int | None,
) -> tuple[np.ndarray, Any]:
    """``(float32[N, M], info)``: ``g_i^T V_j`` with ``(V, info) = inverse(G_test)``.

    The M test gradients ``G_test float32[M, P]`` of the restricted model ``r`` are formed
    at once; ``inverse`` (an influence solver or EK-FAC, which checks its own output) maps
    them to ``V float32[M, P]``; the N training gradients are formed ``chunk_size`` at a
    time and dotted with ``V`` (``per_example.dots_with``)."""
    grads = jax.jit(
        lambda th, fr, x: per_example_grads(r.loss_fn, th, fr, x, chunk_size=chunk_size)
    )
    V, info = inverse(grads(r.theta, r.frozen, test_inputs))
    dots = jax.jit(lambda th, fr, x, V: dots_with(r.loss_fn, th, fr, x, V, chunk_size=chunk_size))
    return np.asarray(dots(r.theta, r.frozen, train_inputs, V), np.float32), info


__all__ = [
    "InfluenceConfig",
    "SolveInfo",
    "SolverConfig",
    "influence_scores",
    "inverse_hvp",
    "scores_through",
]
