"""Rollout: scan vs closed form, padding, warnings for unseen ids and divergence."""

import warnings

import numpy as np
import pytest

import simfluence_jax as sj
from simfluence_jax import counterfactuals as cf
from simfluence_jax.synthetic import make_problem


@pytest.fixture(scope="module")
def truth():
    return make_problem(num_train=20, num_test=4, num_runs=6, seed=5)


def _numpy_rollout(sim, batches, L0):
    """Reference: Python loops over steps and test examples."""
    A, B = np.asarray(sim.A, np.float64), np.asarray(sim.B, np.float64)
    T = batches.shape[0]
    out = np.zeros((T + 1, len(L0)))
    out[0] = L0
    for j in range(len(L0)):
        for t in range(T):
            ids = batches[t][batches[t] >= 0]
            if len(ids) == 0:
                out[t + 1, j] = out[t, j]
                continue
            out[t + 1, j] = (sim.alpha0 + A[j, ids].sum()) * out[t, j] + B[j, ids].sum()
    return out


def test_scan_matches_numpy_loop_and_closed_form(truth):
    runs, sim = truth.runs, truth.truth
    out = np.asarray(sj.rollout(sim, runs.batches, runs.L0))
    for r in range(runs.num_runs):
        ref = _numpy_rollout(sim, runs.batches[r], runs.L0[r])
        np.testing.assert_allclose(out[r], ref, rtol=1e-5)
    closed = np.asarray(sj.closed_form_final(sim, runs.batches, runs.L0))
    np.testing.assert_allclose(closed, out[:, -1], rtol=1e-5)


def test_all_padding_steps_are_no_updates(truth):
    runs, sim = truth.runs, truth.truth
    short = runs.batches[0]
    padded = cf.stack([short, np.concatenate([short, np.full((3, short.shape[1]), -1)])])
    out = np.asarray(sj.rollout(sim, padded, runs.L0[0]))
    np.testing.assert_allclose(out[1, -1], out[0, short.shape[0]], rtol=1e-6)
    np.testing.assert_allclose(out[1, -4:], np.repeat(out[1, -4:-3], 4, axis=0), rtol=1e-6)


def test_curricula_broadcast_over_leading_axes(truth):
    runs, sim = truth.runs, truth.truth
    grid = runs.batches.reshape(2, 3, *runs.batches.shape[1:])
    out = np.asarray(sj.rollout(sim, grid, runs.L0[0]))
    assert out.shape == (2, 3, runs.num_steps + 1, runs.num_test)
    flat = np.asarray(sj.rollout(sim, runs.batches, runs.L0[0]))
    np.testing.assert_allclose(out.reshape(flat.shape), flat, rtol=1e-6)


def test_unseen_ids_warn_and_out_of_range_raises():
    p = make_problem(num_train=20, num_test=3, num_runs=3, subset=4, seed=0)
    sim = sj.fit_simulator("linear", p.runs, l2=0.1)
    unseen = np.flatnonzero(~p.runs.used_ids())
    assert len(unseen) > 0
    curriculum = np.array([[unseen[0], 0, 1, 2]])
    with pytest.warns(sj.UnseenExampleWarning, match="never occurred in the fitting runs"):
        sj.simulate(sim, curriculum, p.runs.L0[0])
    with pytest.raises(ValueError, match="out of range"):
        sj.simulate(sim, np.array([[25, 0, 1, 2]]), p.runs.L0[0])
    with pytest.raises(ValueError, match="L0 must end"):
        sj.simulate(sim, p.runs.batches[0], np.ones(7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sj.simulate(sim, p.runs.batches[0], p.runs.L0[0])  # seen ids: no warning


def test_divergence_is_reported_not_silent(truth):
    sim = truth.truth.replace(A=np.asarray(truth.truth.A) * 3.0)  # alpha ~ 3 per step
    with pytest.warns(sj.DivergenceWarning, match="diverged"):
        out = sj.simulate(sim, np.tile(truth.runs.batches, (1, 4, 1)), truth.runs.L0)
    assert sj.diverged(out).all()
