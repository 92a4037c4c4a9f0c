"""Studies over many run sets: cached runs with their gradient scores, and one scored table.

The optimizer study and the fidelity matrix (``experiments/``) make one run set per
setting, fit the same simulators on each and compare them on held-out runs. This module is
what they share:

* ``cached_runs``: the runs of a ``RunsConfig`` and the gradient scores of their fitting
  runs, made once and kept as a ``RunSet`` folder and a ``PrecomputedGradients`` file;
* ``tracin_prior``: calibrated TracIn-CP written as Simfluence-Linear parameters, a prior
  mean for the ridge fit;
* ``score_table``: held-out metrics of fitted simulators, with the choice between plain and
  kernel Linear made on validation runs, never on the held-out ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simfluence_jax.evaluation import predict, score
from simfluence_jax.fitting import rollout_mse
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.linear import LinearSimulator

#: Metrics every study table reports.
KEYS = ("mse_mean", "change_spearman_mean", "per_example_spearman_mean", "final_spearman_mean")


def cached_runs(cfg, folder: str | Path, *, num_fit: int, gradient_kwargs=None, progress=True):
    """``(runs, gradients)`` of ``cfg``: made (or resumed) in ``folder`` on first use.

    The gradient scores come from the checkpoints of the first of the ``num_fit`` fitting
    runs (``pipeline.experiment.gradient_context``); ``gradients`` is ``None`` when ``cfg``
    keeps no checkpoints.
    """
    from simfluence_jax.gradients.context import PrecomputedGradients

    folder = Path(folder)
    runs_dir, grads_file = folder / "runs", folder / "gradients.npz"
    want_grads = bool(cfg.checkpoint_steps)
    if runs_dir.exists() and (grads_file.exists() or not want_grads):
        grads = PrecomputedGradients.load(grads_file) if want_grads else None
        return RunSet.load(runs_dir), grads
    from simfluence_jax.pipeline.experiment import gradient_context
    from simfluence_jax.pipeline.generate import generate_runs, prepare, store_name

    setup = prepare(cfg)
    store = folder / store_name(cfg)
    runs = generate_runs(cfg, store, setup=setup, progress=progress)
    grads = None
    if want_grads:
        fit = runs.select(np.arange(num_fit))
        grads = gradient_context(setup, fit, store, **dict(gradient_kwargs or {})).precompute()
        grads.save(grads_file)
    runs.save(runs_dir, overwrite=True)
    return runs, grads


def tracin_prior(tracin, fit: RunSet, like: LinearSimulator) -> LinearSimulator:
    """Calibrated TracIn-CP as a prior mean for a kernel fit in the ``one_plus_sum`` form:
    ``A = 0``, ``B_i = -scale * eta_ref / B * mean_k S[k, i]``, so that with ``mu = 0`` and
    ``s_t = eta_t / eta_ref`` the prior's step is TracIn's first-order decrement."""
    S = np.asarray(tracin.S).mean(axis=1)  # [M, N]
    eta_ref = float(np.max(fit.learning_rates))
    B = -float(np.asarray(tracin.scale)) * eta_ref / fit.batch_size * S
    return like.replace(A=np.zeros_like(B, np.float32), B=B.astype(np.float32))


def scores(sims: dict, runs: RunSet) -> dict[str, dict[str, float]]:
    """``{name: {metric: value}}`` of ``KEYS`` on ``runs``."""
    return {n: {k: score(predict(s, runs), runs)[k] for k in KEYS} for n, s in sims.items()}


def best_linear(sims: dict, validation: RunSet, names=("linear", "linear_kernel")) -> str:
    """The name among ``names`` with the lowest validation rollout MSE."""
    present = [n for n in names if n in sims]
    return min(present, key=lambda n: rollout_mse(sims[n], validation))
