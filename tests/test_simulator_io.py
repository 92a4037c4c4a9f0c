"""The save format each simulator class carries: ``ARRAY_SHAPES`` and ``check_saved``, read
by ``simulators.io`` from the class its module declares."""

import dataclasses
import json

import numpy as np
import pytest

from simfluence_jax import simulators
from simfluence_jax.simulators.io import SIMULATOR_CLASSES, load_simulator, save_simulator


def test_every_exported_class_is_declared_by_its_module_with_its_format():
    names = SIMULATOR_CLASSES.names()
    exported = [c for c in vars(simulators).values() if isinstance(c, type)]
    concrete = [c for c in exported if dataclasses.is_dataclass(c)]
    assert {c.__name__ for c in concrete} <= set(names), names
    for name in names:
        cls = SIMULATOR_CLASSES.get(name)
        assert cls.__name__ == name
        assert SIMULATOR_CLASSES.origin(name) == cls.__module__
        fields = {f.name for f in dataclasses.fields(cls)}
        assert cls.ARRAY_SHAPES and set(cls.ARRAY_SHAPES) <= fields, name


def _segmented():
    return simulators.SegmentedSimulator(
        S=np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5),
        eta=np.full(4, 0.1, np.float32),
        segment=np.array([0, 1, 2, 2], np.int32),
        seen=np.ones(5, bool),
        scale=np.float32(2.0),
        name="tracin_cp",
    )


def test_round_trip_and_the_class_hook_refuses_a_segment_out_of_range(tmp_path):
    sim = _segmented()
    back = load_simulator(save_simulator(sim, tmp_path / "s"))
    assert type(back) is simulators.SegmentedSimulator and back.name == "tracin_cp"
    np.testing.assert_array_equal(back.S, sim.S)
    save_simulator(sim.replace(segment=np.array([0, 1, 3, 2], np.int32)), tmp_path / "bad")
    with pytest.raises(ValueError, match=r"arrays.npz: array 'segment' holds segments outside"):
        load_simulator(tmp_path / "bad")


def test_a_class_nobody_declares_is_refused_by_name(tmp_path):
    path = save_simulator(_segmented(), tmp_path / "s")
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "class": "NoSuchSimulator"}))
    with pytest.raises(ValueError, match="unknown simulator class 'NoSuchSimulator'; known: "):
        load_simulator(path)
