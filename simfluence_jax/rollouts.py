"""Simulating curricula: the one scan rollout, its closed form, and the checked user entry.

``rollout`` is the pure, jit-safe core: for every test example (``vmap``) and every
curriculum (``vmap``) it scans the simulator's step over the steps, starting from the
observed L_0 and feeding back its own predictions (docs/design.md, "Rollout"):

    (state_t, L^_t) = step(p, state_{t-1}, c_t, t, s_t, L^_{t-1})

An all-padding step is no update (state and loss carry over), so curricula of different
lengths stack by padding them with ``-1`` steps. ``s_t = eta_t / eta_ref`` comes from the
learning rates of the simulated curricula for ``lr_scaled`` simulators and is 1 otherwise.

``closed_form_final`` computes the last step of an affine simulator without feeding the loss
back,

    L^_T = (prod_t alpha_t) L_0 + sum_t (prod_{s>t} alpha_s) beta_t,

and must agree with the scan. ``simulate`` wraps ``rollout`` with the checks a user wants:
ids in range, finite L_0 and learning rates, a warning for ids the simulator never saw, and
a warning for diverging trajectories.
"""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.sharding import map_over_test
from simfluence_jax.simulators.base import AffineSimulator, Simulator, batch_mask
from simfluence_jax.solvers.common import map_chunks

#: |L^| above this many times the largest |L_0| (or non-finite) counts as diverged.
DIVERGENCE_FACTOR = 1e3

#: Trajectory bytes one rollout chunk (test examples x curricula) aims for; the scan's
#: per-step arrays and the stacked trajectories scale with it, not with M x C.
ROLLOUT_CHUNK_BYTES = 256 * 1024**2


class UnseenExampleWarning(UserWarning):
    """A curriculum uses training ids the simulator has no fitted parameters for."""


class DivergenceWarning(UserWarning):
    """A simulated trajectory blew up (compounding alpha > 1)."""


def _skeleton(sim: Simulator) -> Simulator:
    """The simulator with its arrays removed: hashable, usable as a static jit argument.

    A simulator's ``step`` reads arrays only through ``p`` (its ``per_test()`` slice) and
    otherwise only its static fields, so the skeleton carries the whole rule.
    """
    return jax.tree_util.tree_map(lambda _: None, sim)


def _rollout_one(sim: Simulator, p, ids, w, s, L0) -> jax.Array:
    """One test example along one weighted curriculum.

    Args:
      sim: the simulator's skeleton (its rule; ``p`` carries the parameters).
      p: one test example's parameters.
      ids: ``int32[T, K]`` training ids of every step (padding clipped to 0).
      w: ``float32[T, K]`` their weights (0 = padding; an all-zero step is no update, unless
        the simulator's ``steps_when_empty``).
      s: ``float32[T]`` learning-rate scales.
      L0: scalar starting loss.

    Returns:
      ``float32[T+1]``: L_0 followed by the simulated L^_1..L^_T.
    """
    T = ids.shape[0]
    L0 = jnp.asarray(L0, jnp.float32)

    def step(carry, xs):
        state, L = carry
        ids_t, w_t, t, s_t = xs
        new_state, L_new = sim.step(p, state, ids_t, w_t, t, s_t, L)
        empty = jnp.all(w_t == 0) & (not sim.steps_when_empty)
        # The state keeps its initial dtypes (float64 parameters must not change the carry).
        state = jax.tree_util.tree_map(
            lambda old, new: jnp.where(empty, old, new).astype(old.dtype), state, new_state
        )
        keep = partial(jnp.where, empty)
        L_new = keep(L, L_new).astype(L.dtype)
        return (state, L_new), L_new

    xs = (ids, w, jnp.arange(1, T + 1), s)
    _, Ls = jax.lax.scan(step, (sim.init_state(p, L0), L0), xs)
    return jnp.concatenate([L0[None], Ls])


