"""Saving and loading fitted simulators without pickle.

A simulator is a registered dataclass (``simulators.base.simulator_dataclass``): its array
fields go into ``arrays.npz`` (read with ``allow_pickle=False``) and its other fields, with
the class name, a format version and the shape of every array, into ``meta.json``. Only
classes registered in ``SIMULATOR_CLASSES`` can be loaded. The folder is swapped into place
atomically (:func:`simfluence_jax.io.replace_directory`): a reader finds the old or the new
version.

Loading checks everything it reads: the format and version, the JSON types, the arrays
against the shapes recorded in ``meta.json``, the sizes the arrays share (``M`` test
examples, ``N`` training examples, ...: ``A`` with one column fewer than ``B`` is refused,
since a rollout would silently gather out of range) and finite values. Each problem is a
``ValueError`` naming the file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from simfluence_jax import io as sio
from simfluence_jax.registry import Registry
from simfluence_jax.simulators.featurized import FeaturizedSimulator
from simfluence_jax.simulators.filter import FilterSimulator
from simfluence_jax.simulators.linear import LinearSimulator, MeanSimulator
from simfluence_jax.simulators.metagradient import MetagradientSimulator
from simfluence_jax.simulators.segmented import SegmentedSimulator

FORMAT_NAME = "simfluence_jax.Simulator"
FORMAT_VERSION = 1

SIMULATOR_CLASSES: Registry[type] = Registry("simulator class")
SIMULATOR_CLASSES.register("LinearSimulator")(LinearSimulator)
SIMULATOR_CLASSES.register("MeanSimulator")(MeanSimulator)
SIMULATOR_CLASSES.register("SegmentedSimulator")(SegmentedSimulator)
SIMULATOR_CLASSES.register("FeaturizedSimulator")(FeaturizedSimulator)
SIMULATOR_CLASSES.register("MetagradientSimulator")(MetagradientSimulator)
SIMULATOR_CLASSES.register("FilterSimulator")(FilterSimulator)

_F = "f"
#: ``(dtype kinds, shape)`` of the parameter arrays of each class, in named sizes shared
#: across its arrays (``None``: any); these must also be finite. Other array fields are
#: checked for a plain numeric dtype and against the shapes recorded at save time.
ARRAY_SHAPES: dict[str, dict[str, tuple]] = {
    "LinearSimulator": {"A": (_F, ("M", "N")), "B": (_F, ("M", "N")), "seen": ("b", ("N",))},
    "FilterSimulator": {
        "A": (_F, ("M", "N")),
        "B": (_F, ("M", "N")),
        "seen": ("b", ("N",)),
        "filter": (_F, ("K1",)),
    },
    "MeanSimulator": {"delta": (_F, ("M", "T"))},
    "SegmentedSimulator": {
        "S": (_F, ("M", "K", "N")),
        "eta": (_F, ("T",)),
        "segment": ("iu", ("T",)),
        "seen": ("b", ("N",)),
        "scale": (_F, None),
    },
    "MetagradientSimulator": {
        "reference": (_F, ("M", "T1")),
        "J": (_F, ("M", "K", "T", "B")),
        "batches": ("iu", ("T", "B")),
        "step_index": ("iu", ("T",)),
    },
    "FeaturizedSimulator": {
        "train_features": (_F, ("N", "Dx")),
        "test_features": (_F, ("M", "Dz")),
        "x_shift": (_F, ("Dx",)),
        "x_scale": (_F, ("Dx",)),
        "z_shift": (_F, ("Dz",)),
        "z_scale": (_F, ("Dz",)),
        "P": (_F, ("Dx", "d")),
        "Q": (_F, (None, "d")),
        "W_x": (_F, ("d", "H")),
        "W_z": (_F, ("d", "H")),
        "W_xz": (_F, ("d", "H")),
        "b_h": (_F, ("H",)),
        "W_out": (_F, ("H", "n1")),
        "b_out": (_F, ("n1",)),
    },
}


def _fields_of(sim) -> tuple[dict, dict]:
    arrays, fields = {}, {}
    for f in dataclasses.fields(sim):
        value = getattr(sim, f.name)
        if isinstance(value, (str, bool, int, float)) or value is None:
            fields[f.name] = value
        else:
            arrays[f.name] = np.asarray(value)
    return arrays, fields


def save_simulator(sim, path: str | os.PathLike) -> Path:
    """Writes ``sim`` to directory ``path`` (replaced atomically if it exists)."""
    cls_name = type(sim).__name__
    SIMULATOR_CLASSES.get(cls_name)
    arrays, fields = _fields_of(sim)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "class": cls_name,
        "fields": fields,
        "shapes": {k: list(v.shape) for k, v in arrays.items()},
        "dtypes": {k: v.dtype.str for k, v in arrays.items()},
    }
    files = {"arrays.npz": sio.npz_bytes(arrays), "meta.json": sio.json_bytes(meta)}
    path = Path(path)
    with sio.replace_directory(path) as tmp:
        sio.write_files(tmp, files)
    return path


def load_simulator(path: str | os.PathLike):
    """Reads a simulator written by ``save_simulator``, checking it (see module docstring).

    Raises:
      ValueError: naming the file and the problem.
    """
    path = sio.resolve_directory(path)
    meta_file, arrays_file = path / "meta.json", path / "arrays.npz"
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise ValueError(f"permission denied reading the saved simulator {path}")
    if not path.is_dir():
        raise ValueError(f"no saved simulator at {path}: not a directory")
    meta = sio.read_json(meta_file, what="simulator metadata")
    sio.check_format(meta_file, meta, name=FORMAT_NAME, version=FORMAT_VERSION, what="simulator")
    sio.check_keys(
        meta_file, meta, required=["class", "fields"],
        types={"class": str, "fields": dict, "shapes": dict, "dtypes": dict},
        what="simulator metadata",
    )  # fmt: skip
    try:
        cls = SIMULATOR_CLASSES.get(meta["class"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"{meta_file}: {err}") from None
    arrays = sio.read_npz(arrays_file, what="simulator arrays file")
    _check_simulator(meta_file, arrays_file, cls, meta, arrays)
    try:
        return cls(**arrays, **meta["fields"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{meta_file}: cannot rebuild a {meta['class']}: {err}") from None


def _check_simulator(meta_file: Path, arrays_file: Path, cls, meta: dict, arrays: dict) -> None:
    """Fields complete, arrays as recorded and consistent with each other, finite."""
    names = {f.name for f in dataclasses.fields(cls)}
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    given = set(arrays) | set(meta["fields"])
    unknown = sorted(given - names)
    if unknown:
        raise ValueError(f"{meta_file}: {meta['class']} has no field(s) {unknown}")
    missing = sorted(required - given)
    if missing:
        raise ValueError(f"{arrays_file}: the simulator arrays lack {missing}; the file is damaged")
    for name, value in meta["fields"].items():
        if not isinstance(value, (str, bool, int, float)) and value is not None:
            raise ValueError(f"{meta_file}: field {name!r} must be a number, string or null")
    shapes = meta.get("shapes", {})
    dtypes = meta.get("dtypes", {})
    table = ARRAY_SHAPES.get(meta["class"], {})
    specs = {}
    for name, arr in arrays.items():
        if name in shapes and list(arr.shape) != list(shapes[name]):
            raise ValueError(
                f"{arrays_file}: array {name!r} has shape {list(arr.shape)}, but "
                f"{meta_file.name} records {shapes[name]}; the files are damaged"
            )
        if name in dtypes and arr.dtype.str != dtypes[name]:
            raise ValueError(
                f"{arrays_file}: array {name!r} has dtype {arr.dtype}, but {meta_file.name} "
                f"records {dtypes[name]}; the files are damaged"
            )
        kinds, shape = table.get(name, ("fiub", None))
        specs[name] = sio.ArraySpec(kinds, shape, finite=name in table)
    sio.check_arrays(arrays_file, arrays, specs, what="simulator arrays file")
    if meta["class"] == "SegmentedSimulator" and {"S", "segment"} <= set(arrays):
        k, seg = arrays["S"].shape[1], arrays["segment"]
        if seg.size and (seg.min() < 0 or seg.max() >= k):
            raise ValueError(
                f"{arrays_file}: array 'segment' holds segments outside 0..{k - 1}; the file is "
                "damaged"
            )
