"""Fits and rollouts sharded over 8 fake CPU devices equal the single-device results."""

import jax
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
    """Sharded and unsharded fits run differently batched kernels, so rounding differs;
    in float64 the parameters agree to 1e-9 of their scale. In float32 the near-collinear
    A and B columns amplify rounding to ~1e-3 (as in the solver agreement tests), so there
    the rollouts and the l2 chosen on validation runs are compared instead."""
    fit, val, test = problem
    mesh = sj.test_mesh(devices)
    with jax.enable_x64(True):
        kw = dict(l2=1e-3, solver=solver, dtype=np.float64)
        one = sj.fit_simulator("linear", fit, **kw)
        many = sj.fit_simulator("linear", fit, mesh=mesh, **kw)
        for a, b in [(many.A, one.A), (many.B, one.B)]:
            a, b = np.asarray(a), np.asarray(b)
            assert a.shape == b.shape and a.dtype == np.float64
            np.testing.assert_allclose(a, b, atol=1e-9 * np.abs(b).max())
    one = sj.fit_simulator("linear", fit, l2=0.1, solver=solver)
    many = sj.fit_simulator("linear", fit, l2=0.1, solver=solver, mesh=mesh)
    np.testing.assert_allclose(
        np.asarray(sj.rollout(many, test.batches, test.L0)),
        np.asarray(sj.rollout(one, test.batches, test.L0)),
        rtol=1e-5,
    )
    chosen = [
        sj.fit_simulator("linear", fit, validation=val, solver=solver, mesh=m).l2
        for m in (None, mesh)
    ]
    assert chosen[0] == chosen[1]


def test_sharded_rollout_equals_single_device(problem, devices):
    fit, _, test = problem
    sim = sj.fit_simulator("linear", fit, l2=0.1)
    mesh = sj.test_mesh(devices)
    one = np.asarray(sj.rollout(sim, test.batches, test.L0))
    many = np.asarray(sj.rollout(sim, test.batches, test.L0, mesh=mesh))
    assert many.shape == one.shape
    np.testing.assert_allclose(many, one, rtol=1e-6, atol=1e-6)
