"""The numbers of a report: one row per simulator, divergence, the best of each metric.

A row holds the keys of ``metrics.summary`` (``mse_mean``, ``mse_std``, ...) and
``diverged_fraction``. Rows come from ``evaluation.score`` (the same scoring
``evaluation.evaluate`` uses: non-finite predictions count as +inf) or are given by the
caller; either way divergence is read off the predictions. A simulator diverges where its
rollout is non-finite or beyond ``rollout.DIVERGENCE_FACTOR`` times the largest |L_0|
(``rollout.diverged``); a row with any diverged trajectory is never ranked as best.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from simfluence_jax import evaluation, metrics
from simfluence_jax.metrics import METRICS
from simfluence_jax.rollouts import DIVERGENCE_FACTOR, diverged
from simfluence_jax.runs import RunSet

#: The group of a simulator the caller gave no group for.
DEFAULT_GROUP = "other"

Row = Mapping[str, float]


def check_predictions(predictions, heldout: RunSet) -> dict[str, np.ndarray]:
    """``{name: float[R, T+1, M]}`` as NumPy arrays; ``ValueError`` naming the simulator for
    a shape other than the held-out losses' or a non-numeric dtype."""
    if not isinstance(heldout, RunSet):
        raise ValueError(f"heldout must be a RunSet, got {type(heldout).__name__}")
    out = {}
    for name, p in (predictions or {}).items():
        arr = np.asarray(p)
        if arr.shape != heldout.losses.shape:
            raise ValueError(
                f"predictions[{name!r}] has shape {arr.shape} but the held-out losses have "
                f"shape {heldout.losses.shape} ([R, T+1, M])"
            )
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"predictions[{name!r}] must be numeric, got dtype {arr.dtype}")
        out[str(name)] = arr
    return out


def score_rows(
    predictions: Mapping[str, np.ndarray], heldout: RunSet, table: Mapping[str, Row] | None
) -> dict[str, dict[str, float]]:
    """The rows of ``table`` (kept as given), and a scored row for every simulator of
    ``predictions`` without one; every simulator with predictions gets the larger of its
    given and its measured ``diverged_fraction``."""
    rows = {str(n): dict(r) for n, r in (table or {}).items()}
    for name, p in predictions.items():
        if name not in rows:
            rows[name] = evaluation.score(p, heldout)
        else:
            frac = float(diverged(p, heldout.L0).mean())
            rows[name]["diverged_fraction"] = max(frac, rows[name].get("diverged_fraction", 0.0))
    return rows


def is_diverged(row: Row) -> bool:
    return row.get("diverged_fraction", 0.0) > 0


def is_finite(x) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


def order_by_group(names: Sequence[str], groups: Mapping[str, str]) -> list[str]:
    """Names grouped by their group, groups in order of first appearance, stable within."""
    order: list[str] = []
    for n in names:
        if groups[n] not in order:
            order.append(groups[n])
    return sorted(names, key=lambda n: order.index(groups[n]))


def rankable(rows: Mapping[str, Row], key: str, *, exclude: Sequence[str] = ()) -> dict:
    """``{name: mean of metric key}`` of the rows that may be ranked: not in ``exclude``,
    not diverged, with a finite mean."""
    return {
        n: float(r[f"{key}_mean"])
        for n, r in rows.items()
        if n not in exclude and not is_diverged(r) and is_finite(r.get(f"{key}_mean"))
    }


def best_by_metric(rows: Mapping[str, Row], *, exclude: Sequence[str] = ()) -> dict[str, list]:
    """``{metric: [names]}``, the simulator(s) with the best mean on each metric (lowest
    error, highest Spearman), all names in case of a tie. Rows with a positive
    ``diverged_fraction``, rows named in ``exclude`` and non-finite values are skipped; a
    metric no row has is left out."""
    best = {}
    for key, _, higher in METRICS:
        vals = rankable(rows, key, exclude=exclude)
        if vals:
            top = max(vals.values()) if higher else min(vals.values())
            best[key] = [n for n, v in vals.items() if v == top]
    return best


def error_curves(
    predictions: Mapping[str, np.ndarray], heldout: RunSet, rows: Mapping[str, Row]
) -> dict[str, dict[str, np.ndarray]]:
    """``metrics.per_step_error`` (``{"mse": float[T+1], "mae": float[T+1]}``) of every
    row, in order, that has predictions and did not diverge."""
    return {n: metrics.per_step_error(predictions[n], heldout.losses) for n, r in rows.items()
            if n in predictions and not is_diverged(r)}  # fmt: skip


def divergence_notes(rows: Mapping[str, Row]) -> list[str]:
    """One sentence per diverged row, saying what it means for the report."""
    return [
        f"{n} diverged on {r['diverged_fraction']:.1%} of the held-out trajectories "
        f"(non-finite, or above {DIVERGENCE_FACTOR:g} x max |L_0|): its non-finite errors "
        'read "diverged", and it is left out of the figures and of the ranking.'
        for n, r in rows.items()
        if is_diverged(r)
    ]
