"""The three ridge solvers agree with each other and with an independent NumPy solve.

Tolerances (max abs difference relative to max |theta|):
* float64: 1e-8 between solvers and against NumPy's ``lstsq`` on the explicit design matrix;
* float32: 1e-2 against the float64 solution. The A and B columns of one id are nearly
  collinear when losses move little, so float32 parameters are only determined to about
  that precision (measured: direct 5e-3, CG 2.5e-3, dual 4e-4 at l2 = 1e-3).
"""

import jax
import numpy as np
import pytest

from simfluence_jax.solvers import RidgeProblem, choose_solver, solve_ridge, solve_ridge_grid
from simfluence_jax.synthetic import make_problem

L2S = [1e-3, 1e-1]


def _problem(use_A=True, use_B=True, dtype=np.float32, **kw):
    p = make_problem(num_train=30, num_test=6, num_runs=12, noise=0.01, seed=3, **kw)
    alpha0 = 1.0 if not use_A else 0.0
    prob = RidgeProblem.from_runs(p.runs, alpha0=alpha0, use_A=use_A, use_B=use_B)
    return RidgeProblem(
        prob.ids, prob.Lp.astype(dtype), prob.y.astype(dtype), prob.num_train, use_A, use_B
    )


def _explicit_design(prob: RidgeProblem, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense X [S, P] and y [S] of test example j, built row by row."""
    ids = prob.ids.reshape(-1, prob.ids.shape[-1])
    Lp = prob.Lp[j].reshape(-1).astype(np.float64)
    N = prob.num_train
    m = np.zeros((len(ids), N))
    for s, row in enumerate(ids):
        for i in row[row >= 0]:
            m[s, i] += 1
    blocks = ([Lp[:, None] * m] if prob.use_A else []) + ([m] if prob.use_B else [])
    return np.concatenate(blocks, axis=1), prob.y[j].reshape(-1).astype(np.float64)


def _theta(A, B, prob):
    parts = ([np.asarray(A)] if prob.use_A else []) + ([np.asarray(B)] if prob.use_B else [])
    return np.concatenate(parts, axis=-1)


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("use_A,use_B", [(True, True), (False, True), (True, False)])
def test_float64_solvers_match_numpy(use_A, use_B):
    with jax.enable_x64(True):
        prob = _problem(use_A, use_B, dtype=np.float64)
        results = {}
        for solver in ("direct", "cg", "dual"):
            A, B, info = solve_ridge(prob, L2S, solver=solver, tol=1e-13)
            assert info["solver"] == solver
            results[solver] = _theta(A, B, prob)
            assert results[solver].dtype == np.float64
    for k, l2 in enumerate(L2S):
        for j in (0, 5):
            X, y = _explicit_design(prob, j)
            aug = np.concatenate([X, np.sqrt(l2) * np.eye(X.shape[1])])
            ref = np.linalg.lstsq(aug, np.concatenate([y, np.zeros(X.shape[1])]), rcond=None)[0]
            for solver, theta in results.items():
                assert _rel(theta[k, j], ref) < 1e-8, (solver, l2, j)


def test_float32_solvers_within_written_tolerance():
    prob = _problem()
    with jax.enable_x64(True):
        p64 = RidgeProblem(
            prob.ids, prob.Lp.astype(np.float64), prob.y.astype(np.float64), prob.num_train
        )
        A, B, _ = solve_ridge(p64, L2S, solver="direct")
        ref = _theta(A, B, p64)
    for solver in ("direct", "cg", "dual"):
        A, B, _ = solve_ridge(prob, L2S, solver=solver)
        theta = _theta(A, B, prob)
        assert theta.dtype == np.float32
        for k in range(len(L2S)):
            assert _rel(theta[k], ref[k]) < 1e-2, (solver, L2S[k])


def test_padding_and_repeated_ids_count_correctly():
    """-1 slots contribute nothing and an id twice in a batch counts twice."""
    with jax.enable_x64(True):
        prob = _problem(dtype=np.float64)
        ids = prob.ids.copy()
        ids[0, :, 1] = -1
        ids[1, :, 2] = ids[1, :, 3]
        prob = RidgeProblem(ids, prob.Lp, prob.y, prob.num_train)
        X, y = _explicit_design(prob, 2)
        ref = np.linalg.solve(X.T @ X + 0.1 * np.eye(X.shape[1]), X.T @ y)
        for solver in ("direct", "cg", "dual"):
            A, B, _ = solve_ridge(prob, 0.1, solver=solver, tol=1e-13)
            assert _rel(_theta(A, B, prob)[0, 2], ref) < 1e-8, solver


@pytest.mark.parametrize("use_A,use_B", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("scaled", [False, True])
def test_grid_equals_one_solve_per_mu(use_A, use_B, scaled):
    """The (mu, l2) grid (one compiled loop over mu for direct, warm-started CG, dual mu by
    mu) gives every mu the solution of its own kernel problem, in float64 to 1e-8."""
    mus = [0.0, 0.3, 0.9]
    with jax.enable_x64(True):
        prob = _problem(use_A, use_B, dtype=np.float64)
        rng = np.random.default_rng(0)
        scales = rng.uniform(0.2, 1.0, prob.ids.shape[:2]) if scaled else None
        prob = prob.with_kernel(0.0, scales)
        refs = [
            _theta(*solve_ridge(prob.with_kernel(mu, scales), L2S, solver="direct")[:2], prob)
            for mu in mus
        ]
        for solver in ("direct", "cg", "dual"):
            A, B, info = solve_ridge_grid(prob, L2S, mus, solver=solver, tol=1e-13)
            assert info["solver"] == solver and A.shape == (len(mus), len(L2S), 6, 30)
            theta = _theta(A, B, prob)
            for i, ref in enumerate(refs):
                assert _rel(theta[i], ref) < 1e-8, (solver, mus[i])
    with pytest.raises(ValueError, match=r"mu must lie in \[0, 1\)"):
        solve_ridge_grid(prob, L2S, [0.5, 1.0])


def test_grid_sharded_over_a_mesh_equals_one_device(devices):
    from simfluence_jax.sharding import test_mesh

    with jax.enable_x64(True):
        prob = _problem(dtype=np.float64).with_kernel(0.0, None)
        one = _theta(*solve_ridge_grid(prob, L2S, [0.0, 0.6])[:2], prob)
        many = _theta(*solve_ridge_grid(prob, L2S, [0.0, 0.6], mesh=test_mesh(devices))[:2], prob)
    assert many.shape == one.shape and _rel(many, one) < 1e-9


def test_cg_grid_starts_each_l2_from_the_previous_mu():
    prob = _problem().with_kernel(0.0, None)
    cold = [solve_ridge(prob.with_kernel(0.55, None), L2S, solver="cg")[2]["iterations"]]
    warm = solve_ridge_grid(prob, L2S, [0.5, 0.55], solver="cg")[2]["iterations"]
    assert sum(warm[1]) < sum(cold[0]), (warm, cold)


def test_choice_by_size():
    small_rows = _problem()  # 12 runs x 5 steps = 60 rows, 60 unknowns
    few_rows = RidgeProblem(
        small_rows.ids[:2], small_rows.Lp[:, :2], small_rows.y[:, :2], small_rows.num_train
    )
    assert choose_solver(few_rows) == "dual"  # 10 rows, 60 unknowns
    assert choose_solver(small_rows, budget_bytes=1000) == "cg"  # nothing fits: least memory


@pytest.mark.parametrize(
    "N,M,R,T,O,expected",
    [
        (200, 200, 25, 96, 66, ("direct", "cg")),  # GPTfluence: within 1.3x of each other
        (1000, 500, 100, 96, 60, ("cg",)),  # direct 6x slower at the centre of the grid
        (20000, 5000, 100, 96, 12, ("cg",)),  # direct's N x N blocks do not fit
        (5000, 20, 2, 10, 4, ("dual",)),  # 20 rows, 10,000 unknowns
    ],
)
def test_cost_model_choice(N, M, R, T, O, expected):
    from simfluence_jax.solvers import cost

    name, table = cost.choose(N=N, M=M, S=R * T, B=4, P=2 * N, O=O, budget=16 * 1024**3)
    assert name in expected, table
    if R * T > 2 * N:  # more rows than unknowns: the dual form is never the choice
        assert table["dual"][0] > min(table["direct"][0], table["cg"][0])


@pytest.mark.parametrize("l2", [0.0, -1.0, float("nan"), []])
def test_bad_l2_is_rejected(l2):
    with pytest.raises(ValueError, match="l2"):
        solve_ridge(_problem(), l2)


def test_unknown_solver_lists_known():
    with pytest.raises(ValueError, match="known: cg, direct, dual"):
        solve_ridge(_problem(), 0.1, solver="lbfgs")
