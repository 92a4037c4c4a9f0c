"""Attribution: which training examples help or hurt each test example, by simulated removal.

The attribution of training example i to test example j under curriculum c is the simulated
change of j's loss when every occurrence of i is removed (docs/design.md, "Attribution"):

    delta_ij(c) = mean_{h < H} L^_j,T'-h(c without i)  -  mean_{h < H} L^_j,T-h(c)

with ``H`` the ``horizon`` (the final step alone is noisy) and ``T'`` the length of the edited
curriculum (``T`` unless it is re-packed). ``delta > 0``: removing i raises j's loss, so i
helps j; ``delta < 0``: i hurts j. A group of examples is removed as a group
(``group_effect``), never summed from single effects: a simulator is not additive.

Every edit goes through the one rollout (``rollout.rollout_weighted``): the K edited
curricula of ``removal_effects`` are K weighted curricula of one vmapped rollout, chunked
over K to bound memory, so attribution works for every registered simulator.

**What a removed slot means.** The run factory (``training.train_step``) normalises a batch
loss by the number of real examples, ``J = sum_b w_b l_b / max(1, sum_b w_b)``: an example's
share of an update is ``eta_t / n_t`` with ``n_t`` the real examples of step t. Retraining a
curriculum whose slot became padding (``-1``) therefore gives each remaining example of that
step the larger share ``eta_t / (n_t - 1)``; a step left with no example has a zero gradient.
The simulators are fitted on (nearly always) full batches, so their per-example parameters
stand for a share ``1 / n_t``. With ``batch_loss="mean"`` (the default) an edit means the same
for the simulator as for retraining: every remaining example of an edited step gets the weight
``n_t / n'_t`` (``n'_t`` real examples after the edit), which scales its effect by the change
of its share; the unedited curriculum keeps weight 1 everywhere, so the baseline is exactly
``rollout.simulate`` of it. ``batch_loss="sum"`` keeps weight 1 for what remains, i.e. simulates
``counterfactuals.remove(..., repack=False)`` as ``rollout`` does; under the plain-sum form
(alpha = sum A_i) that reads every removal as a loss drop, since a batch missing an example
has a smaller alpha. Simulators that already divide by the real count (``SegmentedSimulator``,
the gradient baselines) give the same numbers either way.

Where the two still differ: a step left with no example is no update in the simulator
(state and loss carry over), whereas a stateful optimizer would still advance (SGD with
momentum keeps moving along its buffer, Adam's moments decay, weight decay applies); the run
factory therefore refuses such curricula (``sampling.validate_curricula``), so an edit that
empties a whole step (an id filling its batch, a group removal of a batch) has no retraining
counterpart with ``repack=False``: re-pack it.

**Re-packing** (``repack=True``) drops the removed examples and packs the rest into full
batches in the same order, as ``counterfactuals.remove`` does; the ragged last batch gets
weight ``B / n'_T'`` under ``batch_loss="mean"`` (retraining's mean over its real examples,
relative to a full batch). The edited run is shorter when a whole batch's worth of examples
goes; it trains under the first ``T'`` rates of the logged schedule (``learning_rates``), as
the run factory does, whose schedule is fixed by the configured number of steps, and as
``counterfactuals.keep_schedule`` gives. Its horizon window ends at its own last step ``T'``.

Ids the simulator never saw in its fit (``Simulator.seen_ids``) get a NaN effect and an
``UnseenExampleWarning``, never a silent 0.

Example::

    import simfluence_jax as sj
    effects = sj.removal_effects(sim, heldout.batches[0], heldout.L0[0],
                                 learning_rates=heldout.learning_rates[0], horizon=8)
    ids, delta = sj.top(effects, test=12, k=10)               # most helpful first
    both = sj.group_effect(sim, heldout.batches[0], heldout.L0[0], ids[:8])
    S = sj.score_matrix(sim, heldout, heldout.L0[0], num_curricula=1000)   # [N, M]
    sj.save_scores("scores", S, train_ids=heldout.train_ids, test_ids=heldout.test_ids)
"""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import json
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax import io
from simfluence_jax.rollout import (
    DivergenceWarning,
    UnseenExampleWarning,
    check_finite,
    check_ids,
    lr_scales,
    rollout_weighted,
)
from simfluence_jax.runs import RunSet
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

