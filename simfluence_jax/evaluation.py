"""Evaluating fitted simulators on held-out runs: one table row per simulator."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from simfluence_jax import metrics
from simfluence_jax.rollouts import diverged, rollout
from simfluence_jax.runs import RunSet


def predict(sim, runs: RunSet, *, mesh=None) -> np.ndarray:
    """``float32[R, T+1, M]``: ``sim``'s rollout of every run's curriculum from its L_0
    (under the run's learning rates, for ``lr_scaled`` simulators)."""
    return np.asarray(
        rollout(sim, runs.batches, runs.L0, learning_rates=runs.learning_rates, mesh=mesh)
    )


def score(pred, runs: RunSet) -> dict[str, float]:
    """``metrics.summary`` of predicted trajectories ``float[R, T+1, M]`` against ``runs``'
    losses, plus the fraction of diverged trajectories. Non-finite predictions count as +inf
    (they are excluded from nothing: a diverging simulator scores badly, as it should)."""
    pred = np.asarray(pred)
    bad = diverged(pred, runs.L0)
    with np.errstate(over="ignore", invalid="ignore"):
        row = metrics.summary(np.where(np.isfinite(pred), pred, np.inf), runs.losses)
    row["diverged_fraction"] = float(bad.mean())
    return row


def evaluate(sim, runs: RunSet, *, mesh=None) -> dict[str, float]:
    """``score`` of ``sim``'s rollout of ``runs``."""
    return score(predict(sim, runs, mesh=mesh), runs)


def evaluate_all(sims: Mapping[str, object], runs: RunSet, *, mesh=None) -> dict[str, dict]:
    """``{name: evaluate(sim, runs)}``."""
    return {name: evaluate(sim, runs, mesh=mesh) for name, sim in sims.items()}


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table of the paper's metrics (``metrics.METRICS``, mean +- std) for every
    simulator."""
    head = "| simulator | " + " | ".join(label for _, label, _ in metrics.METRICS) + " |"
    sep = "|---" * (len(metrics.METRICS) + 1) + "|"
    lines = [head, sep]
    for name, row in rows.items():
        cells = [
            f"{row[f'{k}_mean']:.4g} ± {row[f'{k}_std']:.2g}" if f"{k}_mean" in row else "n/a"
            for k, _, _ in metrics.METRICS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
