"""Simfluence-Linear and its special cases as one index-based simulator.

For one test example, with per-training-example parameters ``A, B: float32[N]``
(Guu et al., 2023, arXiv 2303.08114, section 4):

    L_t = alpha(c_t) * L_{t-1} + beta(c_t)
    alpha(c_t) = alpha0 + sum_{i in c_t} A_i       beta(c_t) = sum_{i in c_t} B_i (+ drift_t)

``alpha0 = 0`` is the plain-sum form the paper and GPTfluence use; ``alpha0 = 1`` is the
``one_plus_sum`` form, under which ridge shrinkage pulls towards "no change". An id repeated
in a batch counts twice; ``-1`` padding counts zero times.

Special cases (all the same class, different fitted parameters):

* Additive (TracIn-like): ``alpha0 = 1``, ``A = 0``: L_t = L_{t-1} + sum B_i;
* Multiplicative: ``alpha0 = 0``, ``B = 0``;
* constant control: ``alpha0 = 1``, ``A = B = 0``: L^_t = L_0;
* gradient baselines (TracIn-CP, influence functions): additive with ``B`` from scores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from simfluence_jax.simulators.base import Simulator, batch_mask


@struct.dataclass
class LinearSimulator(Simulator):
    """Index-based Simfluence-Linear family.

    Attributes:
      A: ``float32[M, N]`` multiplicative parameters per (test, train) pair.
      B: ``float32[M, N]`` additive parameters per (test, train) pair.
      seen: ``bool[N]`` training ids that occurred in the fitting runs.
      alpha0: 0.0 (plain sum) or 1.0 (``one_plus_sum``, additive).
      name: registry name of the simulator that produced it.
      l2: the ridge strength it was fitted with (``nan`` if not fitted by ridge).
      scale: informational; the global scale applied to calibrated baselines.
    """

    A: jax.Array
    B: jax.Array
    seen: jax.Array
    alpha0: float = struct.field(pytree_node=False, default=0.0)
    name: str = struct.field(pytree_node=False, default="linear")
    l2: float = float("nan")
    scale: float = 1.0

    def per_test(self):
        return (self.A, self.B)

    def coefficients(self, p, batch, t):
        A, B = p
        ids, w = batch_mask(batch)
        alpha = self.alpha0 + jnp.sum(A[ids] * w)
        beta = jnp.sum(B[ids] * w)
        return alpha, beta

    def seen_ids(self):
        return self.seen

    @property
    def num_train(self) -> int:
        return self.A.shape[1]


@struct.dataclass
class MeanSimulator(Simulator):
    """Control that ignores the curriculum: the mean trajectory of the fitting runs.

    L^_t = L^_{t-1} + delta_t, with delta_t the mean over fitting runs of L_t - L_{t-1}
    (so L^_t = L_0 + mean change up to t). Steps past the fitted length add nothing.

    Attributes:
      delta: ``float32[M, T_fit]`` mean per-step change of each test example.
    """

    delta: jax.Array
    name: str = struct.field(pytree_node=False, default="mean")

    def per_test(self):
        return self.delta

    def coefficients(self, p, batch, t):
        T_fit = p.shape[0]
        beta = jnp.where(t <= T_fit, p[jnp.clip(t - 1, 0, T_fit - 1)], 0.0)
        return jnp.float32(1.0), beta
