"""experiments/optimizers.py writes its output folder like the CLI does: created, locked,
refused if foreign, every file atomic, the operative config of every setting saved."""

import json

import pytest

from experiments import optimizers


def _fake_result(name):
    row = {"mse_mean": 0.01, "change_spearman_mean": 0.9, "per_example_spearman_mean": 0.8,
           "final_spearman_mean": 0.95}  # fmt: skip
    return {
        "optimizer": name, "learning_rate": 0.1, "optimizer_kwargs": {},
        "mean_loss_change": -0.1, "mean_abs_step_change": 0.01, "chosen": {},
        "kernel_momentum": 0.0, "table": {"linear": row}, "in_sample": {"linear": row},
        "learning_curve": {"linear": {16: row}}, "fit_seconds": 1.0,
    }  # fmt: skip


def test_main_creates_locks_and_fills_its_output_folder(tmp_path, monkeypatch):
    made = []

    def make_runs(name, cache):
        optimizers.runs_config(name)  # parses the setting's real gin files
        made.append(name)
        return None, None

    monkeypatch.setattr(optimizers, "make_runs", make_runs)
    monkeypatch.setattr(optimizers, "analyse", lambda name, runs, grads: _fake_result(name))
    out = tmp_path / "new" / "optimizers"
    assert optimizers.main(["--optimizers", "sgd,adamw", "--out", str(out)]) == 0
    assert made == ["sgd", "adamw"]
    assert set(json.loads((out / "results.json").read_text())) == {"sgd", "adamw"}
    assert (out / "report.md").read_text().startswith("# Linear under four optimizers")
    config = (out / "operative_config.gin").read_text()
    assert "# setting 'sgd'" in config and "# setting 'adamw'" in config
    assert "RunsConfig.num_runs = 64" in config and "'adamw'" in config

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="was not written by simfluence_jax"):
        optimizers.main(["--optimizers", "sgd", "--out", str(foreign)])
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
