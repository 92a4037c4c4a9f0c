"""Figures of the report: true vs simulated trajectories, per-step error, a counterfactual.

Every function returns a ``matplotlib.figure.Figure`` built without ``pyplot``, so nothing
here touches the global matplotlib backend or the figure manager (a notebook user's backend is
left alone, and no window ever opens); ``Figure.savefig`` renders PNGs through the Agg canvas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simfluence_jax.reports.counterfactual import Counterfactual

TRUE_COLOR = "black"
_LINESTYLES = ("-", "--", "-.", ":")


def shorten(text: str, width: int = 48) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    one_line = " ".join(str(text).split())
    return one_line if len(one_line) <= width else one_line[: width - 1].rstrip() + "…"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def simulator_styles(
    names: Sequence[str], groups: Mapping[str, str] | None = None
) -> dict[str, dict[str, object]]:
    """A fixed colour per simulator (in the order given) and a line style per group, so one
    simulator looks the same in every figure of a report."""
    # tab20 lists each hue dark then light: the first 10 simulators get the dark shades
    # (tab10's), any further ones the light shades.
    tab20 = colormaps["tab20"].colors
    palette = list(tab20[0::2]) + list(tab20[1::2])
    group_order: list[str] = []
    for n in names:
        g = (groups or {}).get(n, "")
        if g not in group_order:
            group_order.append(g)
    return {
        n: {
            "color": palette[i % len(palette)],
            "linestyle": _LINESTYLES[group_order.index((groups or {}).get(n, "")) % 4],
        }
        for i, n in enumerate(names)
    }


def _style(styles, name, i):
    if styles and name in styles:
        return dict(styles[name])
    return {"color": colormaps["tab10"](i % 10), "linestyle": "--"}


def plot_trajectories(
    true: np.ndarray,
    predicted: Mapping[str, np.ndarray],
    *,
    examples: Sequence[int],
    texts: Sequence[str] | None = None,
    title: str = "True vs simulated test-loss trajectories",
    styles: Mapping[str, Mapping[str, object]] | None = None,
    columns: int | None = None,
) -> Figure:
    """One panel per test example: the observed trajectory and each simulator's rollout.

    Args:
      true: ``float[T+1, M]`` observed losses of one run.
      predicted: ``{name: float[T+1, M]}`` simulated losses of the same run.
      examples: test-example columns to show, one panel each.
      texts: ``[M]`` test texts; a short form becomes each panel's title.
      styles: ``{name: matplotlib line kwargs}`` (see ``simulator_styles``).
      columns: panels per row (default: 2 for up to 4 panels, else 3).
    """
    true = np.asarray(true, np.float64)
    if true.ndim != 2:
        raise ValueError(f"true must have shape [T+1, M], got {true.shape}")
    examples = [int(j) for j in examples]
    if not examples:
        raise ValueError("no test examples to plot")
    M = true.shape[1]
    bad = [j for j in examples if not 0 <= j < M]
    if bad:
        raise ValueError(f"test examples {bad} out of range for M = {M}")
    for name, p in predicted.items():
        if np.shape(p) != true.shape:
            raise ValueError(f"{name}: predicted shape {np.shape(p)} differs from {true.shape}")
    n = len(examples)
    cols = columns or (min(n, 2) if n <= 4 else 3)
    rows = -(-n // cols)
    fig = _figure(4.6 * cols, 3.3 * rows + 0.9)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    steps = np.arange(true.shape[0])
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        j = examples[k]
        ax.plot(steps, true[:, j], color=TRUE_COLOR, linewidth=2.4, label="observed")
        for i, (name, p) in enumerate(predicted.items()):
            ax.plot(
                steps, np.asarray(p)[:, j], linewidth=1.6, label=name, **_style(styles, name, i)
            )
        label = f"test example {j}"
        if texts is not None:
            label += f': "{shorten(texts[j], 40)}"'
        ax.set_title(label, fontsize=9.5)
        ax.grid(alpha=0.3)
        if k % cols == 0:
            ax.set_ylabel("test loss")
        if k >= n - cols:
            ax.set_xlabel("training step")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=9)
    fig.suptitle(title, fontsize=12)
    return fig


def plot_per_step_error(
    curves: Mapping[str, np.ndarray],
    *,
    metric: str = "MSE",
    title: str = "Per-step error on held-out runs",
    styles: Mapping[str, Mapping[str, object]] | None = None,
) -> Figure:
    """The per-step error of each simulator, ``float[T+1]`` (step 0 omitted: it is 0 by
    construction), on a log scale; non-positive values are not drawn."""
    if not curves:
        raise ValueError("no error curves to plot")
    fig = _figure(8.0, 4.8)
    ax = fig.subplots()
    for i, (name, c) in enumerate(curves.items()):
        c = np.asarray(c, np.float64)
        if c.ndim != 1 or c.shape[0] < 2:
            raise ValueError(f"{name}: an error curve must be float[T+1], got shape {c.shape}")
        y = np.where(c[1:] > 0, c[1:], np.nan)
        ax.plot(np.arange(1, c.shape[0]), y, linewidth=1.7, label=name, **_style(styles, name, i))
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{metric} (mean over runs and test examples)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    return fig


def plot_counterfactual(cf: Counterfactual, *, title: str | None = None) -> Figure:
    """Original vs edited curriculum for one test example: observed, simulated, and (if
    given) retrained trajectories, with the predicted and achieved final-loss change."""
    fig = _figure(8.0, 5.0)
    ax = fig.subplots()
    orig = np.arange(cf.observed.shape[0])
    edit = np.arange(cf.simulated_edited.shape[0])
    blue, orange = "tab:blue", "tab:orange"
    ax.plot(orig, cf.observed, color=blue, linewidth=2.4, label="original curriculum, observed")
    finite = np.all(np.isfinite(cf.simulated_original)) and np.all(np.isfinite(cf.simulated_edited))
    sim = f" ({cf.simulator})" if cf.simulator else ""
    if finite:
        ax.plot(orig, cf.simulated_original, color=blue, linestyle="--", linewidth=1.8,
                label=f"original curriculum, simulated{sim}")  # fmt: skip
        ax.plot(edit, cf.simulated_edited, color=orange, linestyle="--", linewidth=1.8,
                label=f"edited curriculum, simulated{sim}")  # fmt: skip
    if cf.retrained is not None:
        ax.plot(edit, cf.retrained, color=orange, linewidth=2.4,
                label="edited curriculum, retrained (real)")  # fmt: skip
    changes = [f"predicted final-loss change: {cf.predicted_change:+.4f}"]
    if not finite:
        changes = ["simulated trajectories diverged (not drawn)"]
    if cf.achieved_change is not None:
        changes.append(f"achieved final-loss change: {cf.achieved_change:+.4f}")
    n = len(cf.removed_ids)
    ax.set_title(
        title
        or f"Counterfactual for test example {cf.test_index}: {n} training example"
        f"{'s' if n != 1 else ''} removed",
        fontsize=11,
    )
    if cf.test_text:
        fig.suptitle(f'"{shorten(cf.test_text, 80)}"', fontsize=9.5, style="italic")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"loss on test example {cf.test_index}")
    ax.grid(alpha=0.3)
    # The changes head the legend, which matplotlib places where it hides the fewest points.
    ax.legend(loc="best", fontsize=9, title="\n".join(changes), title_fontsize=9)
    return fig
