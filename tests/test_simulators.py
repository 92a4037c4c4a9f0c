"""One conformance battery for every registered simulator, and recovery of known parameters
for every fitted simulator that has a generating truth."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simfluence_jax as sj
from simfluence_jax import attribution, metrics
from simfluence_jax import counterfactuals as cf
from simfluence_jax.gradients import gradient_simulator_names
from simfluence_jax.gradients.context import PrecomputedGradients
from simfluence_jax.simulators import AffineSimulator
from simfluence_jax.synthetic import make_problem


def _fit_kwargs(name, runs, seed=0):
    """Extra inputs some simulators need beyond the runs (gradient scores, features)."""
    if "gradients" in sj.fitting.required_inputs(name):
        rng = np.random.default_rng(seed)
        N, M, T = runs.num_train, runs.num_test, runs.num_steps
        return {
            "gradients": PrecomputedGradients(
                steps=np.array([0, T // 2]),
                checkpoint_rates=np.full(2, 0.1, np.float32),
                dots=rng.normal(size=(2, N, M)).astype(np.float32),
                influence=rng.normal(size=(N, M)).astype(np.float32),
                trak=rng.normal(size=(N, M)).astype(np.float32),
                ekfac=rng.normal(size=(N, M)).astype(np.float32),
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

    # Sharding the test examples over a mesh gives the same trajectories.
    mesh_out = np.asarray(sj.rollout(sim, batches, L0, learning_rates=rates, mesh=sj.test_mesh()))
    np.testing.assert_allclose(mesh_out, out, rtol=1e-6, atol=1e-6)

    # The simulator is a pytree that survives flatten/unflatten.
    leaves, treedef = jax.tree_util.tree_flatten(sim)
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    np.testing.assert_array_equal(
        np.asarray(sj.rollout(back, batches, L0, learning_rates=rates)), out
    )


@pytest.mark.parametrize("label", sorted(CASES))
def test_removal_effects_conformance(label, problem, fitted):
    """Attribution works through the one rollout for every simulator: under jit, without
    recompiling for other curricula or fitted values of the same shapes, and equal to the
    rollout of each edited curriculum."""
    _, fit, _, _ = problem
    sim = fitted[label]
    b, L0, rates = fit.batches[0], fit.L0[0], fit.learning_rates[0]  # ids the fit saw

    eff = sj.removal_effects(sim, b, L0, learning_rates=rates, horizon=2, batch_loss="sum")
    assert eff.delta.shape == (len(np.unique(b[b >= 0])), fit.num_test)
    assert np.all(np.isfinite(eff.delta))
    for k in (0, len(eff.ids) - 1):
        edits = np.stack([b, cf.remove(b, [eff.ids[k]], repack=False)])
        traj = np.asarray(sj.rollout(sim, edits, L0, learning_rates=rates))
        want = traj[1, -2:].mean(0) - traj[0, -2:].mean(0)
        np.testing.assert_allclose(eff.delta[k], want, rtol=1e-5, atol=1e-6)

    # The pure core runs under jit and compiles once for curricula of one shape.
    f = jax.jit(attribution.removal_deltas, static_argnames=("horizon", "repack", "batch_loss"))
    remove = eff.ids[:, None]
    got = f(sim, b, L0, remove, learning_rates=rates, horizon=2, batch_loss="sum")
    np.testing.assert_allclose(np.asarray(got), eff.delta, rtol=1e-5, atol=1e-6)
    compiled = f._cache_size()
    refit = _fit(label, fit.select(np.arange(fit.num_runs)[::-1]), seed=1, l2=0.5)
    other = fit.batches[1]
    f(refit, other, L0 + 0.1, np.unique(other[other >= 0])[:, None], learning_rates=rates * 0.5,
      horizon=2, batch_loss="sum")  # fmt: skip
    assert f._cache_size() == compiled, f"{label} recompiled removal_deltas"

    # ... and so does the checked entry, chunk by chunk.
    sj.removal_effects(sim, b, L0, learning_rates=rates, repack=True, horizon=2)
    compiled = attribution._edited_windows_jit._cache_size()
    sj.removal_effects(refit, other, L0 + 0.1, learning_rates=rates * 0.5, repack=True, horizon=2)
    assert attribution._edited_windows_jit._cache_size() == compiled, f"{label} recompiled"


#: Fitted simulators with a generating truth in ``synthetic.make_problem``:
#: ``name -> truth`` (``calibrated``: the additive truth given as scores divided by a known
#: scale, which the calibration must find).
RECOVERABLE = {
    "linear": "linear",
    "linear_kernel": "linear",
    "linear_filter": "linear",
    "linear_one_plus_sum": "linear",
    "additive": "additive",
    "multiplicative": "multiplicative",
    **{name: "calibrated" for name in gradient_simulator_names(calibrated=True)},
}
#: Registered simulators without a truth to recover, and why.
NO_TRUTH = {
    "constant": "control with no parameters",
    "mean": "control: the mean change of the fitting runs, no per-example parameters",
    "shuffled": "control: Linear's parameters deliberately permuted",
    "featurized": "a learned map of random synthetic features; no generating parameters",
    **{
        name: "raw scores: nothing is fitted" for name in gradient_simulator_names(calibrated=False)
    },
}


def test_every_registered_simulator_has_a_recovery_check_or_a_reason():
    assert not set(RECOVERABLE) & set(NO_TRUTH)
    assert set(RECOVERABLE) | set(NO_TRUTH) == set(sj.SIMULATORS.names())


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)))


@pytest.mark.parametrize("name", sorted(RECOVERABLE))
def test_recovers_known_parameters(name):
    """Fits on 100 runs of a known law (noise 0.005) and compares with the truth. The
    tolerances are two to five times the measured errors: effect 0.007 (linear, linear_kernel,
    which picks momentum 0 on this momentum-free truth; 0.010 linear_filter, whose taps after
    the first stay below 0.001), B 0.048 (additive), A 0.002
    (multiplicative), scale 0.3% (calibrated gradient simulators)."""
    truth = RECOVERABLE[name]
    p = make_problem(
        num_train=40, num_test=6, num_runs=120, noise=0.005, seed=0,
        truth="additive" if truth == "calibrated" else truth,
    )  # fmt: skip
    fit, val, test = p.runs.split(100, 10, 10)
    if truth == "calibrated":
        # Decrement -(eta / B) sum_i S_i with eta = 1: S = -B_true^T * batch / c is the truth
        # at scale c, in every segment and for every kind of score.
        c, T = 2.5, fit.num_steps
        S = (-np.asarray(p.truth.B).T * fit.batch_size / c).astype(np.float32)
        grads = PrecomputedGradients(
            steps=np.array([0, T // 2]), checkpoint_rates=np.array([1.0, 0.5], np.float32),
            dots=np.stack([S, S]), final=S, influence=S, trak=S, ekfac=S,
            learning_rates=np.ones(T, np.float32),
        )  # fmt: skip
        sim = sj.fit_simulator(name, fit, gradients=grads)
        assert float(sim.scale) == pytest.approx(c, rel=0.01)
        return
    sim = sj.fit_simulator(name, fit, validation=val)
    if truth == "additive":
        assert _rel(sim.B, p.truth.B) < 0.1
        return
    if truth == "multiplicative":
        assert _rel(sim.A, p.truth.A) < 0.01
        return
    # Linear: per-step effect of each training example on each test loss at a typical loss
    # level, d_i = (A_i + alpha0 / B) L + B_i (alpha0 shared by the B examples of a full
    # batch, so the sum and one_plus_sum forms compare). A and B separately are weakly
    # identified (nearly collinear columns), their combined effect is not.
    if name == "linear_filter":  # a memory-free truth: the learned filter has no tail
        assert np.abs(np.asarray(sim.filter)[1:]).max() < 0.005, sim.filter
    else:
        assert float(sim.momentum) == 0.0
    floor = metrics.all_steps_mse(sj.predict(p.truth, test), test.losses)[0]
    mse = metrics.all_steps_mse(sj.predict(sim, test), test.losses)[0]
    assert mse < 2 * floor, (mse, floor)
    L, Bsz = test.losses.mean(), fit.batch_size

    def effect(s):
        return (np.asarray(s.A) + float(s.alpha0) / Bsz) * L + np.asarray(s.B)

    true_effect, fit_effect = effect(p.truth), effect(sim)
    assert _rel(fit_effect, true_effect) < 0.02
    fit_c = fit_effect - fit_effect.mean(1, keepdims=True)
    true_c = true_effect - true_effect.mean(1, keepdims=True)
    assert np.corrcoef(fit_c.ravel(), true_c.ravel())[0, 1] > 0.9


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
