"""Exact metagradients: the derivative of test losses after training with respect to a weight
on every training example of one logged run, through the whole run.

Fix a run of the run factory (its curriculum ``c int32[T, B]``, seed, model, training method,
optimizer and schedule) and put a weight ``w[t, b]`` on the loss of slot ``b`` of step ``t``.
Step ``t`` trains on the weighted batch loss of ``training.train_step.batch_weights``,

    J_t(theta; w) = sum_b w[t, b] m[t, b] l(z_{c[t, b]}; theta) / max(1, sum_b w[t, b] m[t, b])

(``m`` = 1 for real slots, 0 for padding), so ``w = 1`` is the logged run and ``w[t, b] = 0``
is that slot turned into padding: removal means what it means for retraining. The run is
``theta_t(w) = step(theta_{t-1}, grad J_t; eta_t)`` with the factory's own update (dropout key
``fold_in(seed, t)``, optimizer state, schedule); ``L_t[j](w) = l(z_test_j; theta_t(w))``. This
package differentiates readouts of the trajectory,

    y_k[j](w) = sum_t R[k, t] L_t[j](w)        (default: the mean of the last ``horizon`` steps)

with respect to ``w`` (Ilyas & Engstrom, 2025, "MAGIC: Near-Optimal Data Attribution for Deep
Learning", the "Replay" of a fixed training run; Maclaurin et al., 2015, for reverse-mode
hyperparameter gradients through training):

* reverse mode (:meth:`Replay.metagradients`): ``dy_k[j] / dw[t, b]`` for every slot, every
  test example and readout, as ``grad`` of the per-test-example readout ``vmap``-ed over test
  examples (the training trajectory is shared, only the cotangents are batched) and
  ``lax.map``-ed over chunks of them. The run is a ``lax.scan`` over chunks of
  ``remat_chunk`` steps, each chunk a ``jax.checkpoint``-ed scan: the forward pass keeps only
  the state at chunk boundaries and the backward pass recomputes one chunk at a time, so
  memory grows with ``T / remat_chunk + remat_chunk`` states instead of ``T``;
* forward mode (:meth:`Replay.trajectory_jvp`): for one direction ``v float[T, B]``, the
  directional derivative ``sum_{t,b} v[t, b] dL_s[j] / dw[t, b]`` of every test example's
  whole trajectory ``s = 0..T``, in a single ``jax.jvp`` pass.

The derivative of the aggregated weight of a training id ``i`` (one weight for all of its
occurrences) is the sum over its slots (:attr:`Metagradients.by_id`).

What it differentiates: every training method (full, LoRA, prompt tuning, cached top
layers) and model of the run factory (the update is the factory's ``make_update`` with slot
weights); SGD (with or without momentum or Nesterov), Adam/AdamW and Adafactor, with any
schedule and gradient clipping, not Lion (:mod:`.optimizers` says why, and how Adam's and
Adafactor's derivatives are kept finite). Any other non-finite result is reported as an
error.

The derivative is exact up to floating point; it is the first-order term of an edit,
``y(w) ~ y(1) + J (w - 1)``, so it predicts small edits of this run (same seed and order)
and nothing about another curriculum (``simfluence_jax.simulators.metagradient``).

The modules: :mod:`.optimizers` (the run's optimizer in a differentiable form),
:mod:`.readouts` (readout matrices and the rematerialised scan), :mod:`.replay`
(:class:`Replay`) and :mod:`.record` (:class:`Metagradients` and
:func:`metagradient_simulator`).
"""

from simfluence_jax.gradients.metagradient.optimizers import (
    ADAFACTOR_EPS_FLOAT32,
    ADAM_EPS_ROOT,
    DIFFERENTIABLE_OPTIMIZERS,
    differentiable_optimizer,
)
from simfluence_jax.gradients.metagradient.readouts import (
    horizon_readout,
    remat_scan,
    steps_readout,
)
from simfluence_jax.gradients.metagradient.record import Metagradients, metagradient_simulator
from simfluence_jax.gradients.metagradient.replay import Replay

__all__ = [
    "ADAFACTOR_EPS_FLOAT32",
    "ADAM_EPS_ROOT",
    "DIFFERENTIABLE_OPTIMIZERS",
    "Metagradients",
    "Replay",
    "differentiable_optimizer",
    "horizon_readout",
    "metagradient_simulator",
    "remat_scan",
    "steps_readout",
]
