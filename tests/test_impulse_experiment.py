"""The impulse-response experiment end to end on its tiny config (real MiniLM training and
forward-mode derivatives; slow), and a second call that reads every response back."""

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import impulse_responses as exp
from simfluence_jax.impulse_shape import load_shape

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_study_end_to_end_and_cached(tmp_path):
    argv = [
        "--gin_file", str(ROOT / "gin_configs/experiments/impulse_responses_tiny.gin"),
        f"--gin.ImpulseStudy.output_dir = '{tmp_path / 'out'}'",
        f"--gin.ImpulseStudy.cache_dir = '{tmp_path / 'cache'}'",
    ]  # fmt: skip
    out = exp.main(argv)
    data = json.loads((out / "impulse_responses.json").read_text())
    assert set(data["optimizers"]) == {"sgd", "adamw"}
    for name, s in data["optimizers"].items():
        assert len(s["mean_shape"]) == 4 and s["mean_shape"][0] == pytest.approx(1.0)
        assert s["num_complete"] == 3 and np.isfinite(s["mu"])
        assert s["slots"][0][-1][0] <= 8 - 1 - 3  # every slot has all its lags
        h = load_shape(out / "impulse_responses.json", name)
        np.testing.assert_allclose(h, np.asarray(s["mean_shape"]) / s["mean_shape"][0], rtol=1e-6)
        np.testing.assert_array_equal(load_shape(out / "shapes.json", name), h)
    assert data["optimizers"]["adamw"]["rate_ratio"] != [1.0] * 4  # warm-up and decay
    report = (out / "report.md").read_text()
    assert "SGD (tiny)" in report and (out / "impulse_responses.png").stat().st_size > 0
    stamps = {p: p.stat().st_mtime_ns for p in (out / "responses").glob("*.npz")}
    assert len(stamps) == 2
    again = json.loads((exp.main(argv) / "impulse_responses.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # read back, not recomputed
    assert again["optimizers"]["sgd"]["mean_shape"] == data["optimizers"]["sgd"]["mean_shape"]


def test_every_setting_of_the_study_resolves_to_its_optimizer():
    study, _, _ = exp.parse([])
    got = {}
    for name, setting in study.settings.items():
        cfg = exp.setting_config(setting, study.runs)
        assert cfg.num_runs == 1 and cfg.checkpoint_steps == ()
        assert (cfg.model, cfg.task, cfg.num_steps, cfg.batch_size) == ("minilm", "polarity", 48, 4)
        got[name] = (cfg.optimizer, cfg.learning_rate, dict(cfg.optimizer_kwargs))
    assert got["sgd"] == ("sgd", 0.05, {})
    assert got["sgd_momentum"] == ("sgd", 0.007, {"momentum": 0.9})
    assert got["adamw"][:2] == ("adamw", 5e-4) and got["adamw_low"][:2] == ("adamw", 1.5e-4)
    assert got["adamw_low"][2] == got["adamw"][2] and got["adamw"][2]["warmup_steps"] == 5
    assert got["adafactor"][:2] == ("adafactor", 3e-3)
    assert study.horizon <= 48 - study.num_slots  # slots at distinct steps with all their lags
