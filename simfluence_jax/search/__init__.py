"""Curriculum search: which training examples, in which order, lower a target set's loss.

Given target test examples J, a pool of candidate training examples and a curriculum shape,
find the curriculum whose simulated mean final loss over J is lowest. Modules:

* ``layout``: a curriculum as a layout of ranks ``int32[T, B]`` filled by a subset of pool
  ids ``int32[k]`` (``random_layout``, ``curriculum``);
* ``objective``: ``F(c) = (1/|J|) sum_{j in J} L^_T,j(c)`` under a simulator
  (``make_objective``) and the ``SearchResult`` every search returns;
* ``greedy``: best-improvement coordinate search over the subset and its order (any
  simulator);
* ``sinkhorn``: gradient search through a Sinkhorn-relaxed rollout, then rounding
  (simulators linear in the batch counts);
* ``check``: the picks and random curricula trained for real, predicted against achieved;
* ``methods``: the searches by name (``SEARCH_METHODS``) and ``search_all``.
"""

from simfluence_jax.search.check import SearchCheck, check_by_retraining
from simfluence_jax.search.greedy import greedy_search
from simfluence_jax.search.layout import candidate_mask, check_layout, curriculum, random_layout
from simfluence_jax.search.methods import SEARCH_METHODS, Method, search_all
from simfluence_jax.search.objective import SearchResult, make_objective, restrict
from simfluence_jax.search.sinkhorn import (
    count_effects,
    gradient_search,
    sinkhorn_assignment,
    soft_final,
)

__all__ = [
    "SEARCH_METHODS",
    "Method",
    "SearchCheck",
    "SearchResult",
    "candidate_mask",
    "check_by_retraining",
    "check_layout",
    "count_effects",
    "curriculum",
    "greedy_search",
    "gradient_search",
    "make_objective",
    "random_layout",
    "restrict",
    "search_all",
    "sinkhorn_assignment",
    "soft_final",
]
