"""Every training method of the fidelity matrix runs on the word tasks: MiniLM with cached top
layers and with LoRA on all layers, T5 with full fine-tuning and prompt tuning."""

import jax
import numpy as np
import pytest

from simfluence_jax.data.tasks import get_task
from simfluence_jax.training import RunFactory, init_state, make_method, make_optimizer, make_update

STEPS = 3
SMALL = {"num_train": 13, "num_test": 6, "num_warmup": 4}


def check_runs(model, params, task, method, optimizer):
    """Three steps of one run: finite, moving, and equal to a fresh forward pass."""
    pool = model.example_arrays(task.train_texts, task.train_targets)
    test = model.example_arrays(task.test_texts, task.test_targets)
    factory = RunFactory(
        model, params, method=method, optimizer=optimizer, pool=pool, test=test,
        chunk_steps=STEPS, train_rng=False,
    )  # fmt: skip
    batches = np.array([[[0, 3], [5, 7], [9, 12]]], np.int32)
    losses = factory.run(batches, [0])
    assert losses.shape == (1, STEPS + 1, task.num_test) and np.isfinite(losses).all()
    update = jax.jit(make_update(model, method=method, optimizer=optimizer, train_rng=False))
    fresh = jax.jit(lambda tr: method.reference_loss(model, params, tr, test))
    state = init_state(factory.trainable0, optimizer, seed=0)
    for t in range(STEPS):
        state = update(state, batches[0, t], factory.data)
    np.testing.assert_allclose(fresh(state.trainable), losses[0, -1], rtol=2e-5, atol=2e-5)
    assert np.abs(losses[0, -1] - losses[0, 0]).max() > 1e-4


@pytest.mark.parametrize(
    ("task_name", "method", "optimizer"),
    [
        ("analogy_relation", make_method("top_layers", n_top=1), ("sgd", 0.05, {})),
        ("similarity", make_method("lora", rank=2), ("adamw", 1e-3, {})),
    ],
    ids=["top_layers-analogy_relation", "lora-similarity"],
)
def test_minilm_methods_on_word_tasks(task_name, method, optimizer):
    from simfluence_jax.models.minilm import make_minilm

    task = get_task(task_name, **SMALL)
    model = make_minilm(label_names=task.label_names, max_length=24)
    params = model.init(jax.random.PRNGKey(0))
    name, lr, kwargs = optimizer
    check_runs(model, params, task, method, make_optimizer(name, learning_rate=lr, **kwargs))


@pytest.fixture(scope="module")
def t5_model(tmp_path_factory):
    from simfluence_jax.models.t5 import t5_config
    from simfluence_jax.models.t5_model import T5Model
    from simfluence_jax.models.vocab import train_sentencepiece

    texts = []
    for name in ("analogy", "similarity"):
        task = get_task(name)
        texts += [*task.train_texts, *task.test_texts, *task.label_names]
    spm = train_sentencepiece(texts, vocab_size=120, cache_dir=tmp_path_factory.mktemp("spm"))
    micro = {"emb_dim": 32, "num_heads": 2, "head_dim": 16, "mlp_dim": 64, "vocab_size": 128}
    model = T5Model(t5_config("tiny", **micro), vocab_path=spm, input_length=24, target_length=8)
    return model, model.init(jax.random.PRNGKey(0))


@pytest.mark.parametrize(
    ("task_name", "method"),
    [
        ("analogy", make_method("full")),
        ("similarity", make_method("prompt", n_tokens=4)),
    ],
    ids=["full-analogy", "prompt-similarity"],
)
def test_t5_methods_on_word_tasks(t5_model, task_name, method):
    model, params = t5_model
    task = get_task(task_name, **SMALL)
    lr = 0.1 if method.name == "prompt" else 1e-2
    check_runs(model, params, task, method, make_optimizer("adafactor", learning_rate=lr))
