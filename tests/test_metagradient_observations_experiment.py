"""The metagradient-observations study (experiments/metagradient_observations.py): the tiny
config end to end (real MiniLM training, metagradients, retrained edits; slow), its cache of
metagradients, and bad input."""

import json

import numpy as np
import pytest

from experiments import metagradient_observations as study


@pytest.mark.slow
def test_tiny_config_end_to_end(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["--tiny", f"--gin.MetagradientObservations.output_dir='{out}'",
            f"--gin.MetagradientObservations.retrained_dir='{out}'",
            f"--gin.MetagradientObservations.cache_dir='{cache}'"]  # fmt: skip
    study.main(argv)
    res = json.loads((out / "results.json").read_text())
    assert list(res["curve"]) == ["2", "4"]
    for point in res["curve"].values():
        rows = point["rows"]
        assert set(rows) == {"linear", "metagradient w=1", "chosen on validation"}
        assert rows["chosen on validation"] == rows[point["chosen_weight"]]
        for row in rows.values():
            assert np.isfinite(row["heldout_mse"]) and row["random"]["n"] > 0
            assert "lds_mean" in row["lds"]
    cached = sorted((cache).rglob("metagradients-*.npz"))
    assert len(cached) == 4  # one per fitting run
    stamps = [p.stat().st_mtime_ns for p in cached]
    # A second run reads the cached metagradients (and retrainings) instead of recomputing.
    out2 = tmp_path / "out2"
    study.main(argv[:1] + [f"--gin.MetagradientObservations.output_dir='{out2}'"] + argv[2:])
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    again = json.loads((out2 / "results.json").read_text())
    assert again["curve"]["4"]["rows"]["linear"] == res["curve"]["4"]["rows"]["linear"]
    assert (out / "report.md").read_text().count("| 4 |") == 3


def test_metagradients_of_other_test_examples_are_refused():
    from simfluence_jax.gradients.metagradient import Metagradients

    meta = Metagradients(batches=np.zeros((2, 1), np.int32), seed=0, readout=np.ones((1, 2)),
                         values=np.zeros((1, 2)), slot=np.zeros((2, 1, 2, 1)), num_train=3,
                         test_index=np.array([0, 2]))  # fmt: skip
    with pytest.raises(ValueError, match="other test examples than the study's"):
        study.with_tests(meta, np.array([0, 1]))
    assert study.with_tests(meta, np.array([0, 2])).test_index.tolist() == [0, 1]
