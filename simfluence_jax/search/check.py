"""Checking picks by real training: predicted against achieved, and against random.

``check_by_retraining`` trains the picked curricula and random curricula of the same shape
(or reuses random curricula already trained, e.g. the logged runs) and reports, for each
pick, the simulated and the real mean final target loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from simfluence_jax.runs import RunSet
from simfluence_jax.search.objective import SearchResult, make_objective


@dataclasses.dataclass
class SearchCheck:
    """Picks and random curricula, simulated and trained.

    Attributes:
      targets: target test indices.
      picks: ``{label: SearchResult}``.
      achieved: ``{label: float}`` real mean final target loss of each pick.
      random_achieved: ``float[R]`` the same for R random curricula of the same shape.
      random_predicted: ``{label: float[R]}`` the pick's simulator on the random curricula.
      losses: ``float32[P + R, T+1, M]`` everything trained (picks first).
    """

    targets: np.ndarray
    picks: dict[str, SearchResult]
    achieved: dict[str, float]
    random_achieved: np.ndarray
    random_predicted: dict[str, np.ndarray]
    losses: np.ndarray

    def rows(self) -> dict[str, dict[str, float]]:
        """One row per pick: predicted, achieved, their gain over the random mean, and the
        share of random curricula the pick beats in real training."""
        rnd = self.random_achieved
        out = {}
        for label, pick in self.picks.items():
            pred_rnd = self.random_predicted[label]
            out[label] = {
                "predicted": pick.predicted,
                "achieved": self.achieved[label],
                "random_achieved_mean": float(rnd.mean()),
                "random_achieved_std": float(rnd.std()),
                "random_predicted_mean": float(pred_rnd.mean()),
                "predicted_gain": float(pred_rnd.mean() - pick.predicted),
                "achieved_gain": float(rnd.mean() - self.achieved[label]),
                "beats_random_fraction": float(np.mean(self.achieved[label] < rnd)),
            }
        return out


def check_by_retraining(
    picks: Mapping[str, tuple[object, SearchResult]],
    train: Callable[[np.ndarray], object],
    *,
    targets,
    L0,
    random_curricula,
    random_losses=None,
    learning_rates=None,
) -> SearchCheck:
    """Trains every pick and the random curricula with ``train`` and compares.

    Args:
      picks: ``{label: (simulator, SearchResult)}``.
      train: ``curricula int32[C, T, B] -> losses float[C, T+1, M]`` (or a ``RunSet``).
      targets: target test indices.
      L0: ``float[M]`` the starting losses the search used.
      random_curricula: ``int32[R, T, B]`` of the picks' shape.
      random_losses: ``float[R, T+1, M]`` if the random curricula were trained already (e.g.
        the logged runs, which are random curricula of this shape); else they are trained.
      learning_rates: ``float[T]`` (or ``float[R, T]``, one per random curriculum) the
        schedule the random curricula are simulated with, for ``lr_scaled`` simulators.
    """
    targets = np.asarray(targets, np.int64).reshape(-1)
    labels = list(picks)
    rnd = np.asarray(random_curricula, np.int32)
    picked = np.stack([picks[n][1].curriculum for n in labels])
    if random_losses is not None:
        random_losses = np.asarray(random_losses, np.float32)
        if random_losses.shape[:2] != (rnd.shape[0], rnd.shape[1] + 1):
            raise ValueError(
                f"random_losses has shape {random_losses.shape}, expected [R={rnd.shape[0]}, "
                f"T+1={rnd.shape[1] + 1}, M]"
            )
    batches = picked if random_losses is not None else np.concatenate([picked, rnd])
    out = train(batches)
    losses = np.asarray(out.losses if isinstance(out, RunSet) else out, np.float32)
    if random_losses is not None:
        losses = np.concatenate([losses, random_losses])
    final = losses[:, -1][:, targets].mean(axis=1)
    achieved = {n: float(final[i]) for i, n in enumerate(labels)}
    random_predicted = {
        n: make_objective(picks[n][0], L0, targets, learning_rates=learning_rates)(rnd)
        for n in labels
    }
    return SearchCheck(targets, {n: picks[n][1] for n in labels}, achieved,
                       final[len(labels):], random_predicted, losses)  # fmt: skip
