"""The simulator interface and the rollout shared by every simulator.

A simulator predicts, for every test example, a loss trajectory from a curriculum and the
observed starting losses L_0. Every simulator here is first-order Markov (DESIGN.md s3):

    L^_t = alpha_t * L^_{t-1} + beta_t,        (alpha_t, beta_t) = coefficients(c_t, t)

so a simulator only has to say how a batch ``c_t`` (ids, ``-1`` = padding) at step ``t``
maps to ``(alpha_t, beta_t)`` for one test example. The rollout is then one function for all
of them: a ``lax.scan`` over steps for one test example, ``vmap``-ed over test examples and
over curricula.

Concrete simulators are ``flax.struct`` dataclasses (pytrees) whose array fields carry a
leading test-example axis ``M``; ``per_test`` returns those fields and ``coefficients`` is
the per-test-example rule. They are final: wrap them, do not subclass them.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


class Simulator(abc.ABC):
    """Abstract simulator; see the module docstring for the contract."""

    name: str

    @abc.abstractmethod
    def per_test(self) -> PyTree:
        """The per-test-example parameters: a pytree whose leaves have leading axis ``M``."""

    @abc.abstractmethod
    def coefficients(
        self, p: PyTree, batch: jax.Array, t: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """``(alpha, beta)`` scalars for one test example.

        Args:
          p: ``per_test()`` with the leading ``M`` axis removed (one test example).
          batch: ``int32[B]`` training ids of step ``t``; ``-1`` is padding.
          t: the step number, 1-based.
        """

    @property
    def num_test(self) -> int:
        return jax.tree_util.tree_leaves(self.per_test())[0].shape[0]

    def seen_ids(self) -> jax.Array | None:
        """``bool[N]`` ids that had data in the fit, or ``None`` if every id is valid."""
        return None


def batch_mask(batch: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns ``(safe_ids, weight)``: padding ids clipped to 0 with weight 0."""
    valid = batch >= 0
    return jnp.where(valid, batch, 0), valid.astype(jnp.float32)


def rollout_one(sim: Simulator, p: PyTree, batches: jax.Array, L0: jax.Array) -> jax.Array:
    """Rolls one test example along one curriculum.

    Args:
      sim: the simulator (only its static rule is used; ``p`` carries the parameters).
      p: one test example's parameters.
      batches: ``int32[T, B]``.
      L0: scalar starting loss.

    Returns:
      ``float32[T+1]``: L_0 followed by the simulated L^_1..L^_T.
    """
    T = batches.shape[0]

    def step(L, xs):
        batch, t = xs
        alpha, beta = step_coefficients(sim, p, batch, t)
        L_next = (alpha * L + beta).astype(L.dtype)
        return L_next, L_next

    L0 = jnp.asarray(L0, jnp.float32)
    _, Ls = jax.lax.scan(step, L0, (batches, jnp.arange(1, T + 1)))
    return jnp.concatenate([L0[None], Ls])


def step_coefficients(sim: Simulator, p: PyTree, batch: jax.Array, t: jax.Array):
    """``sim.coefficients``, except that an all-padding step is no update: (1, 0).

    This lets curricula of different lengths be stacked by padding them with ``-1`` steps.
    """
    alpha, beta = sim.coefficients(p, batch, t)
    empty = jnp.all(batch < 0)
    return jnp.where(empty, 1.0, alpha), jnp.where(empty, 0.0, beta)


def coefficient_sequence(sim: Simulator, p: PyTree, batches: jax.Array):
    """``(alpha[T], beta[T])`` of one test example along a curriculum ``int32[T, B]``."""
    T = batches.shape[0]
    return jax.vmap(lambda b, t: step_coefficients(sim, p, b, t))(batches, jnp.arange(1, T + 1))
