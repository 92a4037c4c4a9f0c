"""The conformance battery every registered simulator passes, as functions a simulator's own
test file can call too (``tests/test_simulators.py`` runs it over every name in
``SIMULATORS``, built-in or extension).

``synthetic_inputs(name, runs)`` supplies what a fitter's record declares it needs beyond
the runs (``Fitter.inputs``), from ``SYNTHETIC_INPUTS``; ``check_rollout`` and
``check_removal_effects`` are the battery: shapes, jit without recompiling, vmap over runs,
an all-padding step is no update, determinism, scan vs closed form, the mesh, pytree round
trip, and removal effects equal to the rollout of each edited curriculum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simfluence_jax as sj
from simfluence_jax import attribution
from simfluence_jax import counterfactuals as cf
from simfluence_jax.fitting import required_inputs
from simfluence_jax.simulators import AffineSimulator


def synthetic_gradients(runs, seed=0):
    """Random scores of every kind the gradient baselines read, for runs' shapes."""
    from simfluence_jax.gradients.context import PrecomputedGradients

    rng = np.random.default_rng(seed)
    N, M, T = runs.num_train, runs.num_test, runs.num_steps
    return PrecomputedGradients(
        steps=np.array([0, T // 2]),
        checkpoint_rates=np.full(2, 0.1, np.float32),
        dots=rng.normal(size=(2, N, M)).astype(np.float32),
        influence=rng.normal(size=(N, M)).astype(np.float32),
        trak=rng.normal(size=(N, M)).astype(np.float32),
        ekfac=rng.normal(size=(N, M)).astype(np.float32),
        learning_rates=np.full(T, 0.1, np.float32),
    )


def synthetic_features(runs, seed=0):
    """Random embeddings of the training and test examples (``featurized_fit``)."""
    from simfluence_jax.featurized_fit import synthetic_features as make

    return make(runs, seed=seed)


def synthetic_metagradients(runs, seed: int):
    """One ``Metagradients`` per run of ``runs``: small random slot derivatives of the mean of
    the last 4 losses (0 on padding slots)."""
    from simfluence_jax.gradients.metagradient import Metagradients, horizon_readout

    rng = np.random.default_rng(seed)
    R, T, B = runs.batches.shape
    readout = np.asarray(horizon_readout(T, min(4, T)))
    out = []
    for r in range(R):
        slot = 1e-3 * rng.standard_normal((runs.num_test, 1, T, B)) * (runs.batches[r] >= 0)
        out.append(Metagradients(batches=runs.batches[r], seed=r, readout=readout,
                                 values=np.zeros((1, runs.num_test)), slot=slot,
                                 num_train=runs.num_train,
                                 test_index=np.arange(runs.num_test)))  # fmt: skip
    return out


#: ``input name -> make(runs, seed)``: stand-ins for the inputs a fitter may declare.
SYNTHETIC_INPUTS = {
    "gradients": synthetic_gradients,
    "features": synthetic_features,
    "metagradients": synthetic_metagradients,
}


def synthetic_inputs(name, runs, seed=0) -> dict:
    """The keywords the fitter ``name`` cannot do without, made up for ``runs``."""
    inputs = {}
    for key in required_inputs(name):
        if key not in SYNTHETIC_INPUTS:
            pytest.fail(f"{name} needs {key}=, which tests/simulator_battery.py cannot make up")
        inputs[key] = SYNTHETIC_INPUTS[key](runs, seed)
    return inputs


def check_rollout(sim, refit, again, test, label=""):
    """The rollout battery for a fitted ``sim`` on the curricula of ``test`` (a ``RunSet``
    with learning rates); ``refit`` is another fit of the same shapes (other values),
    ``again`` the same fit repeated (it must give identical numbers)."""
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


def check_removal_effects(sim, refit, fit, label=""):
    """Attribution works through the one rollout: under jit, without recompiling for other
    curricula or fitted values of the same shapes (``refit``), and equal to the rollout of
    each edited curriculum of a run of ``fit`` (ids the fit saw)."""
    b, L0, rates = fit.batches[0], fit.L0[0], fit.learning_rates[0]

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
    other = fit.batches[1]
    f(refit, other, L0 + 0.1, np.unique(other[other >= 0])[:, None], learning_rates=rates * 0.5,
      horizon=2, batch_loss="sum")  # fmt: skip
    assert f._cache_size() == compiled, f"{label} recompiled removal_deltas"

    # ... and so does the checked entry, chunk by chunk.
    sj.removal_effects(sim, b, L0, learning_rates=rates, repack=True, horizon=2)
    compiled = attribution._edited_windows_jit._cache_size()
    sj.removal_effects(refit, other, L0 + 0.1, learning_rates=rates * 0.5, repack=True, horizon=2)
    assert attribution._edited_windows_jit._cache_size() == compiled, f"{label} recompiled"
