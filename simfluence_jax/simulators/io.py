"""Saving and loading fitted simulators without pickle.

A simulator is a registered dataclass (``simulators.base.simulator_dataclass``): its array
fields go into ``arrays.npz`` (read with ``allow_pickle=False``) and its other fields, with
the class name, a format version and the shape of every array, into ``meta.json``. Only
classes in ``SIMULATOR_CLASSES`` (declared by their own modules) can be loaded. The folder
is swapped into place atomically (:func:`simfluence_jax.fileio.replace_directory`): a reader
finds the old or the new version.

Loading checks everything it reads: the format and version, the JSON types, the arrays
against the shapes recorded in ``meta.json``, the sizes the arrays share by the class's
``ARRAY_SHAPES`` (``M`` test examples, ``N`` training examples, ...: ``A`` with one column
fewer than ``B`` is refused, since a rollout would silently gather out of range), finite
values, and the class's own ``check_saved``. Each problem is a ``ValueError`` naming the
file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from simfluence_jax import fileio
from simfluence_jax.registry import Registry

FORMAT_NAME = "simfluence_jax.Simulator"
FORMAT_VERSION = 1

#: The classes that can be saved and loaded, by class name: every module of this package
#: declares its own in ``EXTENSIONS["simulator class"]`` (extension modules too; see
#: ``simfluence_jax.registry``). Each class carries its save format: ``ARRAY_SHAPES`` and
#: the ``check_saved`` hook (``simulators.base.Simulator``).
SIMULATOR_CLASSES: Registry[type] = Registry(
    "simulator class", packages=("simfluence_jax.simulators",)
)


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
    files = {"arrays.npz": fileio.npz_bytes(arrays), "meta.json": fileio.json_bytes(meta)}
    path = Path(path)
    with fileio.replace_directory(path) as tmp:
        fileio.write_files(tmp, files)
    return path


def load_simulator(path: str | os.PathLike):
    """Reads a simulator written by ``save_simulator``, checking it (see module docstring).

    Raises:
      ValueError: naming the file and the problem.
    """
    path = fileio.resolve_directory(path)
    meta_file, arrays_file = path / "meta.json", path / "arrays.npz"
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise ValueError(f"permission denied reading the saved simulator {path}")
    if not path.is_dir():
        raise ValueError(f"no saved simulator at {path}: not a directory")
    meta = fileio.read_json(meta_file, what="simulator metadata")
    fileio.check_format(meta_file, meta, name=FORMAT_NAME, version=FORMAT_VERSION, what="simulator")
    fileio.check_keys(
        meta_file, meta, required=["class", "fields"],
        types={"class": str, "fields": dict, "shapes": dict, "dtypes": dict},
        what="simulator metadata",
    )  # fmt: skip
    try:
        cls = SIMULATOR_CLASSES.get(meta["class"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"{meta_file}: {err}") from None
    arrays = fileio.read_npz(arrays_file, what="simulator arrays file")
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
    table = getattr(cls, "ARRAY_SHAPES", {})
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
        specs[name] = fileio.ArraySpec(kinds, shape, finite=name in table)
    fileio.check_arrays(arrays_file, arrays, specs, what="simulator arrays file")
    check_saved = getattr(cls, "check_saved", None)
    if check_saved is not None:
        check_saved(arrays, arrays_file)
