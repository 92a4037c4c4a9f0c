"""Attribution by simulated removal, checked against brute-force rollouts of each edit on a
synthetic world drawn from a known Linear law."""

import csv

import numpy as np
import pytest

import simfluence_jax as sj
from simfluence_jax import attribution as at
from simfluence_jax import counterfactuals as cf
from simfluence_jax.rollouts import UnseenExampleWarning, rollout_weighted
from simfluence_jax.synthetic import make_problem

TOL = dict(rtol=1e-5, atol=2e-6)


@pytest.fixture(scope="module")
def world():
    """A Linear law (plain-sum alpha), runs of 2 epochs over 16 of 24 ids, batch 4."""
    return make_problem(num_train=24, num_test=4, num_runs=5, subset=16, epochs=2, seed=3)


def _kernel(truth):
    """The same law through the optimizer kernel, following a schedule."""
    return truth.replace(momentum=0.5, lr_scaled=True, lr_ref=0.1)


def _brute_force(sim, b, L0, ids, *, rates, repack, batch_loss, horizon):
    """``float[K, M]``: each removal edited with ``counterfactuals.remove`` and rolled out one
    at a time, with the padding weights of the run factory's batch mean written out here."""
    B = b.shape[1]

    def window(edited):
        valid = edited >= 0
        n = valid.sum(1, keepdims=True).astype(np.float32)
        if batch_loss == "sum":
            w = valid.astype(np.float32)
        elif repack:
            w = valid * (B / np.maximum(n, 1))
        else:
            w = valid * ((b >= 0).sum(1, keepdims=True) / np.maximum(n, 1))
        T = edited.shape[0]
        s = np.ones((1, T), np.float32) if rates is None else cf.keep_schedule(rates, T)[None] / 0.1
        if sim.lr_reference is None:
            s = np.ones((1, T), np.float32)
        ids, w, s = np.maximum(edited, 0)[None], w[None].astype(np.float32), s.astype(np.float32)
        traj = np.asarray(rollout_weighted(sim, ids, w, L0[None], s))[0]
        return traj[T - horizon + 1 : T + 1].mean(0)

    base = window(b)
    return np.stack([window(cf.remove(b, [i], repack=repack)) - base for i in ids])


@pytest.mark.parametrize("law", ["linear", "kernel"])
@pytest.mark.parametrize("repack", [False, True])
@pytest.mark.parametrize("batch_loss", ["mean", "sum"])
def test_removal_effects_equal_brute_force(world, law, repack, batch_loss):
    sim = world.truth if law == "linear" else _kernel(world.truth)
    b, L0 = world.runs.batches[0], world.runs.L0[0]
    T = b.shape[0]
    rates = np.linspace(0.1, 0.02, T).astype(np.float32)
    for horizon in (1, 3):
        eff = sj.removal_effects(
            sim, b, L0, learning_rates=rates, repack=repack, horizon=horizon,
            batch_loss=batch_loss, chunk=5,
        )  # fmt: skip
        np.testing.assert_array_equal(eff.ids, np.unique(b[b >= 0]))
        assert eff.delta.shape == (len(eff.ids), 4) and eff.delta.dtype == np.float32
        want = _brute_force(
            sim, b, L0, eff.ids, rates=rates, repack=repack, batch_loss=batch_loss,
            horizon=horizon,
        )  # fmt: skip
        np.testing.assert_allclose(eff.delta, want, **TOL)


def test_sum_weighting_is_the_plain_rollout_of_the_edit(world):
    """``batch_loss="sum"`` simulates exactly ``counterfactuals.remove`` + ``rollout``."""
    sim, b, L0 = world.truth, world.runs.batches[1], world.runs.L0[1]
    for repack in (False, True):
        eff = sj.removal_effects(sim, b, L0, repack=repack, batch_loss="sum")
        edits = cf.stack([b] + [cf.remove(b, [i], repack=repack) for i in eff.ids])
        traj = np.asarray(sj.rollout(sim, edits, L0))
        ends = [b.shape[0]] + [cf.remove(b, [i], repack=repack).shape[0] for i in eff.ids]
        final = traj[np.arange(len(ends)), ends]
        np.testing.assert_allclose(eff.delta, final[1:] - final[0], **TOL)
        np.testing.assert_allclose(eff.baseline, final[0], **TOL)


