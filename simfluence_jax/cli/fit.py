"""Subcommands on a saved run set: ``simfluence fit`` (simulators), ``evaluate`` (them, on
the held-out runs) and ``report``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from simfluence_jax import fileio
from simfluence_jax.cli.common import claim, load_runs, load_sims, read_verdict, split_runs
from simfluence_jax.cli.gin_edge import configs, operative_config, write_operative_config


def cmd_fit(args) -> Path:
    """``simfluence fit``: fits FitConfig's simulators on the fitting split of a saved run set,
    except those that need more than runs (the gradient baselines need the model and
    checkpoints, the featurized simulator embeddings), and saves each to ``<out>/<name>``.
    Returns ``--out``."""
    from simfluence_jax.fitting import required_inputs
    from simfluence_jax.pipeline.experiment import fit_simulators
    from simfluence_jax.simulators.io import save_simulator

    _, fit_cfg, _, _ = configs()
    runs = load_runs(args.runs)
    fit, val, _ = split_runs(runs, fit_cfg)
    needs = {n: required_inputs(n) for n in fit_cfg.simulators}
    names = tuple(n for n in fit_cfg.simulators if not needs[n])
    skipped = [n for n in fit_cfg.simulators if needs[n]]
    if skipped:
        print(f"note: {', '.join(skipped)} need gradients or features; use `simfluence run`")
    with claim(args, args.out) as out:
        sims = fit_simulators(dataclasses.replace(fit_cfg, simulators=names), fit, val)
        for name, sim in sims.items():
            save_simulator(sim, out / name)
        write_operative_config(out)
    print(f"fitted {', '.join(sims)} on {fit.num_runs} runs; saved to {out}")
    return out


def cmd_evaluate(args) -> dict:
    """``simfluence evaluate``: scores saved simulators on the held-out split. Returns the
    table ``{simulator: {metric: value}}``, also printed and, with ``--out``, saved as JSON."""
    from simfluence_jax.evaluation import evaluate_all, format_table

    _, fit_cfg, _, _ = configs()
    runs = load_runs(args.runs)
    _, _, heldout = split_runs(runs, fit_cfg)
    if heldout is None:
        raise ValueError("the split leaves no held-out runs (FitConfig.num_heldout = 0)")
    table = evaluate_all(load_sims(args.simulators), heldout)
    print(format_table(table))
    if args.out:
        fileio.atomic_write(args.out, json.dumps(table, indent=1))
    return table


def cmd_report(args) -> Path:
    """``simfluence report``: the report on a saved run set's held-out split, for saved
    simulators or, without ``--simulators``, ones fitted now into ``<out>/simulators``.
    Returns the report folder."""
    from simfluence_jax.evaluation import predict
    from simfluence_jax.fitting import simulator_group
    from simfluence_jax.reports import write_report

    _, fit_cfg, _, exp = configs()
    verdict = read_verdict(args.attribution_verdict)
    runs = load_runs(args.runs)
    _, _, heldout = split_runs(runs, fit_cfg)
    if heldout is None:
        raise ValueError("the split leaves no held-out runs (FitConfig.num_heldout = 0)")
    with claim(args, args.out) as claimed:
        if args.simulators:
            sims = load_sims(args.simulators)
        else:
            fit_dir = claimed / "simulators"
            cmd_fit(argparse.Namespace(runs=args.runs, out=fit_dir, wait=False, command="fit"))
            sims = load_sims(fit_dir)
        out = write_report(
            claimed, heldout=heldout,
            predictions={n: predict(s, heldout) for n, s in sims.items()},
            groups={n: simulator_group(n) for n in sims}, config_text=operative_config(),
            title=exp.title, simulators=sims, attribution_verdict=verdict,
        )  # fmt: skip
    print(f"Report: {Path(out) / 'report.md'}")
    return Path(out)
