"""Saving and loading fitted simulators without pickle.

A simulator is a ``flax.struct`` dataclass: its array fields go into ``arrays.npz`` (read with
``allow_pickle=False``) and its other fields, with the class name and a format version, into
``meta.json``. Only classes registered in ``SIMULATOR_CLASSES`` can be loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from simfluence_jax.registry import Registry
from simfluence_jax.simulators.featurized import FeaturizedSimulator
from simfluence_jax.simulators.linear import LinearSimulator, MeanSimulator
from simfluence_jax.simulators.segmented import SegmentedSimulator

FORMAT_NAME = "simfluence_jax.Simulator"
FORMAT_VERSION = 1

SIMULATOR_CLASSES: Registry[type] = Registry("simulator class")
SIMULATOR_CLASSES.register("LinearSimulator")(LinearSimulator)
SIMULATOR_CLASSES.register("MeanSimulator")(MeanSimulator)
SIMULATOR_CLASSES.register("SegmentedSimulator")(SegmentedSimulator)
SIMULATOR_CLASSES.register("FeaturizedSimulator")(FeaturizedSimulator)


def save_simulator(sim, path: str | os.PathLike) -> Path:
    """Writes ``sim`` to directory ``path`` (replaced atomically if it exists)."""
    cls_name = type(sim).__name__
    SIMULATOR_CLASSES.get(cls_name)
    arrays, fields = {}, {}
    for f in dataclasses.fields(sim):
        value = getattr(sim, f.name)
        if isinstance(value, (str, bool, int, float)) or value is None:
            fields[f.name] = value
        else:
            arrays[f.name] = np.asarray(value)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        np.savez(tmp / "arrays.npz", **arrays)
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "class": cls_name,
                "fields": fields}  # fmt: skip
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_simulator(path: str | os.PathLike):
    """Reads a simulator written by ``save_simulator``."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise ValueError(f"no saved simulator at {path} (meta.json missing)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a saved simulator (format {meta.get('format')!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} was written in simulator format version {meta.get('version')}; this "
            f"version reads {FORMAT_VERSION}"
        )
    cls = SIMULATOR_CLASSES.get(meta["class"])
    with np.load(path / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return cls(**arrays, **meta["fields"])
