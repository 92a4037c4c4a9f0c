"""Checks of the inputs of an attribution (curricula, horizon, ``L0``, learning rates, ids),
and the warnings for unseen ids and diverged rollouts."""

from __future__ import annotations

import warnings

import jax
import numpy as np

from simfluence_jax.attribution.deltas import BATCH_LOSSES
from simfluence_jax.rollouts import (
    DivergenceWarning,
    UnseenExampleWarning,
    check_finite,
    check_ids,
    lr_scales,
)
from simfluence_jax.simulators.base import Simulator


def check_batch_loss(batch_loss: str) -> None:
    if batch_loss not in BATCH_LOSSES:
        raise ValueError(f"batch_loss must be one of {BATCH_LOSSES}, got {batch_loss!r}")


def check_curricula(sim: Simulator, batches, *, single: bool) -> np.ndarray:
    b = np.asarray(batches)
    want = "[T, B]" if single else "[C, T, B]"
    if b.ndim != (2 if single else 3) or b.size == 0:
        raise ValueError(f"the curriculum must be int{want} and non-empty, got shape {b.shape}")
    with warnings.catch_warnings():  # unseen ids are reported by unseen_ids, with their NaN
        warnings.simplefilter("ignore", UnseenExampleWarning)
        check_ids(sim, b)
    if not (b >= 0).any():
        raise ValueError("the curriculum is empty: every slot is padding (-1)")
    if not single:
        empty = np.flatnonzero(~(b >= 0).any(axis=(1, 2)))
        if len(empty):
            raise ValueError(f"curriculum {int(empty[0])} is empty: every slot is padding (-1)")
    return b.astype(np.int32)


def check_horizon(horizon, T: int) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer):
        raise ValueError(f"horizon must be an integer, got {horizon!r}")
    if not 1 <= horizon <= T:
        raise ValueError(
            f"horizon must be between 1 and the curriculum's T = {T} steps, got {horizon}"
        )
    return int(horizon)


def check_L0(sim: Simulator, L0, lead: tuple) -> np.ndarray:
    L0 = check_finite("L0", L0).astype(np.float32)
    M = sim.num_test
    if L0.shape[-1:] != (M,) or L0.ndim > 1 + len(lead):
        raise ValueError(f"L0 must be [M] or [C, M] with the simulator's M = {M}, got {L0.shape}")
    try:
        return np.broadcast_to(L0, lead + (M,)).reshape(-1, M)
    except ValueError:
        raise ValueError(f"L0 of shape {L0.shape} does not match {lead[0]} curricula") from None


def check_rates(sim: Simulator, learning_rates, lead: tuple, T: int) -> jax.Array:
    if learning_rates is not None:
        lr = check_finite("learning_rates", learning_rates)
        if np.any(lr < 0):
            raise ValueError(f"learning_rates must be >= 0, got min {lr.min()}")
    return lr_scales(sim, learning_rates, lead, T)


def as_ids(ids, what: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64).reshape(-1)


def unseen_ids(sim: Simulator, b: np.ndarray) -> np.ndarray:
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


def report_divergence(values: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        warnings.warn(
            f"{int(bad.sum())} of {bad.size} {what} are not finite: the simulated trajectories "
            "diverged (alpha compounding above 1); a larger l2 or the one_plus_sum form "
            "usually helps",
            DivergenceWarning,
            stacklevel=3,
        )


def prepare(sim, curriculum, L0, learning_rates, horizon, batch_loss):
    """The checked inputs of one curriculum: ``(b [1, T, B], L0 [1, M], s [1, T], horizon)``."""
    check_batch_loss(batch_loss)
    b = check_curricula(sim, curriculum, single=True)
    horizon = check_horizon(horizon, b.shape[0])
    L0 = check_L0(sim, L0, ())
    s = check_rates(sim, learning_rates, (), b.shape[0])
    return b[None], L0, s, horizon


def check_present(ids: np.ndarray, b: np.ndarray, what: str) -> None:
    missing = np.setdiff1d(ids, b[b >= 0])
    if missing.size:
        shown = missing[:10].tolist()
        raise ValueError(f"{what} {shown} do not occur in the curriculum")
