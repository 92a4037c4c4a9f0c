"""Simfluence-Linear with a learned causal filter: the filter kernel.

The optimizer kernel of ``simulators.linear`` assumes that a batch's effect decays
geometrically after its step (``mu^(t-s)``). The filter kernel lets the shape be anything
causal of length ``K + 1``, shared by every (test, train) pair (docs/design.md, "The filter
kernel"): for one test example, with ``A, B: float32[N]`` and ``m(c_t)`` the count vector of
the batch of step t,

    x_t = sum_{k=0..K} h[k] m(c_{t-k}),   h[0] = 1,   m(c_t) = 0 for t < 1
    alpha_t = alpha0 + s_t A . x_t,     beta_t = s_t B . x_t
    L_t = alpha_t L_{t-1} + beta_t

with ``s_t = eta_t / eta_ref`` when ``lr_scaled`` and 1 otherwise. ``K = 0`` is plain
Simfluence-Linear; ``h[k] = mu^k`` with ``K >= T - 1`` is the momentum kernel with ``mu``
over runs of T steps (and approximates it for shorter filters once ``mu^K`` is negligible).

**State.** Only ``A . x_t`` and ``B . x_t`` enter, and both are the filter applied to the
per-step sums ``a_t = A . m(c_t)``, ``b_t = B . m(c_t)``. The rollout's state is therefore
the last K of those sums, ``float32[2, K]`` per (test example, curriculum), shifted by one
at every step: a finite-impulse-response filter cannot be written as a one-number
recursion, but its memory is K scalars, not K indicator vectors of the pool. A step whose
weights are all 0 (padding) is no update and does not shift the buffer, as the momentum
kernel's buffer does not decay on it.
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from simfluence_jax.simulators.base import AffineSimulator, simulator_dataclass, static_field
from simfluence_jax.simulators.fitter import Fitter
from simfluence_jax.simulators.linear import PairEffects


@simulator_dataclass
class FilterSimulator(PairEffects, AffineSimulator):
    """Simfluence-Linear with a learned causal filter of the batch counts.

    Attributes:
      A: ``float32[M, N]`` multiplicative parameters per (test, train) pair.
      B: ``float32[M, N]`` additive parameters per (test, train) pair.
      seen: ``bool[N]`` training ids that occurred in the fitting runs.
      filter: ``float32[K+1]`` the causal filter ``h``, ``h[0] = 1``, shared by every pair.
      lr_ref: ``eta_ref`` of ``s_t = eta_t / eta_ref``; ``nan`` unless ``lr_scaled``.
      l2: the ridge strength it was fitted with.
      alpha0: 0.0 (plain sum) or 1.0 (``one_plus_sum``).
      lr_scaled: whether the step's learning-rate scale multiplies the effects.
      name: registry name of the simulator that produced it.
    """

    A: jax.Array
    B: jax.Array
    seen: jax.Array
    filter: jax.Array
    lr_ref: float = math.nan
    l2: float = math.nan
    alpha0: float = static_field(0.0)
    lr_scaled: bool = static_field(False)
    name: str = static_field("linear_filter")

    ARRAY_SHAPES: ClassVar[dict[str, tuple]] = {
        "A": ("f", ("M", "N")),
        "B": ("f", ("M", "N")),
        "seen": ("b", ("N",)),
        "filter": ("f", ("K1",)),
    }

    @property
    def filter_length(self) -> int:
        """K: the number of past steps the filter reaches back."""
        return int(jnp.shape(self.filter)[-1]) - 1

    def per_test(self):
        M = jnp.shape(self.A)[0]
        h = jnp.asarray(self.filter, jnp.float32)
        return (self.A, self.B, jnp.broadcast_to(h, (M,) + h.shape))

    def init_state(self, p, L0):
        K = p[2].shape[-1] - 1
        return jnp.zeros((2, K), jnp.float32)

    def affine_step(self, p, state, ids, w, t, s):
        A, B, h = p
        now = jnp.stack([jnp.sum(A[ids] * w), jnp.sum(B[ids] * w)])  # (a_t, b_t)
        a, b = h[0] * now + state @ h[1:].astype(state.dtype)
        # Newest first: state[:, k] holds the sums of k + 1 steps ago.
        K = state.shape[1]
        state = jnp.concatenate([now[:, None].astype(state.dtype), state], axis=1)[:, :K]
        return state, self.alpha0 + s * a, s * b

    @property
    def memoryless(self) -> bool:
        return self.filter_length == 0


EXTENSIONS = {
    "simulator class": {"FilterSimulator": FilterSimulator},
    "simulator": {
        "linear_filter": Fitter(
            "simfluence_jax.filter_fit:fit_linear_filter",
            doc="Linear with a learned causal filter of the batch counts (the filter kernel)",
        ),
    },
}
