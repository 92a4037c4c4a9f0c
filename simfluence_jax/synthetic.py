"""Synthetic run sets with known ground truth, for tests, demos and benchmarks.

Runs follow the GPTfluence protocol (each run trains on a random subset of the pool in random
order) and their losses follow a known Simfluence-Linear law plus Gaussian noise:

    L_t = (alpha0 + sum_{i in c_t} A_i) L_{t-1} + sum_{i in c_t} B_i + noise * eps_t

with the noise injected into the logged losses *and* carried forward (as in a real run,
where a noisy step changes the model). Rolling out the true parameters therefore has a
non-zero error, the noise floor any simulator is measured against.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.linear import LinearSimulator


@dataclasses.dataclass(frozen=True)
class SyntheticProblem:
    """A synthetic run set and the simulator that generated it."""

    runs: RunSet
    truth: LinearSimulator
    noise: float


def sample_curricula(
    rng: np.random.Generator,
    num_runs: int,
    num_train: int,
    subset: int,
    batch_size: int,
    epochs: int = 1,
) -> np.ndarray:
    """``int32[R, epochs * ceil(subset / B), B]``: each run a random ``subset`` of the pool,
    seen ``epochs`` times, each epoch in a fresh random order; ragged batches padded with -1."""
    if subset > num_train:
        raise ValueError(f"subset of {subset} examples is larger than the pool of {num_train}")
    T = -(-subset // batch_size)
    out = np.full((num_runs, epochs, T * batch_size), -1, np.int32)
    for r in range(num_runs):
        chosen = rng.permutation(num_train)[:subset]
        for e in range(epochs):
            out[r, e, :subset] = rng.permutation(chosen)
    return out.reshape(num_runs, epochs * T, batch_size)


def make_problem(
    *,
    num_train: int = 40,
    num_test: int = 8,
    num_runs: int = 30,
    subset: int | None = None,
    batch_size: int = 4,
    noise: float = 0.01,
    truth: str = "linear",
    L0_jitter: float = 0.0,
    epochs: int = 1,
    seed: int = 0,
) -> SyntheticProblem:
    """Generates runs from random known parameters.

    Args:
      truth: ``"linear"`` (A and B), ``"multiplicative"`` (B = 0) or ``"additive"``
        (alpha0 = 1, A = 0).
      subset: examples per run (default: 3/4 of the pool, rounded to whole batches).
      L0_jitter: relative spread of L_0 across runs (as if runs started from different
        checkpoints); 0 gives every run the same L_0.
      epochs: passes over each run's subset (GPTfluence: 128 examples, batch 4, 3 epochs).

    Returns:
      the run set and the true simulator.
    """
    rng = np.random.default_rng(seed)
    N, M, Bsz = num_train, num_test, batch_size
    if subset is None:
        subset = max(Bsz, (3 * N // 4) // Bsz * Bsz)
    if truth == "additive":
        alpha0 = 1.0
        A = np.zeros((M, N))
        B = -rng.uniform(0.0, 0.02, (M, N)) + rng.normal(0, 0.005, (M, N))
    elif truth in ("linear", "multiplicative"):
        alpha0 = 0.0
        # alpha of a full batch sits just below 1: the loss decays toward beta / (1 - alpha).
        A = (1.0 - rng.uniform(0.0, 0.08, (M, N))) / Bsz
        B = rng.uniform(0.0, 0.04, (M, N)) / Bsz if truth == "linear" else np.zeros((M, N))
    else:
        raise ValueError(f"unknown truth {truth!r}; known: linear, multiplicative, additive")
    batches = sample_curricula(rng, num_runs, N, subset, Bsz, epochs)
    T = batches.shape[1]
    L = np.empty((num_runs, T + 1, M))
    L[:, 0] = rng.uniform(1.0, 3.0, M)[None] * (
        1.0 + L0_jitter * rng.uniform(-1.0, 1.0, (num_runs, 1))
    )
    for t in range(T):
        ids = batches[:, t]  # [R, B]
        w = (ids >= 0)[:, None, :]
        safe = np.where(ids >= 0, ids, 0)
        alpha = alpha0 + np.sum(A[:, safe].transpose(1, 0, 2) * w, axis=-1)  # [R, M]
        beta = np.sum(B[:, safe].transpose(1, 0, 2) * w, axis=-1)
        L[:, t + 1] = alpha * L[:, t] + beta + noise * rng.standard_normal((num_runs, M))
    runs = RunSet(
        batches=batches, losses=L, num_train=N, metadata={"synthetic": truth, "noise": noise}
    )
    sim = LinearSimulator(
        A=A.astype(np.float32), B=B.astype(np.float32), seen=np.ones(N, bool),
        alpha0=alpha0, name=f"truth_{truth}",
    )  # fmt: skip
    return SyntheticProblem(runs=runs, truth=sim, noise=noise)


def warmup_decay_schedule(T: int, *, warmup: int = 4, peak: float = 0.1) -> np.ndarray:
    """``float32[T]``: linear warm-up to ``peak`` over ``warmup`` steps, then linear decay to
    a tenth of it at step T."""
    t = np.arange(1, T + 1)
    up = t / warmup
    down = 1.0 - 0.9 * (t - warmup) / (T - warmup)
    return (peak * np.where(t <= warmup, up, down)).astype(np.float32)


def make_kernel_runs(
    *,
    num_train: int,
    num_test: int,
    num_runs: int,
    subset: int,
    epochs: int,
    mu: float = 0.0,
    filter=None,
    schedule: bool = True,
    warmup: int = 4,
    batch_size: int = 4,
    effect_scale: float = 1.0,
    noise: float = 0.002,
    seed: int = 0,
) -> RunSet:
    """Runs drawn from the optimizer kernel's law in the ``one_plus_sum`` form
    (docs/design.md, section 3.2): ``L_t = (1 + s_t A . x_t) L_{t-1} + s_t B . x_t + noise``,
    ``x_t = mu x_{t-1} + m(c_t)``, ``s_t = eta_t / max eta`` with a warm-up/decay schedule
    (``schedule=True``) or a constant rate; ``A ~ -U(0, 0.004)``, ``B ~ U(-0.006, 0.002)``,
    both times ``effect_scale``. The runs carry their learning rates.

    ``filter`` (``[K+1]``, instead of ``mu``) draws them from the filter kernel's law
    (``simulators.filter``): ``x_t = sum_k filter[k] m(c_{t-k})``."""
    from simfluence_jax.sampling import sample_curricula as sample

    if filter is not None:
        if mu != 0.0:
            raise ValueError("give the kernel as mu or as filter, not both")
        filter = np.asarray(filter, np.float64)
        if filter.ndim != 1 or filter.size == 0 or not np.all(np.isfinite(filter)):
            raise ValueError(f"filter must be a finite 1-D array, got {filter!r}")
    rng = np.random.default_rng(seed)
    N, M = num_train, num_test
    batches = sample(
        num_runs=num_runs, pool_size=N, batch_size=batch_size, subset_size=subset,
        epochs=epochs, seed=seed,
    )  # fmt: skip
    R, T, _ = batches.shape
    eta = warmup_decay_schedule(T, warmup=warmup) if schedule else np.full(T, 0.1, np.float32)
    s = eta / eta.max()
    A = -rng.uniform(0.0, 0.004 * effect_scale, (M, N))
    B = rng.uniform(-0.006 * effect_scale, 0.002 * effect_scale, (M, N))
    L = np.empty((R, T + 1, M))
    L[:, 0] = rng.uniform(1.0, 2.0, M)
    a, b = np.zeros((R, M)), np.zeros((R, M))
    history = []  # the count vectors of the past steps, newest first
    for t in range(T):
        counts = np.zeros((R, N))
        np.add.at(counts, (np.arange(R)[:, None], batches[:, t]), 1.0)
        if filter is None:
            a = mu * a + counts @ A.T
            b = mu * b + counts @ B.T
        else:
            history = [counts] + history[: filter.size - 1]
            x = sum(h * c for h, c in zip(filter, history))
            a, b = x @ A.T, x @ B.T
        L[:, t + 1] = (1 + s[t] * a) * L[:, t] + s[t] * b + noise * rng.standard_normal((R, M))
    return RunSet(batches=batches, losses=L, num_train=N, learning_rates=np.tile(eta, (R, 1)))
