"""The search objective: the simulated mean final loss of the target test examples.

For targets J and a curriculum c,

    F(c) = (1 / |J|) sum_{j in J} L^_T,j(c),

rolled out by the simulator from the starting losses ``L0``. Every search minimises F and
returns a :class:`SearchResult`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.rollouts import rollout


def restrict(sim, targets) -> object:
    """``sim`` on the target test examples only when it can be restricted (``restrict``),
    otherwise ``sim`` itself."""
    try:
        return sim.restrict(np.asarray(targets))
    except NotImplementedError:
        return sim


@jax.jit
def _final_mean(sim, curricula, L0, columns, learning_rates):
    """``float32[C]``: mean over ``columns`` of the simulated final losses."""
    final = rollout(sim, curricula, L0, learning_rates=learning_rates)[:, -1, :]
    return jnp.mean(final[:, columns], axis=-1)


def make_objective(sim, L0, targets, *, learning_rates=None) -> Callable[[np.ndarray], np.ndarray]:
    """``F``: curricula ``int32[C, T, B]`` -> ``float64[C]`` mean simulated final loss of
    ``targets`` starting from ``L0: float[M]`` (inf for a diverging rollout);
    ``learning_rates: float[T]`` is the schedule, for ``lr_scaled`` simulators."""
    targets = np.asarray(targets, np.int64).reshape(-1)
    L0 = np.asarray(L0, np.float32)
    if L0.ndim != 1 or targets.size == 0 or targets.min() < 0 or targets.max() >= len(L0):
        raise ValueError(f"targets {targets.tolist()} must index the M = {L0.size} entries of L0")
    small = restrict(sim, targets)
    if small is sim:
        L0_used, columns = L0, targets
    else:
        L0_used, columns = L0[targets], np.arange(targets.size)
    L0_used, columns = jnp.asarray(L0_used), jnp.asarray(columns)
    lr = None if learning_rates is None else jnp.asarray(learning_rates, jnp.float32)

    def F(curricula):
        out = np.asarray(
            _final_mean(small, jnp.asarray(curricula, jnp.int32), L0_used, columns, lr)
        )
        return np.where(np.isfinite(out), out, np.inf).astype(np.float64)

    return F


@dataclasses.dataclass
class SearchResult:
    """A searched curriculum.

    Attributes:
      subset: ``int32[k]`` pool ids by rank.
      curriculum: ``int32[T, B]``.
      predicted: F of the result under the simulator searched with.
      initial: F of the starting curriculum.
      history: F at the start and after every accepted move (greedy), or the relaxed
        objective at every Adam step (gradient).
      method: ``greedy`` or ``gradient``.
    """

    subset: np.ndarray
    curriculum: np.ndarray
    predicted: float
    initial: float
    history: list[float]
    method: str
