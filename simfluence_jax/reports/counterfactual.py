"""One counterfactual, shown against reality: the record the report plots and quantifies.

A counterfactual edits a curriculum (typically: remove the training examples a simulator says
help a test example most) and compares, for one test example,

* the observed trajectory under the original curriculum, ``L_t``;
* the simulated trajectory under the original curriculum, ``L^_t``;
* the simulated trajectory under the edited curriculum, ``L^'_t``;
* optionally the trajectory of a real retraining on the edited curriculum, ``L'_t``.

The simulator's *predicted* change of the final-step loss is ``L^'_T' - L^_T`` (both
simulated, so the simulator's own bias cancels); the *achieved* change is ``L'_T' - L_T``
(both real). The edited curriculum may have a different number of steps T' when removal
re-packs batches. The final step alone is noisy, so both changes are also given averaged over
the last ``H = min(WINDOW, T, T')`` steps of each trajectory (``window_changes``), the
measure ``attribution.removal_effects`` ranks by with ``horizon=H``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Steps averaged at the end of each trajectory for the window changes (fewer if T is short).
WINDOW = 8


def _trajectory(x, what: str, *, finite: bool) -> np.ndarray:
    arr = np.asarray(x, np.float64)
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"{what} must be a trajectory float[T+1] with T >= 1, got {arr.shape}")
    if finite and not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or infinite losses")
    return arr


@dataclasses.dataclass(frozen=True)
class Counterfactual:
    """A counterfactual curriculum edit for one test example, with its trajectories.

    Args:
      test_index: column j of the test example in the run set's losses.
      removed_ids: ``int[K]`` training ids removed from the curriculum.
      observed: ``float[T+1]`` observed losses of test example j under the original curriculum.
      simulated_original: ``float[T+1]`` the simulator's rollout of the original curriculum.
      simulated_edited: ``float[T'+1]`` the simulator's rollout of the edited curriculum.
      retrained: ``float[T'+1]`` losses of a real retraining on the edited curriculum, or
        ``None`` when no retraining was done.
      test_text: the test example's text ("" if unknown).
      removed_texts: texts of the removed training examples, aligned with ``removed_ids``
        (empty if unknown).
      simulator: name of the simulator that made the predictions.
      run_index: which run's curriculum was edited (``None`` if not from a run set).
      description: free text saying how the removed ids were chosen.

    Raises:
      ValueError: for trajectories of the wrong shape, mismatched lengths, non-finite
        observed or retrained losses, or texts not aligned with ids.
    """

    test_index: int
    removed_ids: Sequence[int]
    observed: np.ndarray
    simulated_original: np.ndarray
    simulated_edited: np.ndarray
    retrained: np.ndarray | None = None
    test_text: str = ""
    removed_texts: Sequence[str] = ()
    simulator: str = ""
    run_index: int | None = None
    description: str = ""

    def __post_init__(self):
        set_ = object.__setattr__
        if int(self.test_index) < 0:
            raise ValueError(f"test_index must be >= 0, got {self.test_index}")
        ids = np.atleast_1d(np.asarray(self.removed_ids))
        if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0):
            raise ValueError(f"removed_ids must be non-negative integers, got {self.removed_ids}")
        observed = _trajectory(self.observed, "observed", finite=True)
        sim_orig = _trajectory(self.simulated_original, "simulated_original", finite=False)
        sim_edit = _trajectory(self.simulated_edited, "simulated_edited", finite=False)
        if sim_orig.shape != observed.shape:
            raise ValueError(
                f"simulated_original has {sim_orig.shape[0]} entries but observed has "
                f"{observed.shape[0]}; both follow the original curriculum"
            )
        retrained = None
        if self.retrained is not None:
            retrained = _trajectory(self.retrained, "retrained", finite=True)
            if retrained.shape != sim_edit.shape:
                raise ValueError(
                    f"retrained has {retrained.shape[0]} entries but simulated_edited has "
                    f"{sim_edit.shape[0]}; both follow the edited curriculum"
                )
        texts = tuple(str(t) for t in self.removed_texts)
        if texts and len(texts) != ids.size:
            raise ValueError(f"{len(texts)} removed_texts for {ids.size} removed_ids")
        set_(self, "test_index", int(self.test_index))
        set_(self, "removed_ids", tuple(int(i) for i in ids.reshape(-1)))
        set_(self, "observed", observed)
        set_(self, "simulated_original", sim_orig)
        set_(self, "simulated_edited", sim_edit)
        set_(self, "retrained", retrained)
        set_(self, "removed_texts", texts)

    @property
    def predicted_change(self) -> float:
        """``L^'_T' - L^_T``: the simulated change of the final-step loss caused by the edit."""
        return float(self.simulated_edited[-1] - self.simulated_original[-1])

    @property
    def achieved_change(self) -> float | None:
        """``L'_T' - L_T``: the real change of the final-step loss after retraining, or
        ``None`` without one."""
        if self.retrained is None:
            return None
        return float(self.retrained[-1] - self.observed[-1])

    @property
    def window(self) -> int:
        """``H = min(WINDOW, T, T')``: the steps ``window_changes`` averages."""
        return min(WINDOW, len(self.simulated_original) - 1, len(self.simulated_edited) - 1)

    def window_changes(self) -> tuple[float, float | None]:
        """``(predicted, achieved)`` changes of the loss averaged over the last ``window``
        steps of each trajectory (achieved ``None`` without a retraining)."""
        H = self.window

        def mean(x):
            return float(np.mean(x[-H:]))

        predicted = mean(self.simulated_edited) - mean(self.simulated_original)
        achieved = None if self.retrained is None else mean(self.retrained) - mean(self.observed)
        return predicted, achieved

    @property
    def diverged(self) -> bool:
        """Whether either simulated trajectory is non-finite."""
        return not (
            np.all(np.isfinite(self.simulated_original))
            and np.all(np.isfinite(self.simulated_edited))
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict of every field and both changes (non-finite numbers as ``None``)."""

        def vec(x):
            return None if x is None else [float(v) if np.isfinite(v) else None for v in x]

        def num(x):
            return None if x is None or not np.isfinite(x) else float(x)

        return {
            "test_index": self.test_index,
            "test_text": self.test_text,
            "removed_ids": list(self.removed_ids),
            "removed_texts": list(self.removed_texts),
            "simulator": self.simulator,
            "run_index": self.run_index,
            "description": self.description,
            "observed": vec(self.observed),
            "simulated_original": vec(self.simulated_original),
            "simulated_edited": vec(self.simulated_edited),
            "retrained": vec(self.retrained),
            "predicted_change": num(self.predicted_change),
            "achieved_change": num(self.achieved_change),
            "window": {
                "steps": self.window,
                "predicted_change": num(self.window_changes()[0]),
                "achieved_change": num(self.window_changes()[1]),
            },
        }
