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


def cached_runs(cfg, cache: str | Path, *, gradient_kwargs=None, progress: bool = True):
    """``(runs, gradients)`` of ``cfg``, made (or resumed) on first use and kept in
    ``cache/<store_name(cfg)>``, so studies that share a setting share its runs.

    The gradient scores come from the checkpoints of run 0 (the first fitting run of every
    split a study uses), with ``gradient_kwargs`` (``pipeline.experiment.gradient_context``);
    ``gradients`` is ``None`` when ``cfg`` keeps no checkpoints.
    """
    import hashlib
    import json

    from simfluence_jax.gradients.context import PrecomputedGradients
    from simfluence_jax.pipeline.generate import store_name

    folder = Path(cache) / store_name(cfg)
    key = json.dumps(gradient_kwargs or {}, sort_keys=True, default=str).encode()
    runs_dir = folder / "runs"
    grads_file = folder / f"gradients-{hashlib.sha256(key).hexdigest()[:8]}.npz"
    want_grads = bool(cfg.checkpoint_steps)
    if runs_dir.exists() and (grads_file.exists() or not want_grads):
        grads = PrecomputedGradients.load(grads_file) if want_grads else None
        return RunSet.load(runs_dir), grads
    from simfluence_jax.pipeline.experiment import gradient_context
    from simfluence_jax.pipeline.generate import generate_runs, prepare

    setup = prepare(cfg)
    store = folder / "store"
    runs = generate_runs(cfg, store, setup=setup, progress=progress)
    grads = None
    if want_grads:
        first = runs.select([0])
        grads = gradient_context(setup, first, store, **dict(gradient_kwargs or {})).precompute()
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


#: Simulators every fidelity row fits.
ROW_SIMULATORS = (
    "linear", "linear_kernel", "constant", "mean", "shuffled",
    "tracin_cp_calibrated", "influence_calibrated",
)  # fmt: skip
CONTROLS = ("constant", "mean", "shuffled")
GRADIENT = ("tracin_cp_calibrated", "influence_calibrated")
#: The paper's headline: Spearman doubled, MSE cut by 75% against the gradient baselines.
PAPER_SPEARMAN_RATIO, PAPER_MSE_REDUCTION = 2.0, 0.75


def fidelity_row(sims: dict, validation: RunSet, heldout: RunSet) -> dict:
    """One row of the fidelity matrix from fitted ``sims`` (``ROW_SIMULATORS``).

    The Linear form (plain or kernel) is chosen on the validation runs; the best control
    and the best gradient baseline are the strongest on the held-out runs (a conservative
    comparison for Linear). Ratios, as the paper states them: ``spearman_ratio`` = Linear's
    Spearman of the change over the best gradient baseline's; ``mse_reduction`` =
    1 - MSE(Linear) / MSE(gradient baseline with the lowest MSE); ``mse_skill_vs_mean`` =
    1 - MSE(Linear) / MSE(mean control).
    """
    table = scores(sims, heldout)
    lin = best_linear(sims, validation)
    control = min(CONTROLS, key=lambda n: table[n]["mse_mean"])
    grad_rho = max(GRADIENT, key=lambda n: table[n]["change_spearman_mean"])
    grad_mse = min(GRADIENT, key=lambda n: table[n]["mse_mean"])
    L = table[lin]
    rho_g = table[grad_rho]["change_spearman_mean"]
    ratio = L["change_spearman_mean"] / rho_g if rho_g > 0 else float("inf")
    if rho_g <= 0 and L["change_spearman_mean"] <= 0:
        ratio = float("nan")
    reduction = 1.0 - L["mse_mean"] / table[grad_mse]["mse_mean"]
    return {
        "linear": lin,
        "control": control,
        "gradient_for_spearman": grad_rho,
        "gradient_for_mse": grad_mse,
        "table": table,
        "spearman_ratio": ratio,
        "mse_reduction": reduction,
        "mse_skill_vs_mean": 1.0 - L["mse_mean"] / table["mean"]["mse_mean"],
        "beats_best_control_mse": bool(L["mse_mean"] < table[control]["mse_mean"]),
        "meets_paper": bool(ratio >= PAPER_SPEARMAN_RATIO and reduction >= PAPER_MSE_REDUCTION),
        "mean_abs_step_change": float(np.mean(np.abs(np.diff(heldout.losses, axis=1)))),
        "kernel_momentum": float(sims["linear_kernel"].momentum),
    }
