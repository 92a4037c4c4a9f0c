"""The report's Attribution section: the three test examples follow the stated rule (checked
here with NumPy), the ranked training examples and their effects equal ``attribution.top`` of
a ``removal_effects`` computed here, and the Markdown, JSON and scores files agree."""

import csv
import dataclasses
import json

import numpy as np
import pytest

import simfluence_jax as sj
from simfluence_jax import attribution
from simfluence_jax.evaluation import score
from simfluence_jax.fitting import simulator_group
from simfluence_jax.reports import write_report
from simfluence_jax.synthetic import make_problem

NAMES = ("linear", "additive", "constant", "mean")
N, M = 40, 6


@pytest.fixture(scope="module")
def problem():
    # 36 of 40 examples per run in batches of 4: T = 9 steps, so the horizon is 8, not T.
    p = make_problem(num_train=N, num_test=M, num_runs=16, subset=36, noise=0.01, seed=5)
    texts = {
        "train_texts": [f"training sentence {i} | about films" for i in range(N)],
        "test_texts": [f"test sentence {j}" for j in range(M)],
    }
    runs = dataclasses.replace(p.runs, metadata=texts)
    fit, val, heldout = runs.split(10, 2, 4)
    sims = sj.fit_all(NAMES, fit, validation=val)
    preds = {n: sj.predict(s, heldout) for n, s in sims.items()}
    groups = {n: simulator_group(n) for n in NAMES}
    return heldout, sims, preds, groups


