"""The metagradient simulator: first-order predictions of edits of one logged run.

Built from exact metagradients of a run (``simfluence_jax.gradients.metagradient``; MAGIC,
Ilyas & Engstrom, 2025): with ``c int32[T, B]`` the run's curriculum, ``L_t`` its logged
losses and ``J[k] = dL_{t_k} / dw float[T, B]`` the derivatives of the losses after the
recorded steps ``t_k`` with respect to the slot weights, an edit that keeps or removes slots
(``u[t, b] = 1`` kept, ``0`` removed: the slot became padding) is predicted as

    L^_{t_k}(u) = L_{t_k} + sum_{s, b} J[k][s, b] (u[s, b] - 1[c[s, b] >= 0])

at the recorded steps and NaN at the others (``steps`` of the metagradients; all steps give
the whole trajectory). As a rollout step it carries the slot deltas seen so far, so it runs
through the one rollout and the attribution API like every simulator; its domain is the
single-model setting:

* a slot of the simulated curriculum is *kept* when its weight is positive (the weights the
  attribution API gives the remaining examples of an edited batch, ``n_t / n'_t`` under
  ``batch_loss="mean"``, or 1, mean the same here: the metagradient's batch loss already
  divides by the kept examples' weight), *removed* when it is padding or weighs 0;
* a curriculum that is not such an edit of the run (another T or B, another id in a slot,
  a reorder, an addition, a re-packed removal) is outside its domain: ``check_curricula``
  raises ``ValueError`` at the checked entry points, and inside a compiled rollout the
  prediction is NaN.

It ignores the ``L0`` and learning rates a rollout is given: its reference is the logged run.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.simulators.base import Simulator, simulator_dataclass, static_field


@simulator_dataclass
class MetagradientSimulator(Simulator):
    """First-order predictions of slot removals of one logged run (module docstring).

    Attributes:
      reference: ``float32[M, T+1]`` the run's logged losses (row 0 is L_0).
      J: ``float32[M, K, T, B]`` ``dL_{t_k}[j] / dw[t, b]`` at ``w = 1``.
      batches: ``int32[T, B]`` the run's curriculum (-1 padding).
      step_index: ``int32[T]`` for step ``t`` (1-based) the row ``k`` of ``J`` with
        ``t_k = t``, or -1 where the step was not recorded.
      seed: the run's seed.
      name: ``"metagradient"``.
    """

    reference: jax.Array
    J: jax.Array
    batches: jax.Array
    step_index: jax.Array
    seed: int = static_field(0)
    name: str = static_field("metagradient")

    ARRAY_SHAPES: ClassVar[dict[str, tuple]] = {
        "reference": ("f", ("M", "T1")),
        "J": ("f", ("M", "K", "T", "B")),
        "batches": ("iu", ("T", "B")),
        "step_index": ("iu", ("T",)),
    }
    steps_when_empty = True  # a step emptied by the edit is still a step of the run

    def per_test(self):
        # The step reads arrays only through ``p``: the run's curriculum and step index go
        # with every test example (broadcast, not copied until a rollout slices them).
        M = jnp.shape(self.reference)[0]
        batches = jnp.broadcast_to(jnp.asarray(self.batches), (M,) + jnp.shape(self.batches))
        index = jnp.broadcast_to(jnp.asarray(self.step_index), (M,) + jnp.shape(self.step_index))
        return (self.reference, self.J, batches, index)

    def init_state(self, p, L0):
        del L0
        return jnp.zeros(p[2].shape, jnp.float32), jnp.zeros((), bool)

    def step(self, p, state, ids, w, t, s, L):
        del s, L  # the reference is the logged run; its schedule is fixed
        reference, J, batches, step_index = p
        du, bad = state
        T = du.shape[0]
        row = jnp.clip(t - 1, 0, T - 1)
        logged = batches[row]
        kept = w > 0
        bad = bad | (t > T) | jnp.any(kept & (ids != logged))
        du = du.at[row].set(kept.astype(du.dtype) - (logged >= 0).astype(du.dtype))
        k = step_index[row]
        value = reference[jnp.minimum(t, T)] + jnp.sum(J[jnp.maximum(k, 0)] * du)
        value = jnp.where(bad | (k < 0), jnp.nan, value)
        return (du, bad), value.astype(jnp.float32)

    def restrict(self, tests):
        return self.replace(
            reference=jnp.asarray(self.reference)[tests], J=jnp.asarray(self.J)[tests]
        )

    def check_curricula(self, batches) -> None:
        """``ValueError`` unless every curriculum of ``batches [..., T, B]`` is the run's
        curriculum with some slots turned into padding."""
        b = np.asarray(batches)
        run = np.asarray(self.batches)
        if b.shape[-2:] != run.shape:
            raise ValueError(
                f"the metagradient simulator predicts edits of its own run only (seed "
                f"{self.seed}, curriculum [T, B] = {list(run.shape)}); got curricula of shape "
                f"{list(b.shape)}"
            )
        differs = (b != run) & (b != -1)
        if differs.any():
            where = np.argwhere(differs)[0]
            t, slot = int(where[-2]), int(where[-1])
            raise ValueError(
                f"the metagradient simulator predicts edits of its own run only (seed "
                f"{self.seed}): removals of slots of its curriculum, first order in the "
                f"slot weights. This curriculum has id {int(b[tuple(where)])} at step {t + 1}, "
                f"slot {slot}, where the run has {int(run[t, slot])}; another curriculum, "
                "a reorder, an addition or a re-packed removal is outside its domain"
            )

    @property
    def recorded_steps(self) -> np.ndarray:
        """``int[K]`` the steps (1-based) it predicts; NaN at the others."""
        index = np.asarray(self.step_index)
        steps = np.flatnonzero(index >= 0) + 1
        return steps[np.argsort(index[steps - 1])]


#: Built from a run's metagradients (``gradients.metagradient``), not fitted: no fitter.
EXTENSIONS = {"simulator class": {"MetagradientSimulator": MetagradientSimulator}}
