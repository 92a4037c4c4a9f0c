"""The instrumented train step, the training methods, the optimizers and the run loop."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from run_factory_worker import NUM_STEPS, NUM_TEST, NUM_TRAIN, toy_factory, toy_plan

from simfluence_jax.training import (
    OPTIMIZERS,
    init_state,
    make_method,
    make_optimizer,
    make_train_step,
    make_update,
)
from simfluence_jax.training.loop import RunFactory
from simfluence_jax.training.toy import ToyClassifier, random_task

METHODS = [
    ("full", {}),
    ("prompt", {"n_tokens": 3}),
    ("lora", {"rank": 2}),
    ("top_layers", {"n_top": 1}),
]


@pytest.fixture(scope="module")
def plan():
    return toy_plan()


_CACHE = {}


def cached_factory(name="full", **kwargs):
    """One factory per setting for the whole module (each factory compiles its own step)."""
    key = (name, tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        _CACHE[key] = toy_factory(name, **kwargs)
    return _CACHE[key]


@pytest.mark.parametrize("name, kwargs", METHODS)
def test_recorded_losses_equal_fresh_forward_of_trained_params(name, kwargs, plan):
    """Replays run 0 step by step outside the loop and evaluates the raw model afresh."""
    batches, seeds = plan
    factory = cached_factory(name, **kwargs)
    losses = factory.run(batches[:1], seeds[:1], group_size=1)
    model, method = factory.model, factory.method
    update = jax.jit(make_update(model, method=method, optimizer=factory.optimizer))
    state = init_state(factory.trainable0, factory.optimizer, seed=int(seeds[0]))
    test = factory.data.test if name != "top_layers" else factory.data.test["batch"]
    fresh = jax.jit(lambda tr: method.reference_loss(model, factory.params, tr, test))
    np.testing.assert_allclose(fresh(state.trainable), losses[0, 0], rtol=1e-5, atol=1e-6)
    for t in range(NUM_STEPS):
        state = update(state, jnp.asarray(batches[0, t]), factory.data)
        np.testing.assert_allclose(fresh(state.trainable), losses[0, t + 1], rtol=1e-5, atol=1e-6)
    assert np.abs(losses[0, -1] - losses[0, 0]).max() > 1e-2  # training moved the losses


def test_same_seed_is_bit_identical_and_seed_matters(plan):
    batches, seeds = plan
    a = cached_factory().run(batches, seeds, group_size=2)
    b = toy_factory().run(batches, seeds, group_size=2)  # a fresh factory, compiled anew
    np.testing.assert_array_equal(a, b)
    c = cached_factory().run(batches, seeds + 1, group_size=2)
    np.testing.assert_array_equal(a[:, 0], c[:, 0])  # L_0 does not depend on the seed
    assert not np.array_equal(a[:, 1:], c[:, 1:])  # dropout does


def test_runs_together_equal_runs_one_by_one(plan):
    """vmap over runs: G=2 and G=4 run the same batched kernels (bit-equal here); G=1 lets
    XLA drop the run axis and pick unbatched kernels, equal to float32 rounding."""
    batches, seeds = plan
    factory = cached_factory("lora", rank=2)
    together = factory.run(batches, seeds, group_size=4)
    pairs = factory.run(batches, seeds, group_size=2)
    alone = factory.run(batches, seeds, group_size=1)
    assert factory.compile_count() == 3  # one program per group size, not per run
    np.testing.assert_array_equal(together, pairs)
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)


def test_one_compiled_step_for_all_runs(plan):
    batches, seeds = plan
    factory = toy_factory()
    factory.run(batches, seeds, group_size=1)
    factory.run(batches[::-1], seeds, group_size=1)
    assert factory.compile_count() == 1


def test_runs_sharded_over_a_mesh_equal_unsharded(devices, plan):
    batches, seeds = plan
    mesh = Mesh(np.array(devices[:2]), ("runs",))
    sharded = toy_factory(mesh=mesh).run(batches, seeds, group_size=4)
    plain = cached_factory().run(batches, seeds, group_size=4)
    np.testing.assert_allclose(sharded, plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of the 2 devices"):
        toy_factory(mesh=mesh).run(batches, seeds, group_size=3)


def test_instrumented_step_equals_update_then_eval(plan):
    batches, seeds = plan
    factory = cached_factory()
    step = jax.jit(factory.train_step)
    update = jax.jit(make_update(factory.model, method=factory.method, optimizer=factory.optimizer))
    state_a = init_state(factory.trainable0, factory.optimizer, seed=1)
    state_b = state_a
    for t in range(3):
        ids = jnp.asarray(batches[0, t])
        state_a, losses = step(state_a, ids, factory.data)
        state_b = update(state_b, ids, factory.data)
        ref = factory.model.per_example_loss(state_b.trainable, factory.data.test)
        np.testing.assert_allclose(losses, ref, rtol=1e-6, atol=1e-7)
    assert losses.shape == (NUM_TEST,)


def test_padding_gets_zero_weight_and_batch_loss_is_mean_over_real_examples():
    model = ToyClassifier()
    params = model.init(jax.random.PRNGKey(0))
    pool, test = random_task(model, num_train=10, num_test=3)
    method = make_method("full")
    data = method.setup(model, params, pool, test)
    opt = make_optimizer("sgd", learning_rate=0.5)
    step = jax.jit(make_train_step(model, method=method, optimizer=opt, train_rng=False))
    state = init_state(params, opt, seed=0)
    padded, loss_p = step(state, jnp.array([4, 7, -1, -1]), data)
    real, loss_r = step(state, jnp.array([4, 7]), data)
    for a, b in zip(jax.tree_util.tree_leaves(padded), jax.tree_util.tree_leaves(real)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # SGD with the mean batch loss: theta_1 = theta_0 - eta * mean_i grad l_i
    one_grad = jax.jit(
        jax.grad(
            lambda p, i: model.per_example_loss(
                p, jax.tree_util.tree_map(lambda x: jnp.asarray(x)[i], pool)
            )[0]
        )
    )
    grads = [one_grad(params, jnp.array([i])) for i in (4, 7)]
    expect = jax.tree_util.tree_map(lambda p, g1, g2: p - 0.5 * (g1 + g2) / 2, params, *grads)
    for a, b in zip(jax.tree_util.tree_leaves(padded.trainable), jax.tree_util.tree_leaves(expect)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_step_rng_is_fold_in_of_seed_and_step():
    model = ToyClassifier(dropout=0.5)
    params = model.init(jax.random.PRNGKey(0))
    pool, test = random_task(model, num_train=10, num_test=3)
    method = make_method("full")
    data = method.setup(model, params, pool, test)
    opt = make_optimizer("sgd", learning_rate=0.5)
    state = init_state(params, opt, seed=11)
    step = jax.jit(make_train_step(model, method=method, optimizer=opt))
    new, _ = step(state, jnp.array([1, 2]), data)
    batch = jax.tree_util.tree_map(lambda x: x[jnp.array([1, 2])], pool)
    rng = jax.random.fold_in(jax.random.PRNGKey(11), 1)
    grad = jax.jit(jax.grad(lambda p: model.per_example_loss(p, batch, rng=rng).mean()))(params)
    expect = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grad)
    for a, b in zip(jax.tree_util.tree_leaves(new.trainable), jax.tree_util.tree_leaves(expect)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(new.step) == 1


def test_lora_trains_only_low_rank_factors_and_starts_at_the_base_model():
    factory = toy_factory("lora", rank=2, target=r"layer_\d/kernel$")
    paths = {
        tuple(k.key for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(factory.trainable0)[0]
    }
    assert paths == {
        ("layer_0", "kernel", "lora_a"),
        ("layer_0", "kernel", "lora_b"),
        ("layer_1", "kernel", "lora_a"),
        ("layer_1", "kernel", "lora_b"),
    }
    base = factory.model.per_example_loss(factory.params, factory.data.test)
    l0 = factory.initial_losses(factory.init_states([0]))[0]
    np.testing.assert_array_equal(l0, base)
    with pytest.raises(ValueError, match="matches no 2-D parameter"):
        toy_factory("lora", target="nothing_like_this")


def test_top_layers_computes_lower_features_once(plan):
    calls = []

    @dataclasses.dataclass(frozen=True)
    class Counting(ToyClassifier):
        def frozen_features(self, params, batch, *, n_top):
            calls.append(len(batch["label"]))
            return super().frozen_features(params, batch, n_top=n_top)

    model = Counting()
    params = model.init(jax.random.PRNGKey(0))
    pool, test = random_task(model, num_train=NUM_TRAIN, num_test=NUM_TEST, seed=3)
    factory = RunFactory(
        model,
        params,
        method=make_method("top_layers", n_top=1, feature_batch_size=16),
        optimizer=make_optimizer("adam", learning_rate=0.05),
        pool=pool,
        test=test,
    )
    traced = len(calls)
    assert traced >= 2  # pool and test, traced once per chunk shape
    batches, seeds = plan
    factory.run(batches, seeds)
    assert len(calls) == traced  # the step never runs the lower layers


def test_methods_check_model_capabilities():
    class Plain:
        name = "plain"

        def init(self, rng):
            return {"w": jnp.zeros((3, 2))}

        def per_example_loss(self, params, batch, *, rng=None):
            return jnp.zeros(batch["x"].shape[0])

    pool = {"x": np.zeros((4, 3), np.float32)}
    params = Plain().init(None)
    with pytest.raises(ValueError, match="prompt tuning needs a model with `prompt_dim`"):
        make_method("prompt").setup(Plain(), params, pool, pool)
    with pytest.raises(ValueError, match="lacks frozen_features"):
        make_method("top_layers").setup(Plain(), params, pool, pool)
    with pytest.raises(ValueError, match="unknown training method 'dora'"):
        make_method("dora")


def test_optimizers_and_schedules_by_name():
    opt = make_optimizer(
        "adamw",
        learning_rate=1e-3,
        schedule="linear",
        total_steps=10,
        warmup_steps=2,
        weight_decay=0.1,
    )
    lrs = opt.learning_rates(10)
    np.testing.assert_allclose(lrs[:3], [0.0, 5e-4, 1e-3], rtol=1e-6)
    assert lrs[-1] < lrs[2] and opt.config["weight_decay"] == 0.1
    cos = make_optimizer("sgd", learning_rate=0.1, schedule="cosine", total_steps=8).learning_rates(
        9
    )
    np.testing.assert_allclose([cos[0], cos[8]], [0.1, 0.0], atol=1e-7)
    rs = make_optimizer("adafactor", learning_rate=0.01, schedule="rsqrt", warmup_steps=4)
    np.testing.assert_allclose(rs.learning_rates(16)[[0, 3, 15]], [0.01, 0.01, 0.005], rtol=1e-6)
    assert {"sgd", "adam", "adamw", "adafactor"} <= set(OPTIMIZERS.names())
    with pytest.raises(ValueError, match="unknown optimizer 'adamax'; known: adafactor, adam"):
        make_optimizer("adamax")
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        make_optimizer("adam", schedule="step")
    with pytest.raises(ValueError, match="warmup_steps <= total_steps"):
        make_optimizer("adam", schedule="linear", total_steps=3, warmup_steps=5)


def test_bad_curricula_are_refused(plan):
    batches, seeds = plan
    factory = cached_factory()
    bad = batches.copy()
    bad[0, 0, 0] = NUM_TRAIN + 5
    with pytest.raises(ValueError, match=f"not in the pool of {NUM_TRAIN} examples"):
        factory.run(bad, seeds)
    with pytest.raises(ValueError, match="larger than the pool"):
        factory.run(np.zeros((1, 2, NUM_TRAIN + 1), np.int32), [0])
    with pytest.raises(ValueError, match="one seed per run"):
        factory.run(batches, seeds[:2])
