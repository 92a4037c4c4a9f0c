"""One conformance battery for every registered simulator, and recovery of known parameters
for every fitted simulator that has a generating truth.

The battery (``simulator_battery.py``) runs over ``SIMULATORS.names()``, so a simulator
declared in a new module of ``simfluence_jax/simulators/`` (or an extension module named in
``SIMFLUENCE_JAX_EXTENSIONS``) is covered without an edit here; the inputs its record
declares (``gradients``, ``features``) are made up by ``simulator_battery.synthetic_inputs``.
The law a simulator must recover is checked here for the built-in ones (``RECOVERABLE``,
``NO_TRUTH``) and in its own test file for any other.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from simulator_battery import check_removal_effects, check_rollout, synthetic_inputs

import simfluence_jax as sj
from simfluence_jax import metrics
from simfluence_jax.gradients import gradient_simulator_names
from simfluence_jax.gradients.context import PrecomputedGradients
from simfluence_jax.synthetic import make_problem

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
    return sj.fit_simulator(name, runs, **options, **synthetic_inputs(name, runs, seed=seed), **kw)


@pytest.fixture(scope="module")
def fitted(problem):
    _, fit, val, _ = problem
    return {label: _fit(label, fit, validation=val) for label in CASES}


def _refit(label, fit):
    """Another fit of the same shapes with other values (reordered runs, another l2)."""
    return _fit(label, fit.select(np.arange(fit.num_runs)[::-1]), seed=1, l2=0.5)


@pytest.mark.parametrize("label", sorted(CASES))
def test_conformance(label, problem, fitted):
    _, fit, val, test = problem
    again = _fit(label, fit, validation=val)
    check_rollout(fitted[label], _refit(label, fit), again, test, label=label)


@pytest.mark.parametrize("label", sorted(CASES))
def test_removal_effects_conformance(label, problem, fitted):
    """Attribution works through the one rollout for every simulator (``simulator_battery``)."""
    _, fit, _, _ = problem
    check_removal_effects(fitted[label], _refit(label, fit), fit, label=label)


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


def test_every_registered_simulator_has_its_law_tested():
    """Built-in names are listed here (the lists hold nothing stale); any other name is
    named in a test file of its own, which tests its law."""
    names = set(sj.SIMULATORS.names())
    assert not set(RECOVERABLE) & set(NO_TRUTH)
    assert set(RECOVERABLE) | set(NO_TRUTH) <= names
    others = names - set(RECOVERABLE) - set(NO_TRUTH)
    here = Path(__file__).resolve()
    texts = [p.read_text() for p in here.parent.glob("test_*.py") if p != here]
    untested = sorted(n for n in others if not any(f'"{n}"' in t for t in texts))
    assert not untested, (
        f"simulators with no law tested (RECOVERABLE, NO_TRUTH or a test file): {untested}"
    )


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
    kw = synthetic_inputs("tracin_cp", fit)
    sims = sj.fit_all(["linear", "constant", "tracin_cp_calibrated"], fit, validation=val, **kw)
    assert set(sims) == {"linear", "constant", "tracin_cp_calibrated"}
    assert all(np.isfinite(sj.evaluate(s, test)["mse_mean"]) for s in sims.values())
