"""simfluence_jax: training data attribution by simulating training runs, in JAX.

The core (this namespace) needs only JAX and NumPy: run records, simulators, exact solvers,
rollouts, counterfactual edits and metrics. Models, the training loop and the gradient
baselines live in subpackages that import Flax and optax.

Names are imported on first use, so ``simfluence_jax.logger`` and ``simfluence_jax.importers``
load inside a training process written in another framework without importing JAX.
"""

import importlib

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "attribution": None,
    "counterfactuals": None,
    "metrics": None,
    "Effects": "attribution",
    "group_effect": "attribution",
    "load_scores": "attribution",
    "removal_effects": "attribution",
    "save_scores": "attribution",
    "score_matrix": "attribution",
    "top": "attribution",
    "evaluate": "evaluation",
    "evaluate_all": "evaluation",
    "format_table": "evaluation",
    "predict": "evaluation",
    "DEFAULT_L2": "fitting",
    "DEFAULT_L2_GRID": "fitting",
    "SIMULATORS": "fitting",
    "fit_all": "fitting",
    "fit_simulator": "fitting",
    "read_gptfluence": "importers",
    "read_long": "importers",
    "write_gptfluence": "importers",
    "RunLogger": "logger",
    "DivergenceWarning": "rollouts",
    "UnseenExampleWarning": "rollouts",
    "closed_form_final": "rollouts",
    "diverged": "rollouts",
    "rollout": "rollouts",
    "simulate": "rollouts",
    "RunSet": "runs",
    "test_mesh": "sharding",
    "FilterSimulator": "simulators",
    "LinearSimulator": "simulators",
    "MeanSimulator": "simulators",
    "Simulator": "simulators",
    "SOLVERS": "solvers",
    "RidgeProblem": "solvers",
    "choose_solver": "solvers",
    "solve_ridge": "solvers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name] or name}")
    value = module if _EXPORTS[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
