"""Per-example gradients, projections and TracIn-CP / Grad-Dot on the toy protocol model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from simfluence_jax.gradients import (
    Checkpoint,
    Projection,
    checkpoint_dots,
    gradient_dots,
    method_loss,
    model_loss,
    nearest_checkpoint,
    param_mask,
    per_example_grads,
    restrict,
    tracin_cp,
)
from simfluence_jax.training import init_state, make_method, make_optimizer, make_update
from simfluence_jax.training.toy import ToyClassifier, random_task

MODEL = ToyClassifier(vocab_size=32, dim=8, n_layers=2)
N, M = 23, 5


@pytest.fixture(scope="module")
def setup():
    params = MODEL.init(jax.random.PRNGKey(0))
    pool, test = random_task(MODEL, num_train=N, num_test=M, seed=1)
    return params, pool, test


def row(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i : i + 1], tree)


@jax.jit
def _one_grad(params, batch):
    g = jax.grad(lambda p: MODEL.per_example_loss(p, batch)[0])(params)
    return ravel_pytree(g)[0]


def loop_grads(params, inputs, n):
    """The reference: a Python loop of single-example ``jax.grad`` calls on the model's
    own loss, each example fed as a batch of one."""
    return np.stack([np.asarray(_one_grad(params, row(inputs, i))) for i in range(n)])


def test_per_example_grads_equal_a_python_loop(setup):
    params, pool, _ = setup
    G = np.asarray(per_example_grads(model_loss(MODEL), params, None, pool, chunk_size=None))
    ref = loop_grads(params, pool, N)
    assert G.shape == (N, ravel_pytree(params)[0].size)
    np.testing.assert_allclose(G, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 23, 64])
def test_chunking_gives_the_same_gradients(setup, chunk_size):
    """Same rows, same math; vmap widths differ, so XLA may pick other kernels: equality to
    float32 rounding (observed differences ~3e-8)."""
    params, pool, _ = setup
    f = jax.jit(lambda p, x: per_example_grads(model_loss(MODEL), p, None, x, chunk_size=None))
    ref = np.asarray(f(params, pool))
    g = jax.jit(
        lambda p, x: per_example_grads(model_loss(MODEL), p, None, x, chunk_size=chunk_size)
    )
    np.testing.assert_allclose(np.asarray(g(params, pool)), ref, rtol=1e-6, atol=1e-7)


def test_restriction_selects_exactly_the_chosen_leaves(setup):
    params, pool, _ = setup
    full = loop_grads(params, pool, N)
    flat, _ = ravel_pytree(params)
    # Locate the head kernel's coordinates in the full raveled vector.
    marker = jax.tree_util.tree_map(jnp.zeros_like, params)
    marker["head"]["kernel"] = jnp.ones_like(params["head"]["kernel"])
    marker["head"]["bias"] = jnp.ones_like(params["head"]["bias"])
    where = np.asarray(ravel_pytree(marker)[0]) == 1
    for select in [r"^head/", lambda path: path[0] == "head"]:
        r = restrict(model_loss(MODEL), params, None, select=select)
        assert r.num_params == where.sum() == 8 * 2 + 2
        G = np.asarray(per_example_grads(r.loss_fn, r.theta, r.frozen, pool, chunk_size=5))
        np.testing.assert_allclose(G, full[:, where], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="matches no parameter"):
        param_mask(params, r"^nothing$")
    assert flat.size == full.shape[1]


def test_method_loss_differentiates_the_trainable_pytree(setup):
    """LoRA: gradients are taken w.r.t. the low-rank factors only."""
    params, pool, test = setup
    method = make_method("lora", rank=2)
    data = method.setup(MODEL, params, pool, test)
    lora = method.init(MODEL, params)
    lora = jax.tree_util.tree_map(lambda x: x + 0.1, lora)  # B = 0 at init: move off it
    G = np.asarray(per_example_grads(method_loss(MODEL, method), lora, data.frozen, data.pool))
    assert G.shape == (N, ravel_pytree(lora)[0].size)
    for i in [0, 5, N - 1]:
        b = row(pool, i)
        g = jax.grad(lambda t, b=b: method.reference_loss(MODEL, params, t, b)[0])(lora)
        np.testing.assert_allclose(G[i], ravel_pytree(g)[0], rtol=1e-5, atol=1e-7)


def test_gradient_dots_equal_the_product_of_gradient_matrices(setup):
    params, pool, test = setup
    lf = model_loss(MODEL)
    D = np.asarray(gradient_dots(lf, params, None, pool, test, chunk_size=6))
    ref = loop_grads(params, pool, N) @ loop_grads(params, test, M).T
    np.testing.assert_allclose(D, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["gaussian", "countsketch"])
def test_projection_preserves_dot_products_within_jl_error(setup, kind):
    """E<Px, Py> = <x, y> with standard deviation at most sqrt((|x|^2|y|^2 + <x,y>^2)/d)
    for both projections; every pair must fall within 5 standard deviations, and the mean
    standardised error (over 23 x 5 pairs) must be near 0."""
    params, pool, test = setup
    lf = model_loss(MODEL)
    d = 256
    proj = Projection(dim=d, kind=kind, seed=3, block=300)  # P = 1634: 5 full blocks + rest
    Gx, Gy = loop_grads(params, pool, N), loop_grads(params, test, M)
    exact = Gx @ Gy.T
    sd = np.sqrt((np.outer((Gx**2).sum(1), (Gy**2).sum(1)) + exact**2) / d)
    D = np.asarray(gradient_dots(lf, params, None, pool, test, chunk_size=6, projection=proj))
    z = (D - exact) / sd
    assert np.abs(z).max() < 5, np.abs(z).max()
    assert abs(z.mean()) < 0.5, z.mean()
    assert np.corrcoef(D.ravel(), exact.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("kind", ["gaussian", "countsketch"])
def test_projection_is_one_fixed_linear_map(kind):
    """Rows are projected independently by the same matrix, so train and test gradients
    projected in different calls (and chunks) share it."""
    proj = jax.jit(Projection(dim=16, kind=kind, seed=0, block=7))
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 40))
    together = np.asarray(proj(x))
    apart = np.concatenate([np.asarray(proj(x[:2])), np.asarray(proj(x[2:]))])
    np.testing.assert_allclose(together, apart, rtol=1e-6, atol=1e-6)
    mixed = np.asarray(proj(2.0 * x[:1] - 3.0 * x[1:2]))
    np.testing.assert_allclose(mixed, 2.0 * together[:1] - 3.0 * together[1:2], atol=1e-5)
    other = np.asarray(jax.jit(Projection(dim=16, kind=kind, seed=1, block=7))(x))
    assert not np.allclose(other, together)
    with pytest.raises(ValueError, match="unknown projection"):
        Projection(dim=4, kind="fft")


# ---------------------------------------------------------------------------------------------
# TracIn-CP and Grad-Dot.


def sgd_step(params, pool, batch_ids, lr):
    """One real SGD step of the run factory's update on the mean loss of the batch."""
    method = make_method("full")
    data = method.setup(MODEL, params, pool, pool)
    opt = make_optimizer("sgd", learning_rate=lr)
    update = jax.jit(make_update(MODEL, method=method, optimizer=opt, train_rng=False))
    state = init_state(method.init(MODEL, params), opt, seed=0)
    return update(state, jnp.asarray(batch_ids, jnp.int32), data).trainable


