"""The run factory on the built-in models and every training method of the fidelity matrix:
MiniLM (cached top layers, LoRA) and T5 (full fine-tuning, prompt tuning), on the polarity
task and on the word tasks, under the optimizers the experiments pair them with."""

import jax
import numpy as np
import pytest

from simfluence_jax.data.tasks import get_task
from simfluence_jax.training import RunFactory, init_state, make_method, make_optimizer, make_update

STEPS = 3
NUM_TRAIN, NUM_TEST = 10, 6
WORD_TASK = {"num_train": 13, "num_test": NUM_TEST, "num_warmup": 4}


def task_examples(name: str):
    """``(train texts, train targets, test texts, test targets, label names)``: 10 training
    and 6 test examples of the task."""
    if name == "polarity":
        task = get_task("polarity")
        idx = np.arange(0, 150, 15)
    else:
        task = get_task(name, **WORD_TASK)
        idx = np.arange(NUM_TRAIN)
    return (
        [task.train_texts[i] for i in idx],
        [task.train_targets[i] for i in idx],
        list(task.test_texts[:NUM_TEST]),
        list(task.test_targets[:NUM_TEST]),
        task.label_names,
    )


def check_factory(model, params, task_name, method, optimizer):
    """One run of three steps (the last batch padded): finite, moving, and at every step equal
    to the plain update replayed here and a fresh forward pass of the raw model."""
    train_x, train_y, test_x, test_y, _ = task_examples(task_name)
    pool = model.example_arrays(train_x, train_y)
    test = model.example_arrays(test_x, test_y)
    factory = RunFactory(
        model, params, method=method, optimizer=optimizer, pool=pool, test=test,
        chunk_steps=STEPS, train_rng=False,
    )  # fmt: skip
    batches = np.array([[[0, 3], [5, 7], [9, -1]]], np.int32)
    losses = factory.run(batches, [0])
    assert losses.shape == (1, STEPS + 1, NUM_TEST) and np.isfinite(losses).all()
    update = jax.jit(make_update(model, method=method, optimizer=optimizer, train_rng=False))
    fresh = jax.jit(lambda tr: method.reference_loss(model, params, tr, test))
    state = init_state(factory.trainable0, optimizer, seed=0)
    np.testing.assert_allclose(fresh(state.trainable), losses[0, 0], rtol=2e-5, atol=2e-5)
    for t in range(STEPS):
        state = update(state, batches[0, t], factory.data)
        np.testing.assert_allclose(fresh(state.trainable), losses[0, t + 1], rtol=2e-5, atol=2e-5)
    assert np.abs(losses[0, -1] - losses[0, 0]).max() > 1e-4


@pytest.mark.parametrize(
    ("task_name", "method", "optimizer"),
    [
        ("polarity", make_method("top_layers", n_top=1), ("adam", 1e-3)),
        ("polarity", make_method("lora", rank=2), ("adam", 1e-2)),
        ("analogy_relation", make_method("top_layers", n_top=1), ("sgd", 0.05)),
        ("similarity", make_method("lora", rank=2), ("adamw", 1e-3)),
    ],
    ids=["top_layers-polarity", "lora-polarity", "top_layers-analogy_relation", "lora-similarity"],
)
def test_minilm(task_name, method, optimizer):
    from simfluence_jax.models.minilm import make_minilm

    labels = task_examples(task_name)[-1]
    model = make_minilm(label_names=labels, max_length=24)
    params = model.init(jax.random.PRNGKey(0))
    name, lr = optimizer
    check_factory(model, params, task_name, method, make_optimizer(name, learning_rate=lr))


@pytest.fixture(scope="module")
def t5_model(tmp_path_factory):
    """A micro T5 with a vocabulary trained on the polarity and word-task texts."""
    from simfluence_jax.models.t5 import t5_config
    from simfluence_jax.models.t5_model import T5Model
    from simfluence_jax.models.vocab import train_sentencepiece

    texts = list(get_task("polarity").train_texts)
    for name in ("analogy", "similarity"):
        task = get_task(name)
        texts += [*task.train_texts, *task.test_texts, *task.label_names]
    spm = train_sentencepiece(texts, vocab_size=120, cache_dir=tmp_path_factory.mktemp("spm"))
    micro = {"emb_dim": 32, "num_heads": 2, "head_dim": 16, "mlp_dim": 64, "vocab_size": 128}
    model = T5Model(t5_config("tiny", **micro), vocab_path=spm, input_length=24, target_length=8)
    return model, model.init(jax.random.PRNGKey(0))


@pytest.mark.parametrize(
    ("task_name", "method", "optimizer"),
    [
        ("polarity", make_method("full"), ("adam", 1e-2)),
        ("polarity", make_method("prompt", n_tokens=4), ("adam", 5e-2)),
        ("analogy", make_method("full"), ("adafactor", 1e-2)),
        ("similarity", make_method("prompt", n_tokens=4), ("adafactor", 0.1)),
    ],
    ids=["full-polarity", "prompt-polarity", "full-analogy", "prompt-similarity"],
)
def test_t5(t5_model, task_name, method, optimizer):
    model, params = t5_model
    name, lr = optimizer
    check_factory(model, params, task_name, method, make_optimizer(name, learning_rate=lr))