def test_chunk_size_does_not_change_the_numbers(world):
    sim, b, L0 = world.truth, world.runs.batches[0], world.runs.L0[0]
    one = sj.removal_effects(sim, b, L0, chunk=1).delta
    np.testing.assert_allclose(sj.removal_effects(sim, b, L0, chunk=7).delta, one, **TOL)
    np.testing.assert_allclose(sj.removal_effects(sim, b, L0).delta, one, **TOL)


def test_candidates_keep_their_order(world):
    sim, b, L0 = world.truth, world.runs.batches[0], world.runs.L0[0]
    every = sj.removal_effects(sim, b, L0)
    pick = every.ids[[5, 0, 3]]
    some = sj.removal_effects(sim, b, L0, candidates=pick)
    np.testing.assert_array_equal(some.ids, pick)
    np.testing.assert_allclose(some.delta, every.delta[[5, 0, 3]], **TOL)


@pytest.mark.parametrize("direction", ["helpful", "harmful"])
def test_top_is_the_argsort_of_the_brute_force(world, direction):
    sim, b, L0 = world.truth, world.runs.batches[0], world.runs.L0[0]
    eff = sj.removal_effects(sim, b, L0, horizon=2)
    want = _brute_force(sim, b, L0, eff.ids, rates=None, repack=False, batch_loss="mean",
                        horizon=2)  # fmt: skip
    for j in range(4):
        ids, delta = sj.top(eff, j, k=5, direction=direction)
        key = -want[:, j] if direction == "helpful" else want[:, j]
        order = np.argsort(key)[:5]
        np.testing.assert_array_equal(ids, eff.ids[order])
        np.testing.assert_allclose(delta, want[order, j], **TOL)
    helpful = sj.top(eff, 0, k=len(eff.ids))[1]
    assert np.all(np.diff(helpful) <= 0)


def _trajectory(alpha, beta, L0):
    L = [L0]
    for a, c in zip(alpha, beta):
        L.append(a * L[-1] + c)
    return np.stack(L)


@pytest.mark.parametrize("truth", ["linear", "additive"])
@pytest.mark.parametrize("batch_loss", ["mean", "sum"])
def test_group_effect_is_not_the_sum_of_single_effects(truth, batch_loss):
    """Removing i (step t1) and j (step t2 > t1) together differs from the two single removals
    by the law's interaction: i's change of the loss after t1, d1 = (a1' - a1) L_{t1-1} +
    (b1' - b1), is carried to step t2 by prod_{t1<s<t2} alpha_s, where j's removal scales it
    by (a2' - a2), and then carried to T by prod_{s>t2} alpha_s. A step that loses example
    i has a' = alpha0 + w (sum A - A_i), b' = w (sum B - B_i), with w = B / (B - 1) under the
    batch mean and 1 under the sum."""
    p = make_problem(num_train=24, num_test=3, num_runs=2, subset=24, truth=truth, seed=5)
    sim, b, L0 = p.truth, p.runs.batches[0], p.runs.L0[0]
    T, B = b.shape
    A, Bp, alpha0 = np.asarray(sim.A, np.float64), np.asarray(sim.B, np.float64), sim.alpha0
    alpha = alpha0 + A[:, b].sum(-1).T  # [T, M]
    beta = Bp[:, b].sum(-1).T
    L = _trajectory(alpha, beta, np.asarray(L0, np.float64))
    t1, t2 = 2, 6  # 1-based steps
    i, j = b[t1 - 1, 1], b[t2 - 1, 3]
    scale = B / (B - 1) if batch_loss == "mean" else 1.0
    a1 = alpha0 + scale * (alpha[t1 - 1] - alpha0 - A[:, i])
    b1 = scale * (beta[t1 - 1] - Bp[:, i])
    a2 = alpha0 + scale * (alpha[t2 - 1] - alpha0 - A[:, j])
    d1 = (a1 - alpha[t1 - 1]) * L[t1 - 1] + (b1 - beta[t1 - 1])
    between = np.prod(alpha[t1 : t2 - 1], axis=0)
    after = np.prod(alpha[t2:], axis=0)
    interaction = (a2 - alpha[t2 - 1]) * d1 * between * after

    singles = sj.removal_effects(sim, b, L0, candidates=[i, j], batch_loss=batch_loss).delta
    group = sj.group_effect(sim, b, L0, [i, j], batch_loss=batch_loss)
    assert group.shape == (3,) and group.dtype == np.float32
    np.testing.assert_allclose(group - singles.sum(0), interaction, rtol=1e-3, atol=2e-6)
    if truth == "additive":
        np.testing.assert_allclose(interaction, 0.0)
    elif batch_loss == "sum":
        assert np.all(np.abs(interaction) > 1e-3)  # the law is far from additive here


