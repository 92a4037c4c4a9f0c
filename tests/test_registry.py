"""The registry is the only source of simulators: what ``import simfluence_jax`` lists."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import simfluence_jax as sj
from simfluence_jax.synthetic import make_problem

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_simulators() -> set[str]:
    """Every name in the first column of the README's simulator table (``a`` (+ ``_b``))."""
    text = README.read_text()
    start = text.index("Simulators in the registry")
    table = text[start : text.index("\n\n", text.index("| name |", start))]
    names = set()
    for row in table.splitlines()[2:]:
        first = row.split("|")[1]
        base = [n for n in re.findall(r"`([a-z_0-9]+)`", first) if not n.startswith("_")]
        names.update(base)
        if "_calibrated" in first:
            names.update(n + "_calibrated" for n in base)
    return names


def test_import_alone_lists_every_simulator_of_the_readme():
    code = "import json, simfluence_jax as sj; print(json.dumps(sj.SIMULATORS.names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names = set(json.loads(out.stdout.strip().splitlines()[-1]))
    expected = _readme_simulators()
    assert len(expected) >= 12, expected
    assert expected <= names, expected - names
    # Listing them imported no training stack.
    code = (
        "import sys, simfluence_jax as sj; sj.SIMULATORS.names(); "
        "print(sorted(m for m in ('optax', 'flax', 'orbax', 'gin') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_missing_inputs_are_named():
    p = make_problem(num_train=12, num_test=3, num_runs=6, seed=0)
    fit, val, _ = p.runs.split(4, 1, 1)
    with pytest.raises(ValueError, match="'tracin_cp_calibrated' needs gradients="):
        sj.fit_all(["linear", "tracin_cp_calibrated"], fit, validation=val)
    with pytest.raises(ValueError, match="'featurized' needs features="):
        sj.fit_simulator("featurized", fit)
    sims = sj.fit_all(["linear", "constant", "mean"], fit, validation=val, l2=0.1)
    assert set(sims) == {"linear", "constant", "mean"}
    assert np.isfinite(sj.evaluate(sims["linear"], val)["mse_mean"])
    # A keyword no fitter takes is an error, unless strict=False drops it.
    with pytest.raises(ValueError, match="no simulator among .* takes 'solver'"):
        sj.fit_all(["constant", "mean"], fit, solver="cg")
    controls = sj.fit_all(["constant", "mean"], fit, strict=False, solver="cg", l2=0.1)
    assert set(controls) == {"constant", "mean"}
    assert sj.fitting.simulator_group("mean") == "control"
    assert sj.fitting.simulator_group("influence_calibrated") == "gradient baseline (calibrated)"
    assert sj.fitting.simulator_group("linear_kernel") == "fitted"
