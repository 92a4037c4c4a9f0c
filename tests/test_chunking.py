"""Chunks over test examples (and curricula) change nothing but the memory: every solver,
the (mu, l2) grid and the rollout give the same numbers in chunks as in one piece (float64,
relative difference below 1e-10; CG to its own tolerance, since a chunk stops iterating when
its own test examples converge; the float32 rollout to 1e-6, as XLA may vectorise the sums
of a step differently for another batch shape)."""

import jax
import numpy as np
import pytest

import simfluence_jax as sj
from simfluence_jax.solvers import RidgeProblem, memory, solve_ridge, solve_ridge_grid
from simfluence_jax.synthetic import make_problem

L2S = [1e-3, 1e-1]
TOL = {"direct": 1e-10, "dual": 1e-10, "cg": 1e-8}


def _problem(scaled=False, momentum=0.0):
    p = make_problem(num_train=30, num_test=7, num_runs=12, noise=0.01, seed=3)
    prob = RidgeProblem.from_runs(p.runs)
    prob = RidgeProblem(prob.ids, prob.Lp.astype(np.float64), prob.y.astype(np.float64),
                        prob.num_train)  # fmt: skip
    scales = np.random.default_rng(0).uniform(0.2, 1.0, prob.ids.shape[:2]) if scaled else None
    return prob.with_kernel(momentum, scales) if (scaled or momentum) else prob


def _theta(A, B):
    return np.concatenate([np.asarray(A), np.asarray(B)], axis=-1)


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("solver", ["direct", "cg", "dual"])
@pytest.mark.parametrize("kernel", [False, True])
def test_solvers_in_chunks_equal_one_piece(solver, kernel):
    with jax.enable_x64(True):
        prob = _problem(scaled=kernel, momentum=0.6 if kernel else 0.0)
        A, B, info = solve_ridge(prob, L2S, solver=solver, tol=1e-13)
        assert info["chunk"] == 7  # the whole problem fits the default budget
        whole = _theta(A, B)
        for chunk in (1, 3):  # 7 = 3 + 3 + 1 padded
            A, B, info = solve_ridge(prob, L2S, solver=solver, tol=1e-13, chunk=chunk)
            assert info["chunk"] == chunk and A.shape == (2, 7, 30)
            assert _rel(_theta(A, B), whole) < TOL[solver], (solver, chunk)


def test_cg_start_is_split_with_its_test_examples():
    with jax.enable_x64(True):
        prob = _problem()
        ref = _theta(*solve_ridge(prob, L2S, solver="direct")[:2])
        x0 = ref + 1e-3  # [K, M, P], one start per l2
        A, B, info = solve_ridge(prob, L2S, solver="cg", tol=1e-13, x0=x0, chunk=2)
        assert _rel(_theta(A, B), ref) < 1e-8
        cold = solve_ridge(prob, L2S, solver="cg", tol=1e-13, chunk=2)[2]
        assert sum(info["iterations"]) < sum(cold["iterations"])


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_grid_in_chunks_equals_one_piece(solver):
    with jax.enable_x64(True):
        prob = _problem(scaled=True)
        whole = _theta(*solve_ridge_grid(prob, L2S, [0.0, 0.7], solver=solver, tol=1e-13)[:2])
        A, B, info = solve_ridge_grid(prob, L2S, [0.0, 0.7], solver=solver, tol=1e-13, chunk=2)
        assert info["chunk"] == 2
        assert _rel(_theta(A, B), whole) < TOL[solver]


def test_rollout_in_chunks_equals_one_piece():
    p = make_problem(num_train=20, num_test=5, num_runs=7, seed=5)
    whole = np.asarray(sj.rollout(p.truth, p.runs.batches, p.runs.L0))
    for chunks in [(1, 1), (2, 3), (5, 7)]:
        out = np.asarray(sj.rollout(p.truth, p.runs.batches, p.runs.L0, chunks=chunks))
        np.testing.assert_allclose(out, whole, rtol=1e-6)
    with pytest.raises(ValueError, match="chunks"):
        sj.rollout(p.truth, p.runs.batches, p.runs.L0, chunks=(0, 1))


def test_bad_chunk_is_rejected():
    with pytest.raises(ValueError, match="chunk must be a positive"):
        solve_ridge(_problem(), 0.1, solver="direct", chunk=0)


def test_chunk_fits_the_budget():
    shared, per_test = memory.solver_bytes("direct", N=1000, S=9600, B=4, P=2000, O=40)
    chunk = memory.chunk_for(shared, per_test, 5000, budget=2 * 1024**3)
    assert shared + chunk * per_test <= 2 * 1024**3 < shared + (chunk + 1) * per_test
    assert memory.chunk_for(shared, per_test, 5, budget=2 * 1024**3) == 5
    big = memory.solver_bytes("direct", N=20_000, S=9600, B=4, P=40_000, O=12)
    assert not memory.fits(*big, budget=24 * 1024**3)  # one test example's N x N blocks
    assert memory.fits(*memory.solver_bytes("cg", N=20_000, S=9600, B=4, P=40_000, O=12),
                       budget=1024**3)  # fmt: skip


def test_default_chunk_caps_the_memory_fit_where_smaller_is_faster():
    shared, per_test = memory.solver_bytes("direct", N=200, S=2400, B=4, P=400, O=50)
    fit = memory.chunk_for(shared, per_test, 5000)
    assert memory.default_chunk("direct", shared, per_test, 5000) == min(
        fit, memory.DIRECT_CACHE_BYTES // per_test
    )
    assert 1 < memory.default_chunk("direct", shared, per_test, 5000) < fit
    cg = memory.solver_bytes("cg", N=200, S=2400, B=4, P=400, O=50)
    assert memory.default_chunk("cg", *cg, 5000) == memory.CG_CHUNK
    assert memory.default_chunk("cg", *cg, 3) == 3
    dual = memory.solver_bytes("dual", N=200, S=2400, B=4, P=400, O=50)
    assert memory.default_chunk("dual", *dual, 5000) == memory.chunk_for(*dual, 5000)
    # A test example larger than the cache target is still solved, one at a time.
    big = memory.solver_bytes("direct", N=5000, S=9600, B=4, P=10_000, O=19)
    assert memory.default_chunk("direct", *big, 100, budget=64 * 1024**3) == 1
