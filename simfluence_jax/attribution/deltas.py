"""Simulated removal deltas: every edit of a curriculum is a weighted curriculum of one
vmapped rollout (``rollout.rollout_weighted``), chunked over the edits to bound memory; the
one jitted function every attribution goes through."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.rollouts import (
    lr_scales,
    rollout_weighted,
)
from simfluence_jax.simulators.base import Simulator

#: How a batch loss with padding is normalised (see the module docstring).
BATCH_LOSSES = ("mean", "sum")
#: Bytes of simulated trajectories one chunk of edited curricula may hold.
CHUNK_BYTES = 128 * 1024**2
#: Chunks smaller than the budget are rounded up to a multiple of this many curricula, so
#: curricula of one shape with slightly different numbers of distinct ids compile once.
CHUNK_MULTIPLE = 32
#: Fill of an unused slot of a removal set: matches no id (padding is -1).
NO_ID = -2


def _edit(b, remove, *, repack: bool, batch_loss: str):
    """One edited curriculum as a weighted one.

    Args:
      b: ``int32[T, B]`` the curriculum (-1 padding).
      remove: ``int32[G]`` ids to remove (``NO_ID`` fills unused entries).

    Returns:
      ``(ids int32[T, B], w float32[T, B], end)``: non-negative ids, their weights (see the
      module docstring) and the number of steps of the edited run.
    """
    T, B = b.shape
    real = b >= 0
    keep = real & ~jnp.any(b[..., None] == remove, axis=-1)
    if repack:
        flat, k = b.reshape(-1), keep.reshape(-1)
        slot = jnp.where(k, jnp.cumsum(k) - 1, T * B)  # removed examples go nowhere
        b = jnp.full(T * B, -1, b.dtype).at[slot].set(flat, mode="drop").reshape(T, B)
        keep = b >= 0
        count = jnp.sum(k)
        end = (count + B - 1) // B
        before = jnp.full((T,), B, jnp.float32)
    else:
        end = jnp.asarray(T)
        before = jnp.sum(real, axis=1).astype(jnp.float32)
    after = jnp.sum(keep, axis=1).astype(jnp.float32)
    scale = before / jnp.maximum(after, 1.0) if batch_loss == "mean" else jnp.ones_like(after)
    w = keep * scale[:, None]
    return jnp.where(keep, b, 0), w.astype(jnp.float32), end


def _window(traj, end, horizon: int):
    """``float32[M]``: the mean of rows ``end - horizon + 1 .. end`` of ``traj [T+1, M]``
    (rows before 0 clip to row 0, L_0)."""
    rows = jnp.clip(end - horizon + 1 + jnp.arange(horizon), 0, traj.shape[0] - 1)
    return jnp.mean(traj[rows], axis=0)


def _edited_windows(sim, curricula, L0, s, which, remove, *, horizon, repack, batch_loss):
    """``float32[P, M]``: the window mean of P edits, edit p removing ``remove[p]`` from
    curriculum ``which[p]`` of ``curricula [C, T, B]`` (``L0 [C, M]``, ``s [C, T]``)."""
    edit = partial(_edit, repack=repack, batch_loss=batch_loss)
    ids, w, end = jax.vmap(edit)(curricula[which], remove)
    traj = rollout_weighted(sim, ids, w, L0[which], s[which])  # [P, T+1, M]
    return jax.vmap(partial(_window, horizon=horizon))(traj, end)


_edited_windows_jit = jax.jit(_edited_windows, static_argnames=("horizon", "repack", "batch_loss"))


def removal_deltas(
    sim: Simulator,
    curriculum,
    L0,
    remove,
    *,
    learning_rates=None,
    horizon: int = 1,
    repack: bool = False,
    batch_loss: str = "mean",
) -> jax.Array:
    """The pure, jit-safe core of ``removal_effects``: ``float32[K, M]`` deltas of K removals.

    Args:
      sim: any simulator.
      curriculum: ``int32[T, B]`` (-1 padding).
      L0: ``float32[M]`` starting losses.
      remove: ``int32[K, G]`` the ids of each removal (``NO_ID = -2`` fills unused entries;
        ``[K, 1]`` for single ids).
      learning_rates: ``float32[T]`` for ``lr_scaled`` simulators.
      horizon, repack, batch_loss: static; see ``removal_effects``.

    No input checks and no chunking: ``removal_effects`` is the checked entry.
    """
    b = jnp.asarray(curriculum, jnp.int32)[None]
    L0 = jnp.asarray(L0, jnp.float32)[None]
    s = lr_scales(sim, learning_rates, (), b.shape[1])
    remove = jnp.asarray(remove, jnp.int32)
    opts = dict(horizon=horizon, repack=repack, batch_loss=batch_loss)
    zero = jnp.zeros((1,), jnp.int32)
    base = _edited_windows(
        sim, b, L0, s, zero, jnp.full((1, 1), NO_ID), **{**opts, "repack": False}
    )
    which = jnp.zeros((remove.shape[0],), jnp.int32)
    return _edited_windows(sim, b, L0, s, which, remove, **opts) - base


def _chunk_size(chunk: int | None, P: int, T: int, M: int, multiple: int) -> int:
    """Edits per rollout call: ``chunk`` (default: ``CHUNK_BYTES`` of trajectories), or, for
    fewer edits, ``P`` rounded up to a multiple of ``multiple``."""
    if chunk is None:
        chunk = max(1, CHUNK_BYTES // ((T + 1) * M * 4))
    elif isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    if P >= chunk:
        return int(chunk)
    return int(min(chunk, -(-P // multiple) * multiple))


def edit_chunks(sim, curricula, L0, s, which, remove, *, chunk, multiple=CHUNK_MULTIPLE, **opts):
    """Yields ``(start, stop, float32[stop - start, M])``: ``_edited_windows`` of the edits
    ``start:stop``, in chunks of one shape (the last padded by repeating its first edit), so
    every chunk reuses one compilation."""
    P = len(which)
    size = _chunk_size(chunk, P, curricula.shape[1], L0.shape[1], multiple)
    which = np.asarray(which, np.int32)
    remove = np.asarray(remove, np.int32)
    for start in range(0, P, size):
        stop = min(start + size, P)
        idx = np.arange(start, start + size)
        idx[stop - start :] = start
        got = _edited_windows_jit(sim, curricula, L0, s, which[idx], remove[idx], **opts)
        yield start, stop, np.asarray(got)[: stop - start]


def edit_deltas(sim, b, L0, s, which, remove, *, chunk, **opts):
    """``(base float32[C, M], delta float32[P, M])`` of the P edits ``(which, remove)`` of
    curricula ``b [C, T, B]``, collected in memory."""
    curricula, L0 = jnp.asarray(b), jnp.asarray(L0)
    base = baselines(sim, curricula, L0, s, chunk=chunk, **opts)
    delta = np.empty((len(which), L0.shape[1]), np.float32)
    for start, stop, got in edit_chunks(sim, curricula, L0, s, which, remove, chunk=chunk, **opts):
        delta[start:stop] = got - base[which[start:stop]]
    return base, delta


def baselines(sim, curricula, L0, s, *, chunk, **opts) -> np.ndarray:
    """``float32[C, M]``: the window mean of every unedited curriculum."""
    C = curricula.shape[0]
    none = np.full((C, 1), NO_ID, np.int32)
    opts = {**opts, "repack": False}
    base = np.empty((C, L0.shape[1]), np.float32)
    chunks = edit_chunks(sim, curricula, L0, s, np.arange(C), none, chunk=chunk, multiple=1, **opts)
    for start, stop, got in chunks:
        base[start:stop] = got
    return base
