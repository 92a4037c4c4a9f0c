"""The teacher-forced ridge problem every Simfluence-Linear fit reduces to.

For test example j, each (run, step) row s gives one equation (DESIGN.md section 4):

    y_s = Lp_s * sum_{i in c_s} A_i + sum_{i in c_s} B_i,      y_s = L_s - alpha0 * Lp_s

with Lp_s the observed loss before the step. Minimising
``sum_s (y_s - x_s . theta)^2 + l2 |theta|^2`` over ``theta = (A, B)`` is ridge regression
with up to 2N unknowns. Every test example shares the batch ids ``ids``; only ``Lp`` and
``y`` differ, which is what the solvers exploit.

The optimizer kernel (docs/design.md) replaces the count vector ``m(c_s)`` of a row by its
filtered, learning-rate-scaled version ``s_t x_t`` with ``x_t = mu x_{t-1} + m(c_t)`` within
each run. Its rows stay linear in (A, B): ``x_t = sum_k F[t, k] m(c_k)`` with the lower
triangular filter ``F[t, k] = mu^(t-k)``. The solvers take ``F`` and the scales as arrays
(``kernel_arrays``), so changing ``mu`` recompiles nothing.
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
      momentum: the kernel's ``mu`` (0: plain Simfluence-Linear rows).
      scales: ``float32[T, R]`` learning-rate scales ``s_t`` of the rows, or ``None`` (all 1).
    """

    ids: np.ndarray
    Lp: np.ndarray
    y: np.ndarray
    num_train: int
    use_A: bool = True
    use_B: bool = True
    momentum: float = 0.0
    scales: np.ndarray | None = None

    @property
    def plain(self) -> bool:
        """Whether the rows are plain batch counts (no momentum, no learning-rate scale)."""
        return self.momentum == 0.0 and self.scales is None

    def kernel_arrays(self, dtype=None):
        """``(F [T, T], scales [T, R])`` of the kernel rows (see the module docstring)."""
        dtype = dtype or self.Lp.dtype
        T, R = self.ids.shape[:2]
        lag = np.arange(T)[:, None] - np.arange(T)[None, :]
        F = np.where(lag >= 0, float(self.momentum) ** np.maximum(lag, 0), 0.0)
        scales = np.ones((T, R)) if self.scales is None else self.scales
        return F.astype(dtype), np.asarray(scales, dtype)

    def with_kernel(self, momentum: float = 0.0, scales=None) -> RidgeProblem:
        """The same rows filtered by the kernel with ``mu = momentum`` and ``scales``."""
        return dataclasses.replace(self, momentum=float(momentum), scales=scales)

    def astype(self, dtype) -> RidgeProblem:
        """The problem with ``Lp``, ``y`` (and the scales) in ``dtype``."""
        scales = None if self.scales is None else self.scales.astype(dtype)
        return dataclasses.replace(
            self, Lp=self.Lp.astype(dtype), y=self.y.astype(dtype), scales=scales
        )

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
        runs: RunSet,
        *,
        alpha0: float = 0.0,
        use_A: bool = True,
        use_B: bool = True,
        momentum: float = 0.0,
        lr_ref: float | None = None,
    ) -> RidgeProblem:
        """Builds the rows of all runs and steps; ``alpha0`` is moved into the target.

        ``momentum`` and ``lr_ref`` (scales ``s_t = eta_t / lr_ref`` from
        ``runs.learning_rates``) give the kernel rows.
        """
        if not (use_A or use_B):
            raise ValueError("a ridge problem needs A or B (or both) as unknowns")
        ids = np.ascontiguousarray(np.transpose(runs.batches, (1, 0, 2)))  # [T, R, B]
        L = np.transpose(runs.losses, (2, 1, 0))  # [M, T+1, R]
        Lp, Ln = L[:, :-1], L[:, 1:]
        y = Ln - alpha0 * Lp
        scales = None
        if lr_ref is not None:
            if runs.learning_rates is None:
                raise ValueError("lr_scaled fits need runs with learning_rates")
            scales = (runs.learning_rates.T / lr_ref).astype(np.float32)
        return RidgeProblem(
            ids=ids.astype(np.int32),
            Lp=np.ascontiguousarray(Lp, np.float32),
            y=np.ascontiguousarray(y, np.float32),
            num_train=runs.num_train,
            use_A=use_A,
            use_B=use_B,
            momentum=float(momentum),
            scales=scales,
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