def test_tracin_one_step_is_the_first_order_taylor_change(setup):
    """For plain SGD on a batch with one padding slot (mean over the 2 real examples),
    -(eta / 2) sum_i <g_i, g_test> equals the linearised change <g_test, theta_1 - theta_0>
    exactly (float rounding) and the real change of the test loss up to O(eta^2)."""
    params, pool, test = setup
    batch = [3, 11, -1]
    lf = model_loss(MODEL)
    dots = np.asarray(gradient_dots(lf, params, None, pool, test))  # [N, M]
    L = jax.jit(lambda p: MODEL.per_example_loss(p, test))
    L0 = np.asarray(L(params), np.float64)
    g_test = loop_grads(params, test, M)
    errors = []
    for lr in [1e-2, 1e-3]:
        predicted = -(lr / 2) * dots[[3, 11]].sum(axis=0)
        theta1 = sgd_step(params, pool, batch, lr)
        step = np.asarray(ravel_pytree(theta1)[0] - ravel_pytree(params)[0], np.float64)
        linearised = g_test @ step
        np.testing.assert_allclose(predicted, linearised, rtol=1e-4, atol=1e-9)
        real = np.asarray(L(theta1), np.float64) - L0
        errors.append(np.abs(real - predicted).max() / np.abs(real).max())
    assert errors[1] < 2e-3, errors
    # The error is second order: 10x smaller steps, about 10x smaller relative error.
    assert errors[0] / errors[1] > 5, errors


