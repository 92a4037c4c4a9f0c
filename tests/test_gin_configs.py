"""Every bundled .gin file parses, and the layered experiments resolve to valid configs whose
operative config is written out and reads back to the same configs."""

from pathlib import Path

import pytest

import simfluence_jax as sj
from experiments import (
    beyond,
    comparison,
    counterfactuals,
    fidelity,
    filter_kernel,
    impulse_responses,
    metagradient_observations,
)
from simfluence_jax import cli
from simfluence_jax.pipeline import config as cfgs

GIN_DIR = Path(__file__).resolve().parents[1] / "gin_configs"
ALL_GIN = sorted(GIN_DIR.rglob("*.gin"))

# The records only an experiment's own gin files bind, registered as its entry point does
# (so each file parses on its own, whatever ran before).
cli.register_configurable(beyond.Beyond)
cli.register_configurable(fidelity.Fidelity)
cli.register_configurable(counterfactuals.Counterfactuals)
cli.register_configurable(filter_kernel.FilterKernel)
cli.register_configurable(comparison.Comparison)
cli.register_configurable(impulse_responses.ImpulseStudy)
cli.register_configurable(metagradient_observations.MetagradientObservations)
#: What the files marked "Requires: <binding>" need bound to parse on their own.
REQUIRED = {
    "base.gin": ["Experiment.output_dir = '/tmp/x'"],
    "tiny_test.gin": ["Experiment.output_dir = '/tmp/x'"],
    "fidelity_tiny.gin": ["Fidelity.output_dir = '/tmp/x'", "Fidelity.cache_dir = '/tmp/x'"],
    "impulse_responses_tiny.gin": [
        "ImpulseStudy.output_dir = '/tmp/x'",
        "ImpulseStudy.cache_dir = '/tmp/x'",
    ],
}


def test_there_are_gin_files_in_every_layer():
    layers = {p.parent.name for p in ALL_GIN}
    assert layers == {"models", "runs", "simulators", "experiments", "optimizers", "tasks"}


@pytest.mark.parametrize("path", ALL_GIN, ids=lambda p: str(p.relative_to(GIN_DIR)))
def test_every_gin_file_parses_and_opens_with_what_it_requires(path):
    text = path.read_text()
    assert text.startswith("#"), f"{path} must open with a comment saying what it requires"
    assert "Requires:" in text.split("\n\n")[0] or "Requires:" in text[:600]
    cli.parse_gin([str(path)], REQUIRED.get(path.name, []))
    runs, fit, counterfactual, exp = cli.configs()
    assert isinstance(runs, cfgs.RunsConfig) and isinstance(fit, cfgs.FitConfig)
    assert fit.num_fit + fit.num_val + fit.num_heldout <= runs.num_runs
    for name in fit.simulators:
        assert name in sj.SIMULATORS, name


@pytest.mark.parametrize("name", ["quickstart", "paper_protocol", "t5_tiny", "tiny_test"])
def test_experiments_layer_models_runs_simulators(name, tmp_path):
    bindings = ["Experiment.output_dir = '/tmp/x'"] if name == "tiny_test" else []
    cli.parse_gin([str(GIN_DIR / "experiments" / f"{name}.gin")], bindings)
    runs, fit, counterfactual, exp = cli.configs()
    assert exp.output_dir
    if name == "paper_protocol":
        # GPTfluence's protocol with 6 held-out runs rather than their 5 (33 runs in all).
        shape = (runs.num_runs, runs.subset_size, runs.batch_size, runs.num_steps)
        assert shape == (33, 128, 4, 96)
        assert (fit.num_fit, fit.num_val, fit.num_heldout) == (25, 2, 6)
    if name == "t5_tiny":
        assert runs.model == "t5" and runs.pretrain
    operative = cli.operative_config()
    for binding in ("RunsConfig.", "FitConfig.simulators", "Experiment.output_dir"):
        assert binding in operative, (binding, operative)
    # The operative config saved next to every output reproduces the same configs.
    saved = tmp_path / "operative_config.gin"
    saved.write_text(operative)
    cli.parse_gin([str(saved)], [])
    again = cli.configs()
    assert again[:3] == (runs, fit, counterfactual) and vars(again[3]) == vars(exp)


def test_required_binding_is_reported():
    with pytest.raises(ValueError, match="output_dir"):
        cli.parse_gin([str(GIN_DIR / "experiments" / "base.gin")], [])
        cli.configs()


def test_bad_binding_and_missing_file_are_reported():
    with pytest.raises(ValueError, match="bad gin configuration"):
        cli.parse_gin([], ["RunsConfig.no_such_field = 3"])
    with pytest.raises(ValueError, match="does not exist"):
        cli.parse_gin(["/nonexistent/file.gin"], [])
