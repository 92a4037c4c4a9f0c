"""The kinds of gradient score, by name: what ``GradientContext.precompute`` computes.

``SCORE_KINDS.get(kind)`` is a :class:`ScoreKind`: ``compute(ctx)`` returns the fields of
``PrecomputedGradients`` the kind fills (computing on ``ctx``, a ``GradientContext``, what it
has not cached yet), and ``simulators`` names the gradient baselines that read it. The
registry reads ``EXTENSIONS["gradient score"]`` of the modules of ``simfluence_jax.gradients``;
this module declares the built-in kinds ``checkpoints``, ``final``, ``influence``, ``trak``
and ``ekfac``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from simfluence_jax.registry import Registry


class ScoreKind(NamedTuple):
    """``compute(ctx) -> {PrecomputedGradients field: array}`` and the raw gradient
    simulators that read the kind (their ``_calibrated`` twins read it too)."""

    compute: Callable[[Any], dict[str, np.ndarray]]
    simulators: tuple[str, ...]


SCORE_KINDS: Registry[ScoreKind] = Registry(
    "gradient score", packages=("simfluence_jax.gradients",)
)


def kinds_read_by(simulators: Iterable[str], *, suffix: str = "_calibrated") -> list[str]:
    """The score kinds (sorted) that the named simulators read; other names read none."""
    names = {name.removesuffix(suffix) for name in simulators}
    return [k for k in SCORE_KINDS.names() if names & set(SCORE_KINDS.get(k).simulators)]


def _checkpoints(ctx) -> dict[str, np.ndarray]:
    steps, rates, dots = ctx.checkpoint_dots()
    return {"steps": steps, "checkpoint_rates": rates, "dots": dots}


def _final(ctx) -> dict[str, np.ndarray]:
    return {"final": ctx.final_dots()}


def _influence(ctx) -> dict[str, np.ndarray]:
    return {"influence": ctx.influence_scores()}


def _trak(ctx) -> dict[str, np.ndarray]:
    return {"trak": ctx.trak_scores()}


def _ekfac(ctx) -> dict[str, np.ndarray]:
    return {"ekfac": ctx.ekfac_scores()}


EXTENSIONS = {
    "gradient score": {
        "checkpoints": ScoreKind(_checkpoints, ("tracin_cp", "tracin_cp_summed")),
        "final": ScoreKind(_final, ("grad_dot",)),
        "influence": ScoreKind(_influence, ("influence",)),
        "trak": ScoreKind(_trak, ("trak",)),
        "ekfac": ScoreKind(_ekfac, ("ekfac",)),
    }
}