def _rule(observed):
    """Largest drop, median (lower, by sorting), largest rise of L_T - L_0, written out."""
    change = observed[-1] - observed[0]
    ranked = sorted(range(len(change)), key=lambda j: (change[j], j))
    return [int(np.argmin(change)), ranked[(len(change) - 1) // 2], int(np.argmax(change))]


def _best_fitted(preds, heldout, groups):
    err = {
        n: float((((p[:, 1:] - heldout.losses[:, 1:]) ** 2).mean(axis=1)).mean())
        for n, p in preds.items()
        if groups[n] != "control"
    }
    return min(err, key=err.get)


def _expected(heldout, sim, run, tests):
    effects = attribution.removal_effects(
        sim, heldout.batches[run], heldout.losses[run, 0], horizon=8
    )
    tops = {
        j: {d: attribution.top(effects, j, k=5, direction=d) for d in ("helpful", "harmful")}
        for j in tests
    }
    return effects, tops


@pytest.mark.parametrize("run", [0, 2])
def test_section_names_the_rule_and_the_effects(problem, tmp_path, run):
    heldout, sims, preds, groups = problem
    assert heldout.num_steps == 9
    out = write_report(
        tmp_path, heldout=heldout, predictions=preds, groups=groups, simulators=sims,
        trajectory_run=run,
    )  # fmt: skip
    best = _best_fitted(preds, heldout, groups)
    tests = _rule(heldout.losses[run])
    assert len(set(tests)) == 3
    effects, tops = _expected(heldout, sims[best], run, tests)

    res = json.loads((out / "results.json").read_text())["attribution"]
    assert res["simulator"] == best and res["run"] == run and res["horizon"] == 8
    assert [t["test_index"] for t in res["test_examples"]] == tests
    assert [t["roles"] for t in res["test_examples"]] == [
        ["largest drop"],
        ["median change"],
        ["largest rise"],
    ]
    md = (out / "report.md").read_text()
    section = md.split("## Attribution", 1)[1].split("\n## ", 1)[0]
    assert f"**{best}**" in section and f"held-out run {run}" in section
    assert "Effect > 0: removing it raises the loss, so it helps" in section
    for t, j in zip(res["test_examples"], tests):
        change = heldout.losses[run, -1, j] - heldout.losses[run, 0, j]
        assert t["observed_change"] == pytest.approx(float(change), rel=1e-6)
        assert t["baseline"] == pytest.approx(float(effects.baseline[j]), rel=1e-6)
        assert t["text"] == f"test sentence {j}"
        assert f"test example {j}" in section and f'"test sentence {j}"' in section
        for direction in ("helpful", "harmful"):
            ids, delta = tops[j][direction]
            # Here all five of each direction have its sign, so the section lists 5 + 5.
            assert np.all(delta > 0) if direction == "helpful" else np.all(delta < 0)
            got = t[direction]
            assert [e["id"] for e in got] == ids.tolist()
            np.testing.assert_array_equal(np.float32([e["effect"] for e in got]), delta)
            assert [e["text"] for e in got] == [f"training sentence {i} | about films" for i in ids]
            for rank, (i, d) in enumerate(zip(ids, delta), 1):
                row = f"| {rank} | {i} | {d:+.5f} | training sentence {i} \\| about films |"
                assert row in section, row

    # The scores files hold every distinct id's effect on the three test examples.
    saved = attribution.load_scores(out / "attribution_scores")
    np.testing.assert_array_equal(saved.train_ids, effects.ids)
    np.testing.assert_array_equal(saved.test_ids, tests)
    np.testing.assert_array_equal(saved.scores, effects.delta[:, tests])
    assert saved.details["simulator"] == best and saved.details["horizon"] == 8
    with open(out / "attribution_scores.csv") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    assert len(rows) == len(effects.ids) * 3
    first = rows[0]
    assert float(first["score"]) == effects.delta[0, tests[0]]


def test_trust_paragraph(problem, tmp_path):
    heldout, sims, preds, groups = problem
    kw = dict(heldout=heldout, predictions=preds, groups=groups, simulators=sims)

    def trust(md):
        return md.split("### How far to trust this", 1)[1].split("\n## ", 1)[0]

    write_report(tmp_path / "none", **kw)
    text = trust((tmp_path / "none" / "report.md").read_text())
    assert "this report has not checked them by retraining" in text
    assert '`experiments/README.md`, "Counterfactual benchmark"' in text
    res = json.loads((tmp_path / "none" / "results.json").read_text())
    assert res["attribution"]["verdict"] is None

    verdict = "Measured on 4 held-out curricula: slope 0.41, sign agreement 0.83."
    write_report(tmp_path / "text", attribution_verdict=verdict, **kw)
    text = trust((tmp_path / "text" / "report.md").read_text())
    assert verdict in text and "not checked them" not in text

    numbers = {"slope": 0.4123456, "sign_agreement": 0.83, "edits": 64}
    write_report(tmp_path / "dict", attribution_verdict=numbers, **kw)
    text = trust((tmp_path / "dict" / "report.md").read_text())
    assert "- slope: 0.4123" in text and "- edits: 64" in text
    assert "not checked them" not in text
    res = json.loads((tmp_path / "dict" / "results.json").read_text())
    assert res["attribution"]["verdict"] == numbers


def test_controls_and_reference_rows_are_never_chosen(problem, tmp_path):
    heldout, sims, preds, groups = problem
    table = {n: score(p, heldout) for n, p in preds.items()}
    table["constant"] = {**table["constant"], "mse_mean": 0.0}  # a control that "wins"
    best = _best_fitted(preds, heldout, groups)
    table[best] = {**table[best], "mse_mean": -1.0}  # a reference row that "wins"
    out = write_report(
        tmp_path, heldout=heldout, predictions=preds, table=table, groups=groups,
        simulators=sims, exclude_from_best=[best],
    )  # fmt: skip
    chosen = json.loads((out / "results.json").read_text())["attribution"]["simulator"]
    rest = {n: p for n, p in preds.items() if n != best}
    assert chosen == _best_fitted(rest, heldout, groups)

    # Only controls: no section, a note saying why, and no scores files left behind.
    controls = {n: sims[n] for n in NAMES if groups[n] == "control"}
    write_report(
        tmp_path, heldout=heldout, predictions={n: preds[n] for n in controls},
        groups={n: "control" for n in controls}, simulators=sims,
    )  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    assert res["attribution"] is None
    assert any("No Attribution section" in n for n in res["notes"])
    assert "## Attribution" not in (out / "report.md").read_text()
    assert not list(out.glob("attribution_scores.*"))


def test_without_texts_ids_only(problem, tmp_path):
    heldout, sims, preds, groups = problem
    bare = dataclasses.replace(heldout, metadata={})
    out = write_report(
        tmp_path, heldout=bare, predictions={"linear": preds["linear"]}, simulators=sims
    )
    md = (out / "report.md").read_text()
    section = md.split("## Attribution", 1)[1].split("\n## ", 1)[0]
    assert "| rank | id | effect |\n" in section and "text |" not in section
    res = json.loads((out / "results.json").read_text())["attribution"]
    assert res["simulator"] == "linear"
    assert all(e["text"] == "" for t in res["test_examples"] for e in t["helpful"])
    assert attribution.load_scores(out / "attribution_scores").texts is None


def test_few_test_examples_share_roles(problem, tmp_path):
    heldout, sims, _, _ = problem
    one = dataclasses.replace(heldout, losses=heldout.losses[:, :, :2], test_ids=None,
                              metadata={})  # fmt: skip
    sim = sj.fit_simulator("linear", one)
    out = write_report(
        tmp_path, heldout=one, predictions={"linear": sj.predict(sim, one)},
        simulators={"linear": sim},
    )  # fmt: skip
    res = json.loads((out / "results.json").read_text())["attribution"]
    change = one.losses[0, -1] - one.losses[0, 0]
    lo, hi = int(np.argmin(change)), int(np.argmax(change))
    assert [t["test_index"] for t in res["test_examples"]] == [lo, hi]
    assert res["test_examples"][0]["roles"] == ["largest drop", "median change"]
    assert res["test_examples"][1]["roles"] == ["largest rise"]


def test_cli_reads_a_verdict_file(tmp_path):
    from simfluence_jax.cli.common import read_verdict

    assert read_verdict(None) is None
    (tmp_path / "v.json").write_text(json.dumps({"slope": 0.4, "lds": 0.75}))
    assert read_verdict(tmp_path / "v.json") == {"slope": 0.4, "lds": 0.75}
    (tmp_path / "v.txt").write_text("Checked on 4 curricula: slope 0.4.\n")
    assert read_verdict(tmp_path / "v.txt") == "Checked on 4 curricula: slope 0.4."
    with pytest.raises(ValueError, match="--attribution_verdict"):
        read_verdict(tmp_path / "missing.json")


def test_only_effects_of_the_direction_sign_are_listed():
    from simfluence_jax.reports.attribution import _ranked

    delta = np.float32([[0.3], [0.1], [-0.2], [np.nan], [0.0], [-0.05]])
    effects = attribution.Effects(
        ids=np.arange(6, dtype=np.int32), delta=delta, baseline=np.ones(1, np.float32),
        horizon=1, repack=False, batch_loss="mean",
    )  # fmt: skip
    names = np.arange(6)
    helpful = _ranked(effects, 0, "helpful", names, None)
    harmful = _ranked(effects, 0, "harmful", names, None)
    assert [(e.id, e.effect) for e in helpful] == [(0, pytest.approx(0.3)), (1, pytest.approx(0.1))]
    assert [e.id for e in harmful] == [2, 5]
