"""The optimizer gin files build the optimizers they describe; Adafactor is T5X's."""

import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simfluence_jax import cli
from simfluence_jax.training import make_optimizer

GIN_DIR = Path(__file__).resolve().parents[1] / "gin_configs"


def optimizer_from_gin(name: str, total_steps: int = 48):
    cli.parse_gin([str(GIN_DIR / "optimizers" / f"{name}.gin")], [])
    runs = cli.configs()[0]
    kwargs = dict(runs.optimizer_kwargs)
    if kwargs.get("schedule", "constant") != "constant":
        kwargs["total_steps"] = total_steps
    return runs, make_optimizer(runs.optimizer, learning_rate=runs.learning_rate, **kwargs)


def test_optax_adafactor_defaults_are_t5x():
    """T5X fine-tunes with Adafactor: no momentum (beta1 None), factored second moments for
    matrices whose sides are both >= 128, parameter-scaled updates, decay rate 0.8, update
    clipping 1.0. optax's defaults are the same, and adafactor.gin binds them explicitly."""
    defaults = {
        k: p.default for k, p in inspect.signature(optax.adafactor).parameters.items()
    }  # fmt: skip
    t5x = {
        "momentum": None,
        "factored": True,
        "multiply_by_parameter_scale": True,
        "decay_rate": 0.8,
        "clipping_threshold": 1.0,
        "min_dim_size_to_factor": 128,
        "weight_decay_rate": None,
    }
    assert {k: defaults[k] for k in t5x} == t5x
    runs, opt = optimizer_from_gin("adafactor")
    assert runs.optimizer == "adafactor" and opt.config["schedule"] == "constant"
    assert {k: runs.optimizer_kwargs[k] for k in runs.optimizer_kwargs} == {
        k: t5x[k] for k in runs.optimizer_kwargs
    }
    np.testing.assert_allclose(opt.learning_rates(5), runs.learning_rate)

    params = {"big": jnp.ones((128, 256)), "small": jnp.ones((8, 4))}
    state = opt.tx.init(params)
    leaves = jax.tree_util.tree_leaves_with_path(state)
    shapes = {jax.tree_util.keystr(path): leaf.shape for path, leaf in leaves}
    # factored: a row and a column accumulator for the big matrix, a full one for the small
    assert any("v_row" in k and s == (128,) for k, s in shapes.items()), shapes
    assert any("v_col" in k and s == (256,) for k, s in shapes.items()), shapes
    assert any(s == (8, 4) for s in shapes.values())
    # no first moment: nothing else the size of the big matrix
    assert not [k for k, s in shapes.items() if s == (128, 256)], shapes


@pytest.mark.parametrize(
    ("name", "optimizer", "rate", "kwargs"),
    [
        ("sgd", "sgd", 0.05, {}),
        ("sgd_momentum", "sgd", 0.007, {"momentum": 0.9}),
        ("adamw", "adamw", 5e-4, {"b1": 0.9, "schedule": "linear", "warmup_steps": 5}),
    ],
)
def test_optimizer_gin_files(name, optimizer, rate, kwargs):
    runs, opt = optimizer_from_gin(name)
    assert (runs.optimizer, runs.learning_rate, dict(runs.optimizer_kwargs)) == (
        optimizer,
        rate,
        kwargs,
    )
    rates = opt.learning_rates(48)
    if name == "adamw":  # linear warm-up over 5 steps, then linear decay to 0 at step 48
        np.testing.assert_allclose(rates[[0, 5]], [0.0, rate], rtol=1e-6)
        assert rates[-1] < 0.03 * rate and np.all(np.diff(rates[5:]) < 0)
    else:
        np.testing.assert_allclose(rates, rate)
