"""An additive simulator whose per-example decrements change with the training segment.

For one test example, with per-training-example similarities ``S[k, i]`` for segments
``k = 0..K-1`` (e.g. gradient dot products at K checkpoints), step learning rates
``eta_t`` and the segment ``k(t)`` of each step:

    L_t = L_{t-1} + beta_t,      beta_t = -s * (eta_t / |c_t|) * sum_{i in c_t} S[k(t), i]

with ``|c_t|`` the number of real (non-padding) ids in the batch, an id repeated in the
batch counted twice, and ``s`` a global scale (1 for raw scores). This is the first-order
(TracIn) change of the test loss for one SGD step on the batch's *mean* loss (Pruthi et
al., 2020; Guu et al., 2023, section 4.3, which shows TracIn to be this additive special
case of Simfluence-Linear): ``S`` positive means the example lowers the test loss.
``K = 1`` gives a single set of decrements (Grad-Dot, summed TracIn-CP, influence
functions) that still follows the learning-rate schedule and the batch size.

Steps past the end of the stored schedule use its last rate and segment.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from simfluence_jax.simulators.base import AffineSimulator, simulator_dataclass, static_field


@simulator_dataclass
class SegmentedSimulator(AffineSimulator):
    """Additive simulator with segment-dependent, learning-rate-scaled decrements.

    Attributes:
      S: ``float32[M, K, N]`` similarity of training example i to test example j in
        segment k (positive lowers the test loss).
      eta: ``float32[T]`` learning rate of steps ``1..T``.
      segment: ``int32[T]`` segment ``k(t)`` of steps ``1..T``.
      seen: ``bool[N]`` ids with a score (all of them for gradient scores).
      scale: the global scale ``s`` (1 for raw scores, fitted for calibrated ones).
      name: registry name of the simulator that produced it.
    """

    S: jax.Array
    eta: jax.Array
    segment: jax.Array
    seen: jax.Array
    scale: jax.Array = 1.0
    name: str = static_field("segmented")

    def per_test(self):
        M = self.S.shape[0]
        T = self.eta.shape[0]
        return (
            self.S,
            jnp.broadcast_to(jnp.asarray(self.eta, jnp.float32), (M, T)),
            jnp.broadcast_to(jnp.asarray(self.segment, jnp.int32), (M, T)),
            jnp.broadcast_to(jnp.asarray(self.scale, jnp.float32), (M,)),
        )

    def affine_step(self, p, state, ids, w, t, s):
        S, eta, segment, scale = p
        step = jnp.clip(t - 1, 0, eta.shape[0] - 1)
        count = jnp.maximum(w.sum(), 1.0)
        decrement = jnp.sum(S[segment[step], ids] * w)
        return state, jnp.float32(1.0), -scale * eta[step] / count * decrement

    def seen_ids(self):
        return self.seen

    def restrict(self, tests):
        return self.replace(S=jnp.asarray(self.S)[tests])

    @property
    def num_segments(self) -> int:
        return self.S.shape[1]
