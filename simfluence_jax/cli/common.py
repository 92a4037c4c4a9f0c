"""What the subcommands share: claiming the output folder, loading run sets and saved
simulators, the split of FitConfig, the ``--attribution_verdict`` file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from simfluence_jax.cli.gin_edge import claim_output


def claim(
    args,
    out,
    *,
    kind: str = "folder",
    overwrite: bool = False,
    shared: bool = False,
    config_text: str | None = None,
):
    """Claims output folder ``out`` for this command (:func:`.gin_edge.claim_output`):
    locked before anything is written, refused if it holds files we did not write."""
    return claim_output(
        out, command=f"simfluence {args.command}", kind=kind, overwrite=overwrite,
        wait=getattr(args, "wait", False), shared=shared, config_text=config_text,
    )  # fmt: skip


def load_runs(path):
    from simfluence_jax.runs import RunSet

    return RunSet.load(path)


def split_runs(runs, fit_cfg):
    return runs.split(fit_cfg.num_fit, fit_cfg.num_val, fit_cfg.num_heldout)


def load_sims(folder):
    from simfluence_jax.simulators.io import load_simulator

    folder = Path(folder)
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_dir() and p.name[0] != ".")
    except FileNotFoundError:
        raise ValueError(f"no saved simulators in {folder}: the folder does not exist") from None
    except PermissionError:
        raise ValueError(f"permission denied reading the simulators folder {folder}") from None
    except NotADirectoryError:
        raise ValueError(f"{folder} is not a folder of saved simulators") from None
    unreadable = [p for p in entries if not os.access(p, os.R_OK | os.X_OK)]
    found = [p for p in entries if (p / "meta.json").exists()]
    if not found:
        if unreadable:
            names = ", ".join(p.name for p in unreadable)
            raise ValueError(f"permission denied reading the saved simulators in {folder}: {names}")
        raise ValueError(f"no saved simulators in {folder}")
    return {p.name: load_simulator(p) for p in found}


def read_verdict(path) -> str | dict | None:
    """The ``--attribution_verdict`` file: a JSON object (``{name: value}``, e.g. the
    counterfactual benchmark's numbers) or plain text; ``None`` without one."""
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"--attribution_verdict {path}: {err.strerror or err}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()
    return value if isinstance(value, dict) else text.strip()
