"""What the optimizer-kernel and filter-kernel tests share: their synthetic worlds, the dense
NumPy ridge they check the fits against, and the held-out error."""

from __future__ import annotations

import numpy as np

import simfluence_jax as sj
from simfluence_jax import metrics
from simfluence_jax.runs import RunSet
from simfluence_jax.synthetic import make_kernel_runs


def world(*, seed: int = 0, num_runs: int = 60, **law) -> RunSet:
    """Runs of 40 pool and 6 test examples from the kernel law, one_plus_sum form
    (``synthetic.make_kernel_runs``; ``law``: ``mu`` and ``schedule``, or ``filter``)."""
    return make_kernel_runs(num_train=40, num_test=6, num_runs=num_runs, subset=32, epochs=3,
                            seed=seed, **law)  # fmt: skip


def dense_ridge(runs: RunSet, X: np.ndarray, l2: float):
    """``(A, B) [M, N]``: the teacher-forced ridge of the one_plus_sum form on the rows
    ``X float[R*T, N]`` (the kernel's filtered, scaled counts), written out densely: the rows
    of test example j are ``[L_{t-1} x_t, x_t]`` with target ``L_t - L_{t-1}``."""
    N, M = runs.num_train, runs.num_test
    A, B = np.zeros((M, N)), np.zeros((M, N))
    for j in range(M):
        Lp = runs.losses[:, :-1, j].reshape(-1)
        y = runs.losses[:, 1:, j].reshape(-1) - Lp
        D = np.concatenate([X * Lp[:, None], X], axis=1)
        theta = np.linalg.solve(D.T @ D + l2 * np.eye(2 * N), D.T @ y)
        A[j], B[j] = theta[:N], theta[N:]
    return A, B


def mse(sim, runs: RunSet) -> float:
    """All-steps MSE of ``sim``'s rollout on ``runs``."""
    return metrics.all_steps_mse(sj.predict(sim, runs), runs.losses)[0]
