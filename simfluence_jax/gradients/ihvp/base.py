"""What every inverse-Hessian-vector solver shares: common config fields, diagnostics, and
the registry entry.

A solver computes ``X = (H + lambda I)^{-1} B`` for right-hand sides ``B float32[M, P]``
(one per row), with ``H`` the Hessian of the mean training loss. Each solver module defines
a frozen config dataclass (these common fields plus its own) and an ``inverse_hvp``
function, written as ``solve(hessian, rhs, config)`` and given the common signature by
:func:`hessian_solver`; ``simfluence_jax.gradients.ihvp`` registers the pair under the
solver's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar, NamedTuple

import jax

from simfluence_jax.gradients.ihvp.hvp import Matvec, mean_loss_hvp
from simfluence_jax.gradients.per_example import LossFn, Select


@dataclasses.dataclass(frozen=True, kw_only=True)
class SolverConfig:
    """Fields every solver's config has (each solver adds its own).

    Attributes:
      damping: ``lambda >= 0`` in ``H + lambda I``.
      select: which parameters enter ``g`` and ``H`` (``per_example.param_mask``).
      chunk_size: examples per chunk for gradients and HVPs.
    """

    solver: ClassVar[str]

    damping: float = 1e-3
    select: Select = None
    chunk_size: int | None = 64

    def __post_init__(self):
        if not self.damping >= 0:
            raise ValueError(f"damping must be >= 0, got {self.damping}")


@dataclasses.dataclass(frozen=True)
class SolveInfo:
    """Diagnostics of a solve.

    Attributes:
      iterations: iterations run (CG, LiSSA) or HVPs formed (exact: ``P``, Lanczos: ``k``).
      residual: ``max_j |A x_j - b_j| / |b_j|`` at the end (``nan`` if not measured).
      negative_curvature: ``A`` is not positive definite (raise the damping): CG met
        ``p^T A p <= 0`` (the affected columns stopped there), or the exact / Lanczos solver
        found a non-positive (Ritz) eigenvalue of ``A``.
    """

    iterations: int
    residual: float
    negative_curvature: bool = False


#: ``inverse_hvp(loss_fn, theta, frozen, hessian_inputs, rhs, *, config) -> (X, SolveInfo)``.
InverseHVP = Callable[..., tuple[jax.Array, SolveInfo]]


class Solver(NamedTuple):
    """A registry entry: the solver's config class and its ``inverse_hvp``.

    ``inverse_hvp(loss_fn, theta, frozen, hessian_inputs, rhs, *, config)`` returns
    ``(X float32[M, P], SolveInfo)`` with ``X_j = (H + lambda I)^{-1} rhs_j`` for the mean
    of ``loss_fn`` over ``hessian_inputs``. ``theta`` is the differentiated pytree (already
    restricted; ``config.select`` is not applied there) and ``rhs`` rows live in its raveled
    coordinates. Parameters and inputs enter the compiled solvers as arguments, never as
    constants.
    """

    config: type[SolverConfig]
    inverse_hvp: InverseHVP


class Hessian(NamedTuple):
    """The Hessian ``H`` a solver inverts: of the mean of ``loss_fn`` over ``inputs``.

    Attributes:
      loss_fn: the (restricted) loss, ``loss_fn(theta, frozen, inputs) -> float32[B]``.
      args: ``(theta, frozen, inputs)``: passed to compiled solvers as arguments.
      dim: ``P``, the raveled size of ``theta``.
      hvp: ``hvp(theta, frozen, inputs) -> Matvec``: ``mean_loss_hvp`` with the config's
        ``chunk_size``.
    """

    loss_fn: LossFn
    args: tuple[Any, Any, Any]
    dim: int
    hvp: Callable[..., Matvec]


def hessian_solver(solve: Callable[..., tuple[jax.Array, SolveInfo]]) -> InverseHVP:
    """A solver's ``inverse_hvp`` (the :class:`Solver` signature) from
    ``solve(hessian: Hessian, rhs float32[M, P], config) -> (X, SolveInfo)``."""

    def inverse_hvp(loss_fn, theta, frozen, hessian_inputs, rhs, *, config):
        hvp = partial(mean_loss_hvp, loss_fn, chunk_size=config.chunk_size)
        hessian = Hessian(loss_fn, (theta, frozen, hessian_inputs), rhs.shape[1], hvp)
        return solve(hessian, rhs, config)

    inverse_hvp.__module__, inverse_hvp.__doc__ = solve.__module__, solve.__doc__
    return inverse_hvp


__all__ = ["Hessian", "InverseHVP", "SolveInfo", "Solver", "SolverConfig", "hessian_solver"]
