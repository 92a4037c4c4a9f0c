"""Removal effects under one curriculum: every training example removed alone
(:func:`removal_effects`, ranked by :func:`top`), or a group removed at once
(:func:`group_effect`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from simfluence_jax.attribution.checks import (
    as_ids,
    check_present,
    prepare,
    report_divergence,
    unseen_ids,
)
from simfluence_jax.attribution.deltas import edit_deltas
from simfluence_jax.simulators.base import Simulator


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
    b, L0, s, horizon = prepare(sim, curriculum, L0, learning_rates, horizon, batch_loss)
    if candidates is None:
        ids = np.unique(b[b >= 0])
    else:
        ids = as_ids(candidates, "candidates")
        if ids.size == 0:
            raise ValueError("candidates is empty: name at least one training id")
        check_present(ids, b, "candidates")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("candidates repeat ids; each id is removed once")
    unseen = np.isin(ids, unseen_ids(sim, b))
    opts = dict(horizon=horizon, repack=bool(repack), batch_loss=batch_loss, chunk=chunk)
    base, delta = edit_deltas(sim, b, L0, s, np.zeros(len(ids), np.int32), ids[:, None], **opts)
    report_divergence(np.concatenate([base, delta[~unseen]]), "simulated losses and changes")
    delta[unseen] = np.nan
    return Effects(
        ids=ids.astype(np.int32), delta=delta, baseline=base[0], horizon=horizon,
        repack=bool(repack), batch_loss=batch_loss,
    )  # fmt: skip


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
    b, L0, s, horizon = prepare(sim, curriculum, L0, learning_rates, horizon, batch_loss)
    group = np.unique(as_ids(ids, "ids"))
    if group.size == 0:
        raise ValueError("ids is empty: name at least one training id to remove")
    check_present(group, b, "ids")
    unseen = np.isin(group, unseen_ids(sim, b))
    opts = dict(horizon=horizon, repack=bool(repack), batch_loss=batch_loss, chunk=1)
    base, delta = edit_deltas(sim, b, L0, s, np.zeros(1, np.int32), group[None], **opts)
    report_divergence(np.concatenate([base, delta]), "simulated losses and changes")
    return np.full_like(delta[0], np.nan) if unseen.any() else delta[0]
