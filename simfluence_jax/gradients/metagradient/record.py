"""The record of a run's reverse-mode metagradients, its removal effects, and the
metagradient simulator built from it."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from simfluence_jax.gradients.metagradient.readouts import horizon_readout
from simfluence_jax.simulators.metagradient import MetagradientSimulator


@dataclasses.dataclass(frozen=True)
class Metagradients:
    """Reverse-mode metagradients of one run.

    Attributes:
      batches: ``int32[T, B]`` the run's curriculum (-1 padding).
      seed: the run's seed.
      readout: ``float[K, T]``; readout ``k`` of test example ``j`` is
        ``y[k, j] = sum_t readout[k, t-1] L_t[j]``.
      values: ``float[K, M]`` the readouts at ``w = 1``.
      slot: ``float[M, K, T, B]`` ``dy[k, j] / dw[t, b]`` (zero on padding slots).
      num_train: the pool size N.
      test_index: ``int[M]`` the factory's test examples these rows are.
    """

    batches: np.ndarray
    seed: int
    readout: np.ndarray
    values: np.ndarray
    slot: np.ndarray
    num_train: int
    test_index: np.ndarray

    @property
    def by_id(self) -> np.ndarray:
        """``float[M, K, N]``: the derivative with respect to one weight shared by all the
        occurrences of each training id (the sum over its slots; 0 for absent ids)."""
        m, k = self.slot.shape[:2]
        out = np.zeros((m, k, self.num_train), self.slot.dtype)
        real = self.batches >= 0
        np.add.at(
            out,
            (slice(None), slice(None), self.batches[real]),
            self.slot[:, :, real],
        )
        return out

    def effects(self, candidates=None):
        """The first-order removal effects of training ids, as ``attribution.Effects``.

        Removing id ``i`` sets the weights of all its slots to 0 (they become padding), so
        ``delta[k, j] = y_j(w without ids[k]) - y_j(1) ~ -by_id[j, 0, ids[k]]``: ``> 0``
        means removing it raises the loss (it helps), as in ``attribution.removal_effects``.
        Needs a single readout that is the mean of the last ``horizon`` steps (the default
        of ``Replay.metagradients``).

        Args:
          candidates: ``int[K]`` training ids (default: every distinct id of the run);
            each must occur in the run's curriculum.
        """
        from simfluence_jax.attribution import Effects

        r = np.asarray(self.readout)
        T = r.shape[1]
        horizon = int(np.count_nonzero(r[0])) if r.shape[0] == 1 else 0
        if not horizon or not np.allclose(r, horizon_readout(T, horizon)):
            raise ValueError(
                "removal effects need the metagradients of one readout, the mean of the last "
                "horizon steps (metagradients(..., horizon=h)); got readouts of shape "
                f"{list(r.shape)}"
            )
        present = np.unique(self.batches[self.batches >= 0])
        if candidates is None:
            ids = present
        else:
            ids = np.asarray(candidates).reshape(-1)
            if ids.size == 0 or ids.dtype.kind not in "iu":
                raise ValueError("candidates must be a non-empty list of training ids")
            missing = np.setdiff1d(ids, present)
            if missing.size:
                raise ValueError(f"candidates {missing[:10].tolist()} do not occur in the run")
        delta = -self.by_id[:, 0, ids].T.astype(np.float32)
        return Effects(
            ids=ids.astype(np.int32), delta=delta, baseline=self.values[0].astype(np.float32),
            horizon=horizon, repack=False, batch_loss="mean",
        )  # fmt: skip


def metagradient_simulator(mg: Metagradients, losses) -> MetagradientSimulator:
    """The simulator of edits of ``mg``'s run (``simulators.metagradient``).

    Args:
      mg: metagradients whose readouts are single steps (``Replay.metagradients(...,
        steps=...)``), for every test example of the factory in order.
      losses: ``float[T+1, M]`` the run's losses at ``w = 1`` (logged, or ``Replay.losses``).

    Raises:
      ValueError: if a readout is not a single step, or the sizes disagree.
    """
    r = np.asarray(mg.readout)
    T = r.shape[1]
    steps = np.argmax(r != 0, axis=1) + 1
    one_hot = np.zeros_like(r)
    one_hot[np.arange(len(steps)), steps - 1] = 1.0
    if not np.array_equal(r, one_hot) or len(np.unique(steps)) != len(steps):
        raise ValueError(
            "the metagradient simulator needs readouts of distinct single steps "
            "(metagradients(..., steps=...)), not averages over a horizon"
        )
    losses = np.asarray(losses, np.float32)
    m = mg.slot.shape[0]
    if losses.shape != (T + 1, m) or not np.array_equal(mg.test_index, np.arange(m)):
        raise ValueError(
            f"losses must be [T+1, M] = [{T + 1}, {m}] and the metagradients must cover the "
            f"test examples 0..M-1 in order; got losses {losses.shape}"
        )
    index = np.full(T, -1, np.int32)
    index[steps - 1] = np.arange(len(steps))
    return MetagradientSimulator(
        reference=jnp.asarray(losses.T),
        J=jnp.asarray(mg.slot, jnp.float32),
        batches=jnp.asarray(mg.batches, jnp.int32),
        step_index=jnp.asarray(index),
        seed=int(mg.seed),
    )
