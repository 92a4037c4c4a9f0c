"""Greedy coordinate search over the subset and its order (any simulator).

Best-improvement coordinate search: for each rank r in turn, every pool id c is scored at
once (one vmapped rollout of N curricula): c not in the subset replaces the example at
rank r, c at rank s swaps ranks r and s (an order move); the best move is taken if it
lowers F. Sweeps repeat until no move helps.
"""

from __future__ import annotations

import numpy as np

from simfluence_jax.search.layout import candidate_mask, check_layout, curriculum
from simfluence_jax.search.objective import SearchResult, make_objective


def _moves(subset: np.ndarray, r: int, N: int, order_moves: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(subsets int32[N, k], valid bool[N])``: every id placed at rank r."""
    k = subset.shape[0]
    rank_of = np.full(N, -1)
    rank_of[subset] = np.arange(k)
    out = np.repeat(subset[None], N, axis=0)
    ids = np.arange(N)
    out[:, r] = ids
    inside = rank_of >= 0
    s = rank_of[inside]
    out[np.flatnonzero(inside), s] = subset[r]  # swap: rank s gets rank r's old id
    valid = ~inside | (order_moves & (ids != subset[r]))
    return out, valid


def greedy_search(
    sim,
    L0,
    targets,
    *,
    layout,
    init_subset,
    candidates=None,
    order_moves: bool = True,
    max_sweeps: int = 3,
    tol: float = 1e-7,
    learning_rates=None,
) -> SearchResult:
    """Best-improvement coordinate search over the subset and its order (module docstring).

    Args:
      sim: any simulator over the pool (featurized ones of any order included).
      L0: ``float[M]`` starting losses.
      targets: indices of the target test examples.
      layout: ``int32[T, B]`` slot ranks (``random_layout``).
      init_subset: ``int32[k]`` distinct pool ids to start from.
      candidates: ``bool[N]`` ids allowed in the curriculum (default: all).
      order_moves: also try swapping two ranks (reordering), not only replacing.
      max_sweeps: passes over the ranks.
      tol: a move must lower F by more than this.
      learning_rates: ``float[T]`` schedule of the curriculum (``lr_scaled`` simulators).
    """
    layout, subset = check_layout(layout, init_subset)
    N = _pool_size(sim)
    mask = candidate_mask(candidates, N, subset.shape[0])
    if not mask[subset].all():
        raise ValueError("init_subset uses ids that are not candidates")
    F = make_objective(sim, L0, targets, learning_rates=learning_rates)
    current = float(F(curriculum(subset, layout)[None])[0])
    initial, history = current, [current]
    for _ in range(max_sweeps):
        improved = False
        for r in range(subset.shape[0]):
            subsets, valid = _moves(subset, r, N, order_moves)
            scores = np.where(valid & mask, F(curriculum(subsets, layout)), np.inf)
            best = int(np.argmin(scores))
            if scores[best] < current - tol:
                subset, current, improved = subsets[best], float(scores[best]), True
                history.append(current)
        if not improved:
            break
    return SearchResult(subset, curriculum(subset, layout), current, initial, history, "greedy")


def _pool_size(sim) -> int:
    N = sim.num_train
    if N is None:
        raise ValueError(f"cannot tell the pool size of {type(sim).__name__}")
    return N