def perturbed(params, scale, seed):
    noise = jax.tree_util.tree_map(
        lambda x: scale * jax.random.normal(jax.random.PRNGKey(seed), x.shape), params
    )
    return jax.tree_util.tree_map(jnp.add, params, noise)


def test_checkpoint_loop_uses_every_checkpoint(setup):
    params, pool, test = setup
    lf = model_loss(MODEL)
    thetas = [perturbed(params, 0.1, s) for s in range(3)]
    rates = [0.5, 0.3, 0.1]
    cks = [
        Checkpoint(step=s, theta=t, learning_rate=r) for s, t, r in zip([0, 5, 9], thetas, rates)
    ]
    steps, got_rates, dots = checkpoint_dots(lf, cks, None, pool, test, chunk_size=8)
    np.testing.assert_array_equal(steps, [0, 5, 9])
    np.testing.assert_allclose(got_rates, rates)
    for k, theta in enumerate(thetas):
        ref = np.asarray(gradient_dots(lf, theta, None, pool, test))
        np.testing.assert_allclose(dots[k], ref, rtol=1e-5, atol=1e-7)
    score = tracin_cp(dots, got_rates)
    np.testing.assert_allclose(score, sum(r * d for r, d in zip(rates, dots)), rtol=1e-5)
    # Changing any one checkpoint changes that checkpoint's dots, leaves the others alone,
    # and changes the summed score.
    for k in range(3):
        changed = list(cks)
        changed[k] = Checkpoint(
            step=cks[k].step, theta=perturbed(params, 0.1, 10 + k), learning_rate=rates[k]
        )
        _, _, dots2 = checkpoint_dots(lf, changed, None, pool, test, chunk_size=8)
        others = [j for j in range(3) if j != k]
        np.testing.assert_array_equal(dots2[others], dots[others])
        assert np.abs(dots2[k] - dots[k]).max() > 1e-3
        assert np.abs(tracin_cp(dots2, got_rates) - score).max() > 1e-4


def test_checkpoints_at_the_same_step_are_averaged(setup):
    params, pool, test = setup
    lf = model_loss(MODEL)
    a, b = perturbed(params, 0.1, 1), perturbed(params, 0.1, 2)
    cks = [Checkpoint(2, a, 0.1, run=0), Checkpoint(2, b, 0.1, run=1)]
    steps, _, dots = checkpoint_dots(lf, cks, None, pool, test)
    assert steps.tolist() == [2]
    mean = (
        np.asarray(gradient_dots(lf, a, None, pool, test))
        + np.asarray(gradient_dots(lf, b, None, pool, test))
    ) / 2
    np.testing.assert_allclose(dots[0], mean, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="disagree on the learning rate"):
        checkpoint_dots(lf, [Checkpoint(2, a, 0.1), Checkpoint(2, b, 0.2)], None, pool, test)


def test_nearest_checkpoint_of_each_step():
    # Step t's update starts from theta_{t-1}; ties go to the earlier checkpoint.
    seg = nearest_checkpoint([0, 4, 8], 10)
    np.testing.assert_array_equal(seg, [0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(nearest_checkpoint([6], 3), [0, 0, 0])
    with pytest.raises(ValueError, match="increase strictly"):
        nearest_checkpoint([4, 4], 5)
