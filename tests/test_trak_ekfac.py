"""TRAK and EK-FAC as score providers: each equals a direct implementation of its formula.

The simulators built from them run the conformance battery and the recovery of the
calibrated scale in ``test_simulators.py`` and the end-to-end toy runs in
``test_baselines.py`` with every other gradient baseline."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from jax.flatten_util import ravel_pytree

import simfluence_jax as sj
from simfluence_jax.gradients import (
    Checkpoint,
    GradientContext,
    Projection,
    TRAKConfig,
    after_kernel_scores,
    model_loss,
    trak_scores,
)
from simfluence_jax.gradients.ekfac import EKFACConfig, dense_blocks, ekfac_scores
from simfluence_jax.gradients.per_example import merge_params, per_example_grads, restrict
from simfluence_jax.gradients.trak import make_features_fn
from simfluence_jax.training.toy import ToyClassifier, random_task


@pytest.fixture(scope="module")
def toy():
    model = ToyClassifier(vocab_size=24, dim=6, n_layers=1, n_classes=3, seq_len=6)
    thetas = [model.init(jax.random.PRNGKey(s)) for s in (0, 1)]
    pool, test = random_task(model, num_train=12, num_test=4, seed=3)
    return model, thetas, pool, test


def _grads_by_loop(model, theta, inputs) -> np.ndarray:
    """``float64[n, P]``: one ``jax.grad`` per example, raveled in tree order."""
    loss = model_loss(model)
    grad = jax.jit(jax.grad(lambda th, one: loss(th, None, one)[0]))
    rows = []
    for i in range(inputs["label"].shape[0]):
        g = grad(theta, jax.tree_util.tree_map(lambda x, i=i: x[i : i + 1], inputs))
        rows.append(np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g)]))
    return np.asarray(rows, np.float64)


@pytest.fixture(scope="module")
def toy_grads(toy):
    """Per model: training and test gradients and training losses, computed directly."""
    model, thetas, pool, test = toy
    return [
        (_grads_by_loop(model, th, pool), _grads_by_loop(model, th, test),
         np.asarray(model.per_example_loss(th, pool), np.float64))
        for th in thetas
    ]  # fmt: skip


def _projection_matrix(P: int, dim: int, seed: int) -> np.ndarray:
    """``float64[P, dim]``: the matrix of ``Projection(dim, seed=seed)`` (its image of I)."""
    image = jax.jit(lambda x: Projection(dim=dim, seed=seed)(x))(jnp.eye(P, dtype=jnp.float32))
    return np.asarray(image, np.float64)


def _trak_numpy(grads, *, dim, ridge, output, seed=0):
    total = 0.0
    for m, (G, V, loss) in enumerate(grads):
        proj = _projection_matrix(G.shape[1], dim, seed + m)
        g, v = G @ proj, V @ proj
        w = np.ones(len(g)) if output == "loss" else 1.0 / (1.0 - np.exp(-loss))
        Phi = g * w[:, None]
        K = Phi.T @ Phi
        lam = ridge * np.trace(K) / dim
        total = total + g @ np.linalg.inv(K + lam * np.eye(dim)) @ v.T
    return total / len(grads)


@pytest.mark.parametrize("dim", [8, 40])  # N = 12: 8 solves the k x k kernel, 40 the N x N dual
def test_trak_equals_numpy_on_the_same_projections(toy, toy_grads, dim):
    model, thetas, pool, test = toy
    loss_fn = model_loss(model)
    features = make_features_fn(loss_fn, config=TRAKConfig(dim=dim, chunk_size=5))
    for output in ("loss", "margin"):
        config = TRAKConfig(dim=dim, ridge=1e-2, output=output, chunk_size=5)
        scores, info = trak_scores(
            loss_fn, thetas, None, pool, test, config=config, features_fn=features
        )
        ref = _trak_numpy(toy_grads, dim=dim, ridge=1e-2, output=output)
        assert scores.shape == (12, 4) and info["models"] == 2
        np.testing.assert_allclose(scores, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    # The ensemble is the mean of the single-model scores, each with its own projection.
    seed1 = TRAKConfig(dim=dim, ridge=1e-2, output="margin", seed=1)
    first = trak_scores(loss_fn, thetas[:1], None, pool, test, config=config, features_fn=features)
    second = trak_scores(loss_fn, thetas[1:], None, pool, test, config=seed1, features_fn=features)
    np.testing.assert_allclose((first[0] + second[0]) / 2, scores, rtol=1e-5, atol=1e-6)


def test_primal_and_dual_kernels_agree():
    rng = np.random.default_rng(0)
    g, v, w = rng.normal(size=(6, 9)), rng.normal(size=(3, 9)), rng.uniform(0.5, 2, 6)
    dual, lam = after_kernel_scores(g, v, weights=w, ridge=0.1)  # N = 6 < k = 9
    Phi = g * w[:, None]
    primal = g @ np.linalg.solve(Phi.T @ Phi + lam * np.eye(9), v.T)
    np.testing.assert_allclose(dual, primal, rtol=1e-10)
    # With k <= N and no ridge it is the exact inverse of Phi^T Phi.
    g, v = rng.normal(size=(20, 5)), rng.normal(size=(2, 5))
    exact, lam = after_kernel_scores(g, v)
    assert lam == 0.0
    np.testing.assert_allclose(exact, g @ np.linalg.inv(g.T @ g) @ v.T, rtol=1e-10)


def test_trak_options_and_errors(toy):
    model, thetas, pool, test = toy
    cks = [Checkpoint(step, th, 0.1) for step, th in zip((4, 8), thetas)]
    ctx = GradientContext(
        model_loss(model), frozen=None, pool=pool, test=test, checkpoints=cks,
        trak={"dim": 8, "ensemble_size": 1, "ridge": 1e-2},  # a dict, as a config file gives it
    )  # fmt: skip
    assert ctx.trak == TRAKConfig(dim=8, ensemble_size=1, ridge=1e-2)
    # The ensemble is the latest checkpoint first; ensemble_size=1 keeps the step-8 model.
    alone = trak_scores(model_loss(model), [thetas[1]], None, pool, test, config=ctx.trak)[0]
    np.testing.assert_allclose(ctx.trak_scores(), alone, rtol=1e-6)
    assert ctx.trak_info["models"] == 1
    assert ctx.precompute(["trak"]).trak_scores() is not None
    for bad in ({"dim": 0}, {"ridge": -1.0}, {"output": "logit"}, {"ensemble_size": 0},
                {"projection": "dense"}):  # fmt: skip
        with pytest.raises(ValueError):
            TRAKConfig(**bad)
    with pytest.raises(ValueError, match="singular"):
        after_kernel_scores(np.ones((3, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="no TRAK scores"):
        sj.gradients.PrecomputedGradients(final=np.zeros((2, 2))).trak_scores()


# ---------------------------------------------------------------------------------------------
# EK-FAC against the exact Gauss-Newton matrix of a tiny classifier.


def _block_select(theta, layers):
    select, blocks = dense_blocks(theta, layers)
    return select, blocks


def _exact_ggn_scores(model, theta, pool, test, layers, lam):
    """Scores with the exact Gauss-Newton matrix ``(1/n) sum_i J_i^T (diag p - p p^T) J_i``
    of the blocks' parameters (all of them: no block-diagonal approximation), from the
    Jacobian of the logits."""
    select, _ = _block_select(theta, layers)
    r = restrict(model_loss(model), theta, None, select=select)
    flat, unravel = ravel_pytree(r.theta)

    def logits(v, batch):
        params = merge_params(unravel(v), r.frozen[0])
        h = model._layers(params, model._pooled(params, batch, None, None), 0)
        return h @ params["head"]["kernel"] + params["head"]["bias"]

    J = np.asarray(jax.jacobian(logits)(flat, pool), np.float64)  # [n, C, P]
    p = np.asarray(jax.nn.softmax(logits(flat, pool)), np.float64)
    H = np.einsum("nc,cd->ncd", p, np.eye(p.shape[1])) - np.einsum("nc,nd->ncd", p, p)
    GGN = np.einsum("ncp,ncd,ndq->pq", J, H, J) / J.shape[0]
    grads = jax.jit(lambda x: per_example_grads(r.loss_fn, r.theta, r.frozen, x))
    G, V = np.asarray(grads(pool), np.float64), np.asarray(grads(test), np.float64)
    return G @ np.linalg.solve(GGN + lam * np.eye(len(flat)), V.T), GGN, r, grads


def _spearman(a, b):
    return scipy.stats.spearmanr(np.ravel(a), np.ravel(b))[0]


def test_ekfac_is_exact_when_the_block_is_a_kronecker_product():
    """A softmax head with a zero kernel predicts the same p for every input, so its
    Gauss-Newton block is E[x x^T] (x) (diag p - p p^T) exactly: EK-FAC (and K-FAC) equal it."""
    model = ToyClassifier(vocab_size=24, dim=5, n_layers=0, n_classes=3, seq_len=6)
    theta = model.init(jax.random.PRNGKey(0))
    theta["head"] = {"kernel": jnp.zeros((5, 3)), "bias": jnp.array([0.3, -0.2, 0.5])}
    pool, test = random_task(model, num_train=16, num_test=4, seed=1)
    config = EKFACConfig(fisher="true", num_classes=3, layers="head/kernel", chunk_size=8)
    scores, info = ekfac_scores(model_loss(model), theta, None, pool, test, config=config)
    exact = _exact_ggn_scores(model, theta, pool, test, "head/kernel", info["lambda"])[0]
    np.testing.assert_allclose(scores, exact, rtol=1e-4, atol=1e-4 * np.abs(exact).max())
    plain = ekfac_scores(model_loss(model), theta, None, pool, test,
                         config=dataclasses.replace(config, correct=False))[0]  # fmt: skip
    np.testing.assert_allclose(plain, exact, rtol=1e-3, atol=1e-3 * np.abs(exact).max())


def _compare(model, seed, layers, *, num_train=24, factors="gradient", head_scale=1.0):
    """``(EK-FAC, K-FAC)`` each as ``(Spearman, relative error)`` against the exact GGN."""
    theta = model.init(jax.random.PRNGKey(seed))
    theta["head"] = dict(theta["head"], kernel=theta["head"]["kernel"] * head_scale)
    pool, test = random_task(model, num_train=num_train, num_test=6, seed=4)
    C = model.n_classes
    config = EKFACConfig(fisher="true", num_classes=C, layers=layers, factors=factors)
    scores, info = ekfac_scores(model_loss(model), theta, None, pool, test, config=config)
    exact, GGN, r, grads = _exact_ggn_scores(model, theta, pool, test, layers, info["lambda"])
    # The rows enumerated by fisher="true" give exactly the Gauss-Newton matrix of the logits.
    rows = []
    for c in range(C):
        relabelled = dict(pool, label=np.full_like(pool["label"], c))
        g = np.asarray(grads(relabelled), np.float64)
        w = np.exp(-np.asarray(model.per_example_loss(theta, relabelled), np.float64))
        rows.append(np.einsum("n,np,nq->pq", w, g, g))
    np.testing.assert_allclose(sum(rows) / num_train, GGN, rtol=1e-4, atol=1e-6 * np.abs(GGN).max())
    plain = ekfac_scores(model_loss(model), theta, None, pool, test,
                         config=dataclasses.replace(config, correct=False))[0]  # fmt: skip
    out = [(_spearman(x, exact), np.linalg.norm(x - exact) / np.linalg.norm(exact))
           for x in (scores, plain)]  # fmt: skip
    print(f"\n{layers} {factors}: EK-FAC spearman {out[0][0]:.4f} rel. error {out[0][1]:.3f}; "
          f"K-FAC {out[1][0]:.4f} {out[1][1]:.3f}")  # fmt: skip
    return out


def test_ekfac_matches_exact_ggn_influence_of_a_softmax_layer():
    """One dense softmax layer on pooled embeddings (not a Kronecker product: p varies with
    x). Measured: Spearman 0.996 (both factor kinds), relative error 0.07-0.10."""
    model = ToyClassifier(vocab_size=32, dim=6, n_layers=0, n_classes=3, seq_len=6)
    for factors in ("gradient", "activation"):
        (rho, err), _ = _compare(model, 2, "head/kernel", factors=factors)
        assert rho > 0.99 and err < 0.2, factors


def test_the_eigenvalue_correction_helps_kfac():
    """A softmax layer made more confident (kernel x 3), so that inputs and output gradients
    are far from independent and K-FAC's eigenvalues ``a_p s_q`` are off. Measured: relative
    error of the scores 0.25 -> 0.19 (K-FAC's own factors) and 0.25 -> 0.18 (gradient
    factors), Spearman 0.956 -> 0.970 and 0.960 -> 0.972. On the unscaled layer above the
    two are close (0.097 -> 0.073): the correction is the exact diagonal in K-FAC's basis,
    so what it can gain is bounded by how well that basis fits."""
    model = ToyClassifier(vocab_size=32, dim=6, n_layers=0, n_classes=3, seq_len=6)
    for factors in ("activation", "gradient"):
        (rho, err), (rho_k, err_k) = _compare(
            model, 2, "head/kernel", factors=factors, head_scale=3.0
        )
        assert err < 0.85 * err_k and rho > rho_k + 0.005, factors


def test_ekfac_over_two_layers_against_the_full_ggn():
    """Both dense layers: EK-FAC is block-diagonal across layers, the exact GGN is not; the
    cross-layer curvature it drops is what limits the agreement here (measured: Spearman
    0.95 against the full GGN, 0.98 against the GGN with its cross-layer blocks zeroed)."""
    model = ToyClassifier(vocab_size=24, dim=6, n_layers=1, n_classes=3, seq_len=6)
    (rho, _), _ = _compare(model, 2, r"(^|/)kernel$")
    assert rho > 0.93


def test_ekfac_options_and_errors(toy):
    model, thetas, pool, test = toy
    empirical = ekfac_scores(model_loss(model), thetas[0], None, pool, test)[0]
    assert empirical.shape == (12, 4) and np.all(np.isfinite(empirical))
    with pytest.raises(ValueError, match="selects no dense kernel"):
        dense_blocks(thetas[0], "nothing")
    for bad in ({"damping": 0.0}, {"fisher": "sampled"}, {"fisher": "true"}):
        with pytest.raises(ValueError):
            EKFACConfig(**bad)
    no_label = {"tokens": pool["tokens"]}

    def loss(theta, frozen, x):  # labels made up from the tokens: the inputs carry none
        return model.per_example_loss(theta, dict(x, label=x["tokens"][:, 0] % 3))

    with pytest.raises(ValueError, match="'label'"):
        ekfac_scores(loss, thetas[0], None, no_label, no_label,
                     config=EKFACConfig(fisher="true", num_classes=3))  # fmt: skip
    cks = [Checkpoint(4, thetas[0], 0.1)]
    ctx = GradientContext(model_loss(model), frozen=None, pool=pool, test=test, checkpoints=cks,
                          ekfac={"damping": 0.1, "fisher": "true", "num_classes": 3})  # fmt: skip
    assert ctx.ekfac == EKFACConfig(damping=0.1, fisher="true", num_classes=3)
    np.testing.assert_allclose(
        ctx.ekfac_scores(),
        ekfac_scores(model_loss(model), thetas[0], None, pool, test, config=ctx.ekfac)[0],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="no EK-FAC scores"):
        sj.gradients.PrecomputedGradients(final=np.zeros((2, 2))).ekfac_scores()
