"""Exact metagradients through the run factory's own update (gradients/metagradient/).

Checks, on a tiny toy classifier (T = 4 steps, B = 2, one ragged batch):

* ``w = 1`` reproduces the factory's logged losses (float32, the rebuilt Adam/Adafactor
  included), and ``w = 0`` on a slot equals retraining with that slot as padding;
* reverse mode equals central finite differences in float64, ``w_i = 1 +- 1e-4``, to a
  relative tolerance of 1e-6 of the largest derivative (per slot and per training id, for
  SGD, SGD with momentum, AdamW with a schedule and dropout, Adafactor; full fine-tuning,
  LoRA, prompt tuning and cached top layers);
* forward mode along a direction equals the reverse-mode metagradients of every step
  contracted with it; rematerialisation and test chunking do not change the result;
* bad inputs raise ``ValueError``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simfluence_jax.gradients.metagradient import (
    Replay,
    differentiable_optimizer,
    metagradient_simulator,
)
from simfluence_jax.training import RunFactory, make_method, make_optimizer
from simfluence_jax.training.toy import ToyClassifier, random_task

T, B, N, M, SEED = 4, 2, 6, 3, 11
#: Central differences at eps = 1e-4 in float64 have an error of order eps^2 |L'''|.
FD_EPS, FD_RTOL = 1e-4, 1e-6
CURRICULUM = np.array([[0, 1], [2, 3], [4, 0], [5, -1]], np.int32)

OPTIMIZERS = {
    "sgd": ("sgd", {"learning_rate": 0.5}),
    "momentum": ("sgd", {"learning_rate": 0.1, "momentum": 0.9}),
    "adamw": (
        "adamw",
        {
            "learning_rate": 0.05,
            "weight_decay": 0.01,
            "schedule": "linear",
            "total_steps": T,
            "warmup_steps": 1,
        },
    ),  # fmt: skip
    "adafactor": ("adafactor", {"learning_rate": 0.05}),
}
METHODS = {
    "full": ("full", {}),
    "lora": ("lora", {"rank": 2}),
    "prompt": ("prompt", {"n_tokens": 2}),
    "top_layers": ("top_layers", {"n_top": 1}),
}

_FACTORIES = {}


def factory(opt="sgd", method="full"):
    """A toy factory with dropout (so the step keys matter), one per setting, always built in
    float32 (a float64 replay casts its own copy)."""
    if (opt, method) not in _FACTORIES:
        with jax.enable_x64(False):
            _FACTORIES[opt, method] = _make_factory(opt, method)
    return _FACTORIES[opt, method]


def _make_factory(opt, method):
    model = ToyClassifier(vocab_size=16, dim=4, n_layers=2, seq_len=4, dropout=0.2)
    params = model.init(jax.random.PRNGKey(0))
    pool, test = random_task(model, num_train=N, num_test=M, seed=3)
    name, kwargs = OPTIMIZERS[opt]
    m_name, m_kwargs = METHODS[method]
    return RunFactory(
        model, params, method=make_method(m_name, **m_kwargs),
        optimizer=make_optimizer(name, **kwargs), pool=pool, test=test,
    )  # fmt: skip


@pytest.mark.parametrize("opt,method", [("adamw", "full"), ("adafactor", "lora")])
def test_unit_weights_reproduce_the_logged_run_and_zero_weight_is_padding(opt, method):
    f = factory(opt, method)
    replay = Replay(f)
    logged = f.run(CURRICULUM[None], [SEED])[0]
    np.testing.assert_allclose(replay.losses(CURRICULUM, SEED), logged, rtol=0, atol=1e-6)
    removed = CURRICULUM.copy()
    removed[1, 0] = -1
    w = np.ones(CURRICULUM.shape, np.float32)
    w[1, 0] = 0
    retrained = f.run(removed[None], [SEED])[0]
    np.testing.assert_allclose(replay.losses(CURRICULUM, SEED, weights=w), retrained, atol=1e-6)


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "opt,method",
    [
        ("sgd", "full"),
        ("momentum", "lora"),
        ("adamw", "full"),
        ("adafactor", "lora"),
        pytest.param("adafactor", "full", marks=SLOW),
        pytest.param("adamw", "prompt", marks=SLOW),
        pytest.param("momentum", "top_layers", marks=SLOW),
    ],
)
def test_reverse_mode_equals_central_finite_differences(opt, method):
    with jax.enable_x64(True):
        replay = Replay(factory(opt, method), dtype=jnp.float64)
        mg = replay.metagradients(CURRICULUM, SEED, horizon=2, remat_chunk=3)
        scale = np.abs(mg.slot).max()
        assert scale > 1e-4  # the check is not vacuous

        def readout(w):
            return replay.losses(CURRICULUM, SEED, weights=w)[-2:].mean(axis=0)

        one = np.ones(CURRICULUM.shape)
        for t, b in [(0, 1), (2, 0), (3, 0)]:  # (3, 0) is alone in its ragged batch
            e = np.zeros_like(one)
            e[t, b] = FD_EPS
            fd = (readout(one + e) - readout(one - e)) / (2 * FD_EPS)
            np.testing.assert_allclose(mg.slot[:, 0, t, b], fd, rtol=0, atol=FD_RTOL * scale)
        e = FD_EPS * (CURRICULUM == 0)  # id 0 occurs twice: one weight for both
        fd = (readout(one + e) - readout(one - e)) / (2 * FD_EPS)
        np.testing.assert_allclose(mg.by_id[:, 0, 0], fd, rtol=0, atol=FD_RTOL * scale)
        np.testing.assert_allclose(mg.values[0], readout(one), rtol=1e-12)
        assert np.all(mg.slot[:, :, 3, 1] == 0)  # padding


def test_forward_mode_equals_reverse_mode_of_every_step_and_remat_changes_nothing():
    with jax.enable_x64(True):
        replay = Replay(factory("adamw", "full"), dtype=jnp.float64)
        v = np.random.default_rng(0).normal(size=CURRICULUM.shape)
        losses, tangent = replay.trajectory_jvp(CURRICULUM, SEED, v)
        every = replay.metagradients(CURRICULUM, SEED, steps=range(1, T + 1), remat_chunk=None)
        np.testing.assert_allclose(every.values, losses[1:], rtol=1e-12)
        contracted = np.einsum("mktb,tb->km", every.slot, v * (CURRICULUM >= 0))
        np.testing.assert_allclose(tangent[1:], contracted, rtol=1e-9, atol=1e-12)
        assert np.all(tangent[0] == 0)  # L_0 does not depend on the weights
        chunked = replay.metagradients(
            CURRICULUM, SEED, steps=range(1, T + 1), tests=[2, 0, 1], remat_chunk=3,
            test_batch_size=2,
        )  # fmt: skip
        np.testing.assert_allclose(chunked.slot, every.slot[[2, 0, 1]], rtol=1e-10, atol=1e-14)


def test_bad_inputs_are_refused():
    f = factory("sgd", "full")
    replay = Replay(f)
    lion = make_optimizer("lion", learning_rate=1e-3)
    with pytest.raises(ValueError, match="Lion"):
        differentiable_optimizer(lion)
    bad = [
        (dict(horizon=0), "horizon"),
        (dict(horizon=T + 1), "horizon"),
        (dict(steps=[0]), "steps"),
        (dict(steps=[1], readout=np.ones((1, T))), "at most one"),
        (dict(readout=np.ones((1, T + 1))), "readout"),
        (dict(tests=[M]), "tests"),
        (dict(remat_chunk=0), "remat_chunk"),
        (dict(test_batch_size=0), "test_batch_size"),
        (dict(weights=np.ones((T, B + 1))), "weights"),
        (dict(weights=np.full((T, B), np.nan)), "NaN"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            replay.metagradients(CURRICULUM, SEED, **kwargs)
    with pytest.raises(ValueError, match="not in the pool"):
        replay.metagradients(np.array([[0, N]]), SEED)
    with pytest.raises(ValueError, match="seed"):
        replay.metagradients(CURRICULUM, 1.5)
    with pytest.raises(ValueError, match="direction"):
        replay.trajectory_jvp(CURRICULUM, SEED, np.ones((T, B + 1)))


def _runset(f, *, seeds=True, rates=None):
    from simfluence_jax.runs import RunSet

    losses = f.run(CURRICULUM[None], [SEED])
    rates = f.optimizer.learning_rates(T)[None] if rates is None else rates
    meta = {"seeds": [SEED]} if seeds else {}
    return RunSet(CURRICULUM[None], losses, num_train=N, metadata=meta, learning_rates=rates)


def test_simulator_predicts_slot_removals_to_first_order_and_only_those(tmp_path):
    from simfluence_jax.rollouts import simulate
    from simfluence_jax.simulators.io import load_simulator, save_simulator

    f = factory("sgd", "full")
    replay = Replay(f)
    runs = _runset(f)
    batches, seed = replay.logged_run(runs, 0)
    sim = replay.simulator(batches, seed)
    L0 = runs.L0[0]
    np.testing.assert_allclose(simulate(sim, batches, L0), runs.losses[0], atol=1e-6)
    removed = batches.copy()
    removed[1, 0] = -1
    v = np.zeros(batches.shape)
    v[1, 0] = -1
    _, tangent = replay.trajectory_jvp(batches, seed, v)
    predicted = simulate(sim, removed, L0)
    np.testing.assert_allclose(predicted - runs.losses[0], tangent, atol=1e-5)
    loaded = load_simulator(save_simulator(sim, tmp_path / "mg"))
    np.testing.assert_allclose(simulate(loaded, removed, L0), predicted, atol=0)

    with pytest.raises(ValueError, match="own run only"):
        simulate(sim, batches[::-1], L0)  # a reorder
    with pytest.raises(ValueError, match="own run only"):
        simulate(sim, batches[:2], L0)
    with pytest.raises(ValueError, match="seeds"):
        replay.logged_run(_runset(f, seeds=False), 0)
    with pytest.raises(ValueError, match="another schedule"):
        replay.logged_run(_runset(f, rates=np.full((1, T), 0.1, np.float32)), 0)
    other = _runset(f)
    other.losses[0, -1] += 0.1
    with pytest.raises(ValueError, match="does not reproduce"):
        replay.logged_run(other, 0)
    mg = replay.metagradients(batches, seed, horizon=2)
    with pytest.raises(ValueError, match="single steps"):
        metagradient_simulator(mg, runs.losses[0])


def test_removal_effects_through_the_attribution_api_equal_the_direct_ones():
    import simfluence_jax as sj

    f = factory("sgd", "full")
    replay = Replay(f)
    L0 = f.run(CURRICULUM[None], [SEED])[0]
    mg = replay.metagradients(CURRICULUM, SEED, horizon=2)
    direct = mg.effects()
    sim = replay.simulator(CURRICULUM, SEED, steps=[T - 1, T])
    via_api = sj.removal_effects(sim, CURRICULUM, L0[0], horizon=2)
    np.testing.assert_array_equal(via_api.ids, direct.ids)
    np.testing.assert_allclose(via_api.delta, direct.delta, atol=1e-6)
    np.testing.assert_allclose(direct.baseline, L0[-2:].mean(0), atol=1e-6)
    # First order against retraining without each id (its slots weigh 0, i.e. are padding;
    # the factory itself refuses the emptied last step of id 5).
    achieved = np.stack([
        replay.losses(CURRICULUM, SEED, weights=(CURRICULUM != i).astype(np.float32))[-2:].mean(0)
        for i in direct.ids
    ]) - L0[-2:].mean(0)  # fmt: skip
    r = np.corrcoef(achieved.ravel(), direct.delta.ravel())[0, 1]
    assert r > 0.9, r
    with pytest.raises(ValueError, match="do not occur"):
        mg.effects([N + 3])
    with pytest.raises(ValueError, match="horizon"):
        replay.metagradients(CURRICULUM, SEED, steps=[1, 2]).effects()
    with pytest.raises(ValueError, match="own run only"):
        sj.removal_effects(sim, CURRICULUM[::-1], L0[0], horizon=2)
