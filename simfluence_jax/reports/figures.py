"""Which figures a report shows, and writing them as PNG files.

The trajectory figure shows one held-out run: a few test examples spread over the range of
the true loss change, and at most ``MAX_TRAJECTORY_LINES`` simulators (the best of each
group by MSE, then the best overall) unless the caller names them. Diverged simulators are
drawn in no figure. The drawing itself is ``reports.plots``.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from simfluence_jax.fileio import atomic_write
from simfluence_jax.reports import plots
from simfluence_jax.reports.counterfactual import Counterfactual
from simfluence_jax.reports.scoring import Row, is_diverged, is_finite
from simfluence_jax.runs import RunSet

TRAJECTORIES_PNG = "trajectories.png"
PER_STEP_PNG = "per_step_error.png"
COUNTERFACTUAL_PNG = "counterfactual.png"
FIGURES = (TRAJECTORIES_PNG, PER_STEP_PNG, COUNTERFACTUAL_PNG)

#: At most this many simulators are drawn in the trajectory figure by default.
MAX_TRAJECTORY_LINES = 6


@dataclasses.dataclass(frozen=True)
class TrajectoryFigure:
    """What the trajectory figure shows: held-out run ``run``, test examples ``examples``
    (``spread``: chosen over the range of the true loss change, not given), ``simulators``."""

    run: int
    examples: list[int]
    spread: bool
    simulators: list[str]


def choose_examples(true_run: np.ndarray, k: int) -> list[int]:
    """``k`` test examples spanning the range of the true loss change L_T - L_0 of one run
    (``true_run: float[T+1, M]``)."""
    change = true_run[-1] - true_run[0]
    order = np.argsort(change, kind="stable")
    k = min(k, order.size)
    picks = np.unique(np.round(np.linspace(0, order.size - 1, k)).astype(int))
    return [int(order[i]) for i in picks]


def choose_plotted(
    names: Sequence[str], rows: Mapping[str, Row], groups: Mapping[str, str], limit: int
) -> list[str]:
    """All names if at most ``limit``; else the lowest-MSE simulator of each group, then the
    rest by MSE, up to ``limit``, shown in their table order."""
    if len(names) <= limit:
        return list(names)

    def mse(n):
        v = rows[n].get("mse_mean")
        return float(v) if is_finite(v) else math.inf

    chosen: list[str] = []
    for g in dict.fromkeys(groups[n] for n in names):
        chosen.append(min((n for n in names if groups[n] == g), key=mse))
    chosen += [n for n in sorted(names, key=mse) if n not in chosen]
    return [n for n in names if n in chosen[:limit]]


def choose_trajectory_figure(
    rows: Mapping[str, Row],
    groups: Mapping[str, str],
    predictions: Mapping[str, np.ndarray],
    heldout: RunSet,
    *,
    run: int,
    examples: int,
    example_ids: Sequence[int] | None,
    simulators: Sequence[str] | None,
) -> tuple[TrajectoryFigure, list[str]]:
    """The trajectory figure (rows in table order) and notes on simulators asked for but
    diverged."""
    plottable = [n for n in rows if n in predictions and not is_diverged(rows[n])]
    notes = []
    if simulators is not None:
        notes = [f"{n} was asked for in the trajectory figure but diverged."
                 for n in simulators if is_diverged(rows[n])]  # fmt: skip
        plottable = [n for n in plottable if n in simulators]
    else:
        plottable = choose_plotted(plottable, rows, groups, MAX_TRAJECTORY_LINES)
    if example_ids is None:
        shown = choose_examples(heldout.losses[run], examples)
    else:
        shown = [int(j) for j in example_ids]
    return TrajectoryFigure(run, shown, example_ids is None, plottable), notes


def save_figure(fig, path: Path) -> None:
    """Writes a matplotlib figure as a PNG file, atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())


def write_figures(
    out: Path,
    *,
    heldout: RunSet,
    predictions: Mapping[str, np.ndarray],
    trajectory: TrajectoryFigure,
    curves: Mapping[str, Mapping[str, np.ndarray]],
    styles: Mapping[str, Mapping[str, object]],
    counterfactual: Counterfactual | None,
    test_texts: Sequence[str] | None,
) -> list[str]:
    """Writes the figures that have something to show into ``out``; returns their names."""
    R, _, M = heldout.losses.shape
    written = []
    if trajectory.simulators:
        fig = plots.plot_trajectories(
            heldout.losses[trajectory.run],
            {n: predictions[n][trajectory.run] for n in trajectory.simulators},
            examples=trajectory.examples,
            texts=test_texts,
            title=f"True vs simulated test-loss trajectories (held-out run {trajectory.run})",
            styles=styles,
        )
        save_figure(fig, out / TRAJECTORIES_PNG)
        written.append(TRAJECTORIES_PNG)
    if curves:
        fig = plots.plot_per_step_error(
            {n: c["mse"] for n, c in curves.items()},
            title=f"Per-step MSE on {R} held-out runs x {M} test examples",
            styles=styles,
        )
        save_figure(fig, out / PER_STEP_PNG)
        written.append(PER_STEP_PNG)
    if counterfactual is not None:
        save_figure(plots.plot_counterfactual(counterfactual), out / COUNTERFACTUAL_PNG)
        written.append(COUNTERFACTUAL_PNG)
    return written