SIGN_CONVENTION = (
    "score = simulated change of the test example's loss when every occurrence of the "
    "training example is removed from a curriculum, averaged over the last horizon steps and "
    "over the curricula in which it occurs; score > 0: removing it raises the loss (it helps); "
    "score < 0: it hurts; NaN: it never occurs or the simulator never saw it"
)


# The pure core ------------------------------------------------------------------------------
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


# Checks --------------------------------------------------------------------------------------
def _check_batch_loss(batch_loss: str) -> None:
    if batch_loss not in BATCH_LOSSES:
        raise ValueError(f"batch_loss must be one of {BATCH_LOSSES}, got {batch_loss!r}")


def _check_curricula(sim: Simulator, batches, *, single: bool) -> np.ndarray:
    b = np.asarray(batches)
    want = "[T, B]" if single else "[C, T, B]"
    if b.ndim != (2 if single else 3) or b.size == 0:
        raise ValueError(f"the curriculum must be int{want} and non-empty, got shape {b.shape}")
    with warnings.catch_warnings():  # unseen ids are reported by _unseen, with their NaN
        warnings.simplefilter("ignore", UnseenExampleWarning)
        check_ids(sim, b)
    if not (b >= 0).any():
        raise ValueError("the curriculum is empty: every slot is padding (-1)")
    if not single:
        empty = np.flatnonzero(~(b >= 0).any(axis=(1, 2)))
        if len(empty):
            raise ValueError(f"curriculum {int(empty[0])} is empty: every slot is padding (-1)")
    return b.astype(np.int32)


def _check_horizon(horizon, T: int) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer):
        raise ValueError(f"horizon must be an integer, got {horizon!r}")
    if not 1 <= horizon <= T:
        raise ValueError(
            f"horizon must be between 1 and the curriculum's T = {T} steps, got {horizon}"
        )
    return int(horizon)


def _check_L0(sim: Simulator, L0, lead: tuple) -> np.ndarray:
    L0 = check_finite("L0", L0).astype(np.float32)
    M = sim.num_test
    if L0.shape[-1:] != (M,) or L0.ndim > 1 + len(lead):
        raise ValueError(f"L0 must be [M] or [C, M] with the simulator's M = {M}, got {L0.shape}")
    try:
        return np.broadcast_to(L0, lead + (M,)).reshape(-1, M)
    except ValueError:
        raise ValueError(f"L0 of shape {L0.shape} does not match {lead[0]} curricula") from None


def _check_rates(sim: Simulator, learning_rates, lead: tuple, T: int) -> jax.Array:
    if learning_rates is not None:
        lr = check_finite("learning_rates", learning_rates)
        if np.any(lr < 0):
            raise ValueError(f"learning_rates must be >= 0, got min {lr.min()}")
    return lr_scales(sim, learning_rates, lead, T)


def _ids(ids, what: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64).reshape(-1)


def _unseen(sim: Simulator, b: np.ndarray) -> np.ndarray:
    """The ids of curricula ``b`` the simulator has no fitted parameters for (warns if any)."""
    seen = sim.seen_ids()
    used = np.unique(b[b >= 0])
    if seen is None:
        return used[:0]
    bad = used[~np.asarray(seen)[used]]
    if bad.size:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        warnings.warn(
            f"{len(bad)} training ids of the curriculum never occurred in the fitting runs "
            f"(ids {shown}); {sim.name} has no parameters for them, so their effects are NaN "
            "and the curriculum is simulated as if they had no effect",
            UnseenExampleWarning,
            stacklevel=3,
        )
    return bad


