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


# Each gin file's update written out in NumPy (float64), to check that what the file binds
# reaches the optax transformation and changes the update as the file says.
NUM_STEPS = 8  # past AdamW's warm-up of 5 steps


def _rms(x):
    return np.sqrt(np.mean(np.square(x)))


def _sgd(p, grads, rate, momentum=0.0):
    """Heavy ball: ``t_k = g_k + momentum t_{k-1}``, ``p -= rate t_k``."""
    trace = {k: np.zeros_like(v) for k, v in p.items()}
    for g in grads:
        for k in p:
            trace[k] = g[k] + momentum * trace[k]
            p[k] = p[k] - rate * trace[k]
    return p


def _linear_rate(rate, k, warmup=5, total=48):
    """The linear schedule: 0 -> rate over ``warmup`` steps, then -> 0 at ``total``."""
    return rate * k / warmup if k < warmup else rate * max(0.0, 1 - (k - warmup) / (total - warmup))


def _adamw(p, grads, rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4):
    """AdamW (Loshchilov & Hutter, 2019) with decoupled weight decay, the rate scheduled."""
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for step, g in enumerate(grads):
        eta = _linear_rate(rate, step)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat, v_hat = m[k] / (1 - b1 ** (step + 1)), v[k] / (1 - b2 ** (step + 1))
            p[k] = p[k] - eta * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * p[k])
    return p


def _adafactor(p, grads, rate, decay_rate=0.8, clip=1.0, eps=1e-30):
    """Adafactor (Shazeer & Stern, 2018) on unfactored leaves, no momentum: second moments
    with decay ``1 - (k+1)^-0.8``, the update clipped to block RMS 1, scaled by the
    parameter's RMS (at least 1e-3)."""
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for step, g in enumerate(grads):
        decay = 1 - (step + 1.0) ** -decay_rate
        for k in p:
            v[k] = decay * v[k] + (1 - decay) * (g[k] ** 2 + eps)
            u = g[k] / np.sqrt(v[k])
            u = u / max(1.0, _rms(u) / clip)
            p[k] = p[k] - rate * max(_rms(p[k]), 1e-3) * u
    return p


EXPECTED_UPDATES = {
    "sgd": lambda p, g: _sgd(p, g, 0.05),
    "sgd_momentum": lambda p, g: _sgd(p, g, 0.007, momentum=0.9),
    "adamw": lambda p, g: _adamw(p, g, 5e-4),
    "adafactor": lambda p, g: _adafactor(p, g, 3e-3),
}


def _problem(seed=0):
    """Small parameters (unfactored under Adafactor) and gradients that grow step by step,
    so the second moments lag and Adafactor's clipping acts."""
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(8, 4)) * 0.5, "b": rng.normal(size=(4,)) * 2.0}
    grads = [
        {k: rng.normal(size=v.shape) * (1 + 2 * step) for k, v in params.items()}
        for step in range(NUM_STEPS)
    ]
    return params, grads


def _optax_steps(opt, params, grads):
    p = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = opt.tx.init(p)
    for g in grads:
        g = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), g)
        updates, state = opt.tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
    return jax.tree_util.tree_map(np.asarray, p)


@pytest.mark.parametrize("name", sorted(EXPECTED_UPDATES))
def test_optimizer_gin_file_updates_as_written(name):
    _, opt = optimizer_from_gin(name)
    params, grads = _problem()
    want = EXPECTED_UPDATES[name]({k: v.copy() for k, v in params.items()}, grads)
    got = _optax_steps(opt, params, grads)
    for k in params:
        moved = np.abs(want[k] - params[k]).max()
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-3 * moved, err_msg=k)


@pytest.mark.parametrize(
    ("name", "without"),
    [
        ("sgd_momentum", lambda p, g: _sgd(p, g, 0.007)),  # no momentum
        ("adamw", lambda p, g: _adamw(p, g, 5e-4, b1=0.0)),  # no first moment
        ("adafactor", lambda p, g: _adafactor(p, g, 3e-3, clip=np.inf)),  # no clipping
    ],
    ids=["momentum", "adamw-b1", "adafactor-clipping"],
)
def test_each_setting_changes_the_update(name, without):
    """The check above can fail: the update without the setting is measurably different.
    (AdamW's weight decay of 1e-4 moves these parameters by about 1e-4 of their update, below
    float32's reach over a few steps; it is checked only through the reference.)"""
    params, grads = _problem()
    want = EXPECTED_UPDATES[name]({k: v.copy() for k, v in params.items()}, grads)
    other = without({k: v.copy() for k, v in params.items()}, grads)
    moved = max(np.abs(want[k] - params[k]).max() for k in params)
    assert max(np.abs(want[k] - other[k]).max() for k in params) > 1e-2 * moved
