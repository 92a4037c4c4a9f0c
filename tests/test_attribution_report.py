"""The report's Attribution section (pipeline.experiment.attribution_section)."""

import numpy as np

import simfluence_jax as sj
from simfluence_jax.pipeline.experiment import attribution_section
from simfluence_jax.simulators.linear import LinearSimulator


def test_section_lists_top_helpful_and_harmful_of_three_test_examples():
    rng = np.random.default_rng(0)
    N, M, T, B = 12, 4, 6, 2
    sim = LinearSimulator(
        A=(0.5 + 0.02 * rng.standard_normal((M, N))).astype(np.float32),
        B=(0.01 * rng.standard_normal((M, N))).astype(np.float32),
        seen=np.ones(N, bool),
        name="linear",
    )
    batches = rng.permutation(N).reshape(1, T, B).astype(np.int32)
    L0 = np.array([1.0, 0.8, 1.2, 0.9], np.float32)
    losses = np.array(sj.simulate(sim, batches[0], L0))[None]
    losses[0, -1] = L0 + np.array([-0.5, 0.0, 0.5, 0.1], np.float32)  # drop: 0, rise: 2
    texts = [f"train text {i}" for i in range(N)]
    meta = {"train_texts": texts, "test_texts": ["a", "b", "c|d", "e"]}
    runs = sj.RunSet(batches=batches, losses=losses, num_train=N, metadata=meta)
    md = attribution_section(sim, "linear", runs, k=3, horizon=2, verdict="VERDICT")
    eff = sj.removal_effects(sim, batches[0], L0, horizon=2)
    assert "**Test example 0** (largest loss drop" in md
    assert "**Test example 2** (largest loss rise" in md and "c\\|d" in md
    for j in (0, 2):
        block = md.split(f"**Test example {j}**")[1].split("**Test example")[0]
        rows = [
            r for r in block.splitlines() if r.startswith("| helpful") or r.startswith("| harmful")
        ]
        want = [int(i) for i in sj.top(eff, j, 3, "helpful")[0]] + [
            int(i) for i in sj.top(eff, j, 3, "harmful")[0]
        ]
        assert [int(r.split("|")[3]) for r in rows] == want
        assert f"train text {want[0]}" in rows[0]
    assert md.rstrip().endswith("VERDICT")
