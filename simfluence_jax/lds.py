"""The linear datamodeling score (LDS) of a simulator.

LDS (Park et al., 2023, "TRAK: Attributing Model Behavior at Scale", arXiv 2303.14186,
section 2.2) asks whether an attribution method ranks *training subsets* the way real
training does. Draw C random subsets S_1..S_C of the pool (TRAK: half of it), train a model
on each, and record the true loss ``f_j(S_c)`` of every test example j; the method predicts
``g_j(S_c)``. Then

    LDS_j = Spearman_c( f_j(S_c), g_j(S_c) ),        LDS = mean_j LDS_j.

A simulator predicts ``g_j(S_c)`` directly: the simulated final loss L^_T of test example j
along a curriculum that trains on S_c (in random order, like the fitting runs). Additive
scores (TracIn, influence functions, datamodels) are the special case
``g_j(S) = L_0 + sum_{i in S} B_ij``. Simulators that ignore the curriculum (constant, mean)
predict the same loss for every subset and score 0 (Spearman's rho is 0 when a side is
constant, as in ``metrics.spearman``).

``lds`` and ``lds_table`` are pure; ``run_lds`` is the driver: it draws the subsets, gets the
true losses from a training callable (``pipeline.generate.retrain`` for real models, a
ground-truth simulator on synthetic data) and scores every simulator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from simfluence_jax import metrics
from simfluence_jax.rollouts import rollout
from simfluence_jax.runs import RunSet
from simfluence_jax.sampling import sample_curricula


def lds_per_test(true_final, pred_final) -> np.ndarray:
    """``float[M]``: per test example, Spearman's rho across subsets.

    Args:
      true_final: ``float[C, M]`` true final losses of C subsets (C >= 3).
      pred_final: ``float[C, M]`` predicted final losses.
    """
    t = np.asarray(true_final, np.float64)
    p = np.asarray(pred_final, np.float64)
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(
            f"true and predicted final losses must both be [C, M], got {t.shape} and {p.shape}"
        )
    if t.shape[0] < 3:
        raise ValueError(f"LDS needs at least 3 subsets, got {t.shape[0]}")
    if not np.all(np.isfinite(t)):
        raise ValueError("true final losses contain NaN or infinite values")
    p = np.where(np.isfinite(p), p, np.inf)  # a diverged prediction ranks last
    return metrics.spearman(t, p, axis=0)


def lds(true_final, pred_final) -> dict[str, float]:
    """``{"lds_mean", "lds_std", "lds_sem"}``: LDS (mean over test examples of
    ``lds_per_test``), its std over test examples and standard error of the mean."""
    rho = lds_per_test(true_final, pred_final)
    return {
        "lds_mean": float(rho.mean()),
        "lds_std": float(rho.std()),
        "lds_sem": float(rho.std(ddof=1) / np.sqrt(len(rho))) if len(rho) > 1 else float("nan"),
    }


def simulated_final(sim, batches, L0, *, learning_rates=None) -> np.ndarray:
    """``float32[C, M]``: the simulated final losses of curricula ``int32[C, T, B]`` from
    starting losses ``L0: float[C, M]`` (or ``[M]``) under schedule ``learning_rates``."""
    return np.asarray(rollout(sim, batches, L0, learning_rates=learning_rates))[..., -1, :]


def lds_table(
    sims: Mapping[str, object], batches, true_losses, *, learning_rates=None
) -> dict[str, dict[str, float]]:
    """``{name: lds(...)}`` for every simulator.

    Args:
      sims: fitted simulators over the same pool and test examples.
      batches: ``int32[C, T, B]``, one curriculum per subset.
      true_losses: ``float[C, T+1, M]`` from real training (row 0 is each run's L_0, the
        simulation's starting point).
      learning_rates: ``float[C, T]`` (or ``[T]``) schedule, for ``lr_scaled`` simulators.
    """
    true_losses = np.asarray(true_losses)
    if true_losses.ndim != 3 or true_losses.shape[0] != np.shape(batches)[0]:
        raise ValueError(
            f"true_losses must be [C, T+1, M] for C = {np.shape(batches)[0]} curricula, got "
            f"{true_losses.shape}"
        )
    L0, final = true_losses[:, 0], true_losses[:, -1]
    return {
        name: lds(final, simulated_final(sim, batches, L0, learning_rates=learning_rates))
        for name, sim in sims.items()
    }


def subset_curricula(
    pool_size: int,
    *,
    num_subsets: int,
    subset_size: int,
    batch_size: int,
    epochs: int = 1,
    num_steps: int | None = None,
    seed: int = 0,
    pool_ids=None,
) -> np.ndarray:
    """``int32[C, T, B]``: C random subsets of the pool, each trained in random order (the
    fitting runs' sampler, ``sampling.sample_curricula``); TRAK uses half the pool.

    ``pool_ids`` (``int[P]``, optional) restricts the subsets to those pool ids (e.g. the
    examples a Linear simulator has parameters for); ``pool_size`` is then ``P``.
    """
    b = sample_curricula(
        num_runs=num_subsets, pool_size=pool_size, batch_size=batch_size,
        subset_size=subset_size, epochs=epochs, num_steps=num_steps, seed=seed,
    )  # fmt: skip
    if pool_ids is None:
        return b
    ids = np.asarray(pool_ids, np.int64).reshape(-1)
    if len(ids) != pool_size or len(np.unique(ids)) != len(ids) or (ids < 0).any():
        raise ValueError(
            f"pool_ids must be {pool_size} distinct non-negative ids, got {len(ids)} ids"
        )
    return np.where(b >= 0, ids[np.maximum(b, 0)], -1).astype(np.int32)


@dataclasses.dataclass
class LDSResult:
    """What ``run_lds`` measured.

    Attributes:
      batches: ``int32[C, T, B]`` the subsets' curricula.
      true_losses: ``float32[C, T+1, M]`` from training.
      table: ``{simulator: {"lds_mean", "lds_std", "lds_sem"}}``.
      per_test: ``{simulator: float[M]}`` LDS_j.
    """

    batches: np.ndarray
    true_losses: np.ndarray
    table: dict[str, dict[str, float]]
    per_test: dict[str, np.ndarray]


def run_lds(
    sims: Mapping[str, object],
    train: Callable[[np.ndarray], object],
    *,
    pool_size: int,
    num_subsets: int,
    subset_size: int,
    batch_size: int,
    epochs: int = 1,
    num_steps: int | None = None,
    seed: int = 0,
    pool_ids=None,
) -> LDSResult:
    """Draws subsets, trains on them with ``train`` and scores every simulator.

    Args:
      sims: ``{name: simulator}``.
      train: ``curricula int32[C, T, B] -> losses float[C, T+1, M]`` (or a ``RunSet``);
        e.g. ``lambda b: retrain(setup, store_dir, b, seeds)``.
      pool_size, num_subsets, subset_size, batch_size, epochs, num_steps, seed, pool_ids:
        the subsets (see ``subset_curricula``).
    """
    batches = subset_curricula(
        pool_size, num_subsets=num_subsets, subset_size=subset_size, batch_size=batch_size,
        epochs=epochs, num_steps=num_steps, seed=seed, pool_ids=pool_ids,
    )  # fmt: skip
    out = train(batches)
    losses = np.asarray(out.losses if isinstance(out, RunSet) else out, np.float32)
    rates = out.learning_rates if isinstance(out, RunSet) else None
    if losses.shape[:2] != (num_subsets, batches.shape[1] + 1):
        raise ValueError(
            f"train returned losses of shape {losses.shape}; expected [C={num_subsets}, "
            f"T+1={batches.shape[1] + 1}, M]"
        )
    L0, final = losses[:, 0], losses[:, -1]
    per_test, table = {}, {}
    for name, sim in sims.items():
        pred = simulated_final(sim, batches, L0, learning_rates=rates)
        per_test[name] = lds_per_test(final, pred)
        table[name] = lds(final, pred)
    return LDSResult(batches=batches, true_losses=losses, table=table, per_test=per_test)
