"""TRAK and EK-FAC as score providers: each equals a direct implementation of its formula.

The simulators built from them run the conformance battery and the recovery of the
calibrated scale in ``test_simulators.py`` and the end-to-end toy runs in
``test_baselines.py`` with every other gradient baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
