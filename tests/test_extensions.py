"""A simulator is two files and an importer is two files: a throwaway simulator (its class and
its fitter in one module) and a throwaway format are written here, and found with no other
edit, both dropped into the packages and as modules outside them (``add_extension_module``,
``SIMFLUENCE_JAX_EXTENSIONS``): fitted and rolled out by name, saved and loaded, attributed,
fitted and evaluated by the ``simfluence`` command, and imported by ``simfluence import``."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from simulator_battery import check_removal_effects, check_rollout

import simfluence_jax as sj
from simfluence_jax import cli, importers, registry, simulators
from simfluence_jax.fitting import (
    SIMULATORS,
    Fitter,
    accepted_keywords,
    required_inputs,
    simulator_group,
)
from simfluence_jax.importers import IMPORTERS
from simfluence_jax.runs import RunSet
from simfluence_jax.simulators.io import SIMULATOR_CLASSES, load_simulator, save_simulator
from simfluence_jax.synthetic import make_problem

ROOT = Path(__file__).resolve().parents[1]

#: The simulator module: L_t = L_{t-1} + d_j n_t, a drift d_j of each test example per
#: training example in the batch (n_t real ids), fitted by least squares.
SIMULATOR_MODULE = '''
    """Drift: L_t = L_{t-1} + d_j n_t, with n_t the real ids of the batch of step t."""

    from typing import ClassVar

    import jax
    import jax.numpy as jnp
    import numpy as np

    from simfluence_jax.simulators.base import AffineSimulator, simulator_dataclass, static_field
    from simfluence_jax.simulators.fitter import Fitter


    @simulator_dataclass
    class DriftSimulator(AffineSimulator):
        drift: jax.Array  # float32[M]
        name: str = static_field("drift")

        ARRAY_SHAPES: ClassVar[dict[str, tuple]] = {"drift": ("f", ("M",))}

        def per_test(self):
            return self.drift

        def affine_step(self, p, state, ids, w, t, s):
            return state, jnp.float32(1.0), p * jnp.sum(w)

        def restrict(self, tests):
            return self.replace(drift=jnp.asarray(self.drift)[tests])


    def fit_drift(runs, *, validation=None, shrink=0.0):
        """Least squares of the per-step change on the batch's count of ids."""
        del validation
        n = (runs.batches >= 0).sum(-1).astype(np.float64)  # [R, T]
        change = np.diff(runs.losses.astype(np.float64), axis=1)  # [R, T, M]
        drift = np.einsum("rt,rtm->m", n, change) / (np.sum(n**2) + shrink)
        return DriftSimulator(drift=drift.astype(np.float32))


    EXTENSIONS = {
        "simulator class": {"DriftSimulator": DriftSimulator},
        "simulator": {"drift": Fitter(fit_drift, group="control", doc="a drift per id seen")},
    }
'''

#: The importer module: one JSON file ``{"test_ids": [...], "runs": [{"losses": [[...]],
#: "batches": [[...]]}]}``.
IMPORTER_MODULE = '''
    """Runs in one JSON object: test ids, and each run's losses [T+1, M] and batches."""

    import json
    from pathlib import Path

    import numpy as np

    from simfluence_jax.importers.assemble import RawRun, assemble
    from simfluence_jax.importers.checks import file_error
    from simfluence_jax.importers.registry import Importer, Input


    def read_matrix(path, *, pad=False, train_ids=None, test_ids=None, batch_size=None):
        path = Path(path)
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not {"test_ids", "runs"} <= set(data):
            raise file_error(path, 1, "expected an object with test_ids and runs")
        runs = [
            RawRun(
                name=str(k), losses_file=path, batches_file=path, test_ids=data["test_ids"],
                losses=np.asarray(run["losses"], np.float64), batches=run["batches"],
                batch_lines=[1] * len(run["batches"]), learning_rates=None, first_step=0,
            )
            for k, run in enumerate(data["runs"])
        ]
        return assemble(runs, pad=pad, train_ids=train_ids, test_ids=test_ids,
                        batch_size=batch_size, source="matrix")


    EXTENSIONS = {
        "importer": {
            "matrix": Importer(read=read_matrix, help="runs as one JSON object",
                               inputs=(Input("--file", "the JSON file"),)),
        },
    }