def rollout_chunks(M: int, C: int, T: int, budget: int | None = None) -> tuple[int, int]:
    """``(test examples, curricula)`` rolled out at once: about ``budget`` (default
    ``ROLLOUT_CHUNK_BYTES``) of trajectories, curricula first."""
    budget = ROLLOUT_CHUNK_BYTES if budget is None else budget
    per = 4 * 4 * (T + 1)  # a trajectory, its scan stack, the transposes
    chunk_c = int(max(1, min(C, budget // per)))
    chunk_m = int(max(1, min(M, budget // (per * chunk_c))))
    return chunk_m, chunk_c


@partial(jax.jit, static_argnums=(0, 1, 2))
def _rollout_core(skeleton, treedef, chunks, ids, w, s, *per_test):
    """``per_test = (*param_leaves, L0 [M, C])`` -> ``float32[M, C, T+1]``, ``chunks =
    (test examples, curricula)`` at a time."""
    chunk_m, chunk_c = chunks
    over_curricula = jax.vmap(partial(_rollout_one, skeleton), in_axes=(None, 0, 0, 0, 0))

    def one_test(*args):  # one test example: (*leaves, L0 [C]) -> [C, T+1]
        *leaves, L0 = args
        p = jax.tree_util.tree_unflatten(treedef, leaves)
        return map_chunks(partial(over_curricula, p), (ids, w, s, L0), chunk_c)

    return map_chunks(jax.vmap(one_test), per_test, chunk_m)


def _lead_and_L0(sim: Simulator, lead, L0) -> jax.Array:
    M = sim.num_test
    L0 = jnp.asarray(L0, jnp.float32)
    if L0.shape[-1:] != (M,):
        raise ValueError(
            f"L0 must end in the simulator's M = {M} test examples, got shape {L0.shape}"
        )
    C = int(np.prod(lead)) if lead else 1
    return jnp.broadcast_to(L0, lead + (M,)).reshape(C, M)


def lr_scales(sim: Simulator, learning_rates, lead: tuple, num_steps: int) -> jax.Array:
    """``float32[C, T]`` learning-rate scales ``s_t`` of ``C = prod(lead)`` curricula.

    ``learning_rates`` (``[..., T]``, broadcast against the curricula' leading axes) are
    divided by the simulator's ``lr_reference``; simulators that ignore the schedule get
    ones whatever is passed.
    """
    C = int(np.prod(lead)) if lead else 1
    ref = sim.lr_reference
    if ref is None:
        return jnp.ones((C, num_steps), jnp.float32)
    if learning_rates is None:
        raise ValueError(
            f"{sim.name} follows the learning-rate schedule (lr_scaled): pass the "
            "learning_rates of the simulated curricula ([..., T], e.g. runs.learning_rates)"
        )
    lr = jnp.asarray(learning_rates, jnp.float32)
    if lr.shape[-1:] != (num_steps,):
        raise ValueError(
            f"learning_rates must end in the curricula's T = {num_steps} steps, got shape "
            f"{lr.shape}"
        )
    try:
        lr = jnp.broadcast_to(lr, lead + (num_steps,))
    except ValueError:
        raise ValueError(
            f"learning_rates of shape {lr.shape} do not match curricula with leading axes {lead}"
        ) from None
    return lr.reshape(C, num_steps) / ref


def rollout_weighted(sim: Simulator, ids, w, L0, s, *, mesh=None, chunks=None) -> jax.Array:
    """The rollout of weighted curricula; pure, jit-safe and differentiable in ``w``.

    Args:
      sim: any simulator.
      ids: ``int32[C, T, K]`` ids (non-negative); ``w: float32[C, T, K]`` their weights;
        a soft curriculum over the whole pool is ``ids = arange(N)``, ``w`` = soft counts.
      L0: ``float32[C, M]``; ``s: float32[C, T]`` learning-rate scales.
      mesh: optional ``sharding.test_mesh()``.
      chunks: ``(test examples, curricula)`` rolled out at once (per device with a mesh);
        default ``rollout_chunks``.

    Returns:
      ``float32[C, T+1, M]``.
    """
    leaves, treedef = jax.tree_util.tree_flatten(sim.per_test())
    C, T = ids.shape[0], ids.shape[1]
    if chunks is None:
        chunks = rollout_chunks(sim.num_test, C, T)
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != 2 or min(chunks) < 1:
        raise ValueError(f"chunks must be two positive counts (tests, curricula), got {chunks}")
    core = partial(_rollout_core, _skeleton(sim), treedef, chunks, ids, w, s)
    out = map_over_test(core, (*leaves, jnp.asarray(L0).T), mesh=mesh)  # [M, C, T+1]
    return jnp.moveaxis(out, 0, -1)


def rollout(
    sim: Simulator, batches, L0, *, learning_rates=None, mesh=None, chunks=None
) -> jax.Array:
    """Simulated trajectories; pure and jit-safe.

    Args:
      sim: any simulator.
      batches: ``int32[..., T, B]`` one or more curricula (``-1`` = padding; an all-padding
        step is no update).
      L0: ``float32[..., M]`` (or ``[M]``, broadcast) observed starting losses.
      learning_rates: ``float32[..., T]`` (or ``[T]``) the schedule of the curricula; needed
        by ``lr_scaled`` simulators, ignored by the others.
      mesh: optional ``sharding.test_mesh()``: test examples are split over its devices.
      chunks: ``(test examples, curricula)`` simulated at once (``rollout_weighted``).

    Returns:
      ``float32[..., T+1, M]`` with L_0 as row 0.
    """
    batches = jnp.asarray(batches)
    if batches.ndim < 2:
        raise ValueError(f"batches must have shape [..., T, B], got shape {batches.shape}")
    lead, (T, B) = batches.shape[:-2], batches.shape[-2:]
    flat = batches.reshape((-1, T, B)).astype(jnp.int32)
    ids, w = batch_mask(flat)
    s = lr_scales(sim, learning_rates, lead, T)
    out = rollout_weighted(sim, ids, w, _lead_and_L0(sim, lead, L0), s, mesh=mesh, chunks=chunks)
    return out.reshape(lead + (T + 1, sim.num_test))


def affine_coefficients(sim: Simulator, batches, *, learning_rates=None):
    """``(alpha, beta)``, each ``float32[..., T, M]``, of an affine simulator along curricula
    ``int32[..., T, B]`` (an all-padding step gets ``(1, 0)``)."""
    if not isinstance(sim, AffineSimulator):
        raise ValueError(
            f"{type(sim).__name__} is not affine in the previous loss, so it has no closed "
            "form; use rollout"
        )
    batches = jnp.asarray(batches)
    lead, (T, B) = batches.shape[:-2], batches.shape[-2:]
    ids, w = batch_mask(batches.reshape((-1, T, B)).astype(jnp.int32))
    s = lr_scales(sim, learning_rates, lead, T)
    skeleton = _skeleton(sim)

    def one(p, ids_c, w_c, s_c):
        def step(state, xs):
            ids_t, w_t, t, s_t = xs
            new, alpha, beta = skeleton.affine_step(p, state, ids_t, w_t, t, s_t)
            empty = jnp.all(w_t == 0) & (not sim.steps_when_empty)
            state = jax.tree_util.tree_map(partial(jnp.where, empty), state, new)
            return state, (jnp.where(empty, 1.0, alpha), jnp.where(empty, 0.0, beta))

        xs = (ids_c, w_c, jnp.arange(1, T + 1), s_c)
        return jax.lax.scan(step, skeleton.init_state(p, jnp.float32(0)), xs)[1]

    f = jax.vmap(jax.vmap(one, in_axes=(None, 0, 0, 0)), in_axes=(0, None, None, None))
    alpha, beta = f(sim.per_test(), ids, w, s)  # [M, C, T]
    shape = lead + (T, sim.num_test)
    return (jnp.moveaxis(alpha, 0, -1).reshape(shape), jnp.moveaxis(beta, 0, -1).reshape(shape))


def closed_form_final(sim: Simulator, batches, L0, *, learning_rates=None) -> jax.Array:
    """``float32[..., M]``: L^_T of an affine simulator from the product formula."""
    alpha, beta = affine_coefficients(sim, batches, learning_rates=learning_rates)
    rev = jnp.cumprod(alpha[..., ::-1, :], axis=-2)[..., ::-1, :]  # prod_{s>=t} alpha_s
    after = jnp.concatenate([rev[..., 1:, :], jnp.ones_like(rev[..., :1, :])], axis=-2)
    return rev[..., 0, :] * jnp.asarray(L0, jnp.float32) + jnp.sum(after * beta, axis=-2)


def teacher_forced(sim: Simulator, runs) -> np.ndarray:
    """``float32[R, T, M]``: an affine simulator's one-step predictions of L_1..L_T of logged
    ``runs``, each from the observed loss before the step (the quantity the fit regresses)."""
    alpha, beta = affine_coefficients(sim, runs.batches, learning_rates=runs.learning_rates)
    return np.asarray(alpha * runs.losses[:, :-1] + beta)


def check_ids(sim: Simulator, batches) -> None:
    """Raises for ids out of range and curricula outside the simulator's domain
    (``Simulator.check_curricula``); warns for ids the simulator never saw in its fit."""
    b = np.asarray(batches)
    if b.size == 0:
        raise ValueError("the curriculum is empty")
    if b.dtype.kind not in "iu":
        raise ValueError(f"batches must hold integer ids, got dtype {b.dtype}")
    if b.min() < -1:
        raise ValueError(f"batches contain id {b.min()}; only -1 may pad")
    sim.check_curricula(b)
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


def check_finite(name: str, x) -> np.ndarray:
    """``x`` as a NumPy array; a ``ValueError`` naming ``name`` if it is not finite."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numbers, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))
        where = f" (first at index {tuple(int(i) for i in bad[0])})" if arr.ndim else ""
        raise ValueError(f"{name} contains NaN or infinite values{where}")
    return arr


def simulate(sim: Simulator, batches, L0, *, learning_rates=None, mesh=None) -> np.ndarray:
    """Simulates curricula with input checks; returns ``float32[..., T+1, M]`` on the host.

    ``learning_rates`` (``[..., T]``) is the schedule of the simulated curricula, needed by
    ``lr_scaled`` simulators (counterfactual edits keep the logged schedule).

    Unlike ``rollout`` this checks that L_0 and the learning rates are finite (and the rates
    >= 0), validates ids, warns (``UnseenExampleWarning``) when a curriculum
    uses training ids the simulator never saw, and warns (``DivergenceWarning``) naming how
    many trajectories diverged instead of silently returning overflowing values; use
    ``diverged`` to get the mask.
    """
    check_ids(sim, batches)
    check_finite("L0", L0)
    if learning_rates is not None:
        lr = check_finite("learning_rates", learning_rates)
        if np.any(lr < 0):
            raise ValueError(f"learning_rates must be >= 0, got min {lr.min()}")
    out = np.asarray(rollout(sim, batches, L0, learning_rates=learning_rates, mesh=mesh))
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
