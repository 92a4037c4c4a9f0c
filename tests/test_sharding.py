"""Fits and rollouts sharded over 8 fake CPU devices equal the single-device results."""

import numpy as np
import pytest

import simfluence_jax as sj
from simfluence_jax.synthetic import make_problem


@pytest.fixture(scope="module")
def problem():
    # M = 13 is not a multiple of 8: exercises the padding of the test axis.
    p = make_problem(num_train=20, num_test=13, num_runs=12, seed=7)
    return p.runs.split(8, 2, 2)


@pytest.mark.parametrize("solver", ["direct", "cg", "dual"])
def test_sharded_fit_equals_single_device(problem, solver, devices):
    fit, val, _ = problem
    mesh = sj.test_mesh(devices)
    one = sj.fit_simulator("linear", fit, validation=val, solver=solver)
    many = sj.fit_simulator("linear", fit, validation=val, solver=solver, mesh=mesh)
    assert one.l2 == many.l2
    np.testing.assert_allclose(np.asarray(many.A), np.asarray(one.A), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(many.B), np.asarray(one.B), rtol=1e-5, atol=1e-6)


def test_sharded_rollout_equals_single_device(problem, devices):
    fit, _, test = problem
    sim = sj.fit_simulator("linear", fit, l2=0.1)
    mesh = sj.test_mesh(devices)
    one = np.asarray(sj.rollout(sim, test.batches, test.L0))
    many = np.asarray(sj.rollout(sim, test.batches, test.L0, mesh=mesh))
    assert many.shape == one.shape
    np.testing.assert_allclose(many, one, rtol=1e-6, atol=1e-6)
