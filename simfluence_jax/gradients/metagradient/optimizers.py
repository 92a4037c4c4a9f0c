"""The run's optimizer in a form whose derivative through the run is defined.

Any schedule and gradient clipping are differentiated as they are, and so are:

* SGD (with or without momentum or Nesterov);
* Adam/AdamW, except that Adam's ``sqrt(nu)`` has an infinite derivative where ``nu = 0`` (a
  parameter that has had only zero gradients, e.g. the embedding of an unused token), which
  gives ``0 * inf = NaN``; the replay therefore uses Adam with ``eps_root = 1e-30`` when the
  run had ``eps_root = 0``: in float32 ``nu + 1e-30 == nu`` for every ``nu > 1e-23``, and a
  parameter with ``nu = 0`` has a zero first moment and a zero update either way, so the run
  is unchanged (checked: ``w = 1`` reproduces the factory's losses);
* Adafactor, which scales by ``rsqrt(v)`` with ``v`` the mean of ``g^2 + eps``,
  ``eps = 1e-30``: where ``g = 0`` the derivative of ``rsqrt`` at ``1e-30`` is ``1e45``,
  beyond float32, and ``0 * inf = NaN``. A float32 replay therefore uses ``eps = 1e-22``
  (``ADAFACTOR_EPS_FLOAT32``; a float64 one keeps the run's ``eps``): in float32
  ``g^2 + 1e-22 == g^2`` for ``|g| > 4e-8``, so only coordinates with smaller gradients
  update differently, and ``w = 1`` reproduces the factory's losses to float32 rounding
  (measured in tests/test_metagradient.py). Its update clipping divides by the RMS of a
  whole parameter block, whose derivative is NaN when the block's update is exactly zero
  (LoRA's ``A`` factors have a zero gradient at step 1, while ``B = 0``); the replay builds
  Adafactor from the same optax parts as ``optax.adafactor`` with that RMS given a zero
  derivative on an all-zero block, the values unchanged.

Lion is refused (``ValueError``): its update is the sign of a momentum, whose derivative is
zero almost everywhere, so the metagradient would be exactly zero and meaningless.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import optax

from simfluence_jax.training.optim import SCHEDULE_KEYS, Optimizer, make_optimizer

#: ``eps_root`` given to Adam/AdamW for the replay when the run used 0 (module docstring).
ADAM_EPS_ROOT = 1e-30
#: Adafactor's ``eps`` (added to squared gradients) for a float32 replay (module docstring).
ADAFACTOR_EPS_FLOAT32 = 1e-22
#: Optimizers whose derivative is defined and informative.
DIFFERENTIABLE_OPTIMIZERS = ("sgd", "adam", "adamw", "adafactor")


def differentiable_optimizer(optimizer: Optimizer, *, dtype=None) -> Optimizer:
    """The run's optimizer in a form that can be differentiated in ``dtype`` (default
    float32; see the module docstring).

    Raises:
      ValueError: for Lion or another optimizer this module cannot differentiate.
    """
    config = dict(optimizer.config)
    name = config.pop("name", None)
    if name is None:
        raise ValueError(
            "the optimizer has no name in its config; build it with "
            "training.optim.make_optimizer so the metagradient knows what it differentiates"
        )
    if name == "lion":
        raise ValueError(
            "metagradients through Lion are not supported: its update is the sign of a "
            "momentum, whose derivative is zero almost everywhere"
        )
    if name not in DIFFERENTIABLE_OPTIMIZERS:
        raise ValueError(
            f"metagradients support the optimizers {', '.join(DIFFERENTIABLE_OPTIMIZERS)}; "
            f"got {name!r}"
        )
    if name in ("adam", "adamw") and not config.get("eps_root"):
        config["eps_root"] = ADAM_EPS_ROOT
        return make_optimizer(name, **config)
    if name == "adafactor":
        single = jnp.dtype(dtype or jnp.float32).itemsize <= 4
        if single and config.get("eps", 1e-30) < ADAFACTOR_EPS_FLOAT32:
            config["eps"] = ADAFACTOR_EPS_FLOAT32
        return _adafactor(optimizer, config)
    return optimizer


def _adafactor(optimizer: Optimizer, config: dict) -> Optimizer:
    """optax.adafactor with the settings of ``config``, built from the same optax parts,
    except that the update clipping takes the RMS of a block with a zero derivative where the
    block is all zeros (optax's ``sqrt(mean(u^2))`` gives NaN there: LoRA's ``A`` factors
    have an exactly zero gradient at step 1, while ``B = 0``). The values are unchanged."""
    defaults = {k: p.default for k, p in inspect.signature(optax.adafactor).parameters.items()}
    known = set(defaults) | {"learning_rate", "schedule", "grad_clip_norm", *SCHEDULE_KEYS}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"adafactor settings {unknown} are not optax.adafactor arguments")
    a = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    tx = [
        optax.scale_by_factored_rms(
            a["factored"], a["decay_rate"], a["decay_offset"], a["min_dim_size_to_factor"],
            a["eps"],
        )
    ]  # fmt: skip
    if a["clipping_threshold"] is not None:
        tx.append(_clip_by_block_rms(a["clipping_threshold"]))
    tx.append(optax.scale_by_learning_rate(optimizer.schedule, flip_sign=False))
    if a["multiply_by_parameter_scale"]:
        tx.append(optax.scale_by_param_block_rms())
    if a["momentum"] is not None:
        tx.append(optax.ema(a["momentum"], debias=False, accumulator_dtype=a["dtype_momentum"]))
    if a["weight_decay_rate"] is not None:
        tx.append(optax.add_decayed_weights(a["weight_decay_rate"], mask=a["weight_decay_mask"]))
    tx.append(optax.scale(-1))
    chain = optax.chain(*tx)
    if config.get("grad_clip_norm") is not None:
        chain = optax.chain(optax.clip_by_global_norm(config["grad_clip_norm"]), chain)
    return Optimizer(tx=chain, schedule=optimizer.schedule, config=optimizer.config)


def _clip_by_block_rms(threshold) -> optax.GradientTransformation:
    """optax.clip_by_block_rms with a zero (not NaN) derivative of the RMS of a zero block."""

    def clip(u):
        ms = jnp.mean(jnp.square(u))
        rms = jnp.where(ms > 0, jnp.sqrt(jnp.where(ms > 0, ms, 1.0)), 0.0)
        return u / jnp.maximum(1.0, rms / threshold)

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
