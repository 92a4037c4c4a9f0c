"""One conformance battery for every registered simulator, plus recovery of known truth."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simfluence_jax as sj
from simfluence_jax import metrics
from simfluence_jax.gradients.context import PrecomputedGradients
from simfluence_jax.simulators import AffineSimulator
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
    if "features" in sj.fitting.required_inputs(name):
        from simfluence_jax.featurized_fit import synthetic_features

        return {"features": synthetic_features(runs, seed=seed)}
    return {}


#: Every registered simulator, plus variants that change the state a rollout carries:
#: ``label -> (registry name, options)``.
CASES = {name: (name, {}) for name in sj.SIMULATORS.names()}
CASES["linear_kernel"] = ("linear", {"momentum": 0.6, "lr_scaled": True})
CASES["additive_kernel"] = ("additive", {"momentum": 0.3})
CASES["featurized_order2"] = ("featurized", {"order": 2, "max_steps": 200})


@pytest.fixture(scope="module")
def problem():
    p = make_problem(num_train=24, num_test=5, num_runs=16, noise=0.01, seed=1)
    # A warm-up-and-decay schedule: lr_scaled simulators follow it, the others ignore it.
    T = p.runs.num_steps
    eta = np.minimum(np.arange(1, T + 1) / 4, (T + 1 - np.arange(1, T + 1)) / (T / 2))
    rates = np.tile(0.1 * np.clip(eta, 0.05, 1.0), (p.runs.num_runs, 1)).astype(np.float32)
    runs = dataclasses.replace(p.runs, learning_rates=rates)
    fit, val, test = runs.split(10, 2, 4)
    return p, fit, val, test


def _fit(label, runs, seed=0, **kw):
    name, options = CASES[label]
    kw = {k: v for k, v in kw.items() if k in sj.fitting.accepted_keywords(name)}
    return sj.fit_simulator(name, runs, **options, **_fit_kwargs(name, runs, seed=seed), **kw)


@pytest.fixture(scope="module")
def fitted(problem):
    _, fit, val, _ = problem
    return {label: _fit(label, fit, validation=val) for label in CASES}


@pytest.mark.parametrize("label", sorted(CASES))
def test_conformance(label, problem, fitted):
    _, fit, _, test = problem
    sim = fitted[label]
    batches, L0, rates = test.batches, test.L0, test.learning_rates

    # Shapes, and row 0 is L_0.
    out = np.asarray(sj.rollout(sim, batches, L0, learning_rates=rates))
    assert out.shape == (test.num_runs, test.num_steps + 1, test.num_test)
    np.testing.assert_array_equal(out[:, 0], L0)
    assert np.all(np.isfinite(out))

    # jit-able, and no recompilation on a second call with other values of the same shapes.
    f = jax.jit(sj.rollout)
    a = f(sim, batches, L0, learning_rates=rates)
    compiled = f._cache_size()
    reordered = fit.select(np.arange(fit.num_runs)[::-1])
    refit = _fit(label, reordered, seed=1, l2=0.5)
    f(refit, batches[::-1], L0 + 0.1, learning_rates=rates * 0.5)
    assert f._cache_size() == compiled, f"{label} recompiled for new values of the same shapes"
    np.testing.assert_allclose(np.asarray(a), out, rtol=1e-6, atol=1e-6)

    # vmaps over runs: one call with all curricula equals one call per curriculum.
    single = np.stack(
        [np.asarray(sj.rollout(sim, b, l, learning_rates=r)) for b, l, r in zip(batches, L0, rates)]
    )
    np.testing.assert_allclose(out, single, rtol=1e-6, atol=1e-6)
    # ... and jax.vmap of the single-curriculum rollout gives the same.
    vm = jax.vmap(lambda b, l, r: sj.rollout(sim, b, l, learning_rates=r))(
        jnp.asarray(batches), jnp.asarray(L0), jnp.asarray(rates)
    )
    np.testing.assert_allclose(np.asarray(vm), out, rtol=1e-6, atol=1e-6)

    # An all-padding step is no update: appending one leaves the trajectory unchanged.
    padded = np.concatenate([batches, np.full_like(batches[:, :1], -1)], axis=1)
    rates_p = np.concatenate([rates, rates[:, -1:]], axis=1)
    out_p = np.asarray(sj.rollout(sim, padded, L0, learning_rates=rates_p))
    np.testing.assert_allclose(out_p[:, :-1], out, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out_p[:, -1], out_p[:, -2])

    # Deterministic: fitting and simulating again gives identical numbers.
    again = _fit(label, fit, validation=problem[2])
    np.testing.assert_array_equal(
        np.asarray(sj.rollout(again, batches, L0, learning_rates=rates)), out
    )

    # The scan matches the closed form where the update is affine in the previous loss.
    if isinstance(sim, AffineSimulator):
        closed = np.asarray(sj.closed_form_final(sim, batches, L0, learning_rates=rates))
        np.testing.assert_allclose(closed, out[:, -1], rtol=1e-5, atol=1e-5)
    else:
        with pytest.raises(ValueError, match="no closed form"):
            sj.closed_form_final(sim, batches, L0)

    # The simulator is a pytree that survives flatten/unflatten.
    leaves, treedef = jax.tree_util.tree_flatten(sim)
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    np.testing.assert_array_equal(
        np.asarray(sj.rollout(back, batches, L0, learning_rates=rates)), out
    )


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
