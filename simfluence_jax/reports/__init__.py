"""Reports: the results table in the paper's terms, figures, attribution, a counterfactual,
data files.

``write_report`` composes ``scoring`` (rows, divergence, the best of each metric),
``figures`` (what the figures show, written as PNG), ``attribution`` (the top helpful and
harmful training examples of three test examples, when given the simulators) and ``render``
(Markdown, JSON, CSV).
Part of the library layer (it needs matplotlib); the core never imports it. Figures are
built on ``matplotlib.figure.Figure`` with the Agg canvas, never through ``pyplot``, so
importing this package leaves the global matplotlib backend alone.

Example::

    from simfluence_jax import evaluation, reports
    preds = {name: evaluation.predict(sim, heldout) for name, sim in sims.items()}
    reports.write_report("outputs/report", heldout=heldout, predictions=preds,
                         groups={"linear": "fitted", "constant": "control"}, simulators=sims)
"""

from simfluence_jax.metrics import METRICS
from simfluence_jax.reports.attribution import AttributionSection
from simfluence_jax.reports.counterfactual import Counterfactual
from simfluence_jax.reports.plots import (
    plot_counterfactual,
    plot_per_step_error,
    plot_trajectories,
    simulator_styles,
)
from simfluence_jax.reports.render import markdown_table
from simfluence_jax.reports.scoring import best_by_metric
from simfluence_jax.reports.writer import write_report

__all__ = [
    "METRICS",
    "AttributionSection",
    "Counterfactual",
    "best_by_metric",
    "markdown_table",
    "plot_counterfactual",
    "plot_per_step_error",
    "plot_trajectories",
    "simulator_styles",
    "write_report",
]
