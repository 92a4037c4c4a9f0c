"""A ``RunSet`` written as GPTfluence run directories (:func:`write_gptfluence`), with the
manifest that lets :func:`~simfluence_jax.importers.gptfluence.read_gptfluence` give it
back exactly."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from simfluence_jax import fileio
from simfluence_jax.importers.assemble import id_list
from simfluence_jax.importers.gptfluence import (
    GPTFLUENCE_BATCHES,
    GPTFLUENCE_LOSSES,
    GPTFLUENCE_MANIFEST,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    read_manifest,
)
from simfluence_jax.runs import RunSet


def write_gptfluence(
    runs: RunSet, out_dir: str | os.PathLike, *, first_step: int = 0, overwrite: bool = False
) -> list[Path]:
    """Writes a ``RunSet`` as GPTfluence run directories ``out_dir/run_000``, ..., and a
    manifest ``out_dir/simfluence_manifest.json`` that lets :func:`read_gptfluence` give
    back exactly this run set.

    Ids are written by name (``train_ids[i]``, ``test_ids[j]``), padding is dropped, losses
    are written as exact decimal forms of their float32 values, and the learning rates, when
    the run set has them, go to ``train_samples_id.json`` as ``learning_rate``. The manifest
    holds what the run directories cannot: the pool (``train_ids`` in order, unused ones
    included), the ``test_ids`` in order, the batch width B and the metadata.

    The folder is written whole into a temporary sibling and swapped in
    (:func:`simfluence_jax.fileio.replace_directory`); files follow the umask.

    Args:
      runs: the run set (its ``train_ids`` and ``test_ids`` distinct).
      out_dir: the folder (created); it must be new or empty, or, with ``overwrite``,
        hold only what this function wrote there before.
      first_step: the step at which L_0 is logged: 0 (the losses of the starting model), or
        1 as GPTfluence's published runs (L_0 is then the loss after step 1 and the
        curriculum starts at step 2; no batch is written for step 1).
      overwrite: replace a folder this function wrote. A folder holding anything else (no
        manifest, or a file the manifest does not list) is never replaced.

    Returns:
      The run directories, in run order.

    Raises:
      ValueError: the folder is not empty (without ``overwrite``) or holds files this
        function did not write, or ids of the run set repeat.
    """
    if first_step < 0:
        raise ValueError(f"first_step must be >= 0, got {first_step}")
    out = Path(out_dir)
    train_ids = id_list(runs.train_ids, "the run set's train_ids")
    test_ids = id_list(runs.test_ids, "the run set's test_ids")
    _check_replaceable(out, overwrite=overwrite)
    width = max(3, len(str(runs.num_runs - 1)))
    names = [f"run_{r:0{width}d}" for r in range(runs.num_runs)]
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "runs": names,
        "train_ids": train_ids,
        "test_ids": test_ids,
        "batch_size": runs.batch_size,
        "first_step": first_step,
        "metadata": runs.metadata,
    }
    steps = range(first_step, first_step + runs.num_steps + 1)
    with fileio.replace_directory(out) as tmp:
        for r, name in enumerate(names):
            lines = []
            for t in range(runs.num_steps):
                entry: dict[str, Any] = {
                    "step": first_step + t + 1,
                    "samples_id": [train_ids[i] for i in runs.batches[r, t] if i >= 0],
                }
                if runs.learning_rates is not None:
                    entry["learning_rate"] = float(runs.learning_rates[r, t])
                lines.append(json.dumps(entry))
            trajectories = [
                json.dumps({
                    "id": tid,
                    "loss_trajectory": [
                        {"step": s, "loss": float(x)} for s, x in zip(steps, runs.losses[r, :, j])
                    ],
                })
                for j, tid in enumerate(test_ids)
            ]  # fmt: skip
            os.mkdir(tmp / name)  # 0o777 less the umask
            fileio.write_files(tmp / name, {
                GPTFLUENCE_BATCHES: "\n".join(lines) + "\n",
                GPTFLUENCE_LOSSES: "\n".join(trajectories) + "\n",
            })  # fmt: skip
        fileio.write_files(tmp, {GPTFLUENCE_MANIFEST: fileio.json_bytes(manifest)})
    return [out / name for name in names]


def _check_replaceable(out: Path, *, overwrite: bool) -> None:
    """Raises unless ``out`` is new, empty, or (with ``overwrite``) holds only what
    :func:`write_gptfluence` wrote there."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    manifest_file = out / GPTFLUENCE_MANIFEST
    if not manifest_file.is_file():
        raise ValueError(
            f"{out} is not empty and was not written by write_gptfluence (it has no "
            f"{GPTFLUENCE_MANIFEST}); nothing is replaced: choose a new or empty folder"
        )
    runs = set(read_manifest(manifest_file)["runs"])
    run_files = {GPTFLUENCE_BATCHES, GPTFLUENCE_LOSSES}

    def plain(path: Path, names: set[str], is_dir: bool) -> bool:
        kind_ok = path.is_dir() if is_dir else path.is_file()
        return path.name in names and kind_ok and not path.is_symlink()

    for entry in sorted(out.iterdir()):
        if entry.name == GPTFLUENCE_MANIFEST:
            continue
        if not plain(entry, runs, is_dir=True):
            foreign = entry
        else:
            foreign = next((f for f in sorted(entry.iterdir()) if not plain(f, run_files, False)),
                           None)  # fmt: skip
        if foreign is not None:
            raise ValueError(
                f"{out} holds {foreign}, which write_gptfluence did not write; nothing is "
                "replaced: move it out or choose another folder"
            )
    if not overwrite:
        raise ValueError(
            f"{out} already holds runs written by write_gptfluence; pass overwrite=True to "
            "replace them"
        )
