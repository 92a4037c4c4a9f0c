"""Influence functions: HVPs, CG / LiSSA / exact solves, and the meaning of the scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from simfluence_jax.gradients import (
    InfluenceConfig,
    explicit_matrix,
    influence_scores,
    mean_loss_hvp,
    model_loss,
    restrict,
    solve_damped_cg,
    solve_lissa,
)
from simfluence_jax.gradients.per_example import merge_params
from simfluence_jax.training.toy import ToyClassifier, random_task

MODEL = ToyClassifier(vocab_size=16, dim=4, n_layers=1)  # P = 94
N, M = 30, 4
DAMPING = 0.5  # the Hessian at init has eigenvalues in about [-0.40, 0.69]


@pytest.fixture(scope="module")
def setup():
    params = MODEL.init(jax.random.PRNGKey(0))
    pool, test = random_task(MODEL, num_train=N, num_test=M, seed=0)
    lf = model_loss(MODEL)
    w0, unravel = ravel_pytree(params)
    H = jax.jit(jax.hessian(lambda w: jnp.mean(lf(unravel(w), None, pool))))(w0)
    H = np.asarray(H, np.float64)
    H = 0.5 * (H + H.T)

    def grads(inputs, n):
        f = jax.jit(jax.grad(lambda w, b: lf(unravel(w), None, b)[0]))
        rows = [jax.tree_util.tree_map(lambda x, i=i: x[i : i + 1], inputs) for i in range(n)]
        return np.stack([np.asarray(f(w0, r), np.float64) for r in rows])

    G_train, G_test = grads(pool, N), grads(test, M)
    A = H + DAMPING * np.eye(len(H))
    X = np.linalg.solve(A, G_test.T).T  # [M, P], float64 reference
    return dict(
        params=params,
        pool=pool,
        test=test,
        lf=lf,
        H=H,
        A=A,
        X=X,
        G_train=G_train,
        G_test=G_test,
        scores=G_train @ X.T,
    )


def rel(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


def test_hvp_equals_the_explicit_hessian(setup):
    s = setup
    hvp = jax.jit(mean_loss_hvp(s["lf"], s["params"], None, s["pool"], chunk_size=7))
    v = jax.random.normal(jax.random.PRNGKey(1), (s["H"].shape[0],))
    np.testing.assert_allclose(hvp(v), s["H"] @ np.asarray(v, np.float64), rtol=1e-4, atol=1e-6)
    Hx = explicit_matrix(
        mean_loss_hvp(s["lf"], s["params"], None, s["pool"], chunk_size=None),
        s["H"].shape[0],
        chunk_size=40,
    )
    np.testing.assert_allclose(Hx, s["H"], rtol=1e-4, atol=1e-6)


def test_exact_and_cg_match_the_explicit_inverse(setup):
    """Relative error 1e-4 on the scores (the CG tolerance is 1e-6 in residual and
    cond(H + 0.5 I) is about 10, so the error bound is about 1e-5 plus float32 rounding)."""
    s = setup
    for solver in ["exact", "cg"]:
        cfg = InfluenceConfig(solver=solver, damping=DAMPING, chunk_size=8)
        scores, info = influence_scores(
            s["lf"], s["params"], None, s["pool"], s["test"], config=cfg
        )
        assert scores.shape == (N, M)
        assert rel(scores, s["scores"]) < 1e-4, (solver, rel(scores, s["scores"]))
        assert not info.negative_curvature
    assert info.residual < 1e-5 and 0 < info.iterations < 94


def test_cg_solver_alone(setup):
    s = setup
    matvec = lambda v: jnp.asarray(s["H"], jnp.float32) @ v
    x, (k, res, neg) = jax.jit(lambda b: solve_damped_cg(matvec, b, damping=DAMPING, tol=1e-7))(
        jnp.asarray(s["G_test"], jnp.float32)
    )
    assert rel(x, s["X"]) < 1e-4 and not bool(neg)
    # A zero right-hand side is solved by x = 0 without iterating on it.
    b = jnp.asarray(s["G_test"], jnp.float32).at[1].set(0.0)
    x, _ = solve_damped_cg(matvec, b, damping=DAMPING)
    assert np.all(np.asarray(x[1]) == 0)


def test_lissa_matches_within_its_written_bound(setup):
    """Deterministic (full-batch) LiSSA: x* - x_K = (I - A/sigma)^(K+1) x*, so
    |x_K - x*| <= rho^(K+1) |x*| with rho = 1 - mu_min(A) / sigma when sigma >= mu_max(A).
    We choose K so that the bound is 1e-2 and check the error against rho^(K+1) (plus 1e-5
    for float32 rounding accumulated over K steps)."""
    s = setup
    mu = np.linalg.eigvalsh(s["A"])
    sigma = 1.05 * mu[-1]
    rho = 1 - mu[0] / sigma
    depth = int(np.ceil(np.log(1e-2) / np.log(rho)))
    bound = rho ** (depth + 1)
    assert bound <= 1e-2
    H32 = jnp.asarray(s["H"], jnp.float32)
    X = solve_lissa(
        lambda v: H32 @ v,
        jnp.asarray(s["G_test"], jnp.float32),
        damping=DAMPING,
        scale=sigma,
        depth=depth,
    )
    for j in range(M):
        err = np.linalg.norm(np.asarray(X[j], np.float64) - s["X"][j])
        assert err <= (bound + 1e-5) * np.linalg.norm(s["X"][j]), (j, err, bound)
    # Through the influence pipeline (HVPs of the model, sigma from power iteration): the
    # power iteration gives sigma ~ 1.1 mu_max, so the same depth gives a bound below 2e-2.
    cfg = InfluenceConfig(solver="lissa", damping=DAMPING, depth=depth)
    scores, _ = influence_scores(s["lf"], s["params"], None, s["pool"], s["test"], config=cfg)
    assert rel(scores, s["scores"]) < 2e-2


def test_stochastic_lissa_is_close_on_average(setup):
    """Minibatch HVPs (10 of 30 examples) make each term random; 8 independent estimates
    averaged land within 10% of the exact scores here (the full-batch run is 0.2%)."""
    s = setup
    cfg = InfluenceConfig(
        solver="lissa",
        damping=DAMPING,
        lissa_depth=150,
        lissa_batch_size=10,
        lissa_repeats=8,
        seed=1,
    )
    scores, _ = influence_scores(s["lf"], s["params"], None, s["pool"], s["test"], config=cfg)
    assert rel(scores, s["scores"]) < 0.1, rel(scores, s["scores"])


def test_indefinite_hessian_is_reported(setup):
    s = setup
    for solver in ["cg", "exact"]:
        cfg = InfluenceConfig(solver=solver, damping=0.0)
        with pytest.raises(ValueError, match="not positive definite"):
            influence_scores(s["lf"], s["params"], None, s["pool"], s["test"], config=cfg)
    with pytest.raises(ValueError, match="unknown influence solver"):
        InfluenceConfig(solver="newton")


def test_parameter_selection_takes_the_hessian_sub_block(setup):
    s = setup
    r = restrict(s["lf"], s["params"], None, select=r"^head/")
    marker = jax.tree_util.tree_map(jnp.zeros_like, s["params"])
    marker["head"] = jax.tree_util.tree_map(jnp.ones_like, marker["head"])
    idx = np.flatnonzero(np.asarray(ravel_pytree(marker)[0]))
    hvp = mean_loss_hvp(r.loss_fn, r.theta, r.frozen, s["pool"])
    H_head = np.asarray(jax.jit(lambda: explicit_matrix(hvp, r.num_params))())
    np.testing.assert_allclose(H_head, s["H"][np.ix_(idx, idx)], rtol=1e-4, atol=1e-6)
    cfg = InfluenceConfig(solver="exact", damping=1e-3, select=r"^head/")
    scores, _ = influence_scores(s["lf"], s["params"], None, s["pool"], s["test"], config=cfg)
    A = s["H"][np.ix_(idx, idx)] + 1e-3 * np.eye(len(idx))
    ref = s["G_train"][:, idx] @ np.linalg.solve(A, s["G_test"][:, idx].T)
    assert rel(scores, ref) < 1e-4


def test_score_is_the_effect_of_upweighting_on_the_test_loss():
    """Koh & Liang's derivation: with theta*(eps) = argmin mean_pool l + (lam/2)|theta|^2
    + eps l(z_i), d L_test(theta*(eps)) / d eps at 0 = -g_test^T (H + lam I)^{-1} g_i, so
    our score (positive = helps) must equal minus that derivative. Head-only model (convex),
    optimum by Newton's method in float64, derivative by central differences."""
    model = ToyClassifier(vocab_size=16, dim=4, n_layers=1)
    params = model.init(jax.random.PRNGKey(2))
    pool, test = random_task(model, num_train=20, num_test=3, seed=4)
    lf = model_loss(model)
    r = restrict(lf, params, None, select=r"^head/")
    lam = 0.1

    with jax.enable_x64(True):
        w0, unravel = ravel_pytree(jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), r.theta))

        def lf_head(w, x):
            return r.loss_fn(unravel(w), r.frozen, x)

        @jax.jit
        def optimum(eps, i):
            extra = jax.tree_util.tree_map(lambda x: jax.lax.dynamic_slice_in_dim(x, i, 1), pool)

            def objective(w):
                return (
                    jnp.mean(lf_head(w, pool))
                    + 0.5 * lam * jnp.sum(w * w)
                    + eps * lf_head(w, extra)[0]
                )

            def newton(_, w):
                return w - jnp.linalg.solve(jax.hessian(objective)(w), jax.grad(objective)(w))

            return jax.lax.fori_loop(0, 30, newton, w0)

        w_star = optimum(0.0, 0)
        eps = 1e-4
        derivative = {}
        for i in [0, 7, 13]:
            change = lf_head(optimum(eps, i), test) - lf_head(optimum(-eps, i), test)
            derivative[i] = np.asarray(change / (2 * eps))
        head = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), unravel(w_star))
    theta_star = merge_params(head, r.frozen[0])
    # The influence scores at theta*, with the regulariser's lam as the damping.
    cfg = InfluenceConfig(solver="exact", damping=lam, select=r"^head/")
    scores, _ = influence_scores(lf, theta_star, None, pool, test, config=cfg)
    for i, d in derivative.items():
        np.testing.assert_allclose(scores[i], -d, rtol=2e-3, atol=1e-5)


