"""The filter-kernel study (experiments/filter_kernel.py): its table and learning curve on a
synthetic world drawn from a non-geometric filter (fast), and the tiny config end to end
(real MiniLM training; slow)."""

import json

import numpy as np
import pytest

from experiments import filter_kernel as study
from simfluence_jax.synthetic import make_kernel_runs


def test_analyse_scores_the_three_forms_on_a_filter_world():
    runs = make_kernel_runs(num_train=40, num_test=6, num_runs=40, subset=32, epochs=3,
                            filter=[1.0, 1.4, 1.0, 0.6, 0.3, 0.1], seed=3)  # fmt: skip
    cfg = study.FilterKernel(output_dir="unused", filter_length=5, curve=(12, 24))
    res = study.analyse(runs, (24, 6, 10), cfg)
    table = res["table"]
    assert set(table) == {*study.COMPARED, "mean"}
    mean_mse = table["mean"]["mse"]
    for row in table.values():
        assert row["skill_vs_mean"] == pytest.approx(1 - row["mse"] / mean_mse)
        assert -1 <= row["per_example_spearman"] <= 1
    assert table["mean"]["skill_vs_mean"] == 0.0
    # The learned filter is the one of this world, and it beats the geometric kernel here.
    assert len(res["filter"]) == 6 and res["filter"][0] == 1.0
    assert res["filter"][1] > 1.0  # the late peak, which no geometric filter has
    assert table["filter kernel"]["mse"] < table["momentum kernel"]["mse"]
    assert list(res["learning_curve"]) == [12, 24]
    assert res["learning_curve"][24]["filter kernel"]["mse"] == pytest.approx(
        table["filter kernel"]["mse"]
    )
    report = study.render({0: res}, "synthetic")
    assert "| filter kernel |" in report and "12 runs:" in report
    with pytest.raises(ValueError, match="curve point 30 exceeds the 24 fitting runs"):
        study.analyse(runs, (24, 6, 10), study.FilterKernel(output_dir="x", curve=(30,)))


@pytest.mark.slow
def test_tiny_config_end_to_end(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["--tiny", f"--gin.FilterKernel.output_dir='{out}'",
            f"--gin.FilterKernel.cache_dir='{cache}'"]  # fmt: skip
    assert study.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["0", "1"]
    for res in results.values():
        assert len(res["filter"]) == 4 and res["filter"][0] == 1.0
        assert all(np.isfinite(row["mse"]) for row in res["table"].values())
        assert list(res["learning_curve"]) == ["2", "4"]
    assert (out / "report.md").exists() and (out / "operative_config.gin").exists()
