"""Simfluence-Linear fitted to trajectories and metagradients together (``metagradient_fit``):
the rows are the simulator's own derivative, the joint ridge is exact, the observations help
when the trajectories alone do not pin (A, B) down, and bad input is named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simfluence_jax as sj
from simfluence_jax import metagradient_fit as mf
from simfluence_jax.gradients.metagradient import Metagradients, horizon_readout
from simfluence_jax.runs import RunSet
from simfluence_jax.sampling import sample_curricula
from simfluence_jax.simulators.linear import LinearSimulator

N, M, T, BATCH, H = 20, 3, 12, 4, 3


def weighted_readouts(A, B, batches, L0, w, readout):
    """``y [M]`` of the Linear law with the training loss's slot weights (normalised by their
    sum, as ``training.train_step.batch_weights``), written out step by step."""
    real = batches >= 0
    ids = jnp.where(real, batches, 0)
    L, y = L0, jnp.zeros_like(L0)
    for t in range(batches.shape[0]):
        wt = w[t] * real[t]
        m = real[t].sum() * jnp.zeros(N).at[ids[t]].add(wt) / jnp.maximum(wt.sum(), 1.0)
        L = (A @ m) * L + B @ m
        y = y + readout[t] * L
    return y


def make_world(num_runs, *, seed=0, noise=0.0):
    """Runs of a Linear law (plain ``sum`` form) and the exact metagradients of each run."""
    rng = np.random.default_rng(seed)
    A = (1.0 / BATCH) * (1.0 - rng.uniform(0.0, 0.06, (M, N)))  # alpha_t ~ 1 - small
    B = rng.uniform(-0.02, 0.005, (M, N))
    batches = sample_curricula(num_runs=num_runs, pool_size=N, batch_size=BATCH,
                               subset_size=16, epochs=3, seed=seed)  # fmt: skip
    batches = batches[:, :T]
    L0 = rng.uniform(1.0, 2.0, M)
    truth = LinearSimulator(A=np.float32(A), B=np.float32(B), seen=np.ones(N, bool))
    losses = np.asarray(sj.rollout(truth, batches, np.tile(L0, (num_runs, 1))), np.float64)
    losses = losses + noise * rng.standard_normal(losses.shape)
    losses[:, 0] = L0
    runs = RunSet(batches=batches, losses=np.float32(losses), num_train=N)
    readout = np.asarray(horizon_readout(T, H))[0]
    grad = jax.jacrev(weighted_readouts, argnums=4)
    obs = []
    for r in range(num_runs):
        slot = np.asarray(grad(A, B, batches[r], L0, jnp.ones((T, BATCH)), readout))
        obs.append(Metagradients(batches=batches[r], seed=r, readout=readout[None],
                                 values=np.zeros((1, M)), slot=slot[:, None],
                                 num_train=N, test_index=np.arange(M)))  # fmt: skip
    return runs, obs, A, B


def test_rows_are_the_simulators_own_derivative():
    """At the parameters that fix alpha, the rows times (A, B) are the autodiff derivative of
    the weighted law: the rows are exact, not an approximation."""
    with jax.enable_x64(True):
        runs, obs, A, B = make_world(2, noise=0.0)
        s = np.ones((2, T))
        O, valid = mf._rows(A, runs, obs[0].readout[0], 0.0, s, np.float64)
        pred = np.einsum("mrp,mp->mr", np.asarray(O), np.concatenate([A, B], axis=1))
        want = np.concatenate([o.slot[:, 0].reshape(M, -1) for o in obs], axis=1)
    # The rows read the logged (float32) losses; the autodiff path runs in float64.
    np.testing.assert_allclose(pred[:, valid], want[:, valid], rtol=2e-5, atol=1e-10)


def test_joint_fit_is_the_dense_ridge_of_the_stacked_rows():
    with jax.enable_x64(True):
        runs, obs, A, B = make_world(4, noise=1e-3)
        l2, weight = 1e-3, 2.0
        sim = mf.fit_linear_metagradients(runs, metagradients=obs, weight=weight, l2=l2,
                                          iterations=0, dtype=np.float64)  # fmt: skip
        plain = sj.fit_simulator("linear", runs, l2=l2, dtype=np.float64)
        O, valid = mf._rows(np.asarray(plain.A), runs, obs[0].readout[0], 0.0,
                            np.ones((4, T)), np.float64)  # fmt: skip
    O = np.asarray(O)[:, valid]
    g = np.concatenate([o.slot[:, 0].reshape(M, -1) for o in obs], axis=1)[:, valid]
    L = runs.losses.astype(np.float64)
    counts = np.zeros((4, T, N))
    for r in range(4):
        for t in range(T):
            np.add.at(counts[r, t], runs.batches[r, t], 1.0)
    X = counts.reshape(-1, N)
    ys = L[:, 1:].reshape(-1, M)
    lam = weight * np.sum(ys**2) / np.sum(g**2)
    for j in range(M):
        Lp = L[:, :-1, j].reshape(-1)
        D = np.concatenate([X * Lp[:, None], X], axis=1)
        lhs = D.T @ D + lam * O[j].T @ O[j] + l2 * np.eye(2 * N)
        theta = np.linalg.solve(lhs, D.T @ ys[:, j] + lam * O[j].T @ g[j])
        np.testing.assert_allclose(np.asarray(sim.A[j]), theta[:N], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(np.asarray(sim.B[j]), theta[N:], rtol=1e-6, atol=1e-9)


def test_weight_zero_is_plain_linear():
    with jax.enable_x64(True):
        runs, obs, _, _ = make_world(3, noise=1e-3)
        plain = sj.fit_simulator("linear", runs, l2=1e-2, dtype=np.float64)
        zero = mf.fit_linear_metagradients(runs, metagradients=obs, weight=0.0, l2=1e-2,
                                           dtype=np.float64)  # fmt: skip
    for got, want in ((zero.A, plain.A), (zero.B, plain.B)):
        want = np.asarray(want)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-9 * np.abs(want).max())


def test_metagradients_pin_down_what_few_trajectories_do_not():
    """With 2 runs the trajectories leave (A, B) underdetermined (2N = 40 unknowns per test
    example, 24 rows); the metagradients of the same 2 runs bring the parameters and the
    rollouts of reordered curricula much closer to the truth (measured: parameter error 500x
    and trajectory error 150x lower). The check can fail: a wrong row would pull the fit away."""
    runs, obs, A, B = make_world(2, noise=1e-4)
    truth = LinearSimulator(A=np.float32(A), B=np.float32(B), seen=np.ones(N, bool))
    plain = sj.fit_simulator("linear", runs, l2=1e-4)
    joint = sj.fit_simulator("linear_metagradient", runs, metagradients=obs, weight=1.0,
                             l2=1e-4)  # fmt: skip
    seen = runs.used_ids()

    def param_err(sim):
        return float(np.mean((np.asarray(sim.A)[:, seen] - A[:, seen]) ** 2)
                     + np.mean((np.asarray(sim.B)[:, seen] - B[:, seen]) ** 2))  # fmt: skip

    rng = np.random.default_rng(5)
    flat = runs.batches.reshape(2, -1)
    reordered = np.stack([rng.permutation(flat[r % 2]) for r in range(8)]).reshape(8, T, BATCH)
    L0 = np.tile(runs.L0[0], (8, 1))

    def traj_err(sim):
        got, want = (np.asarray(sj.rollout(x, reordered, L0)) for x in (sim, truth))
        return float(np.mean((got - want) ** 2))

    assert param_err(joint) < 0.25 * param_err(plain), (param_err(joint), param_err(plain))
    assert traj_err(joint) < 0.5 * traj_err(plain), (traj_err(joint), traj_err(plain))


def test_bad_input_is_named():
    runs, obs, _, _ = make_world(2)
    fit = mf.fit_linear_metagradients
    with pytest.raises(ValueError, match="one Metagradients per fitting run"):
        fit(runs, metagradients=obs[:1], l2=0.1)
    with pytest.raises(ValueError, match="another curriculum than fitting run 1"):
        fit(runs, metagradients=[obs[0], obs[0]], l2=0.1)
    with pytest.raises(ValueError, match="weight must be a finite number"):
        fit(runs, metagradients=obs, weight=-1.0, l2=0.1)
    with pytest.raises(ValueError, match="cover test examples"):
        fit(runs.select_test([0, 1]), metagradients=obs, l2=0.1)
    with pytest.raises(ValueError, match="iterations must be"):
        fit(runs, metagradients=obs, l2=0.1, iterations=-1)