def test_group_effect_of_one_id_is_its_single_effect(world):
    sim, b, L0 = world.truth, world.runs.batches[0], world.runs.L0[0]
    eff = sj.removal_effects(sim, b, L0, repack=True, horizon=2)
    for k in (0, 4):
        one = sj.group_effect(sim, b, L0, [eff.ids[k]], repack=True, horizon=2)
        np.testing.assert_allclose(one, eff.delta[k], **TOL)


def test_score_matrix_is_the_numpy_average(world):
    sim, runs = world.truth, world.runs
    L0 = runs.L0 * np.linspace(0.9, 1.1, runs.num_runs)[:, None]
    S = sj.score_matrix(sim, runs.batches, L0, horizon=2, chunk=9)
    sums = np.zeros((runs.num_train, runs.num_test))
    counts = np.zeros(runs.num_train)
    for b, l0 in zip(runs.batches, L0):
        eff = sj.removal_effects(sim, b, l0, horizon=2)
        sums[eff.ids] += eff.delta
        counts[eff.ids] += 1
    assert (counts == 0).any(), "the fixture should leave some ids out of every curriculum"
    with np.errstate(invalid="ignore"):
        want = sums / counts[:, None]
    assert S.shape == (24, 4) and S.dtype == np.float32
    np.testing.assert_allclose(S, want, **TOL)
    np.testing.assert_array_equal(np.isnan(S), counts[:, None].repeat(4, 1) == 0)


def test_score_matrix_samples_curricula_like_the_runs(world):
    sim, runs = world.truth, world.runs
    sampled = at.sample_like(runs, 7, seed=2)
    assert sampled.shape == (7,) + runs.batches.shape[1:]
    assert all(len(np.unique(c[c >= 0])) == 16 for c in sampled)
    S = sj.score_matrix(sim, runs, runs.L0[0], num_curricula=7, seed=2)
    np.testing.assert_allclose(S, sj.score_matrix(sim, sampled, runs.L0[0]), **TOL)
    with pytest.raises(ValueError, match="num_curricula"):
        sj.score_matrix(sim, runs, runs.L0[0])


def test_saved_scores_read_back_equal(world, tmp_path):
    S = sj.score_matrix(world.truth, world.runs.batches, world.runs.L0[0])
    assert np.isnan(S).any()
    test_ids = np.array([f"t{j}" for j in range(4)])
    texts = [f"text of {i}" for i in range(24)]
    npz, path = sj.save_scores(
        tmp_path / "out" / "scores", S, train_ids=np.arange(24), test_ids=test_ids,
        texts=texts, details={"horizon": 1},
    )  # fmt: skip
    assert npz.name == "scores.npz" and path.name == "scores.csv"

    back = sj.load_scores(tmp_path / "out" / "scores.npz")
    np.testing.assert_array_equal(back.scores, S)
    np.testing.assert_array_equal(back.train_ids, np.arange(24))
    np.testing.assert_array_equal(back.test_ids, test_ids)
    assert list(back.texts) == texts and back.details == {"horizon": 1}

    lines = path.read_text().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    assert any("score > 0: removing it raises the loss (it helps)" in c for c in comments)
    rows = list(csv.reader(line for line in lines if not line.startswith("#")))
    assert rows[0] == ["train_id", "test_id", "score"] and len(rows) == 1 + 24 * 4
    table = np.array([float(r[2]) for r in rows[1:]], np.float32).reshape(24, 4)
    np.testing.assert_array_equal(table, S)
    assert [r[:2] for r in rows[1:5]] == [["0", "t0"], ["0", "t1"], ["0", "t2"], ["0", "t3"]]


