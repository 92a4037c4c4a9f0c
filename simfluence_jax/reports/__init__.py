"""Reports: the results table in the paper's terms, figures, a counterfactual, data files.

Part of the pipeline layer (it needs matplotlib); the core never imports it. Figures are
built on ``matplotlib.figure.Figure`` with the Agg canvas, never through ``pyplot``, so
importing this package leaves the global matplotlib backend alone.

Example::

    from simfluence_jax import evaluation, reports
    preds = {name: evaluation.predict(sim, heldout) for name, sim in sims.items()}
    reports.write_report("outputs/report", heldout=heldout, predictions=preds,
                         groups={"linear": "fitted", "constant": "control"})
"""

from simfluence_jax.reports.counterfactual import Counterfactual
from simfluence_jax.reports.plots import (
    plot_counterfactual,
    plot_per_step_error,
    plot_trajectories,
    simulator_styles,
)
from simfluence_jax.reports.writer import (
    METRICS,
    best_by_metric,
    git_revision,
    markdown_table,
    score_predictions,
    write_report,
)

__all__ = [
    "METRICS",
    "Counterfactual",
    "best_by_metric",
    "git_revision",
    "markdown_table",
    "plot_counterfactual",
    "plot_per_step_error",
    "plot_trajectories",
    "score_predictions",
    "simulator_styles",
    "write_report",
]
