"""The ``[train, test]`` score matrix: the mean removal effect of each training example on
each test example over sampled curricula (:func:`score_matrix`)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from simfluence_jax.attribution.checks import (
    check_batch_loss,
    check_curricula,
    check_horizon,
    check_L0,
    check_rates,
    report_divergence,
    unseen_ids,
)
from simfluence_jax.attribution.deltas import baselines, edit_chunks
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.base import Simulator


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
    check_batch_loss(batch_loss)
    b = check_curricula(sim, curricula, single=False)
    C, T, _ = b.shape
    horizon = check_horizon(horizon, T)
    L0 = check_L0(sim, L0, (C,))
    s = check_rates(sim, learning_rates, (C,), T)
    N = sim.num_train if sim.num_train is not None else int(b.max()) + 1
    which, ids = occurrences(b)
    present = np.unique(ids)
    unseen = unseen_ids(sim, b)
    opts = dict(horizon=horizon, repack=bool(repack), batch_loss=batch_loss)
    curricula_d, L0_d = jnp.asarray(b), jnp.asarray(L0)
    base = baselines(sim, curricula_d, L0_d, s, chunk=chunk, **opts)
    report_divergence(base, "simulated losses of the unedited curricula")
    sums = np.zeros((N, L0.shape[1]), np.float64)
    counts = np.bincount(ids, minlength=N)
    chunks = edit_chunks(sim, curricula_d, L0_d, s, which, ids[:, None], chunk=chunk, **opts)
    for start, stop, got in chunks:
        np.add.at(sums, ids[start:stop], got - base[which[start:stop]])
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = (sums / counts[:, None]).astype(np.float32)
    report_divergence(scores[np.setdiff1d(present, unseen)], "scores")
    scores[unseen] = np.nan
    return scores
