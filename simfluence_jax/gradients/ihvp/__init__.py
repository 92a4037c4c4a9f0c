"""Inverse-Hessian-vector solvers, one per module, registered by name.

Each solves ``(H + lambda I) X = B`` for ``B float32[M, P]`` (one right-hand side per row)
with ``H`` the Hessian of the mean training loss, forming only Hessian-vector products
(``hvp``):

* ``cg`` (``CGConfig``): conjugate gradients on all M right-hand sides at once;
* ``lissa`` (``LissaConfig``): the truncated Neumann series, full-batch or stochastic;
* ``exact`` (``ExactConfig``): the explicit ``P x P`` Hessian and a dense solve;
* ``lanczos`` (``LanczosConfig``): a rank-k Lanczos approximation, ``k`` HVPs in all.

``IHVP_SOLVERS.get(name)`` is a :class:`Solver`: the config class and ``inverse_hvp``. It
reads ``EXTENSIONS["influence solver"]`` of the modules of this package (the built-ins are
declared in ``solvers``). To add a solver, write a module here with a ``SolverConfig``
subclass (its ``solver`` name and its own fields), an ``inverse_hvp`` and
``EXTENSIONS = {"influence solver": {MyConfig.solver: Solver(MyConfig, inverse_hvp)}}``.
"""

from simfluence_jax.gradients.ihvp.base import InverseHVP, SolveInfo, Solver, SolverConfig
from simfluence_jax.gradients.ihvp.cg import CGConfig, solve_damped_cg
from simfluence_jax.gradients.ihvp.exact import ExactConfig, solve_exact
from simfluence_jax.gradients.ihvp.hvp import Matvec, explicit_matrix, mean_loss_hvp
from simfluence_jax.gradients.ihvp.lanczos import LanczosConfig, solve_lowrank
from simfluence_jax.gradients.ihvp.lissa import (
    LissaConfig,
    lissa_stochastic,
    solve_lissa,
    top_eigenvalue,
)
from simfluence_jax.registry import Registry

IHVP_SOLVERS: Registry[Solver] = Registry(
    "influence solver", packages=("simfluence_jax.gradients.ihvp",)
)

__all__ = [
    "CGConfig",
    "ExactConfig",
    "IHVP_SOLVERS",
    "InverseHVP",
    "LanczosConfig",
    "LissaConfig",
    "Matvec",
    "SolveInfo",
    "Solver",
    "SolverConfig",
    "explicit_matrix",
    "lissa_stochastic",
    "mean_loss_hvp",
    "solve_damped_cg",
    "solve_exact",
    "solve_lissa",
    "solve_lowrank",
    "top_eigenvalue",
]
