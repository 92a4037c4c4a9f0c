"""LDS: against scipy's Spearman, and on synthetic truth the ordering a reader expects."""

import numpy as np
import pytest
import scipy.stats

import simfluence_jax as sj
from simfluence_jax import lds
from simfluence_jax.synthetic import make_problem


def test_lds_per_test_matches_scipy():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(12, 5))
    pred = true + rng.normal(scale=0.7, size=(12, 5))
    pred[:3, 1] = pred[0, 1]  # ties
    got = lds.lds_per_test(true, pred)
    ref = [scipy.stats.spearmanr(true[:, j], pred[:, j]).statistic for j in range(5)]
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    row = lds.lds(true, pred)
    assert row["lds_mean"] == pytest.approx(np.mean(ref))
    assert row["lds_sem"] == pytest.approx(np.std(ref, ddof=1) / np.sqrt(5))


def test_lds_edge_cases():
    true = np.arange(12.0).reshape(4, 3)
    assert np.all(lds.lds_per_test(true, np.ones_like(true)) == 0.0)  # constant: no ranking
    np.testing.assert_allclose(lds.lds_per_test(true, -true), -1.0)
    pred = true.copy()
    pred[0, 0] = np.inf  # a diverged prediction ranks last
    assert lds.lds_per_test(true, pred)[0] < 1.0
    with pytest.raises(ValueError, match="at least 3 subsets"):
        lds.lds_per_test(true[:2], true[:2])
    with pytest.raises(ValueError, match=r"\[C, M\]"):
        lds.lds_per_test(true, true[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        lds.lds_per_test(np.full_like(true, np.nan), true)


@pytest.fixture(scope="module")
def problem():
    p = make_problem(num_train=40, num_test=8, num_runs=40, noise=0.005, seed=2)
    fit, val, _ = p.runs.split(34, 6, 0)
    names = ("linear", "additive", "constant", "mean", "shuffled")
    sims = {n: sj.fit_simulator(n, fit, validation=val) for n in names}
    sims["truth"] = p.truth
    return p, sims


def _train_with_truth(p, noise, seed):
    """The synthetic "real training": the true law plus noise carried forward."""
    rng = np.random.default_rng(seed)
    A, B = np.asarray(p.truth.A, np.float64), np.asarray(p.truth.B, np.float64)
    L0 = p.runs.L0[0].astype(np.float64)

    def train(batches):
        C, T, _ = batches.shape
        L = np.empty((C, T + 1, len(L0)))
        L[:, 0] = L0
        for t in range(T):
            ids = batches[:, t]
            w = (ids >= 0)[:, None, :]
            safe = np.maximum(ids, 0)
            alpha = np.sum(A[:, safe].transpose(1, 0, 2) * w, -1)
            beta = np.sum(B[:, safe].transpose(1, 0, 2) * w, -1)
            L[:, t + 1] = alpha * L[:, t] + beta + noise * rng.normal(size=L[:, t].shape)
        return L

    return train


def test_run_lds_ranks_simulators_as_expected(problem):
    p, sims = problem
    res = lds.run_lds(
        sims,
        _train_with_truth(p, 0.005, seed=1),
        pool_size=40,
        num_subsets=20,
        subset_size=20,
        batch_size=4,
        seed=7,
    )
    assert res.batches.shape == (20, 5, 4) and res.true_losses.shape == (20, 6, 8)
    t = {n: r["lds_mean"] for n, r in res.table.items()}
    assert t["constant"] == 0.0 and t["mean"] == 0.0  # ignore the curriculum
    assert t["truth"] > 0.8, t
    assert t["linear"] > 0.6, t
    assert t["linear"] > t["shuffled"] + 0.3, t
    assert res.per_test["linear"].shape == (8,)
    # The pure table on the same data gives the same numbers.
    again = lds.lds_table(sims, res.batches, res.true_losses)
    assert again["linear"] == pytest.approx(res.table["linear"])


def test_run_lds_accepts_a_runset_and_checks_shapes(problem):
    p, sims = problem
    train = _train_with_truth(p, 0.0, seed=0)

    def as_runs(batches):
        return sj.RunSet(batches=batches, losses=train(batches), num_train=40)

    res = lds.run_lds(
        {"truth": sims["truth"]}, as_runs, pool_size=40, num_subsets=5, subset_size=20, batch_size=4
    )
    assert res.table["truth"]["lds_mean"] == pytest.approx(1.0)  # noiseless truth
    with pytest.raises(ValueError, match="train returned losses"):
        lds.run_lds(
            sims,
            lambda b: train(b)[:, :3],
            pool_size=40,
            num_subsets=5,
            subset_size=20,
            batch_size=4,
        )


def test_subsets_drawn_from_part_of_the_pool():
    ids = np.arange(10, 40, 2)
    b = lds.subset_curricula(15, num_subsets=6, subset_size=8, batch_size=4, epochs=2, pool_ids=ids)
    assert b.shape == (6, 4, 4)
    assert np.isin(b, ids).all()
    for run in b:
        assert len(np.unique(run)) == 8  # 8 distinct examples, each seen twice
    with pytest.raises(ValueError, match="pool_ids must be 15 distinct"):
        lds.subset_curricula(15, num_subsets=2, subset_size=8, batch_size=4, pool_ids=ids[:5])
