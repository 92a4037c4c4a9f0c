"""The optimizer kernel: a synthetic world drawn from the kernel law, an exact NumPy ridge of
the same model written here, and the checks on learning rates and momentum."""

import jax
import numpy as np
import pytest
from kernel_worlds import dense_ridge, mse, world

import simfluence_jax as sj
from simfluence_jax import fitting
from simfluence_jax.fitting import ridge
from simfluence_jax.runs import RunSet

MU = 0.8
L2 = 1e-3


def _numpy_ridge(runs: RunSet, mu: float, l2: float):
    """The kernel model's teacher-forced ridge, written out densely: ``(A, B) [M, N]``."""
    R, T, _ = runs.batches.shape
    N = runs.num_train
    s = runs.learning_rates / runs.learning_rates.max()
    X = np.zeros((R, T, N))
    x = np.zeros((R, N))
    for t in range(T):
        counts = np.zeros((R, N))
        np.add.at(counts, (np.arange(R)[:, None], runs.batches[:, t]), 1.0)
        x = mu * x + counts
        X[:, t] = s[:, t, None] * x
    return dense_ridge(runs, X.reshape(R * T, N), l2)


@pytest.fixture(scope="module")
def kernel_world():
    return world(mu=MU, schedule=True).split(40, 10, 10)


def test_true_momentum_matches_an_exact_numpy_ridge(kernel_world):
    fit, val, test = kernel_world
    A, B = _numpy_ridge(fit, MU, L2)
    # In float64 every solver solves exactly the NumPy ridge.
    with jax.enable_x64(True):
        for solver in ("direct", "cg", "dual"):
            sim = sj.fit_simulator(
                "linear", fit, momentum=MU, lr_scaled=True, alpha="one_plus_sum", l2=L2,
                solver=solver, dtype=np.float64,
            )  # fmt: skip
            np.testing.assert_allclose(np.asarray(sim.A), A, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(np.asarray(sim.B), B, rtol=1e-6, atol=1e-9)
        # float64 parameters roll out (the scan's state keeps its dtype).
        assert np.all(np.isfinite(sj.predict(sim, test)))
    # The default float32 fit predicts held-out runs as well as the exact ridge.
    sim = sj.fit_simulator("linear", fit, momentum=MU, lr_scaled=True, alpha="one_plus_sum",
                           l2=L2)  # fmt: skip
    ref = sim.replace(A=A.astype(np.float32), B=B.astype(np.float32))
    mse_fit, mse_ref = mse(sim, test), mse(ref, test)
    assert mse_fit <= 1.1 * mse_ref, (mse_fit, mse_ref)


def test_auto_momentum_is_close_and_the_paper_form_is_worse(kernel_world):
    fit, val, test = kernel_world
    ref = _numpy_ridge(fit, MU, L2)
    exact = sj.fit_simulator("linear", fit, momentum=MU, lr_scaled=True,
                             alpha="one_plus_sum", l2=L2)  # fmt: skip
    mse_ref = mse(exact.replace(A=ref[0].astype(np.float32), B=ref[1].astype(np.float32)), test)
    auto = sj.fit_simulator(
        "linear", fit, validation=val, momentum="auto", lr_scaled=True, alpha="one_plus_sum"
    )
    assert 0.6 <= auto.momentum <= 0.95, auto.momentum
    assert mse(auto, test) <= 1.25 * mse_ref, (mse(auto, test), mse_ref)
    paper = sj.fit_simulator("linear", fit, validation=val, alpha="one_plus_sum")
    assert mse(paper, test) > 3 * mse_ref, (mse(paper, test), mse_ref)


def test_grid_search_chooses_what_single_fits_choose(kernel_world):
    """``momentum="auto"`` solves the whole (mu, l2) grid at once, sharing work across mu; it
    must choose the (mu, l2) that a brute-force loop of single fits over the same grid
    chooses by validation rollout MSE, with the same parameters. In float64 the choice is
    exact; in float32 the choice scores within 1e-3 of the best on the float64 table (near
    ties may go either way)."""
    fit, val, _ = kernel_world
    kw = dict(lr_scaled=True, alpha="one_plus_sum")
    mus, l2s = fitting.MOMENTUM_GRID, fitting.DEFAULT_L2_GRID
    with jax.enable_x64(True):
        auto = sj.fit_simulator("linear", fit, validation=val, momentum="auto",
                                dtype=np.float64, **kw)  # fmt: skip
        score, single = {}, {}
        for mu in mus:
            for l2 in l2s:
                single[mu, l2] = sj.fit_simulator("linear", fit, momentum=mu, l2=l2,
                                                  dtype=np.float64, **kw)  # fmt: skip
                sim = single[mu, l2]
                as32 = sim.replace(A=np.float32(sim.A), B=np.float32(sim.B))
                score[mu, l2] = fitting.rollout_mse(as32, val)
    best = min(score, key=score.get)
    assert (auto.momentum, auto.l2) == best, ((auto.momentum, auto.l2), best)
    for got, want in [(auto.A, single[best].A), (auto.B, single[best].B)]:
        want = np.asarray(want)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-9 * np.abs(want).max())
    auto32 = sj.fit_simulator("linear", fit, validation=val, momentum="auto", **kw)
    assert score[auto32.momentum, auto32.l2] <= (1 + 1e-3) * score[best]


