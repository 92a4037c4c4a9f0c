"""Impulse responses (gradients/impulse.py) and their summaries (impulse_shape.py).

* On a toy classifier with dropout (T = 7 steps, B = 2, a ragged batch), in float64: the
  impulse response of a slot equals central finite differences of retraining with that
  slot's weight at ``1 +- 1e-4`` (``Replay.losses(weights=...)``; in float32 at ``w = 1``
  it is the factory's logged run), at every step, under SGD and under AdamW with warm-up
  and decay, to 1e-6 of the largest response; chunks of slots at different steps (the
  chunk starts at its earliest step, the last chunk padded, a horizon stops it early) equal
  one-hot ``Replay.trajectory_jvp`` passes.
* The summaries on hand-built responses: a geometric increment gives back its ``mu`` and
  ``after_fraction``; a response peaking one lag late is reported at lag 1; sign alignment,
  the ``|X_0|`` weights, the learning-rate ratio, quantiles, bins, ``load_shape``.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simfluence_jax import impulse_shape as shape
from simfluence_jax.gradients.impulse import impulse_responses, sample_slots
from simfluence_jax.gradients.metagradient import Replay
from simfluence_jax.training import RunFactory, make_method, make_optimizer
from simfluence_jax.training.toy import ToyClassifier, random_task

T, B, N, M, SEED = 7, 2, 8, 3, 5
FD_EPS, FD_RTOL = 1e-4, 1e-6
CURRICULUM = np.array([[0, 1], [2, 3], [4, 5], [6, -1], [7, 0], [1, 2], [3, 4]], np.int32)
OPTIMIZERS = {
    "sgd": ("sgd", {"learning_rate": 0.5}),
    "adamw": (
        "adamw",
        {
            "learning_rate": 0.05,
            "weight_decay": 0.01,
            "schedule": "linear",
            "total_steps": T,
            "warmup_steps": 2,
        },
    ),  # fmt: skip
}
_FACTORIES = {}


def factory(opt):
    if opt not in _FACTORIES:
        with jax.enable_x64(False):
            model = ToyClassifier(vocab_size=16, dim=4, n_layers=2, seq_len=4, dropout=0.2)
            pool, test = random_task(model, num_train=N, num_test=M, seed=3)
            name, kwargs = OPTIMIZERS[opt]
            _FACTORIES[opt] = RunFactory(
                model, model.init(jax.random.PRNGKey(0)), method=make_method("full"),
                optimizer=make_optimizer(name, **kwargs), pool=pool, test=test,
            )  # fmt: skip
    return _FACTORIES[opt]


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_impulse_response_equals_central_finite_differences(opt):
    f = factory(opt)
    logged = f.run(CURRICULUM[None], [SEED])[0]
    np.testing.assert_allclose(Replay(f).losses(CURRICULUM, SEED), logged, atol=1e-6)
    with jax.enable_x64(True):
        replay = Replay(f, dtype=jnp.float64)
        slots = np.array([[4, 1], [1, 0], [3, 0]])  # (3, 0) is alone in its ragged batch
        ir = impulse_responses(replay, CURRICULUM, SEED, slots, chunk=2)
        assert ir.response.shape == (3, T + 1, M)
        np.testing.assert_array_equal(ir.ids, [0, 2, 6])
        scale = np.abs(ir.response).max()
        assert scale > 1e-3  # the check is not vacuous
        for n, (s, b) in enumerate(slots):
            e = np.zeros(CURRICULUM.shape)
            e[s, b] = FD_EPS
            up = replay.losses(CURRICULUM, SEED, weights=1 + e)
            down = replay.losses(CURRICULUM, SEED, weights=1 - e)
            fd = (up - down) / (2 * FD_EPS)
            np.testing.assert_allclose(ir.response[n], fd, rtol=0, atol=FD_RTOL * scale)
            assert np.all(ir.response[n, : s + 1] == 0)  # before the update: nothing moves
            assert np.abs(ir.response[n, s + 1]).max() > 0 or (opt == "adamw" and s == 0)
        np.testing.assert_allclose(ir.losses, replay.losses(CURRICULUM, SEED), rtol=1e-12)
        np.testing.assert_allclose(ir.learning_rates, f.optimizer.learning_rates(T))


def test_chunks_equal_one_hot_forward_passes():
    with jax.enable_x64(True):
        replay = Replay(factory("adamw"), dtype=jnp.float64)
        slots = np.array([[5, 0], [0, 1], [2, 1]])
        ir = impulse_responses(replay, CURRICULUM, SEED, slots, chunk=2)
        for n, (s, b) in enumerate(slots):
            v = np.zeros(CURRICULUM.shape)
            v[s, b] = 1.0
            _, tangent = replay.trajectory_jvp(CURRICULUM, SEED, v)
            np.testing.assert_allclose(ir.response[n], tangent, rtol=1e-9, atol=1e-14)
        # With a horizon a chunk stops after the last lag its slots need (here steps 0 and 2
        # share a chunk: rows up to 2 + 1 + 1); the rest is NaN, never a made-up value.
        short = impulse_responses(replay, CURRICULUM, SEED, slots, chunk=2, horizon=1)
        np.testing.assert_allclose(short.response[1:, :5], ir.response[1:, :5], rtol=1e-12)
        assert np.isnan(short.response[1:, 5:]).all()
        np.testing.assert_allclose(short.response[0], ir.response[0], rtol=1e-12)
        # Under a linear warm-up the first update has rate 0: the slot moves nothing at once,
        # yet AdamW's moments carry it into the later updates.
        assert np.all(ir.response[1, 1] == 0) and np.abs(ir.response[1, 2:]).max() > 1e-4


def test_slot_sampling_and_bad_inputs():
    slots = sample_slots(CURRICULUM, 3, seed=1)
    np.testing.assert_array_equal(slots[:, 0], [0, 2, 5])  # spread over 0..T-2
    assert np.all(CURRICULUM[slots[:, 0], slots[:, 1]] >= 0)
    assert sample_slots(CURRICULUM, 2, last_step=2)[:, 0].tolist() == [0, 2]
    with pytest.raises(ValueError, match="distinct steps"):
        sample_slots(CURRICULUM, 7)
    with pytest.raises(ValueError, match="num"):
        sample_slots(CURRICULUM, 0)
    replay = Replay(factory("sgd"))
    with pytest.raises(ValueError, match="padding"):
        impulse_responses(replay, CURRICULUM, SEED, [[3, 1]])
    with pytest.raises(ValueError, match="slots must lie"):
        impulse_responses(replay, CURRICULUM, SEED, [[T, 0]])
    with pytest.raises(ValueError, match="slots must be"):
        impulse_responses(replay, CURRICULUM, SEED, [[1, 0, 0]])
    with pytest.raises(ValueError, match="chunk"):
        impulse_responses(replay, CURRICULUM, SEED, [[1, 0]], chunk=0)
    with pytest.raises(ValueError, match="seed"):
        impulse_responses(replay, CURRICULUM, 1.5, [[1, 0]])
    with pytest.raises(ValueError, match="horizon"):
        impulse_responses(replay, CURRICULUM, SEED, [[1, 0]], horizon=-1)


# Summaries on hand-built responses ------------------------------------------------------------
def _response_from_increments(increments, steps, T_, M_):
    """``R float[S, T+1, M]`` whose increment at lag k of slot n is ``increments[n, k, j]``."""
    S, K1, _ = increments.shape
    R = np.zeros((S, T_ + 1, M_))
    for n, s in enumerate(steps):
        lags = min(K1, T_ - s)
        R[n, s + 1 : s + 1 + lags] = np.cumsum(increments[n, :lags], axis=0)
    return R


def test_a_geometric_response_gives_back_its_mu():
    mu, K, T_ = 0.7, 10, 30
    steps = np.array([0, 5, 12])
    sizes = np.array([[1.0, -2.0], [0.3, 0.5], [-4.0, 1e-9]])  # signs and magnitudes differ
    inc = sizes[:, None, :] * (mu ** np.arange(K + 1))[None, :, None]
    R = _response_from_increments(inc, steps, T_, 2)
    out = shape.summarize(R, steps, np.ones((T_ + 1, 2)), np.full(T_, 0.1), horizon=K)
    np.testing.assert_allclose(out["mean_shape"], mu ** np.arange(K + 1), rtol=1e-12)
    np.testing.assert_allclose(out["level_shape"], np.cumsum(mu ** np.arange(K + 1)))
    assert out["mu"] == pytest.approx(mu) and out["mu_lr"] == pytest.approx(mu)
    assert out["mu_rel_rmse"] < 1e-9 and out["peak_lag"] == 0 and out["level_peak_lag"] == K
    total = (1 - mu ** (K + 1)) / (1 - mu)
    assert out["total_over_first"] == pytest.approx(total)
    assert out["after_fraction"] == pytest.approx(1 - 1 / total)
    q = out["quantiles"]
    np.testing.assert_allclose(q["q10"], q["q90"], rtol=1e-9)  # every pair has the same shape
    assert out["num_complete"] == 3 and set(out["by_step"]) == {"early", "middle", "late"}
    assert out["per_slot"][1]["mu"] == pytest.approx(mu)


def test_a_late_peak_a_sign_change_and_the_weights():
    K, T_ = 4, 12
    steps = np.array([0, 2])
    late = np.array([1.0, 2.0, 0.5, -0.5, -0.1])  # peaks one lag late, then reverses
    inc = np.stack([late[:, None] * [[1.0, -3.0]], np.zeros((K + 1, 2))])
    inc[1, 0] = [2.0, 0.0]  # slot 2: lag 0 only (then nothing), weight 2
    R = _response_from_increments(inc, steps, T_, 2)
    losses = np.linspace(1.0, 2.0, 2 * (T_ + 1)).reshape(T_ + 1, 2)
    out = shape.summarize(R, steps, losses, np.full(T_, 0.1), horizon=K)
    # Sign-aligned, |X_0|-weighted: slot 0 contributes 4 * late, slot 1 contributes [2, 0...].
    want = (4 * late + np.r_[2.0, np.zeros(K)]) / 6
    np.testing.assert_allclose(out["mean_shape"], want, rtol=1e-12)
    assert out["peak_lag"] == 1 and out["lowest_lag"] == 3 and out["level_peak_lag"] == 2
    assert out["negative_fraction_abs"] == pytest.approx(
        np.abs(want[3:]).sum() / np.abs(want).sum()
    )
    # A zero lag-0 response weighs nothing; a level bin holds only the pairs in it.
    assert out["by_loss"]["low"]["pairs"] + out["by_loss"]["high"]["pairs"] < 4


def test_rate_ratio_and_quantiles_and_incomplete_slots():
    K, T_ = 3, 8
    lr = np.array([0.0, 0.5, 1.0, 1.0, 0.5, 0.25, 0.25, 0.25])
    steps = np.array([0, 1, 6])  # the first has rate 0 (weight 0), the last is incomplete
    inc = np.ones((3, K + 1, 1))
    inc[0, 0] = 0.0
    R = _response_from_increments(inc, steps, T_, 1)
    X, valid = shape.lag_increments(R, steps, K)
    assert valid.tolist() == [[True] * 4, [True] * 4, [True, True, False, False]]
    np.testing.assert_allclose(shape.rate_ratio(X[:2], valid[:2], steps[:2], lr), [1, 2, 2, 1])
    out = shape.summarize(R, steps, np.ones((T_ + 1, 1)), lr, horizon=K)
    assert out["num_complete"] == 2 and out["per_slot"][2]["lags"] == 2
    np.testing.assert_allclose(out["rate_ratio"], [1, 2, 2, 1])
    np.testing.assert_allclose(shape.weighted_quantiles([1, 2, 3], [1, 1, 1], [0.5]), [2.0])
    np.testing.assert_allclose(shape.weighted_quantiles([1, 2, 3], [0, 0, 1], [0.1]), [3.0])
    with pytest.raises(ValueError, match="horizon"):
        shape.summarize(R[2:], steps[2:], np.ones((T_ + 1, 1)), lr, horizon=K)


def test_fit_geometric_with_a_rate_ratio():
    ratio = np.array([1.0, 0.8, 0.6, 0.4, 0.2])
    h = ratio * 0.5 ** np.arange(5)
    assert shape.fit_geometric(h, ratio)[0] == pytest.approx(0.5)
    assert shape.fit_geometric(h)[0] < 0.5  # without the ratio the decay looks faster
    assert shape.fit_geometric([1.0, -0.6, 0.36])[0] == pytest.approx(-0.6)


def test_load_shape(tmp_path):
    path = tmp_path / "impulse.json"
    path.write_text(json.dumps({"optimizers": {"sgd": {"mean_shape": [2.0, 1.0, 0.5]},
                                               "bad": {"mean_shape": [0.0, 1.0]}}}))  # fmt: skip
    h = shape.load_shape(path, "sgd")
    assert h.dtype == np.float32 and h.tolist() == [1.0, 0.5, 0.25]
    with pytest.raises(ValueError, match="adamw"):
        shape.load_shape(path, "adamw")
    with pytest.raises(ValueError, match="not a finite shape"):
        shape.load_shape(path, "bad")
