"""simfluence_jax: training data attribution by simulating training runs, in JAX.

The core (this namespace) needs only JAX and NumPy: run records, simulators, exact solvers,
rollouts, counterfactual edits and metrics. Models, the training loop and the gradient
baselines live in subpackages that import Flax and optax.
"""

from simfluence_jax import counterfactuals, metrics
from simfluence_jax.evaluation import evaluate, evaluate_all, format_table, predict
from simfluence_jax.fitting import DEFAULT_L2, DEFAULT_L2_GRID, SIMULATORS, fit_all, fit_simulator
from simfluence_jax.rollout import (
    DivergenceWarning,
    UnseenExampleWarning,
    closed_form_final,
    diverged,
    rollout,
    simulate,
)
from simfluence_jax.runs import RunSet
from simfluence_jax.sharding import test_mesh
from simfluence_jax.simulators import LinearSimulator, MeanSimulator, Simulator
from simfluence_jax.solvers import SOLVERS, RidgeProblem, choose_solver, solve_ridge

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_L2",
    "DEFAULT_L2_GRID",
    "SIMULATORS",
    "SOLVERS",
    "DivergenceWarning",
    "LinearSimulator",
    "MeanSimulator",
    "RidgeProblem",
    "RunSet",
    "Simulator",
    "UnseenExampleWarning",
    "choose_solver",
    "closed_form_final",
    "counterfactuals",
    "diverged",
    "evaluate",
    "evaluate_all",
    "fit_all",
    "fit_simulator",
    "format_table",
    "metrics",
    "predict",
    "rollout",
    "simulate",
    "solve_ridge",
    "test_mesh",
]
