"""Curriculum search: on synthetic truth the picks beat random curricula of the same shape."""

import numpy as np
import pytest

import simfluence_jax as sj
from simfluence_jax import featurized_fit as ff
from simfluence_jax import search
from simfluence_jax.sampling import sample_curricula
from simfluence_jax.synthetic import make_problem

K, BSZ = 28, 4


@pytest.fixture(scope="module")
def setup():
    p = make_problem(num_train=40, num_test=8, num_runs=60, noise=0.005, seed=3)
    fit, val, _ = p.runs.split(50, 10, 0)
    sim = sj.fit_simulator("linear", fit, validation=val)
    layout = search.random_layout(K, batch_size=BSZ, seed=1)
    init = np.random.default_rng(0).permutation(40)[:K].astype(np.int32)
    rnd = sample_curricula(num_runs=200, pool_size=40, batch_size=BSZ, subset_size=K, seed=9)
    return dict(p=p, sim=sim, layout=layout, init=init, random=rnd, L0=p.runs.L0[0])


def test_layout_and_curriculum():
    layout = search.random_layout(6, batch_size=4, epochs=2, seed=0)
    assert layout.shape == (4, 4)  # 6 ranks, 2 epochs, ragged last batch of each epoch
    assert sorted(layout[layout >= 0].tolist()) == sorted(list(range(6)) * 2)
    subset = np.array([10, 11, 12, 13, 14, 15])
    c = search.curriculum(subset, layout)
    np.testing.assert_array_equal(c[layout >= 0], subset[layout[layout >= 0]])
    assert np.all(c[layout < 0] == -1)


@pytest.mark.parametrize("method", ["greedy", "gradient"])
def test_search_beats_random_curricula_under_the_truth(setup, method):
    s = setup
    targets = [0, 3, 5]
    fn = search.greedy_search if method == "greedy" else search.gradient_search
    res = fn(s["sim"], s["L0"], targets, layout=s["layout"], init_subset=s["init"])
    assert res.method == method
    assert len(np.unique(res.subset)) == K
    assert res.curriculum.shape == s["layout"].shape
    assert res.predicted < res.initial
    truth = search.make_objective(s["p"].truth, s["L0"], targets)
    achieved = truth(res.curriculum[None])[0]
    random = truth(s["random"])
    # Measured: about 4.5 random-curriculum stds below the random mean for both methods.
    assert achieved < random.min(), (achieved, random.min())
    assert achieved < random.mean() - 3 * random.std(), (achieved, random.mean(), random.std())


def test_greedy_respects_candidates_and_order_moves(setup):
    s = setup
    allowed = np.ones(40, bool)
    allowed[s["init"][:5]] = False
    allowed[np.setdiff1d(np.arange(40), s["init"])[:3]] = False
    init = np.setdiff1d(np.flatnonzero(allowed), [])[:K].astype(np.int32)
    res = search.greedy_search(
        s["sim"], s["L0"], [1], layout=s["layout"], init_subset=init, candidates=allowed
    )
    assert allowed[res.subset].all()
    # Order only: a full pool of K examples leaves no replacement, only swaps.
    pool = np.zeros(40, bool)
    pool[init] = True
    res = search.greedy_search(
        s["sim"], s["L0"], [1], layout=s["layout"], init_subset=init, candidates=pool
    )
    assert sorted(res.subset.tolist()) == sorted(init.tolist())
    assert res.predicted <= res.initial
    frozen = search.greedy_search(
        s["sim"],
        s["L0"],
        [1],
        layout=s["layout"],
        init_subset=init,
        candidates=pool,
        order_moves=False,
    )
    np.testing.assert_array_equal(frozen.subset, init)


def test_gradient_search_relaxation_is_a_soft_assignment():
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(3, 7)).astype(np.float32)
    allowed = np.array([1, 1, 0, 1, 1, 1, 1], bool)
    P = np.asarray(search.sinkhorn_assignment(theta, np.zeros(7), allowed, tau=0.5, iters=200))
    np.testing.assert_allclose(P.sum(1), 1.0, rtol=1e-5)
    assert np.all(P.sum(0) <= 1.0 + 1e-4)
    assert np.all(P[:, 2] == 0.0)


def test_search_with_featurized_simulators_and_errors(setup):
    s = setup
    fit = s["p"].runs.select(np.arange(30))
    feats = ff.synthetic_features(fit, seed=0)
    f1 = sj.fit_simulator("featurized", fit, features=feats, max_steps=200)
    f2 = sj.fit_simulator("featurized", fit, features=feats, max_steps=200, order=2)
    kw = dict(layout=s["layout"], init_subset=s["init"])
    picks = search.search_all(
        {"f1": f1, "f2": f2}, s["L0"], [0, 1], **kw, greedy_kwargs={"max_sweeps": 1}
    )
    assert set(picks) == {"f1/greedy", "f1/gradient", "f2/greedy"}  # order 2: greedy only
    for _, res in picks.values():
        assert res.predicted <= res.initial + 1e-6
    with pytest.raises(ValueError, match="linear in the batch counts"):
        search.gradient_search(f2, s["L0"], [0], **kw)
    with pytest.raises(ValueError, match="distinct ids"):
        search.greedy_search(
            s["sim"], s["L0"], [0], layout=s["layout"], init_subset=np.zeros(K, np.int32)
        )
    with pytest.raises(ValueError, match="must index"):
        search.greedy_search(s["sim"], s["L0"], [99], **kw)
    with pytest.raises(
        ValueError, match="unknown search method 'annealing'; known: gradient, greedy"
    ):
        search.search_all({"s": s["sim"]}, s["L0"], [0], **kw, methods=("annealing",))


def test_check_by_retraining_compares_picks_with_random(setup):
    s = setup
    targets = [0, 3, 5]
    res = search.greedy_search(
        s["sim"], s["L0"], targets, layout=s["layout"], init_subset=s["init"]
    )
    truth = s["p"].truth

    def train(batches):
        return np.asarray(sj.rollout(truth, batches, s["L0"]))

    check = search.check_by_retraining(
        {"linear/greedy": (s["sim"], res)},
        train,
        targets=targets,
        L0=s["L0"],
        random_curricula=s["random"][:20],
    )
    row = check.rows()["linear/greedy"]
    assert row["beats_random_fraction"] == 1.0
    assert row["achieved_gain"] > 0 and row["predicted_gain"] > 0
    assert check.losses.shape == (21, s["layout"].shape[0] + 1, 8)
    assert row["achieved"] == pytest.approx(
        search.make_objective(truth, s["L0"], targets)(res.curriculum[None])[0], rel=1e-6
    )
    # Random curricula trained already (e.g. the logged runs) are not trained again.
    calls = []
    rnd = s["random"][:20]
    again = search.check_by_retraining(
        {"linear/greedy": (s["sim"], res)},
        lambda b: calls.append(len(b)) or train(b),
        targets=targets,
        L0=s["L0"],
        random_curricula=rnd,
        random_losses=train(rnd),
    )
    assert calls == [1]
    # Gains are differences of float32 losses near 1 rolled out in batches of other sizes:
    # they agree to about one float32 ulp at that scale.
    assert again.rows()["linear/greedy"] == pytest.approx(row, rel=1e-6, abs=2.5e-7)
    with pytest.raises(ValueError, match="random_losses has shape"):
        search.check_by_retraining(
            {"linear/greedy": (s["sim"], res)},
            train,
            targets=targets,
            L0=s["L0"],
            random_curricula=rnd,
            random_losses=train(rnd)[:3],
        )
