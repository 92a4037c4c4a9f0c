"""The run factory on the built-in models: MiniLM (cached top layers, LoRA, prompt) and T5."""

import jax
import numpy as np
import pytest

from simfluence_jax.data.tasks import get_task
from simfluence_jax.training import RunFactory, make_method, make_optimizer

STEPS = 3


@pytest.fixture(scope="module")
def polarity():
    task = get_task("polarity")
    idx = np.arange(0, 150, 15)  # 10 training sentences, 6 test sentences
    return (
        [task.train_texts[i] for i in idx],
        [task.train_targets[i] for i in idx],
        list(task.test_texts[:6]),
        list(task.test_targets[:6]),
        task.label_names,
    )


def check_factory(model, params, pool, test, method, lr):
    factory = RunFactory(
        model,
        params,
        method=method,
        optimizer=make_optimizer("adam", learning_rate=lr),
        pool=pool,
        test=test,
        chunk_steps=STEPS,
        train_rng=False,
    )
    batches = np.array([[[0, 3], [5, 7], [9, -1]]], np.int32)
    losses = factory.run(batches, [0])
    assert losses.shape == (1, STEPS + 1, 6) and np.isfinite(losses).all()
    # replay with the plain update and evaluate the raw model afresh
    from simfluence_jax.training import init_state, make_update

    update = jax.jit(
        make_update(model, method=method, optimizer=factory.optimizer, train_rng=False)
    )
    fresh = jax.jit(lambda tr: method.reference_loss(model, params, tr, test))
    state = init_state(factory.trainable0, factory.optimizer, seed=0)
    np.testing.assert_allclose(fresh(state.trainable), losses[0, 0], rtol=2e-5, atol=2e-5)
    for t in range(STEPS):
        state = update(state, batches[0, t], factory.data)
        np.testing.assert_allclose(fresh(state.trainable), losses[0, t + 1], rtol=2e-5, atol=2e-5)
    assert np.abs(losses[0, -1] - losses[0, 0]).max() > 1e-4


@pytest.mark.parametrize(
    "method, lr",
    [(make_method("top_layers", n_top=1), 1e-3), (make_method("lora", rank=2), 1e-2)],
    ids=["top_layers", "lora"],
)
def test_minilm(polarity, method, lr):
    from simfluence_jax.models.minilm import make_minilm

    train_x, train_y, test_x, test_y, labels = polarity
    model = make_minilm(label_names=labels, max_length=24)
    params = model.init(jax.random.PRNGKey(0))
    pool = model.example_arrays(train_x, train_y)
    test = model.example_arrays(test_x, test_y)
    check_factory(model, params, pool, test, method, lr)


@pytest.mark.parametrize(
    "method, lr",
    [(make_method("full"), 1e-2), (make_method("prompt", n_tokens=4), 5e-2)],
    ids=["full", "prompt"],
)
def test_t5(polarity, tmp_path_factory, method, lr):
    from simfluence_jax.models.t5 import t5_config
    from simfluence_jax.models.t5_model import T5Model
    from simfluence_jax.models.vocab import train_sentencepiece

    train_x, train_y, test_x, test_y, _ = polarity
    spm = train_sentencepiece(
        list(get_task("polarity").train_texts), vocab_size=100,
        cache_dir=tmp_path_factory.mktemp("spm"),
    )  # fmt: skip
    model = T5Model(t5_config("tiny"), vocab_path=spm, input_length=24, target_length=4)
    params = model.init(jax.random.PRNGKey(0))
    pool = model.example_arrays(train_x, train_y)
    test = model.example_arrays(test_x, test_y)
    check_factory(model, params, pool, test, method, lr)
