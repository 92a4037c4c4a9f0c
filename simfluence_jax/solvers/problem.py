"""The teacher-forced ridge problem every Simfluence-Linear fit reduces to.

For test example j, each (run, step) row s gives one equation (DESIGN.md section 4):

    y_s = Lp_s * sum_{i in c_s} A_i + sum_{i in c_s} B_i,      y_s = L_s - alpha0 * Lp_s

with Lp_s the observed loss before the step. Minimising
``sum_s (y_s - x_s . theta)^2 + l2 |theta|^2`` over ``theta = (A, B)`` is ridge regression
with up to 2N unknowns. Every test example shares the batch ids ``ids``; only ``Lp`` and
``y`` differ, which is what the solvers exploit.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from simfluence_jax.runs import RunSet


@dataclasses.dataclass(frozen=True)
class RidgeProblem:
    """Rows of the teacher-forced regression, shared ids and per-test targets.

    Attributes:
      ids: ``int32[T, R, B]`` batch ids of the rows grouped by step (``-1`` = padding).
      Lp: ``float32[M, T, R]`` loss before each row's step, per test example.
      y: ``float32[M, T, R]`` regression target, per test example.
      num_train: N.
      use_A: whether the multiplicative parameters A are unknowns.
      use_B: whether the additive parameters B are unknowns.
    """

    ids: np.ndarray
    Lp: np.ndarray
    y: np.ndarray
    num_train: int
    use_A: bool = True
    use_B: bool = True

    @property
    def num_test(self) -> int:
        return self.Lp.shape[0]

    @property
    def num_rows(self) -> int:
        return self.ids.shape[0] * self.ids.shape[1]

    @property
    def num_unknowns(self) -> int:
        return self.num_train * (int(self.use_A) + int(self.use_B))

    @staticmethod
    def from_runs(
        runs: RunSet, *, alpha0: float = 0.0, use_A: bool = True, use_B: bool = True
    ) -> RidgeProblem:
        """Builds the rows of all runs and steps; ``alpha0`` is moved into the target."""
        if not (use_A or use_B):
            raise ValueError("a ridge problem needs A or B (or both) as unknowns")
        ids = np.ascontiguousarray(np.transpose(runs.batches, (1, 0, 2)))  # [T, R, B]
        L = np.transpose(runs.losses, (2, 1, 0))  # [M, T+1, R]
        Lp, Ln = L[:, :-1], L[:, 1:]
        y = Ln - alpha0 * Lp
        return RidgeProblem(
            ids=ids.astype(np.int32),
            Lp=np.ascontiguousarray(Lp, np.float32),
            y=np.ascontiguousarray(y, np.float32),
            num_train=runs.num_train,
            use_A=use_A,
            use_B=use_B,
        )

    def split_theta(self, theta):
        """Splits unknowns ``[..., P]`` into ``(A, B)``, each ``[..., N]`` (zeros if unused)."""
        import jax.numpy as jnp

        N = self.num_train
        zeros = jnp.zeros(theta.shape[:-1] + (N,), theta.dtype)
        if self.use_A and self.use_B:
            return theta[..., :N], theta[..., N:]
        if self.use_A:
            return theta, zeros
        return zeros, theta