def test_lanczos_low_rank_solver(setup):
    """With k = P Lanczos steps the Krylov space is the whole space: the low-rank inverse is
    the exact one (up to float32 Lanczos rounding). With fewer steps it is an approximation
    whose error shrinks as k grows."""
    s = setup
    P = s["H"].shape[0]
    errors = {}
    for k in [10, 40, P]:
        cfg = InfluenceConfig(solver="lanczos", damping=DAMPING, lanczos_rank=k)
        scores, info = influence_scores(
            s["lf"], s["params"], None, s["pool"], s["test"], config=cfg
        )
        assert info.iterations == k
        errors[k] = rel(scores, s["scores"])
    assert errors[P] < 1e-4, errors  # measured 8e-7
    assert errors[P] < errors[40] < errors[10], errors
    with pytest.raises(ValueError, match="needs damping > 0"):
        InfluenceConfig(solver="lanczos", damping=0.0)


def test_each_solver_has_its_own_config_behind_the_registry():
    """The flat form a gin file gives dispatches on ``solver``; a field may carry the
    solver's prefix; fields of another solver and unknown solvers are errors that list
    what is known."""
    from simfluence_jax.gradients import (
        IHVP_SOLVERS,
        CGConfig,
        ExactConfig,
        LanczosConfig,
        LissaConfig,
    )

    assert IHVP_SOLVERS.names() == ["cg", "exact", "lanczos", "lissa"]
    assert InfluenceConfig() == CGConfig()
    cfg = InfluenceConfig(**{"solver": "lanczos", "lanczos_rank": 32, "damping": 0.01})
    assert cfg == LanczosConfig(rank=32, damping=0.01) and cfg.solver == "lanczos"
    assert InfluenceConfig(solver="cg", cg_max_iter=5, cg_tol=0.0) == CGConfig(max_iter=5, tol=0.0)
    assert InfluenceConfig(solver="lissa", depth=3) == LissaConfig(depth=3)
    assert InfluenceConfig(solver="exact", select="head") == ExactConfig(select="head")
    with pytest.raises(TypeError, match=r"no field\(s\) \['cg_tol'\]; it has"):
        InfluenceConfig(solver="exact", cg_tol=1e-3)
    with pytest.raises(TypeError, match="repeats"):
        InfluenceConfig(solver="lanczos", rank=3, lanczos_rank=4)
    with pytest.raises(ValueError, match="known: cg, exact, lanczos, lissa"):
        InfluenceConfig(solver="newton")
    with pytest.raises(ValueError, match="damping must be >= 0"):
        CGConfig(damping=-1.0)
