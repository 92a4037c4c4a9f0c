"""The instrumented training step: one optimizer update, then the loss of every test example.

For a run with curriculum ``c_1 .. c_T`` and trainable parameters ``theta``, step ``t`` is

    w_b        = 1[c_t[b] >= 0]                                   (-1 is padding)
    J(theta)   = sum_b w_b l(z_{c_t[b]}; theta) / max(1, sum_b w_b)
    theta_t    = optax_update(theta_{t-1}, grad J(theta_{t-1}); eta_t)
    L_t[j]     = l(z_test_j; theta_t)              for j = 1 .. M, deterministic (no dropout)

all inside one compiled function, so a run costs one training step plus one forward pass
over the test set per step and the losses never leave the device inside a chunk of steps.

The 1/B convention: the batch loss is the *mean over the real (non-padding) examples* of the
batch, so an example's share of the update is ``eta_t / B_real`` times its gradient (an id
repeated in a batch counts once per occurrence). TracIn-style baselines must divide by the
same ``B_real`` (Pruthi et al., 2020). A batch of padding only gives a zero gradient, but a
stateful optimizer (Adam's moments) still advances; curricula never contain such steps.

Step randomness (dropout) is ``fold_in(run_key, t)`` with ``t`` the 1-based step number, so a
run replays exactly from its seed and curriculum; the test losses are always computed with
``rng=None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from simfluence_jax.training.methods import MethodData
from simfluence_jax.training.optim import Optimizer


@flax.struct.dataclass
class TrainState:
    """The state of one run.

    Attributes:
      step: ``int32[]``, updates applied so far (``t``).
      trainable: the trainable pytree ``theta_t``.
      opt_state: the optax state.
      key: ``uint32[2]``, the run's PRNG key (from its seed); step ``t`` uses
        ``fold_in(key, t)``.
    """

    step: jax.Array
    trainable: Any
    opt_state: Any
    key: jax.Array


def init_state(trainable, optimizer: Optimizer, *, seed: int | jax.Array) -> TrainState:
    """The state before step 1 for a run with integer ``seed``."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        trainable=trainable,
        opt_state=optimizer.tx.init(trainable),
        key=jax.random.PRNGKey(seed),
    )


def gather(tree, ids: jax.Array):
    """Rows ``ids`` (``int32[B]``, -1 allowed) of every leaf ``[N, ...]``; padding reads row 0."""
    safe = jnp.maximum(ids, 0)
    return jax.tree_util.tree_map(lambda x: jnp.take(x, safe, axis=0), tree)


def make_eval_losses(
    model, *, method, eval_batch_size: int | None = None
) -> Callable[[Any, MethodData], jax.Array]:
    """Builds ``eval_losses(trainable, data) -> float32[M]``, the deterministic test losses.

    With ``eval_batch_size`` the M test examples are evaluated ``eval_batch_size`` at a time
    (``lax.map``), which bounds activation memory for large test sets.
    """

    def eval_losses(trainable, data: MethodData) -> jax.Array:
        def losses_of(inputs):
            return method.loss(model, trainable, data.frozen, inputs, rng=None)

        m = jax.tree_util.tree_leaves(data.test)[0].shape[0]
        if eval_batch_size is None or eval_batch_size >= m:
            return losses_of(data.test)
        n_chunks = -(-m // eval_batch_size)
        pad = n_chunks * eval_batch_size - m

        def chunked(x):
            x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x
            return x.reshape((n_chunks, eval_batch_size) + x.shape[1:])

        out = jax.lax.map(losses_of, jax.tree_util.tree_map(chunked, data.test))
        return out.reshape(-1)[:m]

    return eval_losses


def batch_weights(batch_ids: jax.Array, example_weights: jax.Array | None = None):
    """``(weights float[B], denominator float[])`` of the batch loss ``sum_b weights_b l_b /
    denominator``.

    Without ``example_weights`` this is the run factory's mean over the real examples:
    ``weights = 1[id >= 0]``, ``denominator = max(1, sum_b weights_b)``. With per-slot weights
    ``w float[B]`` (the metagradient's, :mod:`simfluence_jax.gradients.metagradient`),
    ``weights = w * 1[id >= 0]`` and ``denominator = max(1, sum_b weights_b)``, so ``w = 1``
    is the plain step and ``w_b = 0`` is the step with slot ``b`` turned into padding (the
    definition of a removal). A batch with a single real example keeps ``denominator = 1``
    for every ``w``: it equals the plain step at ``w_b`` in {0, 1} and is differentiable at
    ``w_b = 1``, where ``max(1, w_b)`` has a kink (the derivative is the removal side's).
    """
    real = (batch_ids >= 0).astype(jnp.float32)
    if example_weights is None:
        return real, jnp.maximum(real.sum(), 1.0)
    weights = example_weights * real
    several = real.sum() >= 2.0
    return weights, jnp.where(several, jnp.maximum(weights.sum(), 1.0), 1.0)


def make_update(model, *, method, optimizer: Optimizer, train_rng: bool = True):
    """Builds the plain update ``update(state, batch_ids int32[B], data) -> state`` (no test
    evaluation): the first half of :func:`make_train_step`, also used by the benchmark.

    ``update(state, batch_ids, data, example_weights)`` with ``example_weights float[B]``
    weighs each slot's loss (see :func:`batch_weights`); ``None`` (the default) is the run
    factory's step."""

    def update(
        state: TrainState,
        batch_ids: jax.Array,
        data: MethodData,
        example_weights: jax.Array | None = None,
    ) -> TrainState:
        step = state.step + 1
        weights, denominator = batch_weights(batch_ids, example_weights)
        inputs = gather(data.pool, batch_ids)
        rng = jax.random.fold_in(state.key, step) if train_rng else None

        def batch_loss(trainable):
            losses = method.loss(model, trainable, data.frozen, inputs, rng=rng)
            return jnp.sum(weights * losses) / denominator

        grads = jax.grad(batch_loss)(state.trainable)
        updates, opt_state = optimizer.tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        return state.replace(step=step, trainable=trainable, opt_state=opt_state)

    return update


def make_train_step(
    model,
    *,
    method,
    optimizer: Optimizer,
    train_rng: bool = True,
    eval_batch_size: int | None = None,
) -> Callable[[TrainState, jax.Array, MethodData], tuple[TrainState, jax.Array]]:
    """Builds the pure instrumented step ``train_step(state, batch_ids, data)``.

    Args:
      model: a model following ``simfluence_jax.models.protocol``.
      method: a training method (``simfluence_jax.training.methods``).
      optimizer: an :class:`~simfluence_jax.training.optim.Optimizer`.
      train_rng: pass ``fold_in(key, t)`` to the training forward (dropout); ``False`` makes
        the training forward deterministic too.
      eval_batch_size: see :func:`make_eval_losses`.

    Returns:
      ``train_step(state, batch_ids int32[B], data) -> (state, float32[M])``: one update on
      the examples ``batch_ids`` of ``data.pool``, then the losses of all ``data.test``
      examples under the updated parameters. ``data`` is an explicit argument (not closed
      over) so that, under ``jit``, it is passed as device buffers rather than folded into
      the program as constants; bind it with ``functools.partial`` for the two-argument form.
    """
    update = make_update(model, method=method, optimizer=optimizer, train_rng=train_rng)
    eval_losses = make_eval_losses(model, method=method, eval_batch_size=eval_batch_size)

    def train_step(state: TrainState, batch_ids: jax.Array, data: MethodData):
        new_state = update(state, batch_ids, data)
        return new_state, eval_losses(new_state.trainable, data)

    return train_step
