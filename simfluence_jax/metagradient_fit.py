"""Simfluence-Linear fitted to trajectories and to the metagradients of the same runs.

A logged run gives the loss trajectory of every test example; its exact metagradients
(``gradients.metagradient``) give, for the same run, the derivative of a readout of that
trajectory (the mean loss of the last ``horizon`` steps) with respect to the weight of every
slot of the curriculum. Simfluence-Linear predicts that derivative too, so both are
observations of the same parameters (A, B).

**The simulator's derivative.** Training weighs slot b of step t by ``w[t, b]`` in a batch
loss normalised by the sum of the weights (``training.train_step.batch_weights``). The
simulator's step, read with the same normalisation, uses the count vector
``m_t(w) = n_t sum_b w_b e_{c_tb} / sum_b w_b`` (``n_t`` real slots), whose derivative at
``w = 1`` is ``d_tb = e_{c_tb} - m_t / n_t``. With ``L_t = alpha_t L_{t-1} + beta_t``,
``alpha_t = alpha0 + s_t A . m_t``, ``beta_t = s_t B . m_t`` and the readout
``y = sum_t R_t L_t``,

    dy / dw[t, b] = P_t s_t (L_{t-1} A . d_tb + B . d_tb),
    P_t = dy / dL_t = R_t + alpha_{t+1} P_{t+1},   P_T = R_T,

so one observed metagradient is one more row ``P_t s_t [L_{t-1} d_tb, d_tb]`` of the ridge
regression, linear in (A, B) once the ``alpha_{t+1}`` of ``P_t`` are fixed. They are fixed at
a previous fit (first the trajectories alone; ``iterations`` re-fixes them at the joint fit),
and ``L_{t-1}`` is the logged loss, as in the trajectory rows (teacher forcing).

**The joint ridge.** For every test example,

    min  |y_traj - X theta|^2 + lambda |g - O theta|^2 + l2 |theta|^2,

with ``lambda = weight * sum y_traj^2 / sum g^2`` (summed over every test example), so that
``weight = 1`` gives the two kinds of observations the same total share whatever their units.
The normal equations of the trajectory rows are ``filter_fit``'s (the filter ``[1]`` is plain
Linear); the metagradient rows add a dense ``[2N, 2N]`` block per test example, and the
system is solved exactly (an LU solve of ``2N x 2N`` per test example and l2; an l2 whose
solve is not finite is skipped). With validation runs l2 is chosen by the rollout error
there, as for every ridge fit; ``weight`` is the caller's (0 is the trajectory fit).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from simfluence_jax.fitting.choice import best_on_validation, l2_grid
from simfluence_jax.fitting.ridge import ALPHA_FORMS, lr_reference
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.linear import LinearSimulator


def _check_observations(runs: RunSet, observations) -> np.ndarray:
    """``float64[R, M, T, B]`` slot metagradients of the fitting runs, checked against them."""
    if not isinstance(observations, Sequence) or len(observations) != runs.num_runs:
        got = len(observations) if isinstance(observations, Sequence) else type(observations)
        raise ValueError(
            f"metagradients must be a list with one Metagradients per fitting run "
            f"({runs.num_runs}), got {got}"
        )
    out = []
    for r, obs in enumerate(observations):
        batches = np.asarray(getattr(obs, "batches", None))
        if batches.shape != runs.batches[r].shape or not np.array_equal(batches, runs.batches[r]):
            raise ValueError(
                f"metagradients[{r}] were computed on another curriculum than fitting run {r}"
            )
        tests = np.asarray(obs.test_index)
        if not np.array_equal(tests, np.arange(runs.num_test)):
            raise ValueError(
                f"metagradients[{r}] cover test examples {tests.tolist()[:8]}..., the runs "
                f"{runs.num_test}; differentiate every test example of the runs, or select "
                "the same ones (RunSet.select_test)"
            )
        if obs.slot.shape[1] != 1:
            raise ValueError(f"metagradients[{r}] have {obs.slot.shape[1]} readouts; one is needed")
        out.append(np.asarray(obs.slot[:, 0], np.float64))
    readouts = {np.asarray(o.readout).tobytes() for o in observations}
    if len(readouts) != 1:
        raise ValueError("the metagradients of the fitting runs use different readouts")
    return np.stack(out)


def _rows(A, runs: RunSet, readout, alpha0: float, s, dtype):
    """``(O [M, R*T*B, 2N], valid [R*T*B])``: the metagradient rows of every slot under the
    ``alpha`` of the per-test parameters ``A [M, N]`` (module docstring)."""
    b = np.asarray(runs.batches)
    R, T, Bsz = b.shape
    N = runs.num_train
    real = b >= 0
    n = np.maximum(real.sum(-1), 1)  # [R, T]
    E = np.zeros((R, T, Bsz, N))
    r_i, t_i, b_i = np.nonzero(real)
    E[r_i, t_i, b_i, b[real]] = 1.0
    m = E.sum(2)  # [R, T, N]
    D = (E - m[:, :, None] / n[:, :, None, None]) * real[..., None]  # [R, T, B, N]
    L = np.transpose(np.asarray(runs.losses, np.float64), (2, 0, 1))  # [M, R, T+1]
    Rw = np.asarray(readout, np.float64).reshape(T)
    alpha = alpha0 + s[None] * np.einsum("mn,rtn->mrt", np.asarray(A, np.float64), m)
    P = np.zeros_like(alpha)
    P[..., T - 1] = Rw[T - 1]
    for t in range(T - 2, -1, -1):
        P[..., t] = Rw[t] + alpha[..., t + 1] * P[..., t + 1]
    c = P * s[None]  # [M, R, T]
    O = np.concatenate(
        [(c * L[..., :-1])[..., None, None] * D[None], c[..., None, None] * D[None]], axis=-1
    )  # [M, R, T, B, 2N]
    return jnp.asarray(O.reshape(O.shape[0], R * T * Bsz, 2 * N), dtype), real.reshape(-1)


@jax.jit
def _solve(S0, S2, S1, r, Og, OO, lam, l2s):
    """``theta [L, M, 2N]`` of the joint normal equations for every l2 of ``l2s``."""
    M, N = S2.shape[0], S0.shape[0]
    G = jnp.concatenate(
        [jnp.concatenate([S2, S1], -1),
         jnp.concatenate([jnp.swapaxes(S1, -1, -2), jnp.broadcast_to(S0, (M, N, N))], -1)],
        axis=-2,
    )  # fmt: skip
    G = G + lam * OO
    rhs = r + lam * Og
    eye = jnp.eye(2 * N, dtype=G.dtype)

    def one(l2):
        return jax.vmap(lambda g, b: jnp.linalg.solve(g + l2 * eye, b))(G, rhs)

    return jax.lax.map(one, l2s)


def fit_linear_metagradients(
    runs: RunSet,
    *,
    metagradients,
    weight: float = 1.0,
    l2=None,
    validation: RunSet | None = None,
    alpha: str = "sum",
    lr_scaled: bool = False,
    iterations: int = 1,
    dtype=np.float32,
    name: str = "linear_metagradient",
) -> LinearSimulator:
    """Simfluence-Linear fitted to the trajectories of ``runs`` and the metagradients of the
    same runs (module docstring).

    Args:
      runs: the fitting runs.
      metagradients: one ``gradients.metagradient.Metagradients`` per fitting run, in order,
        of every test example, with one readout (``Replay.metagradients(batches, seed,
        horizon=h)``).
      weight: the metagradient rows' share relative to the trajectory rows' (0: trajectories
        only).
      l2, validation, alpha, lr_scaled: as for ``fit_linear``.
      iterations: how many times the later steps' ``alpha`` in the rows are re-fixed at the
        joint fit (the first fixing uses the trajectory fit).

    Returns:
      A ``LinearSimulator`` (momentum 0) named ``name``.
    """
    from simfluence_jax.filter_fit import _blocks, _data

    if alpha not in ALPHA_FORMS:
        raise ValueError(f"unknown alpha form {alpha!r}; known: {', '.join(ALPHA_FORMS)}")
    if not isinstance(lr_scaled, bool):
        raise ValueError(f"lr_scaled must be True or False, got {lr_scaled!r}")
    if not (isinstance(weight, int | float) and np.isfinite(weight) and weight >= 0):
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    g = _check_observations(runs, metagradients)  # [R, M, T, B]
    readout = np.asarray(metagradients[0].readout, np.float64)
    grid = np.sort(l2_grid(l2, validation))
    lr_ref = lr_reference(runs, validation) if lr_scaled else None
    alpha0 = ALPHA_FORMS[alpha]
    N, M = runs.num_train, runs.num_test
    data = _data(runs, alpha0, lr_ref, dtype)
    S0, S2, S1, r = _blocks(jnp.ones(1, dtype), data, N)
    s = np.asarray(data[4], np.float64)
    gflat = np.transpose(g, (1, 0, 2, 3)).reshape(M, -1)  # [M, R*T*B]
    ytraj = np.asarray(data[3], np.float64)
    lam = 0.0 if weight == 0 else weight * float(np.sum(ytraj**2) / max(np.sum(gflat**2), 1e-30))
    l2s = jnp.asarray(grid, dtype)
    zeros = (jnp.zeros((M, 2 * N), dtype), jnp.zeros((M, 2 * N, 2 * N), dtype))
    theta = _solve(S0, S2, S1, r, *zeros, jnp.asarray(0.0, dtype), l2s)
    common = dict(seen=runs.used_ids(), alpha0=alpha0, lr_scaled=lr_scaled, name=name)
    if lr_scaled:
        common["lr_ref"] = lr_ref
    if lam > 0:
        for _ in range(iterations + 1):
            # Each l2 keeps its own fixing of alpha: the rows follow its previous fit.
            new = []
            for k in range(len(grid)):
                O, valid = _rows(theta[k, :, :N], runs, readout, alpha0, s, dtype)
                gm = jnp.asarray(np.where(valid, gflat, 0.0), dtype)
                Og = jnp.einsum("mrp,mr->mp", O, gm)
                OO = jnp.einsum("mrp,mrq->mpq", O, O)
                lam_k = jnp.asarray(lam, dtype)
                new.append(_solve(S0, S2, S1, r, Og, OO, lam_k, l2s[k : k + 1])[0])
            theta = jnp.stack(new)
    theta = np.asarray(theta)
    finite = np.all(np.isfinite(theta), axis=(1, 2))
    if not finite.any():
        raise ValueError(
            f"the joint fit is not finite at any l2 of {grid.tolist()} (raise l2 or lower weight)"
        )
    sims = [
        LinearSimulator(A=theta[k, :, :N], B=theta[k, :, N:], l2=float(grid[k]), **common)
        for k in np.flatnonzero(finite)
    ]
    if len(grid) == 1:
        return sims[0]
    return best_on_validation(sims, validation, grid)
