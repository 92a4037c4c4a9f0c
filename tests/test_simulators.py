"""One conformance battery for every registered simulator, plus recovery of known truth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simfluence_jax as sj
import simfluence_jax.featurized_fit  # noqa: F401  (registers "featurized")
import simfluence_jax.gradients.baselines  # noqa: F401  (registers the gradient simulators)
from simfluence_jax import metrics
from simfluence_jax.gradients.context import PrecomputedGradients
from simfluence_jax.synthetic import make_problem


def _fit_kwargs(name, runs, seed=0):
    """Extra inputs some simulators need beyond the runs (gradient scores, features)."""
    fitter = sj.SIMULATORS.get(name)
    if getattr(fitter, "requires_gradients", False):
        rng = np.random.default_rng(seed)
        N, M, T = runs.num_train, runs.num_test, runs.num_steps
        return {
            "gradients": PrecomputedGradients(
                steps=np.array([0, T // 2]),
                checkpoint_rates=np.full(2, 0.1, np.float32),
                dots=rng.normal(size=(2, N, M)).astype(np.float32),
                influence=rng.normal(size=(N, M)).astype(np.float32),
                learning_rates=np.full(T, 0.1, np.float32),
            )
        }
    features = getattr(fitter, "synthetic_features", None)
    if features is not None:
        return {"features": features(runs, seed=seed)}
    return {}


@pytest.fixture(scope="module")
def problem():
    p = make_problem(num_train=24, num_test=5, num_runs=16, noise=0.01, seed=1)
    fit, val, test = p.runs.split(10, 2, 4)
    return p, fit, val, test


@pytest.fixture(scope="module")
def fitted(problem):
    _, fit, val, _ = problem
    return {
        name: sj.fit_simulator(name, fit, validation=val, **_fit_kwargs(name, fit))
        for name in sj.SIMULATORS.names()
    }


@pytest.mark.parametrize("name", sj.SIMULATORS.names())
def test_conformance(name, problem, fitted):
    _, fit, _, test = problem
    sim = fitted[name]
    batches, L0 = test.batches, test.L0

    # Shapes, and row 0 is L_0.
    out = np.asarray(sj.rollout(sim, batches, L0))
    assert out.shape == (test.num_runs, test.num_steps + 1, test.num_test)
    np.testing.assert_array_equal(out[:, 0], L0)
    assert np.all(np.isfinite(out))

    # jit-able, and no recompilation on a second call with other values of the same shapes.
    f = jax.jit(sj.rollout)
    a = f(sim, batches, L0)
    compiled = f._cache_size()
    reordered = fit.select(np.arange(fit.num_runs)[::-1])
    refit = sj.fit_simulator(name, reordered, l2=0.5, **_fit_kwargs(name, reordered, seed=1))
    f(refit, batches[::-1], L0 + 0.1)
    assert f._cache_size() == compiled, f"{name} recompiled for new values of the same shapes"
    np.testing.assert_allclose(np.asarray(a), out, rtol=1e-6, atol=1e-6)

    # vmaps over runs: one call with all curricula equals one call per curriculum.
    single = np.stack([np.asarray(sj.rollout(sim, b, l)) for b, l in zip(batches, L0)])
    np.testing.assert_allclose(out, single, rtol=1e-6, atol=1e-6)
    # ... and jax.vmap of the single-curriculum rollout gives the same.
    vm = jax.vmap(lambda b, l: sj.rollout(sim, b, l))(jnp.asarray(batches), jnp.asarray(L0))
    np.testing.assert_allclose(np.asarray(vm), out, rtol=1e-6, atol=1e-6)

    # Deterministic: fitting and simulating again gives identical numbers.
    again = sj.fit_simulator(name, fit, validation=problem[2], **_fit_kwargs(name, fit))
    np.testing.assert_array_equal(np.asarray(sj.rollout(again, batches, L0)), out)

    # The scan matches the closed form.
    closed = np.asarray(sj.closed_form_final(sim, batches, L0))
    np.testing.assert_allclose(closed, out[:, -1], rtol=1e-5, atol=1e-5)

    # The simulator is a pytree that survives flatten/unflatten.
    leaves, treedef = jax.tree_util.tree_flatten(sim)
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    np.testing.assert_array_equal(np.asarray(sj.rollout(back, batches, L0)), out)


def test_linear_reaches_noise_floor_and_recovers_parameters():
    p = make_problem(num_train=40, num_test=6, num_runs=120, noise=0.005, seed=0)
    fit, val, test = p.runs.split(100, 10, 10)
    sim = sj.fit_simulator("linear", fit, validation=val)
    floor = metrics.all_steps_mse(sj.predict(p.truth, test), test.losses)[0]
    mse = metrics.all_steps_mse(sj.predict(sim, test), test.losses)[0]
    assert mse < 2 * floor, (mse, floor)
    # Per-step effect of each training example on each test loss at a typical loss level:
    # d_i = A_i * L + B_i. A and B separately are weakly identified (nearly collinear
    # columns), their combined effect is not.
    L = test.losses.mean()
    true_effect = np.asarray(p.truth.A) * L + np.asarray(p.truth.B)
    fit_effect = np.asarray(sim.A) * L + np.asarray(sim.B)
    err = np.sqrt(np.mean((fit_effect - true_effect) ** 2) / np.mean(true_effect**2))
    assert err < 0.05, err
    fit_c = fit_effect - fit_effect.mean(1, keepdims=True)
    true_c = true_effect - true_effect.mean(1, keepdims=True)
    corr = np.corrcoef(fit_c.ravel(), true_c.ravel())[0, 1]
    assert corr > 0.9, corr


def test_linear_beats_additive_when_truth_is_multiplicative():
    p = make_problem(
        num_train=30, num_test=6, num_runs=60, noise=0.005, truth="multiplicative",
        L0_jitter=0.5, seed=2,
    )  # fmt: skip
    fit, val, test = p.runs.split(48, 6, 6)
    lin = sj.fit_simulator("linear", fit, validation=val)
    add = sj.fit_simulator("additive", fit, validation=val)
    mse_lin = metrics.all_steps_mse(sj.predict(lin, test), test.losses)[0]
    mse_add = metrics.all_steps_mse(sj.predict(add, test), test.losses)[0]
    assert mse_add > 5 * mse_lin, (mse_lin, mse_add)


def test_one_plus_sum_form_and_l2_selection():
    p = make_problem(num_train=24, num_test=4, num_runs=30, noise=0.01, seed=4)
    fit, val, test = p.runs.split(20, 5, 5)
    sim = sj.fit_simulator("linear", fit, validation=val, alpha="one_plus_sum")
    assert sim.alpha0 == 1.0 and sim.name == "linear_one_plus_sum"
    assert float(sim.l2) in sj.DEFAULT_L2_GRID
    scores = {
        l2: metrics.all_steps_mse(
            sj.predict(sj.fit_simulator("linear", fit, l2=l2, alpha="one_plus_sum"), val),
            val.losses,
        )[0]
        for l2 in sj.DEFAULT_L2_GRID
    }
    assert float(sim.l2) == min(scores, key=scores.get)
    with pytest.raises(ValueError, match="unknown alpha form"):
        sj.fit_simulator("linear", fit, alpha="exp")
    with pytest.raises(ValueError, match="no validation runs"):
        sj.fit_simulator("linear", fit, l2=[0.1, 1.0])


def test_unknown_simulator_lists_known_names():
    p = make_problem(num_train=8, num_test=2, num_runs=4)
    with pytest.raises(ValueError, match="known: .*linear.*shuffled"):
        sj.fit_simulator("tracin_typo", p.runs)


def test_shuffled_control_is_a_permutation_of_linear(problem, fitted):
    lin, shuf = fitted["linear"], fitted["shuffled"]
    A, S = np.asarray(lin.A), np.asarray(shuf.A)
    np.testing.assert_allclose(np.sort(A, axis=1), np.sort(S, axis=1))
    assert not np.allclose(A, S)


def test_fit_all_mixes_ridge_and_gradient_simulators(problem):
    _, fit, val, test = problem
    kw = _fit_kwargs("tracin_cp", fit)
    sims = sj.fit_all(["linear", "constant", "tracin_cp_calibrated"], fit, validation=val, **kw)
    assert set(sims) == {"linear", "constant", "tracin_cp_calibrated"}
    assert all(np.isfinite(sj.evaluate(s, test)["mse_mean"]) for s in sims.values())
