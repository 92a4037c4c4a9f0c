"""Gradient-based training-data attribution: per-example gradients, TracIn-CP, Grad-Dot,
influence functions, and the additive simulators built from them.

Convention, used by every function of this package: a **score matrix is train x test,
``float32[N, M]``**, and **a positive score means the training example lowers the test
loss** (TracIn's "proponent", the negative of Koh & Liang's up-weighting influence on the
loss). Checkpoint dot products stack K such matrices: ``float32[K, N, M]``. Simulators
store the same numbers test-first (``S float32[M, K, N]``), like every simulator's
per-test parameters.

Modules:

* ``per_example``: ``vmap``-of-``grad`` per-example gradients for any protocol model or
  training method, chunked, restricted to a parameter subset, optionally projected;
* ``tracin``: checkpoints, TracIn-CP (summed and per-step) and Grad-Dot dot products;
* ``ihvp``: damped inverse-Hessian-vector solvers, one per module (CG, LiSSA, exact,
  low-rank Lanczos), each with its own config, in the registry ``IHVP_SOLVERS``;
* ``influence``: influence scores through a registered solver, and ``InfluenceConfig``
  (a solver's config from the flat dict a config file gives);
* ``trak``: TRAK (projected gradients, the after-kernel, an ensemble of checkpoints);
* ``ekfac``: EK-FAC influence (Kronecker-factored Gauss-Newton of dense layers, eigenvalues
  corrected in its eigenbasis);
* ``context``: ``GradientContext`` (computes and caches scores) and
  ``PrecomputedGradients`` (the scores as arrays);
* ``scores``: the score kinds by name (``SCORE_KINDS``: checkpoints, final, influence,
  trak, ekfac), what ``GradientContext.precompute`` computes;
* ``baselines``: the scores as additive simulators, raw and calibrated;
* ``metagradient``: exact derivatives of test losses with respect to a weight on every
  training example of one logged run, through the whole run (``Replay``: reverse mode with
  rematerialisation, forward mode along one edit direction).

``simfluence_jax.SIMULATORS`` lists the simulators ``tracin_cp``, ``tracin_cp_summed``,
``grad_dot``, ``influence``, ``trak``, ``ekfac`` and their ``*_calibrated`` twins (this package is
imported when one is first fitted); fit them with ``fit_simulator(name, runs, gradients=ctx)``.
"""

from simfluence_jax.gradients.baselines import (
    BASELINES,
    calibrate,
    calibration_scale,
    gradient_simulator_names,
    make_simulator,
    raw_simulator,
)
from simfluence_jax.gradients.context import (
    GradientContext,
    GradientSource,
    PrecomputedGradients,
)
from simfluence_jax.gradients.ekfac import EKFACConfig, ekfac_factors, ekfac_scores
from simfluence_jax.gradients.ihvp import (
    IHVP_SOLVERS,
    CGConfig,
    ExactConfig,
    LanczosConfig,
    LissaConfig,
    SolveInfo,
    SolverConfig,
    explicit_matrix,
    lissa_stochastic,
    mean_loss_hvp,
    solve_damped_cg,
    solve_exact,
    solve_lissa,
    solve_lowrank,
    top_eigenvalue,
)
from simfluence_jax.gradients.ihvp.lanczos import lanczos
from simfluence_jax.gradients.influence import InfluenceConfig, influence_scores, inverse_hvp
from simfluence_jax.gradients.metagradient import (
    Metagradients,
    Replay,
    differentiable_optimizer,
    horizon_readout,
    steps_readout,
)
from simfluence_jax.gradients.per_example import (
    Projection,
    dots_with,
    gradient_dots,
    method_loss,
    model_loss,
    param_mask,
    per_example_grads,
    restrict,
)
from simfluence_jax.gradients.tracin import (
    Checkpoint,
    checkpoint_dots,
    load_checkpoints,
    nearest_checkpoint,
    tracin_cp,
)
from simfluence_jax.gradients.trak import TRAKConfig, after_kernel_scores, trak_scores

__all__ = [
    "BASELINES",
    "CGConfig",
    "Checkpoint",
    "EKFACConfig",
    "ExactConfig",
    "GradientContext",
    "GradientSource",
    "IHVP_SOLVERS",
    "InfluenceConfig",
    "LanczosConfig",
    "LissaConfig",
    "Metagradients",
    "PrecomputedGradients",
    "Projection",
    "Replay",
    "SolveInfo",
    "SolverConfig",
    "TRAKConfig",
    "after_kernel_scores",
    "calibrate",
    "calibration_scale",
    "checkpoint_dots",
    "differentiable_optimizer",
    "dots_with",
    "ekfac_factors",
    "ekfac_scores",
    "explicit_matrix",
    "gradient_dots",
    "gradient_simulator_names",
    "influence_scores",
    "horizon_readout",
    "inverse_hvp",
    "lanczos",
    "lissa_stochastic",
    "load_checkpoints",
    "make_simulator",
    "mean_loss_hvp",
    "method_loss",
    "model_loss",
    "nearest_checkpoint",
    "param_mask",
    "per_example_grads",
    "raw_simulator",
    "restrict",
    "solve_damped_cg",
    "solve_exact",
    "solve_lissa",
    "solve_lowrank",
    "steps_readout",
    "top_eigenvalue",
    "tracin_cp",
    "trak_scores",
]