def _report_divergence(values: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        warnings.warn(
            f"{int(bad.sum())} of {bad.size} {what} are not finite: the simulated trajectories "
            "diverged (alpha compounding above 1); a larger l2 or the one_plus_sum form "
            "usually helps",
            DivergenceWarning,
            stacklevel=3,
        )


def _prepare(sim, curriculum, L0, learning_rates, horizon, batch_loss):
    """The checked inputs of one curriculum: ``(b [1, T, B], L0 [1, M], s [1, T], horizon)``."""
    _check_batch_loss(batch_loss)
    b = _check_curricula(sim, curriculum, single=True)
    horizon = _check_horizon(horizon, b.shape[0])
    L0 = _check_L0(sim, L0, ())
    s = _check_rates(sim, learning_rates, (), b.shape[0])
    return b[None], L0, s, horizon


def _check_present(ids: np.ndarray, b: np.ndarray, what: str) -> None:
    missing = np.setdiff1d(ids, b[b >= 0])
    if missing.size:
        shown = missing[:10].tolist()
        raise ValueError(f"{what} {shown} do not occur in the curriculum")


# Removal effects ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Effects:
    """Simulated removal effects of training examples on every test example.

    Attributes:
      ids: ``int32[K]`` the training ids removed, one at a time.
      delta: ``float32[K, M]`` change of each test example's loss (mean over the last
        ``horizon`` steps) when every occurrence of ``ids[k]`` is removed; ``> 0``: the id
        helps; NaN for ids the simulator never saw.
      baseline: ``float32[M]`` the simulated loss of the original curriculum over the same
        window.
      horizon: steps averaged at the end of each run.
      repack: whether removals re-packed the curriculum.
      batch_loss: ``"mean"`` or ``"sum"`` (see the module docstring).
    """

    ids: np.ndarray
    delta: np.ndarray
    baseline: np.ndarray
    horizon: int
    repack: bool
    batch_loss: str

    @property
    def num_test(self) -> int:
        return self.delta.shape[1]


def removal_effects(
    sim: Simulator,
    curriculum,
    L0,
    *,
    learning_rates=None,
    candidates=None,
    repack: bool = False,
    horizon: int = 1,
    batch_loss: str = "mean",
    chunk: int | None = None,
) -> Effects:
    """The simulated effect of removing each training id of a curriculum on every test loss.

    All K edited curricula go through one vmapped rollout, in chunks of ``chunk`` curricula
    (default: as many as fit in ``CHUNK_BYTES`` of trajectories).

    Args:
      sim: any simulator.
      curriculum: ``int32[T, B]`` (-1 padding).
      L0: ``float32[M]`` observed starting losses.
      learning_rates: ``float32[T]`` the curriculum's schedule (``lr_scaled`` simulators);
        edits keep it (re-packed runs take its first ``T'`` rates).
      candidates: ``int[K]`` ids to remove one at a time (default: every distinct id of the
        curriculum, sorted); each must occur in the curriculum.
      repack: re-pack the remaining examples into full batches (else the slots become
        padding and the step structure is kept).
      horizon: steps averaged at the end of each run, ``1 <= horizon <= T``.
      batch_loss: ``"mean"`` (the run factory's normalisation; default) or ``"sum"``.
      chunk: edited curricula per rollout call.

    Raises:
      ValueError: naming the problem: an empty curriculum, ids out of range, candidates not in
        the curriculum, ``horizon`` outside ``1..T``, non-finite L0 or learning rates.
    """
    b, L0, s, horizon = _prepare(sim, curriculum, L0, learning_rates, horizon, batch_loss)
    if candidates is None:
        ids = np.unique(b[b >= 0])
    else:
        ids = _ids(candidates, "candidates")
        if ids.size == 0:
            raise ValueError("candidates is empty: name at least one training id")
        _check_present(ids, b, "candidates")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("candidates repeat ids; each id is removed once")
    unseen = np.isin(ids, _unseen(sim, b))
    opts = dict(horizon=horizon, repack=bool(repack), batch_loss=batch_loss, chunk=chunk)
    base, delta = _deltas(sim, b, L0, s, np.zeros(len(ids), np.int32), ids[:, None], **opts)
    _report_divergence(np.concatenate([base, delta[~unseen]]), "simulated losses and changes")
    delta[unseen] = np.nan
    return Effects(
        ids=ids.astype(np.int32), delta=delta, baseline=base[0], horizon=horizon,
        repack=bool(repack), batch_loss=batch_loss,
    )  # fmt: skip


def _chunks(sim, curricula, L0, s, which, remove, *, chunk, multiple=CHUNK_MULTIPLE, **opts):
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


def _deltas(sim, b, L0, s, which, remove, *, chunk, **opts):
    """``(base float32[C, M], delta float32[P, M])`` of the P edits ``(which, remove)`` of
    curricula ``b [C, T, B]``, collected in memory."""
    curricula, L0 = jnp.asarray(b), jnp.asarray(L0)
    base = _baselines(sim, curricula, L0, s, chunk=chunk, **opts)
    delta = np.empty((len(which), L0.shape[1]), np.float32)
    for start, stop, got in _chunks(sim, curricula, L0, s, which, remove, chunk=chunk, **opts):
        delta[start:stop] = got - base[which[start:stop]]
    return base, delta


def _baselines(sim, curricula, L0, s, *, chunk, **opts) -> np.ndarray:
    """``float32[C, M]``: the window mean of every unedited curriculum."""
    C = curricula.shape[0]
    none = np.full((C, 1), NO_ID, np.int32)
    opts = {**opts, "repack": False}
    base = np.empty((C, L0.shape[1]), np.float32)
    chunks = _chunks(sim, curricula, L0, s, np.arange(C), none, chunk=chunk, multiple=1, **opts)
    for start, stop, got in chunks:
        base[start:stop] = got
    return base


def top(effects: Effects, test: int, k: int = 10, direction: str = "helpful"):
    """The ``k`` training ids with the largest effect on test example ``test``, best first.

    Args:
      effects: from ``removal_effects``.
      test: test example index in ``0..M-1``.
      k: how many ids, ``1 <= k <= K``.
      direction: ``"helpful"`` (largest delta first: removing them raises the loss most) or
        ``"harmful"`` (most negative delta first).

    Returns:
      ``(ids int32[k], delta float32[k])``. Ids with a NaN effect are never returned.
    """
    if direction not in ("helpful", "harmful"):
        raise ValueError(f"direction must be 'helpful' or 'harmful', got {direction!r}")
    M, K = effects.num_test, len(effects.ids)
    if isinstance(test, bool) or not isinstance(test, int | np.integer) or not 0 <= test < M:
        raise ValueError(f"test index {test!r} is out of range for M = {M} test examples")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > K:
        raise ValueError(f"k = {k} is larger than the {K} candidates")
    d = effects.delta[:, test]
    finite = np.flatnonzero(np.isfinite(d))
    if k > len(finite):
        raise ValueError(
            f"k = {k} but only {len(finite)} of the {K} candidates have an effect (the others "
            "are ids the simulator never saw)"
        )
    key = -d[finite] if direction == "helpful" else d[finite]
    order = finite[np.argsort(key, kind="stable")[:k]]
    return effects.ids[order], d[order]


def group_effect(
    sim: Simulator,
    curriculum,
    L0,
    ids,
    *,
    learning_rates=None,
    repack: bool = False,
    horizon: int = 1,
    batch_loss: str = "mean",
) -> np.ndarray:
    """``float32[M]``: the simulated change of every test loss when all ``ids`` are removed
    at once: one edit, not a sum of single effects. Arguments and errors as in
    ``removal_effects``; NaN if any of the ids was never seen by the simulator."""
    b, L0, s, horizon = _prepare(sim, curriculum, L0, learning_rates, horizon, batch_loss)
    group = np.unique(_ids(ids, "ids"))
    if group.size == 0:
        raise ValueError("ids is empty: name at least one training id to remove")
    _check_present(group, b, "ids")
    unseen = np.isin(group, _unseen(sim, b))
    opts = dict(horizon=horizon, repack=bool(repack), batch_loss=batch_loss, chunk=1)
    base, delta = _deltas(sim, b, L0, s, np.zeros(1, np.int32), group[None], **opts)
    _report_divergence(np.concatenate([base, delta]), "simulated losses and changes")
    return np.full_like(delta[0], np.nan) if unseen.any() else delta[0]


# The score matrix ------------------------------------------------------------------------------
def sample_like(runs: RunSet, num_curricula: int, *, seed: int = 0, pool_ids=None) -> np.ndarray:
    """``int32[C, T, B]``: curricula drawn by the run protocol's sampler
    (``sampling.sample_curricula``: a random subset in random order, epochs until T steps)
    with the shape of ``runs``: its batch size, its T steps and the number of distinct ids
    its first run trains on, from the pool ``pool_ids`` (default: the whole pool)."""
    from simfluence_jax.lds import subset_curricula

    pool = np.arange(runs.num_train) if pool_ids is None else np.asarray(pool_ids).reshape(-1)
    subset = len(np.unique(runs.batches[0][runs.batches[0] >= 0]))
    if subset > len(pool):
        raise ValueError(
            f"the runs train on {subset} distinct examples but the pool to sample from has "
            f"only {len(pool)}"
        )
    return subset_curricula(
        len(pool), num_subsets=num_curricula, subset_size=subset, batch_size=runs.batch_size,
        num_steps=runs.num_steps, seed=seed, pool_ids=pool,
    )  # fmt: skip


def occurrences(curricula) -> tuple[np.ndarray, np.ndarray]:
    """``(which int32[P], ids int32[P])``: every (curriculum, distinct id) pair of
    ``curricula [C, T, B]``, ids sorted within each curriculum."""
    b = np.asarray(curricula)
    flat = np.sort(b.reshape(b.shape[0], -1), axis=1)
    first = np.ones_like(flat, bool)
    first[:, 1:] = flat[:, 1:] != flat[:, :-1]
    which, pos = np.nonzero(first & (flat >= 0))
    return which.astype(np.int32), flat[which, pos].astype(np.int32)


def score_matrix(
    sim: Simulator,
    curricula,
    L0,
    *,
    learning_rates=None,
    horizon: int = 1,
    repack: bool = False,
    batch_loss: str = "mean",
    num_curricula: int | None = None,
    seed: int = 0,
    chunk: int | None = None,
) -> np.ndarray:
    """``float32[N, M]``: the mean removal effect of each training id on each test example
    over the curricula in which it occurs (NaN where it never occurs or was never seen).

    ``S[i, j] = mean_{c : i in c} delta_ij(c)`` (see the module docstring), the Simfluence
    analogue of the ``[train, test]`` score matrices of TRAK, kronfluence and dattri. Every
    (curriculum, id) pair is one edited curriculum of one vmapped rollout, chunked so that
    memory stays bounded whatever the number of curricula.

    Args:
      sim: any simulator.
      curricula: ``int32[C, T, B]``; or a ``RunSet`` whose protocol to sample
        ``num_curricula`` curricula from (``sample_like``, seeded with ``seed``, from the ids
        the simulator saw), under the schedule of its first run unless ``learning_rates``
        is given.
      L0: ``float32[M]`` (or ``[C, M]``) starting losses.
      learning_rates: ``float32[T]`` (or ``[C, T]``) schedule for ``lr_scaled`` simulators.
      horizon, repack, batch_loss, chunk: as in ``removal_effects``.

    Returns:
      ``float32[N, M]`` with N the simulator's pool size (else the largest id + 1).
    """
    if isinstance(curricula, RunSet):
        if num_curricula is None:
            raise ValueError("pass num_curricula= to sample curricula like the given runs")
        seen = sim.seen_ids()
        pool = None if seen is None else np.flatnonzero(np.asarray(seen))
        if learning_rates is None and curricula.learning_rates is not None:
            learning_rates = curricula.learning_rates[0]
        curricula = sample_like(curricula, num_curricula, seed=seed, pool_ids=pool)
    elif num_curricula is not None:
        raise ValueError("num_curricula= samples curricula like a RunSet; curricula is an array")
    _check_batch_loss(batch_loss)
    b = _check_curricula(sim, curricula, single=False)
    C, T, _ = b.shape
    horizon = _check_horizon(horizon, T)
    L0 = _check_L0(sim, L0, (C,))
    s = _check_rates(sim, learning_rates, (C,), T)
    N = sim.num_train if sim.num_train is not None else int(b.max()) + 1
    which, ids = occurrences(b)
    present = np.unique(ids)
    unseen = _unseen(sim, b)
    opts = dict(horizon=horizon, repack=bool(repack), batch_loss=batch_loss)
    curricula_d, L0_d = jnp.asarray(b), jnp.asarray(L0)
    base = _baselines(sim, curricula_d, L0_d, s, chunk=chunk, **opts)
    _report_divergence(base, "simulated losses of the unedited curricula")
    sums = np.zeros((N, L0.shape[1]), np.float64)
    counts = np.bincount(ids, minlength=N)
    chunks = _chunks(sim, curricula_d, L0_d, s, which, ids[:, None], chunk=chunk, **opts)
    for start, stop, got in chunks:
        np.add.at(sums, ids[start:stop], got - base[which[start:stop]])
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = (sums / counts[:, None]).astype(np.float32)
    _report_divergence(scores[np.setdiff1d(present, unseen)], "scores")
    scores[unseen] = np.nan
    return scores


# Saving scores --------------------------------------------------------------------------------
SCORES_FORMAT, SCORES_VERSION = "simfluence_jax.scores", 1


@dataclasses.dataclass(frozen=True)
class Scores:
    """A score matrix read back by ``load_scores``.

    Attributes:
      scores: ``float32[N, M]`` (see ``SIGN_CONVENTION``).
      train_ids: ``[N]`` names of the training examples (ints or strings).
      test_ids: ``[M]`` names of the test examples.
      texts: ``str[N]`` training texts, or ``None``.
      details: what ``save_scores`` was given as ``details`` (e.g. the horizon).
    """

    scores: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray
    texts: np.ndarray | None
    details: dict[str, Any]


def _base_path(path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".npz", ".csv") else path


def _names(values, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{what} must hold {n} entries, got shape {arr.shape}")
    if arr.dtype.kind not in "iuU":
        raise ValueError(f"{what} must be integers or strings, got dtype {arr.dtype}")
    return arr


def save_scores(
    path,
    scores,
    *,
    train_ids,
    test_ids,
    texts: Sequence[str] | None = None,
    details: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Writes a score matrix as ``<path>.npz`` and as a long-form ``<path>.csv``, atomically.

    The CSV has one row per (train, test) pair, ``train_id,test_id,score`` (NaN written as
    ``nan``), under ``#`` comment lines that state the sign convention and ``details``; read
    it with ``pandas.read_csv(path, comment="#")``. The ``.npz`` holds ``scores``,
    ``train_ids``, ``test_ids``, the optional ``train_texts`` and the details as JSON; it is
    read with ``load_scores`` (never unpickled).

    Args:
      path: the files' path without suffix (a ``.npz`` / ``.csv`` suffix is dropped).
      scores: ``float[N, M]``, e.g. from ``score_matrix``.
      train_ids: ``[N]`` names of the training examples (ints or strings).
      test_ids: ``[M]`` names of the test examples.
      texts: ``str[N]`` training texts (saved in the ``.npz`` only).
      details: JSON-serialisable facts to record (e.g. ``{"horizon": 8, "simulator": ...}``).

    Returns:
      the two paths written.
    """
    S = np.asarray(scores)
    if S.ndim != 2 or S.dtype.kind not in "fiu":
        raise ValueError(f"scores must be a float[N, M] matrix, got {S.dtype}{list(S.shape)}")
    S = S.astype(np.float32)
    N, M = S.shape
    train = _names(train_ids, N, "train_ids")
    test = _names(test_ids, M, "test_ids")
    meta = {"format": SCORES_FORMAT, "version": SCORES_VERSION, "details": dict(details or {})}
    arrays = {
        "scores": S, "train_ids": train, "test_ids": test,
        "meta": np.asarray(io.json_bytes(meta).decode("utf-8")),
    }  # fmt: skip
    if texts is not None:
        arrays["train_texts"] = _names(np.asarray(list(texts), dtype=str), N, "texts")
    base = _base_path(path)
    io.make_dirs(base.parent)
    npz, csv_path = base.with_suffix(".npz"), base.with_suffix(".csv")
    io.atomic_npz(npz, arrays)
    io.atomic_write(csv_path, _csv_text(S, train, test, meta["details"]))
    return npz, csv_path


def _csv_text(S: np.ndarray, train: np.ndarray, test: np.ndarray, details: Mapping) -> str:
    buf = _io.StringIO()
    buf.write(f"# simfluence_jax attribution scores, format version {SCORES_VERSION}\n")
    buf.write(f"# {SIGN_CONVENTION}\n")
    for key, value in details.items():
        buf.write(f"# {key}: {json.dumps(value)}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["train_id", "test_id", "score"])
    N, M = S.shape
    values = [format(float(x), ".9g") for x in S.reshape(-1)]  # 9 digits: exact float32
    tr, te = train.tolist(), test.tolist()
    writer.writerows((tr[i], te[j], values[i * M + j]) for i in range(N) for j in range(M))
    return buf.getvalue()


def load_scores(path) -> Scores:
    """Reads the ``.npz`` that ``save_scores`` wrote (``ValueError`` naming the file and the
    problem if it is missing, damaged or not a score file)."""
    npz = _base_path(path).with_suffix(".npz")
    specs = {
        "scores": io.ArraySpec(kinds="f", shape=("N", "M")),
        "train_ids": io.ArraySpec(kinds="iuU", shape=("N",)),
        "test_ids": io.ArraySpec(kinds="iuU", shape=("M",)),
        "train_texts": io.ArraySpec(kinds="U", shape=("N",), optional=True),
        "meta": io.ArraySpec(kinds="U", shape=()),
    }
    arrays = io.read_npz(npz, specs, what="scores file")
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as err:
        raise ValueError(f"{npz}: the scores file's metadata is not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{npz}: the scores file's metadata is not a JSON object")
    io.check_format(npz, meta, name=SCORES_FORMAT, version=SCORES_VERSION, what="scores file")
    return Scores(
        scores=arrays["scores"], train_ids=arrays["train_ids"], test_ids=arrays["test_ids"],
        texts=arrays.get("train_texts"), details=dict(meta.get("details", {})),
    )  # fmt: skip