def test_grid_in_chunks_of_mu_equals_the_whole_grid(kernel_world, monkeypatch):
    """Chunking the mu grid changes neither the choice nor the solution. In float64, so that
    the comparison is not at the mercy of float32 reduction order, which differs between
    compiled shapes (the solvers also chunk over test examples)."""
    fit, val, _ = kernel_world
    kw = dict(validation=val, momentum=[0.0, 0.4, 0.7, 0.8, 0.9], lr_scaled=True,
              alpha="one_plus_sum", dtype=np.float64)  # fmt: skip
    with jax.enable_x64(True):
        whole = sj.fit_simulator("linear", fit, **kw)
        # Room for two mu per chunk: chunks of 2, 2 and a padded 1.
        per_mu = len(fitting.DEFAULT_L2_GRID) * fit.num_test * 2 * fit.num_train * 8
        monkeypatch.setattr(ridge, "GRID_CHUNK_BYTES", 2 * per_mu)
        chunked = sj.fit_simulator("linear", fit, **kw)
    assert (chunked.momentum, chunked.l2) == (whole.momentum, whole.l2)
    for got, want in [(chunked.A, whole.A), (chunked.B, whole.B)]:
        want = np.asarray(want)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-9 * np.abs(want).max())


def _plain_linear(runs: RunSet, alpha0: float, l2: float):
    """Simfluence-Linear as the paper states it, with no kernel: for each test example the
    ridge of ``L_t - alpha0 L_{t-1}`` on the batch counts ``m(c_t)`` and ``m(c_t) L_{t-1}``,
    one design row per (run, step), solved in closed form. ``(A, B) [M, N]``."""
    N = runs.num_train
    rows, L_prev, L_next = [], [], []
    for r in range(runs.num_runs):
        for t, batch in enumerate(runs.batches[r]):
            rows.append(np.bincount(batch[batch >= 0], minlength=N).astype(np.float64))
            L_prev.append(runs.losses[r, t])
            L_next.append(runs.losses[r, t + 1])
    m, L_prev, L_next = np.array(rows), np.array(L_prev), np.array(L_next)
    A, B = [], []
    for j in range(runs.num_test):
        D = np.hstack([m * L_prev[:, j : j + 1], m])
        y = L_next[:, j] - alpha0 * L_prev[:, j]
        theta = np.linalg.solve(D.T @ D + l2 * np.eye(2 * N), D.T @ y)
        A.append(theta[:N])
        B.append(theta[N:])
    return np.array(A), np.array(B)


