"""The featurized simulator: recovery of a known feature map, unseen examples, conformance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simfluence_jax as sj
from simfluence_jax import featurized_fit as ff
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.featurized import FeaturizedSimulator
from simfluence_jax.simulators.linear import LinearSimulator
from simfluence_jax.synthetic import make_problem, sample_curricula


def _simulate_runs(rng, batches, A, B, L0, noise, order=1):
    """Runs from a known (order-n, one_plus_sum) law; noise is logged and carried forward.

    ``A: [M, N, n]``, ``B: [M, N]``, ``batches: [R, T, Bsz]``, ``L0: [M]``.
    """
    R, T, _ = batches.shape
    M = A.shape[0]
    L = np.empty((R, T + 1, M))
    L[:, 0] = L0[None]
    for t in range(T):
        ids = batches[:, t]
        w = (ids >= 0)[:, None, :, None]
        a = np.sum(A[:, np.maximum(ids, 0)].transpose(1, 0, 2, 3) * w, axis=2)  # [R, M, n]
        b = np.sum(B[:, np.maximum(ids, 0)].transpose(1, 0, 2) * w[..., 0], axis=2)
        hist = np.stack([L[:, max(t - k, 0)] for k in range(order)], axis=-1)  # [R, M, n]
        L[:, t + 1] = hist[..., 0] + np.sum(a * hist, -1) + b + noise * rng.normal(size=(R, M))
    return L


@pytest.fixture(scope="module")
def feature_problem():
    """A and B a known nonlinear function of 4-d example features; 15 of 60 pool examples
    are withheld from every fitting run; 8 of 24 test examples are kept for the unseen-test
    split."""
    rng = np.random.default_rng(0)
    N, M, D, Bsz, k = 60, 24, 4, 4, 40
    x = rng.normal(size=(N, D)).astype(np.float32)
    z = rng.normal(size=(M, D)).astype(np.float32)
    W = rng.normal(size=(D, D)) / np.sqrt(D)
    s = np.tanh(z @ W.T @ x.T)  # [M, N] similarity
    A = -0.01 * (1.0 + s) / 2 - 0.002 * np.tanh(x[:, 0])[None]
    B = 0.004 * s * (z[:, 1:2] > 0)
    L0 = rng.uniform(1.0, 3.0, M)
    withheld = rng.permutation(N)[:15]
    kept = np.setdiff1d(np.arange(N), withheld)
    b = sample_curricula(rng, 40, len(kept), k, Bsz)
    b = np.where(b >= 0, kept[np.maximum(b, 0)], -1)
    bu = sample_curricula(rng, 6, N, k, Bsz)
    runs = RunSet(batches=b, losses=_simulate_runs(rng, b, A[..., None], B, L0, 0.002), num_train=N)
    unseen = RunSet(
        batches=bu, losses=_simulate_runs(rng, bu, A[..., None], B, L0, 0.002), num_train=N
    )
    truth = LinearSimulator(
        A=A.astype(np.float32), B=B.astype(np.float32), seen=np.ones(N, bool), alpha0=1.0
    )
    return dict(runs=runs, unseen=unseen, truth=truth, x=x, z=z, withheld=withheld)


def _mse(sim, runs):
    return sj.metrics.all_steps_mse(
        np.asarray(sj.rollout(sim, runs.batches, runs.L0)), runs.losses
    )[0]


def _effect(A, B, L):
    return np.asarray(A) * L + np.asarray(B)


def test_recovers_the_feature_map_and_predicts_unseen_training_examples(feature_problem):
    p = feature_problem
    fit, val, test = p["runs"].split(30, 4, 6)
    assert not fit.used_ids()[p["withheld"]].any() and not val.used_ids()[p["withheld"]].any()
    sim = sj.fit_simulator("featurized", fit, validation=val, features=(p["x"], p["z"]))
    assert isinstance(sim, FeaturizedSimulator) and sim.name == "featurized"
    lin = sj.fit_simulator("linear", fit, validation=val, alpha="one_plus_sum")

    # Held-out runs over seen examples: close to the noise floor of the true law.
    floor = _mse(p["truth"], test)
    assert _mse(sim, test) < 2.0 * floor, (_mse(sim, test), floor)
    # Runs that use the withheld examples: Linear has nothing for them, featurized does.
    unseen = p["unseen"]
    floor_u, mse_f, mse_l = _mse(p["truth"], unseen), _mse(sim, unseen), _mse(lin, unseen)
    assert mse_f < 5.0 * floor_u, (mse_f, floor_u)
    assert mse_l > 10.0 * mse_f, (mse_l, mse_f)

    # The per-step effect A_ij L + B_ij of the withheld examples matches the true function.
    L = float(p["runs"].losses.mean())
    true = _effect(p["truth"].A, p["truth"].B, L)[:, p["withheld"]]
    got = _effect(*sim.count_effects()[1:], L)[:, p["withheld"]]
    assert np.corrcoef(true.ravel(), got.ravel())[0, 1] > 0.9
    assert np.sqrt(np.mean((got - true) ** 2) / np.mean(true**2)) < 0.35


def test_predicts_unseen_test_examples(feature_problem):
    p = feature_problem
    seen_tests, new_tests = np.arange(16), np.arange(16, 24)
    fit, val, _ = p["runs"].select_test(seen_tests).split(30, 4, 6)
    sim = sj.fit_simulator("featurized", fit, validation=val, features=(p["x"], p["z"][:16]))
    new = sim.with_features(test=p["z"][new_tests])
    assert new.num_test == 8
    heldout = p["runs"].select(np.arange(34, 40)).select_test(new_tests)
    truth = p["truth"].replace(A=p["truth"].A[new_tests], B=p["truth"].B[new_tests])
    constant = sj.fit_simulator("constant", heldout)
    mse_new, floor, mse_const = _mse(new, heldout), _mse(truth, heldout), _mse(constant, heldout)
    # Measured: about 80x below the constant control and 20x above the noise floor (16
    # test examples are few to learn the test side of the map from).
    assert mse_new < 0.05 * mse_const, (mse_new, mse_const, floor)
    L = float(p["runs"].losses.mean())
    corr = np.corrcoef(
        _effect(truth.A, truth.B, L).ravel(), _effect(*new.count_effects()[1:], L).ravel()
    )
    assert corr[0, 1] > 0.85, corr


@pytest.fixture(scope="module")
def small():
    p = make_problem(num_train=24, num_test=5, num_runs=16, noise=0.01, seed=1)
    fit, val, test = p.runs.split(10, 2, 4)
    feats = ff.synthetic_features(fit, seed=0)
    sim = sj.fit_simulator("featurized", fit, validation=val, features=feats, max_steps=600)
    return fit, val, test, feats, sim


def test_conformance_jit_vmap_no_recompile_deterministic(small):
    fit, val, test, feats, sim = small
    out = np.asarray(sj.rollout(sim, test.batches, test.L0))
    assert out.shape == (test.num_runs, test.num_steps + 1, test.num_test)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[:, 0], test.L0)

    f = jax.jit(sj.rollout)
    np.testing.assert_allclose(np.asarray(f(sim, test.batches, test.L0)), out, rtol=1e-6, atol=1e-6)
    compiled = f._cache_size()
    refit = sj.fit_simulator(
        "featurized",
        fit.select(np.arange(10)[::-1]),
        l2=0.5,
        features=ff.synthetic_features(fit, seed=1),
        max_steps=200,
    )
    f(refit, test.batches[::-1], test.L0 + 0.1)
    assert f._cache_size() == compiled

    single = np.stack([np.asarray(sj.rollout(sim, b, l)) for b, l in zip(test.batches, test.L0)])
    np.testing.assert_allclose(out, single, rtol=1e-6, atol=1e-6)
    vm = jax.vmap(lambda b, l: sj.rollout(sim, b, l))(
        jnp.asarray(test.batches), jnp.asarray(test.L0)
    )
    np.testing.assert_allclose(np.asarray(vm), out, rtol=1e-6, atol=1e-6)

    again = sj.fit_simulator("featurized", fit, validation=val, features=feats, max_steps=600)
    np.testing.assert_array_equal(np.asarray(sj.rollout(again, test.batches, test.L0)), out)
    # The Linear equivalent agrees with the rollout, and has the closed form.
    lin = sim.as_linear()
    np.testing.assert_allclose(
        np.asarray(sj.rollout(lin, test.batches, test.L0)), out, rtol=1e-5, atol=1e-6
    )
    closed = np.asarray(sj.closed_form_final(lin, test.batches, test.L0))
    np.testing.assert_allclose(closed, out[:, -1], rtol=1e-5, atol=1e-5)


def test_training_lowers_the_objective_and_early_stops(small):
    fit, val, _, feats, _ = small
    cfg = ff.FeaturizedConfig(max_steps=3000, eval_every=50, patience=2)
    init = ff.init_simulator(*feats, cfg)
    sim, hist = ff.train(init, fit, l2=1e-4, cfg=cfg, validation=val)
    assert hist["objective"][-1] < 0.5 * hist["objective"][0]
    data = ff.teacher_forcing_data(fit, 1)
    params0 = {k: getattr(init, k) for k in ff.TRAINABLE}
    assert float(ff.objective(params0, init, data, 0.0)) == pytest.approx(1.0, rel=1e-5)
    assert hist["best_val_mse"] == pytest.approx(min(hist["val_mse"]), rel=1e-6)
    assert hist["steps"][-1] < 3000  # patience stopped it


def test_higher_order_fit_beats_first_order_on_second_order_truth():
    rng = np.random.default_rng(3)
    N, M, D = 30, 6, 3
    x, z = rng.normal(size=(N, D)), rng.normal(size=(M, D))
    s = np.tanh(z @ x.T)
    a = -0.02 * (1.0 + s) / 2  # [M, N]
    # Momentum-like memory: L_t = L_{t-1} + (sum a) L_{t-1} + gamma (L_{t-1} - L_{t-2}),
    # gamma = 0.5 spread over the 4 examples of a batch.
    A = np.stack([a + 0.5 / 4, np.full_like(a, -0.5 / 4)], axis=-1)
    B = np.zeros((M, N))
    b = sample_curricula(rng, 30, N, 24, 4)
    L = _simulate_runs(rng, b, A, B, rng.uniform(1, 2, M), 0.001, order=2)
    runs = RunSet(batches=b, losses=L, num_train=N)
    fit, val, test = runs.split(22, 3, 5)
    feats = (x.astype(np.float32), z.astype(np.float32))
    s1 = sj.fit_simulator("featurized", fit, validation=val, features=feats)
    s2 = sj.fit_simulator("featurized", fit, validation=val, features=feats, order=2)
    assert s2.name == "featurized_order2" and s2.order == 2
    with pytest.raises(ValueError, match="no closed form"):
        sj.closed_form_final(s2, test.batches, test.L0)
    mse = lambda s: sj.metrics.all_steps_mse(sj.predict(s, test), test.losses)[0]
    assert mse(s2) < 0.5 * mse(s1), (mse(s2), mse(s1))


def test_clear_errors(small):
    fit, val, _, feats, sim = small
    with pytest.raises(ValueError, match="needs features"):
        sj.fit_simulator("featurized", fit)
    with pytest.raises(ValueError, match=r"train features must have shape \[N=24"):
        sj.fit_simulator("featurized", fit, features=(feats[0][:5], feats[1]))
    with pytest.raises(ValueError, match=r"test features must have shape \[M=5"):
        sj.fit_simulator("featurized", fit, features=(feats[0], feats[1][:2]))
    with pytest.raises(ValueError, match="no validation runs"):
        sj.fit_simulator("featurized", fit, features=feats, l2=[0.1, 1.0])
    with pytest.raises(ValueError, match="order must be >= 1"):
        sj.fit_simulator("featurized", fit, features=feats, order=0)
    with pytest.raises(ValueError, match=r"shape \[\*, 8\]"):
        sim.with_features(test=np.zeros((3, 5)))
    bad = np.array(feats[0])
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sj.fit_simulator("featurized", fit, features=(bad, feats[1]))


def test_tied_projections_share_one_encoder(small):
    fit, _, _, feats, _ = small
    cfg = ff.FeaturizedConfig(tied=True)
    sim = ff.init_simulator(*feats, cfg).replace(W_out=jnp.ones((64, 2)))
    out = np.asarray(sim.pair_outputs())
    np.testing.assert_array_equal(np.asarray(sim.replace(Q=sim.Q * 0.0).pair_outputs()), out)
    assert not np.allclose(np.asarray(sim.replace(P=sim.P * 2.0).pair_outputs()), out)
    fitted = sj.fit_simulator("featurized", fit, features=feats, tied=True, max_steps=100)
    assert fitted.tied and np.all(np.isfinite(np.asarray(sj.rollout(fitted, fit.batches, fit.L0))))
    with pytest.raises(ValueError, match="one width"):
        sj.fit_simulator("featurized", fit, features=(feats[0], feats[1][:, :4]), tied=True)