def test_load_scores_refuses_other_files(tmp_path):
    np.savez(tmp_path / "other.npz", scores=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="missing"):
        sj.load_scores(tmp_path / "other")
    with pytest.raises(ValueError, match="missing"):
        sj.load_scores(tmp_path / "absent")
    with pytest.raises(ValueError, match="train_ids must hold 3"):
        sj.save_scores(tmp_path / "x", np.zeros((3, 2)), train_ids=[0, 1], test_ids=[0, 1])


def test_bad_input_is_named(world):
    sim, b, L0 = world.truth, world.runs.batches[0], world.runs.L0[0]
    T = b.shape[0]
    eff = sj.removal_effects(sim, b, L0)
    with pytest.raises(ValueError, match="test index 4 is out of range"):
        sj.top(eff, 4)
    with pytest.raises(ValueError, match="test index -1 is out of range"):
        sj.top(eff, -1)
    with pytest.raises(ValueError, match=f"larger than the {len(eff.ids)} candidates"):
        sj.top(eff, 0, k=len(eff.ids) + 1)
    with pytest.raises(ValueError, match="direction"):
        sj.top(eff, 0, direction="best")
    absent = int(np.setdiff1d(np.arange(24), b)[0])
    with pytest.raises(ValueError, match=rf"candidates \[{absent}\] do not occur"):
        sj.removal_effects(sim, b, L0, candidates=[int(b[0, 0]), absent])
    with pytest.raises(ValueError, match=rf"ids \[{absent}\] do not occur"):
        sj.group_effect(sim, b, L0, [absent])
    with pytest.raises(ValueError, match="empty"):
        sj.removal_effects(sim, np.full_like(b, -1), L0)
    with pytest.raises(ValueError, match="empty"):
        sj.removal_effects(sim, np.zeros((0, 4), np.int32), L0)
    with pytest.raises(ValueError, match="curriculum 1 is empty"):
        sj.score_matrix(sim, np.stack([b, np.full_like(b, -1)]), L0)
    for horizon in (0, T + 1):
        with pytest.raises(ValueError, match=f"horizon must be between 1 and .* T = {T}"):
            sj.removal_effects(sim, b, L0, horizon=horizon)
        with pytest.raises(ValueError, match="horizon"):
            sj.score_matrix(sim, b[None], L0, horizon=horizon)
    with pytest.raises(ValueError, match="batch_loss"):
        sj.removal_effects(sim, b, L0, batch_loss="max")
    with pytest.raises(ValueError, match="out of range"):
        sj.removal_effects(sim, np.where(b == b[0, 0], 99, b), L0)
    with pytest.raises(ValueError, match="L0"):
        sj.removal_effects(sim, b, L0[:3])
    with pytest.raises(ValueError, match="chunk"):
        sj.removal_effects(sim, b, L0, chunk=0)


def test_unseen_ids_warn_and_get_nan(world):
    b, L0 = world.runs.batches[0], world.runs.L0[0]
    ghost = int(b[2, 1])
    seen = np.ones(24, bool)
    seen[ghost] = False
    sim = world.truth.replace(seen=seen)
    with pytest.warns(UnseenExampleWarning, match=f"ids {ghost}.*NaN"):
        eff = sj.removal_effects(sim, b, L0)
    row = int(np.flatnonzero(eff.ids == ghost)[0])
    assert np.all(np.isnan(eff.delta[row]))
    assert np.all(np.isfinite(np.delete(eff.delta, row, axis=0)))
    ids, _ = sj.top(eff, 0, k=len(eff.ids) - 1, direction="harmful")
    assert ghost not in ids
    with pytest.raises(ValueError, match="only .* have an effect"):
        sj.top(eff, 0, k=len(eff.ids))
    other = int(b[0, 0])
    with pytest.warns(UnseenExampleWarning, match="as if they had no effect"):
        some = sj.removal_effects(sim, b, L0, candidates=[other])  # the baseline uses it
    assert np.all(np.isfinite(some.delta))
    with pytest.warns(UnseenExampleWarning):
        assert np.all(np.isnan(sj.group_effect(sim, b, L0, [ghost, int(b[0, 0])])))
    with pytest.warns(UnseenExampleWarning):
        S = sj.score_matrix(sim, world.runs.batches, L0)
    assert np.all(np.isnan(S[ghost]))
