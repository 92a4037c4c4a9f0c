"""The chunked training loop shared by the local pretraining and the format warm-up."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simfluence_jax.training.chunked import train_in_chunks
from simfluence_jax.training.optim import make_optimizer


@pytest.mark.parametrize("num_steps, epochs", [(3, 1), (6, 2), (4, 2)])
def test_every_example_once_per_epoch_and_a_new_epoch_each_time(num_steps, epochs):
    # loss = mean(x * p): SGD at rate 1 subtracts the batch mean of x, so after whole epochs
    # p has lost sum(x) / batch_size per epoch whatever the order.
    x = np.array([[1.0], [2.0], [4.0], [8.0], [16.0], [32.0]], np.float32)
    calls = []

    def new_epoch(rng):
        calls.append(rng)
        return {"x": x}

    params = {"p": jnp.zeros((), jnp.float32)}
    out, losses = train_in_chunks(
        lambda p, batch, rng: jnp.mean(batch["x"][:, 0] * p["p"]),
        params,
        make_optimizer("sgd", learning_rate=1.0),
        new_epoch,
        num_examples=6,
        num_steps=num_steps,
        batch_size=2,
        chunk_steps=2,
        seed=0,
        key=jax.random.PRNGKey(0),
        label="test",
        progress=False,
    )
    assert len(calls) == epochs and all(c is calls[0] for c in calls)
    assert losses.shape == (-(-num_steps // 2),) and losses.dtype == np.float32
    if num_steps * 2 % 6 == 0:  # whole epochs
        assert float(out["p"]) == -epochs * x.sum() / 2
    else:  # one epoch and a third: the first epoch's total and two more examples
        rest = -float(out["p"]) - x.sum() / 2
        assert rest * 2 in {float(a + b) for a in x[:, 0] for b in x[:, 0] if a != b}
    assert float(params["p"]) == 0.0  # the caller's parameters are not donated


def test_the_step_key_is_folded_from_the_step_number():
    seen = []

    def loss(p, batch, rng):
        jax.debug.callback(lambda k: seen.append(np.asarray(k)), jax.random.key_data(rng))
        return jnp.mean(batch["x"]) * p

    train_in_chunks(
        loss, jnp.ones(()), make_optimizer("sgd", learning_rate=0.1),
        lambda rng: {"x": np.ones((4, 1), np.float32)},
        num_examples=4, num_steps=3, batch_size=2, chunk_steps=2, seed=0,
        key=jax.random.PRNGKey(7), label="test", progress=False,
    )  # fmt: skip
    expected = [np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.PRNGKey(7), k)))
                for k in range(3)]  # fmt: skip
    assert len(seen) == 3
    for got, want in zip(seen, expected):
        np.testing.assert_array_equal(got, want)