def _plain_rollout(A, B, alpha0: float, runs: RunSet):
    """``L_t = (alpha0 + A . m(c_t)) L_{t-1} + B . m(c_t)`` from the observed ``L_0``."""
    out = np.zeros(runs.losses.shape)
    for r in range(runs.num_runs):
        out[r, 0] = runs.losses[r, 0]
        for t, batch in enumerate(runs.batches[r]):
            m = np.bincount(batch[batch >= 0], minlength=runs.num_train)
            out[r, t + 1] = (alpha0 + A @ m) * out[r, t] + B @ m
    return out


@pytest.mark.parametrize("alpha", ["sum", "one_plus_sum"])
def test_zero_momentum_is_the_plain_linear_fit(alpha):
    """mu = 0 without lr scaling is Simfluence-Linear: the same parameters as a closed-form
    plain ridge written above (no buffer, no schedule, though these runs have one) and the
    same rollout; a nonzero mu is not."""
    fit, _, test = world(mu=0.5, schedule=True, seed=1, num_runs=30).split(20, 5, 5)
    alpha0 = fitting.ALPHA_FORMS[alpha]
    A, B = _plain_linear(fit, alpha0, L2)
    with jax.enable_x64(True):
        zero = sj.fit_simulator("linear", fit, alpha=alpha, momentum=0.0, l2=L2, dtype=np.float64)
        default = sj.fit_simulator("linear", fit, alpha=alpha, l2=L2, dtype=np.float64)
        other = sj.fit_simulator("linear", fit, alpha=alpha, momentum=0.5, l2=L2, dtype=np.float64)
        predicted = np.asarray(sj.predict(zero, test))
    assert zero.momentum == 0.0 and not zero.lr_scaled
    scale = np.abs(A).max()
    for sim in (zero, default):
        np.testing.assert_allclose(np.asarray(sim.A), A, rtol=1e-6, atol=1e-9 * scale)
        np.testing.assert_allclose(np.asarray(sim.B), B, rtol=1e-6, atol=1e-9 * np.abs(B).max())
    assert np.abs(np.asarray(other.A) - A).max() > 0.1 * scale  # the check can fail
    np.testing.assert_allclose(predicted, _plain_rollout(A, B, alpha0, test), rtol=1e-6, atol=1e-9)


def test_lr_scaled_with_a_constant_rate_only_rescales_the_parameters():
    fit, val, test = world(mu=0.0, schedule=False, seed=1, num_runs=30).split(20, 5, 5)
    plain = sj.fit_simulator("linear", fit, validation=val)
    scaled = sj.fit_simulator("linear", fit, validation=val, lr_scaled=True)
    assert scaled.lr_scaled and not plain.lr_scaled
    np.testing.assert_allclose(sj.predict(scaled, test), sj.predict(plain, test), atol=1e-4)


def test_learning_rates_are_checked(kernel_world):
    fit, val, test = kernel_world
    sim = sj.fit_simulator("linear", fit, momentum=0.5, lr_scaled=True, l2=0.1)
    with pytest.raises(ValueError, match="lr_scaled"):
        sj.simulate(sim, test.batches, test.L0)
    with pytest.raises(ValueError, match="must end in the curricula's T"):
        sj.simulate(sim, test.batches, test.L0, learning_rates=test.learning_rates[:, :-1])
    bad = test.learning_rates.copy()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="learning_rates contains NaN"):
        sj.simulate(sim, test.batches, test.L0, learning_rates=bad)
    with pytest.raises(ValueError, match=">= 0"):
        sj.simulate(sim, test.batches, test.L0, learning_rates=-test.learning_rates)
    L0 = test.L0.copy()
    L0[1, 2] = np.inf
    with pytest.raises(ValueError, match="L0 contains NaN or infinite"):
        sj.simulate(sim, test.batches, L0, learning_rates=test.learning_rates)
    # A simulator that ignores the schedule accepts and ignores it.
    plain = sj.fit_simulator("linear", fit, l2=0.1)
    np.testing.assert_array_equal(
        sj.simulate(plain, test.batches, test.L0),
        sj.simulate(plain, test.batches, test.L0, learning_rates=test.learning_rates * 3),
    )
    for momentum in (-0.1, 1.0, 1.5, float("nan"), "fast"):
        with pytest.raises(ValueError, match="momentum"):
            sj.fit_simulator("linear", fit, momentum=momentum, l2=0.1)
    with pytest.raises(ValueError, match="validation"):
        sj.fit_simulator("linear", fit, momentum="auto")
    no_rates = RunSet(batches=fit.batches, losses=fit.losses, num_train=fit.num_train)
    with pytest.raises(ValueError, match="learning rates of the fitting runs"):
        sj.fit_simulator("linear", no_rates, lr_scaled=True, l2=0.1)
    with pytest.raises(ValueError, match="learning_rates must have shape"):
        RunSet(batches=fit.batches, losses=fit.losses, learning_rates=fit.learning_rates[:, 1:])
    with pytest.raises(ValueError, match=">= 0"):
        RunSet(batches=fit.batches, losses=fit.losses, learning_rates=-fit.learning_rates)


