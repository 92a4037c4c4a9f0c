"""Simulating curricula: the scan rollout, its closed form, and the checked user entry.

``rollout`` is the pure, jit-safe core: for every test example (``vmap``) and every
curriculum (``vmap``) it scans the simulator's update over the steps, starting from the
observed L_0 and feeding back its own predictions (DESIGN.md section 5):

    L^_t = alpha(c_t) L^_{t-1} + beta(c_t)

``closed_form_final`` computes the last step without the scan,

    L^_T = (prod_t alpha_t) L_0 + sum_t (prod_{s>t} alpha_s) beta_t,

and must agree with it. ``simulate`` wraps ``rollout`` with the checks a user wants: ids in
range, a warning for ids the simulator never saw, and a warning for diverging trajectories.
"""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.sharding import map_over_test
from simfluence_jax.simulators.base import Simulator, coefficient_sequence, rollout_one

#: |L^| above this many times the largest |L_0| (or non-finite) counts as diverged.
DIVERGENCE_FACTOR = 1e3


class UnseenExampleWarning(UserWarning):
    """A curriculum uses training ids the simulator has no fitted parameters for."""


class DivergenceWarning(UserWarning):
    """A simulated trajectory blew up (compounding alpha > 1)."""


def _skeleton(sim: Simulator) -> Simulator:
    """The simulator with its arrays removed: hashable, usable as a static jit argument."""
    return jax.tree_util.tree_map(lambda _: None, sim)


@partial(jax.jit, static_argnums=(0, 1))
def _rollout_core(skeleton, treedef, batches, *per_test):
    """``per_test = (*param_leaves, L0 [M, C])`` -> ``float32[M, C, T+1]``."""
    *leaves, L0 = per_test
    p = jax.tree_util.tree_unflatten(treedef, leaves)
    over_curricula = jax.vmap(partial(rollout_one, skeleton), in_axes=(None, 0, 0))
    over_tests = jax.vmap(over_curricula, in_axes=(0, None, 0))
    return over_tests(p, batches, L0)


def _normalise(sim: Simulator, batches, L0):
    batches = jnp.asarray(batches)
    if batches.ndim < 2:
        raise ValueError(f"batches must have shape [..., T, B], got shape {batches.shape}")
    lead = batches.shape[:-2]
    M = sim.num_test
    L0 = jnp.asarray(L0, jnp.float32)
    if L0.shape[-1:] != (M,):
        raise ValueError(
            f"L0 must end in the simulator's M = {M} test examples, got shape {L0.shape}"
        )
    L0 = jnp.broadcast_to(L0, lead + (M,))
    C = int(np.prod(lead)) if lead else 1
    flat_b = batches.reshape((C,) + batches.shape[-2:]).astype(jnp.int32)
    flat_L0 = L0.reshape(C, M)
    return lead, flat_b, flat_L0


def rollout(sim: Simulator, batches, L0, *, mesh=None) -> jax.Array:
    """Simulated trajectories; pure and jit-safe.

    Args:
      sim: any simulator.
      batches: ``int32[..., T, B]`` one or more curricula (``-1`` = padding; an all-padding
        step is no update).
      L0: ``float32[..., M]`` (or ``[M]``, broadcast) observed starting losses.
      mesh: optional ``sharding.test_mesh()``: test examples are split over its devices.

    Returns:
      ``float32[..., T+1, M]`` with L_0 as row 0.
    """
    lead, flat_b, flat_L0 = _normalise(sim, batches, L0)
    leaves, treedef = jax.tree_util.tree_flatten(sim.per_test())
    core = partial(_rollout_core, _skeleton(sim), treedef, flat_b)
    out = map_over_test(core, (*leaves, flat_L0.T), mesh=mesh)  # [M, C, T+1]
    T1 = flat_b.shape[1] + 1
    return jnp.moveaxis(out, 0, -1).reshape(lead + (T1, sim.num_test))


def closed_form_final(sim: Simulator, batches, L0) -> jax.Array:
    """``float32[..., M]``: L^_T from the product formula, without the scan."""
    lead, flat_b, flat_L0 = _normalise(sim, batches, L0)
    skeleton = _skeleton(sim)

    def one(p, b, l0):
        alpha, beta = coefficient_sequence(skeleton, p, b)
        rev = jnp.cumprod(alpha[::-1])[::-1]  # prod_{s>=t} alpha_s
        after = jnp.concatenate([rev[1:], jnp.ones((1,), rev.dtype)])  # prod_{s>t}
        return rev[0] * l0 + jnp.sum(after * beta)

    f = jax.vmap(jax.vmap(one, in_axes=(None, 0, 0)), in_axes=(0, None, 0))
    out = f(sim.per_test(), flat_b, flat_L0.T)  # [M, C]
    return out.T.reshape(lead + (sim.num_test,))


def check_ids(sim: Simulator, batches) -> None:
    """Raises for ids out of range; warns for ids the simulator never saw in its fit."""
    b = np.asarray(batches)
    if b.size == 0:
        raise ValueError("the curriculum is empty")
    if b.dtype.kind not in "iu":
        raise ValueError(f"batches must hold integer ids, got dtype {b.dtype}")
    if b.min() < -1:
        raise ValueError(f"batches contain id {b.min()}; only -1 may pad")
    seen = sim.seen_ids()
    if seen is None:
        return
    seen = np.asarray(seen)
    if b.max() >= len(seen):
        raise ValueError(
            f"batches contain id {b.max()}, out of range for the simulator's pool of "
            f"{len(seen)} training examples (ids 0..{len(seen) - 1})"
        )
    used = np.unique(b[b >= 0])
    unseen = used[~seen[used]]
    if len(unseen):
        shown = ", ".join(map(str, unseen[:10])) + (" ..." if len(unseen) > 10 else "")
        warnings.warn(
            f"{len(unseen)} training ids in the curriculum never occurred in the fitting runs "
            f"(ids {shown}); {sim.name} has zero parameters for them, so it simulates them as "
            "having no effect",
            UnseenExampleWarning,
            stacklevel=3,
        )


def diverged(trajectories, L0=None) -> np.ndarray:
    """``bool[..., M]``: trajectories that are non-finite or exceed the divergence bound."""
    traj = np.asarray(trajectories)
    ref = np.abs(traj[..., 0, :]) if L0 is None else np.abs(np.asarray(L0))
    bound = DIVERGENCE_FACTOR * max(float(np.max(ref)), 1.0)
    bad = ~np.isfinite(traj) | (np.abs(traj) > bound)
    return bad.any(axis=-2)


def simulate(sim: Simulator, batches, L0, *, mesh=None) -> np.ndarray:
    """Simulates curricula with input checks; returns ``float32[..., T+1, M]`` on the host.

    Unlike ``rollout`` this validates ids, warns (``UnseenExampleWarning``) when a curriculum
    uses training ids the simulator never saw, and warns (``DivergenceWarning``) naming how
    many trajectories diverged instead of silently returning overflowing values; use
    ``diverged`` to get the mask.
    """
    check_ids(sim, batches)
    out = np.asarray(rollout(sim, batches, L0, mesh=mesh))
    bad = diverged(out)
    if bad.any():
        warnings.warn(
            f"{int(bad.sum())} of {bad.size} simulated trajectories diverged (non-finite or "
            f"above {DIVERGENCE_FACTOR:g} x max |L_0|): the simulator's alpha compounds above 1 "
            "along these curricula; a larger l2 or the one_plus_sum form usually helps",
            DivergenceWarning,
            stacklevel=2,
        )
    return out
