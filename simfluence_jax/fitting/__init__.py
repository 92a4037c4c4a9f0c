"""Fitting simulators from logged runs, with l2 (and the kernel's mu) chosen on validation runs.

``fit_simulator(name, runs, ...)`` looks the name up in ``SIMULATORS`` and returns a fitted
simulator (a pytree). The ridge-based ones (``linear``, ``additive``, ``multiplicative``,
``shuffled``) solve the teacher-forced regression of docs/design.md ("Fitting") exactly,
optionally with the optimizer kernel's rows (``momentum``, ``lr_scaled``). When several l2
values are given (or ``l2=None`` with validation runs) the whole l2 path is solved at once
(the normal equations are shared) and the value whose rollout on the validation runs has the
lowest all-steps MSE wins (not the one-step error, which rewards fits that drift when fed
their own predictions). ``momentum="auto"`` does the same over a grid of mu, so the choice
costs one solve of the l2 path per mu.

``SIMULATORS`` is the only source of simulators. Each name is a ``Fitter`` record
(``simulators.fitter``) that the module of its simulator class declares in its
``EXTENSIONS``; ``SIMULATORS`` finds them by listing ``simfluence_jax/simulators/`` (and any
extension module, ``simfluence_jax.registry``). Fitters that need the training stack
(gradient baselines, the featurized simulator) are ``"module:attr"`` references imported on
first use. A record gives the inputs its fitter needs beyond the runs (``gradients``,
``features``) and its report group; the fitter's keyword-only parameters are its keywords.
``fit_simulator`` rejects unknown keywords by name, and ``fit_all`` passes each fitter only
the keywords it declares and names a missing input.

The modules: ``registry`` (``SIMULATORS``, ``fitter``, ``fit_simulator``, ``fit_all``),
``linear`` (the registered Linear-family fitters and the controls), ``ridge`` (the ridge fit
over a (mu, l2) grid; ``ridge.GRID_CHUNK_BYTES`` bounds the memory of a grid) and ``choice``
(the grids and the validation rollout error).
"""

from simfluence_jax.fitting.choice import (
    DEFAULT_L2,
    DEFAULT_L2_GRID,
    MOMENTUM_GRID,
    path_mse,
    rollout_mse,
)
from simfluence_jax.fitting.linear import (
    fit_additive,
    fit_constant,
    fit_linear,
    fit_linear_kernel,
    fit_linear_one_plus_sum,
    fit_mean,
    fit_multiplicative,
    fit_shuffled,
)
from simfluence_jax.fitting.registry import (
    CALIBRATED_SUFFIX,
    GRADIENT_BASELINES,
    SIMULATORS,
    Fitter,
    accepted_keywords,
    fit_all,
    fit_simulator,
    fitter,
    required_inputs,
    simulator_group,
)
from simfluence_jax.fitting.ridge import ALPHA_FORMS

__all__ = [
    "ALPHA_FORMS",
    "CALIBRATED_SUFFIX",
    "DEFAULT_L2",
    "DEFAULT_L2_GRID",
    "GRADIENT_BASELINES",
    "MOMENTUM_GRID",
    "SIMULATORS",
    "Fitter",
    "accepted_keywords",
    "fit_additive",
    "fit_all",
    "fit_constant",
    "fit_linear",
    "fit_linear_kernel",
    "fit_linear_one_plus_sum",
    "fit_mean",
    "fit_multiplicative",
    "fit_shuffled",
    "fit_simulator",
    "fitter",
    "path_mse",
    "required_inputs",
    "rollout_mse",
    "simulator_group",
]