def test_learning_rates_travel_with_runs(kernel_world, tmp_path):
    fit, val, test = kernel_world
    both = RunSet.concatenate([fit, test])
    np.testing.assert_array_equal(
        both.learning_rates, np.concatenate([fit.learning_rates, test.learning_rates])
    )
    np.testing.assert_array_equal(both.select([3, 0]).learning_rates, both.learning_rates[[3, 0]])
    back = RunSet.load(both.save(tmp_path / "runs"))
    np.testing.assert_array_equal(back.learning_rates, both.learning_rates)
    no_rates = RunSet(batches=test.batches, losses=test.losses, num_train=test.num_train)
    with pytest.raises(ValueError, match="no learning rates"):
        RunSet.concatenate([fit, no_rates])


def test_unknown_keywords_and_bad_l2_are_named(kernel_world):
    fit, val, _ = kernel_world
    with pytest.raises(ValueError, match="constant does not take 'l2'"):
        sj.fit_simulator("constant", fit, l2=-1.0)
    with pytest.raises(ValueError, match="linear does not take 'momentun'"):
        sj.fit_simulator("linear", fit, momentun=0.9)
    for l2 in (-1.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="l2 must be a finite number > 0"):
            sj.fit_simulator("linear", fit, l2=l2)
    with pytest.raises(ValueError, match="no simulator among"):
        sj.fit_all(["linear", "mean"], fit, l2s=0.1)


def test_prior_is_the_shrinkage_target(kernel_world):
    fit, _, test = kernel_world
    kw = dict(momentum=MU, lr_scaled=True, alpha="one_plus_sum")
    free = sj.fit_simulator("linear", fit, l2=L2, **kw)
    rng = np.random.default_rng(5)
    prior = free.replace(
        A=rng.normal(0, 1e-3, free.A.shape).astype(np.float32),
        B=rng.normal(0, 1e-3, free.B.shape).astype(np.float32),
    )
    # A huge l2 returns the prior itself; a tiny one the free fit (the prior's pull vanishes).
    stiff = sj.fit_simulator("linear", fit, l2=1e10, prior=prior, **kw)
    np.testing.assert_allclose(np.asarray(stiff.A), np.asarray(prior.A), atol=1e-7)
    np.testing.assert_allclose(np.asarray(stiff.B), np.asarray(prior.B), atol=1e-7)
    loose = sj.fit_simulator("linear", fit, l2=1e-6, prior=prior, **kw)
    tight = sj.fit_simulator("linear", fit, l2=1e-6, **kw)
    np.testing.assert_allclose(sj.predict(loose, test), sj.predict(tight, test), atol=2e-3)
    with pytest.raises(ValueError, match=r"shape \[M, N\]"):
        sj.fit_simulator("linear", fit, l2=0.1, prior=prior.restrict(np.arange(2)), **kw)
