"""TracIn-CP, Grad-Dot and influence functions as additive simulators, raw and calibrated.

Each score becomes a :class:`~simfluence_jax.simulators.segmented.SegmentedSimulator`
(alpha = 1; per-step decrement ``-(eta_t / |c_t|) S[k(t), i]`` for every id in the batch),
so it is rolled out and evaluated exactly like Simfluence-Linear (Guu et al., 2023, §4.3;
docs/design.md, section 3.4). ``simfluence_jax.SIMULATORS`` lists them (importing this
module lazily on first use):

==============================  ===================================================
``tracin_cp``                   per-step TracIn-CP: step t uses the dot products at
                                the checkpoint nearest ``t - 1``
``tracin_cp_summed``            one set of decrements: the TracIn-CP score
                                ``sum_k eta_k dots_k`` divided by ``sum_k eta_k``
                                (the rate-weighted mean dot product)
``grad_dot``                    dot products at the final model
``influence``                   ``g_i^T (H + lambda I)^{-1} g_test`` at the final model
``trak``                        TRAK: ``g_test^T (Phi^T Phi + lambda I)^{-1} g_i`` on
                                projected gradients, averaged over an ensemble of
                                checkpoints (``gradients.trak``)
``ekfac``                       ``g_i^T (G + lambda I)^{-1} g_test`` with the EK-FAC
                                Gauss-Newton of the dense layers at the final model
                                (``gradients.ekfac``)
``<name>_calibrated``           the same with one global scale fitted on the fitting runs
==============================  ===================================================

*Raw* simulators take the scores at face value: for plain SGD on the mean batch loss the
per-step TracIn decrement is the first-order change of the test loss in loss units. With
another optimizer (Adam) or for influence scores, raw magnitudes are not in loss units; the
*calibrated* variant multiplies every decrement by

    s = sum(d * u) / sum(u^2),   d = L_0 - L_t (observed),  u = L_0 - L^raw_t (simulated)

over all fitting runs, steps ``1..T`` and test examples: the least-squares scale of the
raw cumulative drops, in closed form (the simulator is linear in ``s``). The simulator's
``name`` says which is which, and ``scale`` holds ``s``.

Every fitter needs ``gradients=``: a ``GradientContext`` or ``PrecomputedGradients``
(``simfluence_jax.gradients.context``). The per-step learning rates come from
``learning_rates=``, else the gradients object, else ``runs.metadata["learning_rates"]``
(the run store's ``collect`` writes them). The registry declares ``gradients`` as their
required input, so ``fit_all`` names it when it is missing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from simfluence_jax.fitting import CALIBRATED_SUFFIX, GRADIENT_BASELINES
from simfluence_jax.gradients.tracin import nearest_checkpoint, tracin_cp
from simfluence_jax.rollouts import rollout
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.segmented import SegmentedSimulator

#: Registry names of the raw gradient simulators; each also has a ``_calibrated`` twin.
BASELINES = GRADIENT_BASELINES


def make_simulator(
    scores: np.ndarray,
    *,
    learning_rates,
    segment=None,
    name: str,
    scale: float = 1.0,
) -> SegmentedSimulator:
    """An additive simulator from train x test scores.

    Args:
      scores: ``float32[N, M]`` (one segment) or ``float32[K, N, M]`` (K segments);
        positive lowers the test loss.
      learning_rates: ``float32[T]``, the rate of steps ``1..T``.
      segment: ``int[T]`` segment of each step (default: all 0; required for K > 1).
      name: the simulator's name.
      scale: the global scale ``s``.
    """
    S = np.asarray(scores, np.float32)
    if S.ndim == 2:
        S = S[None]
    if S.ndim != 3:
        raise ValueError(f"scores must be [N, M] or [K, N, M], got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ValueError(f"the {name} scores contain NaN or infinite values")
    K, N, _ = S.shape
    eta = np.asarray(learning_rates, np.float32).reshape(-1)
    if eta.size == 0 or not np.all(np.isfinite(eta)):
        raise ValueError(f"learning_rates must be a non-empty finite [T] array, got {eta}")
    seg = np.zeros(eta.shape, np.int32) if segment is None else np.asarray(segment, np.int32)
    if seg.shape != eta.shape:
        raise ValueError(f"segment has shape {seg.shape}, learning_rates {eta.shape}")
    if seg.min() < 0 or seg.max() >= K:
        raise ValueError(f"segment ids must be in 0..{K - 1}, got {seg.min()}..{seg.max()}")
    return SegmentedSimulator(
        S=np.ascontiguousarray(S.transpose(2, 0, 1)),  # [M, K, N]
        eta=eta,
        segment=seg,
        seen=np.ones(N, bool),
        scale=np.float32(scale),
        name=name,
    )


def calibration_scale(sim: SegmentedSimulator, runs: RunSet, *, mesh=None) -> float:
    """``s = sum(d u) / sum(u^2)`` of the raw simulator on ``runs`` (see module docstring).

    Raises:
      ValueError: if the raw simulator predicts no change at all (``u = 0``).
    """
    raw = sim.replace(scale=np.float32(1.0))
    pred = np.asarray(rollout(raw, runs.batches, runs.L0, mesh=mesh), np.float64)
    L0 = runs.L0[:, None, :].astype(np.float64)
    u = L0 - pred[:, 1:]
    d = L0 - runs.losses[:, 1:].astype(np.float64)
    uu = float(np.sum(u * u))
    if not uu > 0:
        raise ValueError(
            f"{sim.name} predicts no loss change on the fitting runs; cannot calibrate"
        )
    return float(np.sum(d * u) / uu)


def calibrate(sim: SegmentedSimulator, runs: RunSet, *, mesh=None) -> SegmentedSimulator:
    """The simulator with its global scale fitted on ``runs`` and ``_calibrated`` in its name."""
    s = calibration_scale(sim, runs, mesh=mesh)
    return sim.replace(scale=np.float32(s), name=sim.name + CALIBRATED_SUFFIX)


def _learning_rates(runs: RunSet, gradients, learning_rates) -> np.ndarray:
    for source in (
        learning_rates,
        getattr(gradients, "learning_rates", None),
        runs.metadata.get("learning_rates"),
    ):
        if source is not None:
            return np.asarray(source, np.float32).reshape(-1)
    raise ValueError(
        "the gradient simulators need the per-step learning rates: pass learning_rates=, or "
        "give them to the gradients object, or use runs whose metadata has 'learning_rates'"
    )


def _check_gradients(gradients, name: str):
    if gradients is None:
        raise ValueError(
            f"the {name} simulator needs gradients=: a GradientContext or PrecomputedGradients "
            "(simfluence_jax.gradients.context)"
        )


def _check_sizes(S: np.ndarray, runs: RunSet, name: str):
    N, M = S.shape[-2:]
    if N != runs.num_train or M != runs.num_test:
        raise ValueError(
            f"the {name} scores are for N={N} training and M={M} test examples, the runs "
            f"have N={runs.num_train} and M={runs.num_test}"
        )


def raw_simulator(name: str, runs: RunSet, *, gradients, learning_rates=None):
    """The raw simulator ``name`` (one of :data:`BASELINES`) for ``runs``' pool and tests."""
    _check_gradients(gradients, name)
    eta = _learning_rates(runs, gradients, learning_rates)
    if name == "tracin_cp":
        steps, _, dots = gradients.checkpoint_dots()
        _check_sizes(dots, runs, name)
        segment = nearest_checkpoint(steps, len(eta))
        return make_simulator(dots, learning_rates=eta, segment=segment, name=name)
    if name == "tracin_cp_summed":
        _, rates, dots = gradients.checkpoint_dots()
        total = float(np.sum(rates, dtype=np.float64))
        if not total > 0:
            raise ValueError(f"the checkpoints' learning rates sum to {total}; need > 0")
        S = tracin_cp(dots, rates) / np.float32(total)
    elif name == "grad_dot":
        S = gradients.final_dots()
    elif name == "influence":
        S = gradients.influence_scores()
    elif name == "trak":
        S = gradients.trak_scores()
    elif name == "ekfac":
        S = gradients.ekfac_scores()
    else:
        raise ValueError(f"unknown gradient baseline {name!r}; known: {', '.join(BASELINES)}")
    _check_sizes(S, runs, name)
    return make_simulator(S, learning_rates=eta, name=name)


def make_fitter(name: str, calibrated: bool) -> Callable[..., SegmentedSimulator]:
    """The fitter registered as ``name`` (``+ "_calibrated"`` when ``calibrated``)."""

    def fit(runs, *, gradients=None, learning_rates=None, mesh=None, validation=None):
        del validation  # the raw scores have no hyperparameter; calibration uses `runs`
        sim = raw_simulator(name, runs, gradients=gradients, learning_rates=learning_rates)
        return calibrate(sim, runs, mesh=mesh) if calibrated else sim

    kind = "calibrated (one global scale fitted on the fitting runs)" if calibrated else "raw"
    fit.__name__ = f"fit_{name}{CALIBRATED_SUFFIX if calibrated else ''}"
    fit.__doc__ = f"{name}, {kind}; needs gradients= (see simfluence_jax.gradients.baselines)."
    return fit


def gradient_simulator_names(*, calibrated: bool | None = None) -> list[str]:
    """Registry names of the gradient simulators (raw, calibrated or both)."""
    raw = list(BASELINES)
    cal = [n + CALIBRATED_SUFFIX for n in BASELINES]
    return raw if calibrated is False else cal if calibrated else raw + cal
