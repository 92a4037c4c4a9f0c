"""Optimizers and learning-rate schedules chosen by name.

``make_optimizer("adam", learning_rate=1e-3, schedule="linear", warmup_steps=4,
total_steps=96)`` returns an :class:`Optimizer`: the optax transformation and the schedule
``eta(k)``, the learning rate of the ``k``-th update (``k = 0`` for step 1). The schedule is
kept next to the transformation so the run factory can write ``eta_1 .. eta_T`` into every
run's metadata: TracIn-CP weighs each checkpoint's gradient dot product by its learning rate
(Pruthi et al., 2020, "Estimating Training Data Influence by Tracing Gradient Descent").

Schedules (``k`` is the 0-based update count, ``eta`` the peak rate):

* ``constant``: ``eta``;
* ``linear``: linear warm-up from 0 over ``warmup_steps``, then linear decay to
  ``end_value`` at ``total_steps``;
* ``cosine``: linear warm-up, then ``end_value + (eta - end_value) (1 + cos(pi s)) / 2``
  with ``s`` the fraction of the decay phase done;
* ``rsqrt``: ``eta * min(1, sqrt(warmup_steps / (k + 1)))``, the inverse square root decay
  used to pretrain T5 (Raffel et al., 2020).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import optax

from simfluence_jax.registry import Registry

Schedule = Callable[[int], float]

#: Schedule factories (keyword arguments ``learning_rate`` and the ``SCHEDULE_KEYS``) and
#: optax constructors by name: ``EXTENSIONS["learning-rate schedule"]`` and
#: ``EXTENSIONS["optimizer"]`` of the modules of ``simfluence_jax.training``.
SCHEDULES: Registry = Registry("learning-rate schedule", packages=("simfluence_jax.training",))
OPTIMIZERS: Registry = Registry("optimizer", packages=("simfluence_jax.training",))


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optax transformation with its learning-rate schedule and the settings that made it.

    Attributes:
      tx: the ``optax.GradientTransformation``.
      schedule: ``k -> eta_k``, jit-safe, the rate of the ``k``-th update (0-based).
      config: the name and keyword arguments, written into run metadata.
    """

    tx: optax.GradientTransformation
    schedule: Schedule
    config: dict

    def learning_rates(self, num_steps: int) -> np.ndarray:
        """``float32[T]``: the rate used at steps ``1..T`` (entry ``t-1`` is step ``t``)."""
        steps = jnp.arange(num_steps)
        rates = jnp.asarray(self.schedule(steps), jnp.float32)
        # A constant schedule returns a scalar whatever the input shape.
        return np.asarray(jnp.broadcast_to(rates, steps.shape))


def constant_schedule(*, learning_rate: float, **_) -> Schedule:
    return optax.constant_schedule(learning_rate)


def linear_schedule(
    *, learning_rate: float, total_steps: int, warmup_steps: int = 0, end_value: float = 0.0
) -> Schedule:
    _check_steps(total_steps, warmup_steps)
    warm = optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
    decay = optax.linear_schedule(learning_rate, end_value, max(total_steps - warmup_steps, 1))
    if warmup_steps == 0:
        return decay
    return optax.join_schedules([warm, decay], [warmup_steps])


def cosine_schedule(
    *, learning_rate: float, total_steps: int, warmup_steps: int = 0, end_value: float = 0.0
) -> Schedule:
    _check_steps(total_steps, warmup_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else learning_rate,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=end_value,
    )


def rsqrt_schedule(*, learning_rate: float, warmup_steps: int = 1, **_) -> Schedule:
    if warmup_steps < 1:
        raise ValueError(f"rsqrt schedule needs warmup_steps >= 1, got {warmup_steps}")

    def schedule(k):
        return learning_rate * jnp.minimum(1.0, jnp.sqrt(warmup_steps / (k + 1.0)))

    return schedule


def _check_steps(total_steps: int, warmup_steps: int) -> None:
    if total_steps < 1 or warmup_steps < 0 or warmup_steps > total_steps:
        raise ValueError(
            f"schedule needs 0 <= warmup_steps <= total_steps and total_steps >= 1, got "
            f"warmup_steps={warmup_steps}, total_steps={total_steps}"
        )


EXTENSIONS = {
    "learning-rate schedule": {
        "constant": constant_schedule,
        "linear": linear_schedule,
        "cosine": cosine_schedule,
        "rsqrt": rsqrt_schedule,
    },
    "optimizer": {
        "sgd": optax.sgd,
        "adam": optax.adam,
        "adamw": optax.adamw,
        "adafactor": optax.adafactor,
        "lion": optax.lion,
    },
}

#: The ``make_optimizer`` keyword arguments that go to the schedule, not the optax constructor.
SCHEDULE_KEYS = ("total_steps", "warmup_steps", "end_value")


def make_optimizer(
    name: str = "adam",
    *,
    learning_rate: float = 1e-3,
    schedule: str = "constant",
    grad_clip_norm: float | None = None,
    **kwargs,
) -> Optimizer:
    """Builds an optimizer by name.

    Args:
      name: one of ``OPTIMIZERS`` (sgd, adam, adamw, adafactor, lion).
      learning_rate: the peak rate ``eta``.
      schedule: one of ``SCHEDULES``; its own settings (``total_steps``, ``warmup_steps``,
        ``end_value``) are taken from ``kwargs``.
      grad_clip_norm: if set, clip the global gradient norm to this value first.
      **kwargs: the remaining keyword arguments go to the optax constructor
        (e.g. ``b1``, ``weight_decay``, ``momentum``).
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    sched_kwargs = {k: kwargs.pop(k) for k in SCHEDULE_KEYS if k in kwargs}
    sched = SCHEDULES.get(schedule)(learning_rate=learning_rate, **sched_kwargs)
    tx = OPTIMIZERS.get(name)(learning_rate=sched, **kwargs)
    if grad_clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
    config = {
        "name": name,
        "learning_rate": learning_rate,
        "schedule": schedule,
        "grad_clip_norm": grad_clip_norm,
        **sched_kwargs,
        **kwargs,
    }
    return Optimizer(tx=tx, schedule=sched, config=config)
