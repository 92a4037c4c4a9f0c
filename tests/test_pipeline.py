"""End to end through the CLI on a tiny configuration: real MiniLM runs, every simulator
(fitted, controls, gradient baselines raw and calibrated), held-out metrics, a counterfactual
retrained for real, the report's files and numbers, and a second run that reuses the
recorded runs."""

import csv
import json
import math
from pathlib import Path

import pytest

from simfluence_jax import cli
from simfluence_jax.fitting import simulator_group
from simfluence_jax.gradients import BASELINES
from simfluence_jax.pipeline import config as cfgs
from simfluence_jax.store import open_store

GIN = Path(__file__).resolve().parents[1] / "gin_configs" / "experiments" / "tiny_test.gin"


def _store_files(out: Path) -> dict[str, tuple[int, int, int]]:
    """Every file of the run stores under ``out`` (the runs' and the counterfactual's):
    ``{path: (inode, size, mtime_ns)}``. A run trained again rewrites its files (atomic
    writes give new inodes), so an unchanged dict means no training step ran. The writer
    locks (``LOCK``, ``locks/``) are left out: every writer takes them, reading or not."""
    return {
        str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
        for store in out.glob("runs-*")
        for p in store.rglob("*")
        if p.is_file() and p.name != "LOCK" and "locks" not in p.relative_to(store).parts
    }


@pytest.mark.slow
# Tiny runs (5 fitting runs of 32 of the 150 pool examples) leave some pool ids unseen, and
# the counterfactual simulates a held-out curriculum that uses some: the warning is right.
@pytest.mark.filterwarnings("ignore::simfluence_jax.rollouts.UnseenExampleWarning")
def test_cli_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "report"
    rc = cli.main(["run", "--gin_file", str(GIN), f"--gin.Experiment.output_dir='{out}'",
                   "--no_progress"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"Report: {out / 'report.md'}" in printed

    for name in ("report.md", "results.json", "results.csv", "operative_config.gin",
                 "trajectories.png", "per_step_error.png", "counterfactual.png"):  # fmt: skip
        assert (out / name).exists(), name
    cli.parse_gin([str(GIN)], [f"Experiment.output_dir='{out}'"])
    _, fit_cfg, _, _ = cli.configs()
    expected = set(fit_cfg.simulators)
    assert expected & set(BASELINES) and any(n.endswith("_calibrated") for n in expected)
    rows = json.loads((out / "results.json").read_text())["simulators"]
    assert expected <= set(rows), expected - set(rows)
    for name in expected:
        metrics = rows[name]["metrics"]
        for key in ("mse_mean", "mae_mean", "final_spearman_mean", "change_spearman_mean"):
            assert metrics[key] is not None and math.isfinite(metrics[key]), (name, key)
    with open(out / "results.csv") as f:
        assert {r["simulator"] for r in csv.DictReader(f)} >= expected
    report = (out / "report.md").read_text()
    for name in expected:
        assert name in report
    assert "control" in report and "gradient baseline (calibrated)" in report
    # The Attribution section: three test examples ranked by a fitted simulator, with texts.
    attr = json.loads((out / "results.json").read_text())["attribution"]
    assert attr is not None and attr["simulator"] in expected
    assert simulator_group(attr["simulator"]) != "control"
    assert len(attr["test_examples"]) == 3
    ranked = [e for t in attr["test_examples"] for e in t["helpful"] + t["harmful"]]
    assert ranked and all(e["text"] for e in ranked)
    assert "## Attribution" in report and "### How far to trust this" in report
    assert (out / "attribution_scores.csv").exists()
    assert "RunsConfig.num_runs = 8" in (out / "operative_config.gin").read_text()
    # Every planned run (fitting and counterfactual) is complete in its store.
    stores = sorted(out.glob("runs-*"))
    assert len(stores) == 2, stores
    for path in stores:
        store = open_store(path)
        assert store.complete_runs() == list(range(store.num_runs)), path
    recorded = _store_files(out)
    assert recorded

    # A second run reuses the recorded runs: no store file is written again or added.
    rc = cli.main(["run", "--gin_file", str(GIN), f"--gin.Experiment.output_dir='{out}'",
                   "--no_progress"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert _store_files(out) == recorded


def test_t5_task_arrays_through_seqio_equal_direct_tokenization():
    pytest.importorskip("seqio", reason="the optional seqio extra is not installed")
    import dataclasses

    import numpy as np

    from simfluence_jax.data.tasks import get_task
    from simfluence_jax.pipeline.generate import _example_arrays, _model, _use_seqio

    cfg = cfgs.RunsConfig(model="t5", model_kwargs={"size": "tiny", "input_length": 32,
                                                    "target_length": 8})  # fmt: skip
    assert _use_seqio(cfg) and not _use_seqio(dataclasses.replace(cfg, seqio="never"))
    task = get_task("polarity")
    model = _model(cfg, task)
    via_seqio = _example_arrays(cfg, task, model)
    direct = _example_arrays(dataclasses.replace(cfg, seqio="never"), task, model)
    for a, b in zip(via_seqio, direct):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(ValueError, match="RunsConfig.seqio"):
        _use_seqio(dataclasses.replace(cfg, seqio="sometimes"))
