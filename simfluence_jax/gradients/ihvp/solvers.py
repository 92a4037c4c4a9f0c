"""The built-in inverse-Hessian-vector solvers, declared for ``IHVP_SOLVERS``.

``IHVP_SOLVERS`` reads ``EXTENSIONS["influence solver"]`` of every module of this package: a
new solver is a module with its ``SolverConfig`` subclass, its ``inverse_hvp`` and
``EXTENSIONS = {"influence solver": {MyConfig.solver: Solver(MyConfig, inverse_hvp)}}``.
"""

from simfluence_jax.gradients.ihvp import cg, exact, lanczos, lissa
from simfluence_jax.gradients.ihvp.base import Solver

EXTENSIONS = {
    "influence solver": {
        cg.CGConfig.solver: Solver(cg.CGConfig, cg.inverse_hvp),
        lissa.LissaConfig.solver: Solver(lissa.LissaConfig, lissa.inverse_hvp),
        exact.ExactConfig.solver: Solver(exact.ExactConfig, exact.inverse_hvp),
        lanczos.LanczosConfig.solver: Solver(lanczos.LanczosConfig, lanczos.inverse_hvp),
    }
}
