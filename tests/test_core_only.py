"""The core installs alone: with the training stack blocked, import simfluence_jax, read and
log runs, fit Simfluence-Linear, simulate, score and write a report; then import, fit and
evaluate the same runs through the ``simfluence`` command.

A fresh interpreter blocks every training-only package (Flax, optax, orbax, gin, TensorFlow,
seqio, tokenizers, sentencepiece, safetensors, gensim) at import; what the core needs is
JAX, NumPy and matplotlib.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINING_STACK = (
    "flax", "optax", "orbax", "gin", "tensorflow", "seqio", "tokenizers", "sentencepiece",
    "safetensors", "gensim", "torch", "transformers",
)  # fmt: skip

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{name} is not part of the core install")

    sys.meta_path.insert(0, Block())
    sys.path.insert(0, sys.argv[2])

    import numpy as np
    import simfluence_jax as sj
    from simfluence_jax import counterfactuals as cf
    from simfluence_jax import importers, logger, metrics, registry, sharding  # noqa: F401
    from simfluence_jax.reports import write_report
    from simfluence_jax.synthetic import make_problem

    runs = make_problem(num_train=20, num_test=4, num_runs=8, seed=0).runs
    runs = sj.read_gptfluence(sj.write_gptfluence(runs, "gpt", first_step=1))
    fit, val, heldout = runs.split(5, 1, 2)
    linear = sj.fit_simulator("linear", fit, validation=val)
    base = heldout.batches[0]
    traj = sj.simulate(linear, cf.stack([base, cf.reverse(base)]), heldout.L0[0])
    assert traj.shape == (2, runs.num_steps + 1, runs.num_test) and np.isfinite(traj).all()
    table = sj.evaluate_all({"linear": linear, "mean": sj.fit_simulator("mean", fit)}, heldout)
    write_report(
        "report", heldout=heldout,
        predictions={"linear": sj.predict(linear, heldout)}, groups={"linear": "fitted"},
    )
    loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    assert not loaded, loaded
    print("core ok", runs, round(table["linear"]["mse_mean"], 6))

    # The simfluence command on logged runs: gin (a core dependency) parses its configs.
    BLOCKED.discard("gin")
    from simfluence_jax import cli
    assert cli.main(["import", "gptfluence", "gpt", "--out", "imported"]) == 0
    split = ["--gin.FitConfig.num_fit=5", "--gin.FitConfig.num_val=1",
             "--gin.FitConfig.num_heldout=2", "--gin.FitConfig.simulators=('linear',)"]
    assert cli.main(["fit", "--runs", "imported", "--out", "sims", *split]) == 0
    assert cli.main(["evaluate", "--runs", "imported", "--simulators", "sims", *split]) == 0
    loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    assert not loaded, loaded
    print("cli ok")
    """
)


def test_core_fits_and_simulates_without_the_training_stack(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(TRAINING_STACK), str(ROOT)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    assert "core ok RunSet(R=8" in out.stdout and "cli ok" in out.stdout
    assert (tmp_path / "report" / "report.md").exists()
