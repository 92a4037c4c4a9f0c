"""Readouts of a run's trajectory and the rematerialised scan that replays it.

A readout matrix ``R float[K, T]`` turns the test losses after each step into ``K`` numbers
per test example, ``y_k[j] = sum_t R[k, t-1] L_t[j]``: the mean of the last ``horizon``
steps (``horizon_readout``) or single steps (``steps_readout``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def horizon_readout(num_steps: int, horizon: int = 1) -> np.ndarray:
    """``float32[1, T]``: the mean of the losses after the last ``horizon`` steps."""
    check_int("horizon", horizon, 1, num_steps)
    r = np.zeros((1, num_steps), np.float32)
    r[0, num_steps - horizon :] = 1.0 / horizon
    return r


def steps_readout(num_steps: int, steps) -> np.ndarray:
    """``float32[K, T]``: one readout per step of ``steps`` (1-based), its loss alone."""
    steps = np.asarray(steps).reshape(-1)
    if steps.size == 0 or steps.dtype.kind not in "iu":
        raise ValueError(f"steps must be a non-empty list of integers, got {steps!r}")
    if steps.min() < 1 or steps.max() > num_steps:
        raise ValueError(f"steps must lie in 1..T = 1..{num_steps}, got {steps.tolist()}")
    r = np.zeros((len(steps), num_steps), np.float32)
    r[np.arange(len(steps)), steps - 1] = 1.0
    return r


def check_int(name, value, low, high=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def remat_scan(step, carry, xs, *, chunk: int | None):
    """``lax.scan(step, carry, xs)[0]`` for ``step(carry, x) -> carry``, with ``chunk``:
    a scan over ``ceil(T / chunk)`` chunks, each a ``jax.checkpoint``-ed scan of ``chunk``
    steps (steps past ``T`` are inactive), so reverse mode stores one carry per chunk and
    recomputes the steps of one chunk at a time."""

    def plain(c, x):
        return step(c, x), None

    if chunk is None:
        return jax.lax.scan(plain, carry, xs)[0]
    T = jax.tree_util.tree_leaves(xs)[0].shape[0]
    n = -(-T // chunk)
    pad = n * chunk - T

    def split(x):
        x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
        return x.reshape((n, chunk) + x.shape[1:])

    active = split(jnp.ones((T,), bool))

    def guarded(c, xa):
        x, a = xa
        return jax.lax.cond(a, step, lambda c, _: c, c, x), None

    @jax.checkpoint
    def run_chunk(c, chunk_xs):
        return jax.lax.scan(guarded, c, chunk_xs)[0]

    def outer(c, chunk_xs):
        return run_chunk(c, chunk_xs), None

    return jax.lax.scan(outer, carry, (jax.tree_util.tree_map(split, xs), active))[0]
