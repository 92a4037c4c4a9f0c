"""The search methods by name, and every simulator searched with every method that applies.

``SEARCH_METHODS`` maps a name to a :class:`Method`: the search function and the test of whether
it applies to a simulator (greedy: any; gradient: linear in the batch counts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from simfluence_jax.registry import Registry
from simfluence_jax.search.greedy import greedy_search
from simfluence_jax.search.objective import SearchResult
from simfluence_jax.search.sinkhorn import gradient_search


class Method(NamedTuple):
    """A search method: ``search(sim, L0, targets, *, layout, init_subset, candidates,
    **kwargs) -> SearchResult`` and ``applies(sim) -> bool``."""

    search: Callable[..., SearchResult]
    applies: Callable[[object], bool]


SEARCH_METHODS: Registry[Method] = Registry("search method", packages=("simfluence_jax.search",))
"""``EXTENSIONS["search method"]`` of the modules of ``simfluence_jax.search``."""


def _any_simulator(sim) -> bool:
    return True


def _linear_in_counts(sim) -> bool:
    return sim.count_effects() is not None


EXTENSIONS = {
    "search method": {
        "greedy": Method(greedy_search, _any_simulator),
        "gradient": Method(gradient_search, _linear_in_counts),
    }
}


def search_all(
    sims: Mapping[str, object],
    L0,
    targets,
    *,
    layout,
    init_subset,
    candidates=None,
    methods: Sequence[str] = ("greedy", "gradient"),
    greedy_kwargs: Mapping | None = None,
    gradient_kwargs: Mapping | None = None,
) -> dict[str, tuple[object, SearchResult]]:
    """``{"<sim>/<method>": (sim, result)}`` for every simulator and every method in
    ``methods`` that applies to it (gradient only where the simulator is linear in the
    counts). An unknown method name raises a ``ValueError`` listing the known ones before
    any search runs. ``greedy_kwargs`` / ``gradient_kwargs`` go to that method's search."""
    chosen = {name: SEARCH_METHODS.get(name) for name in methods}
    extra = {"greedy": greedy_kwargs, "gradient": gradient_kwargs}
    kw = dict(layout=layout, init_subset=init_subset, candidates=candidates)
    out = {}
    for sim_name, sim in sims.items():
        for name, method in chosen.items():
            if method.applies(sim):
                res = method.search(sim, L0, targets, **kw, **dict(extra.get(name) or {}))
                out[f"{sim_name}/{name}"] = (sim, res)
    return out