'''


def _write(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def _runs_of_the_law(drift, seed=0):
    """Runs whose losses follow the drift law exactly, with a learning-rate schedule."""
    p = make_problem(num_train=20, num_test=len(drift), num_runs=12, noise=0.0, seed=seed)
    n = (p.runs.batches >= 0).sum(-1)  # [R, T]
    L0 = p.runs.losses[:, :1]  # [R, 1, M]
    steps = np.cumsum(n, axis=1)[..., None] * np.asarray(drift)[None, None]
    losses = np.concatenate([L0, L0 + steps], axis=1).astype(np.float32)
    rates = np.full(p.runs.batches.shape[:2], 0.1, np.float32)
    return RunSet(batches=p.runs.batches, losses=losses, learning_rates=rates)


def _matrix_file(runs: RunSet, path: Path) -> Path:
    data = {
        "test_ids": [f"q{j}" for j in range(runs.num_test)],
        "runs": [
            {"losses": runs.losses[r].tolist(), "batches": [[int(i) for i in b if i >= 0]
                                                           for b in runs.batches[r]]}
            for r in range(runs.num_runs)
        ],
    }  # fmt: skip
    path.write_text(json.dumps(data))
    return path


def _names():
    return SIMULATORS.names(), SIMULATOR_CLASSES.names(), IMPORTERS.names()


@contextlib.contextmanager
def _forgotten_afterwards(*modules):
    """Leaves the registries and ``sys.modules`` as they were once ``modules`` are gone."""
    try:
        yield
    finally:
        for module in modules:
            registry.forget_module(module)
            sys.modules.pop(module, None)


DRIFT = np.array([-0.01, 0.002, 0.0, 0.005], np.float32)


def _check_the_simulator_and_the_format(tmp_path, origin):
    """What a new simulator and a new format must do once found (``origin``: the module of
    the simulator)."""
    assert "drift" in SIMULATORS.names() and SIMULATORS.origin("drift") == origin
    assert SIMULATOR_CLASSES.origin("DriftSimulator") == origin
    assert "matrix" in IMPORTERS.names()
    assert simulator_group("drift") == "control" and required_inputs("drift") == ()
    assert accepted_keywords("drift") == {"validation", "shrink"}
    with pytest.raises(ValueError, match="drift does not take 'l2'; it accepts shrink"):
        sj.fit_simulator("drift", _runs_of_the_law(DRIFT), l2=0.1)

    # Its law, recovered exactly from runs that follow it.
    fit, val, test = _runs_of_the_law(DRIFT).split(8, 2, 2)
    sim = sj.fit_simulator("drift", fit, validation=val)
    np.testing.assert_allclose(sim.drift, DRIFT, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sj.predict(sim, test), test.losses, rtol=1e-4, atol=1e-5)

    # The conformance battery, and attribution: removing one id once changes the final loss
    # of test example j by -d_j.
    refit = sj.fit_simulator("drift", fit.select(np.arange(fit.num_runs)[::-1]), shrink=5.0)
    again = sj.fit_simulator("drift", fit, validation=val)
    check_rollout(sim, refit, again, test, label="drift")
    check_removal_effects(sim, refit, fit, label="drift")
    b, L0 = fit.batches[0], fit.L0[0]
    eff = sj.removal_effects(sim, b, L0, batch_loss="sum")
    counts = np.array([(b == i).sum() for i in eff.ids])
    np.testing.assert_allclose(eff.delta, -counts[:, None] * DRIFT[None], rtol=1e-4, atol=1e-6)

    # Saved and loaded by its class name, with the format the class declares.
    back = load_simulator(save_simulator(sim, tmp_path / "drift"))
    assert type(back).__name__ == "DriftSimulator"
    np.testing.assert_array_equal(np.asarray(back.drift), np.asarray(sim.drift))
    # Its ARRAY_SHAPES lists `drift`, so a saved NaN is refused (unlisted arrays may hold any).
    np.savez(tmp_path / "drift" / "arrays.npz", drift=np.where(DRIFT == 0, np.nan, DRIFT))
    with pytest.raises(ValueError, match="array 'drift' has 1 NaN or infinite value"):
        load_simulator(tmp_path / "drift")

    # The format: `simfluence import matrix` reads a tiny file into a run store.
    source = _matrix_file(fit, tmp_path / "runs.json")
    assert cli.main(["import", "matrix", "--file", str(source), "--out", str(tmp_path / "m")]) == 0
    imported = RunSet.load(tmp_path / "m")
    np.testing.assert_array_equal(imported.losses, fit.losses)
    assert imported.test_ids.tolist() == [f"q{j}" for j in range(fit.num_test)]
    assert imported.metadata["source"] == "matrix"


def test_dropped_into_the_packages(tmp_path, monkeypatch):
    before = _names()
    sim_dir, fmt_dir = tmp_path / "simulators", tmp_path / "importers"
    _write(sim_dir, "drift_throwaway", SIMULATOR_MODULE)
    _write(fmt_dir, "matrix_throwaway", IMPORTER_MODULE)
    sim_module = "simfluence_jax.simulators.drift_throwaway"
    fmt_module = "simfluence_jax.importers.matrix_throwaway"
    with _forgotten_afterwards(sim_module, fmt_module):
        with monkeypatch.context() as m:
            m.setattr(simulators, "__path__", [*simulators.__path__, str(sim_dir)])
            m.setattr(importers, "__path__", [*importers.__path__, str(fmt_dir)])
            _check_the_simulator_and_the_format(tmp_path, sim_module)
    assert _names() == before
    with pytest.raises(ValueError, match="unknown simulator 'drift'"):
        sj.fit_simulator("drift", _runs_of_the_law(DRIFT))


def test_as_modules_outside_the_package(tmp_path, monkeypatch):
    before = _names()
    outside = tmp_path / "lab"
    _write(outside, "lab_drift", SIMULATOR_MODULE)
    _write(outside, "lab_matrix", IMPORTER_MODULE)
    monkeypatch.syspath_prepend(str(outside))
    assert "drift" not in SIMULATORS.names()
    with _forgotten_afterwards("lab_drift", "lab_matrix"):
        registry.add_extension_module("lab_drift")
        registry.add_extension_module("lab_matrix")
        _check_the_simulator_and_the_format(tmp_path, "lab_drift")
    assert _names() == before


def test_named_in_the_environment_the_simfluence_command_uses_them(tmp_path):
    """``SIMFLUENCE_JAX_EXTENSIONS``: `simfluence import` reads the new format, `simfluence
    fit` fits the new simulator by name and saves it, `evaluate` loads and scores it."""
    outside = tmp_path / "lab"
    _write(outside, "lab_drift", SIMULATOR_MODULE)
    _write(outside, "lab_matrix", IMPORTER_MODULE)
    source = _matrix_file(_runs_of_the_law(DRIFT), tmp_path / "runs.json")
    split = ["--gin.FitConfig.num_fit=8", "--gin.FitConfig.num_val=2",
             "--gin.FitConfig.num_heldout=2"]  # fmt: skip
    steps = [
        ["import", "--help"],
        ["import", "matrix", "--file", str(source), "--out", str(tmp_path / "runset")],
        ["fit", "--runs", str(tmp_path / "runset"), "--out", str(tmp_path / "sims"),
         "--gin.FitConfig.simulators=('drift', 'constant')", *split],
        ["evaluate", "--runs", str(tmp_path / "runset"), "--simulators", str(tmp_path / "sims"),
         "--out", str(tmp_path / "table.json"), *split],
    ]  # fmt: skip
    code = (
        "import sys, json; from simfluence_jax import cli\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        code = cli.main(argv)\n"
        "    except SystemExit as e:\n"
        "        code = e.code\n"
        "    assert code == 0, (argv, code)\n"
    )
    env = {
        **os.environ,
        "SIMFLUENCE_JAX_EXTENSIONS": "lab_drift, lab_matrix",
        "PYTHONPATH": os.pathsep.join([str(outside), str(ROOT)]),
    }
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(steps)], capture_output=True, text=True,
        env=env, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "matrix" in out.stdout and "runs as one JSON object" in out.stdout  # import --help
    assert (tmp_path / "sims" / "drift" / "meta.json").exists()
    table = json.loads((tmp_path / "table.json").read_text())
    assert set(table) == {"drift", "constant"}
    assert table["drift"]["mse_mean"] < 1e-6 < table["constant"]["mse_mean"]


def test_a_malformed_declaration_is_named():
    with pytest.raises(ValueError, match="'nowhere' is not a 'module:attr' reference"):
        Fitter("nowhere")
    with pytest.raises(ValueError, match="fit must be callable"):
        Fitter(42)
    with pytest.raises(ValueError, match="inputs must be a tuple"):
        Fitter(len, inputs="gradients")
    with pytest.raises(ValueError, match="cannot load 'no_such_module_x:fit'"):
        Fitter("no_such_module_x:fit").load()
    SIMULATORS.register("not_a_fitter_x")(42)
    try:
        with pytest.raises(
            ValueError, match=r"'not_a_fitter_x' \(declared by register\(\)\) is not a Fitter: 42"
        ):
            sj.fit_simulator("not_a_fitter_x", _runs_of_the_law(DRIFT))
    finally:
        SIMULATORS.forget("register()")
    assert "not_a_fitter_x" not in SIMULATORS.names()
