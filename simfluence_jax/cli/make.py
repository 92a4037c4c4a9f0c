"""Subcommands that make run sets: ``simfluence run`` (the whole experiment), ``generate``
(runs into a run store) and ``import`` (runs logged elsewhere, through the registered
importers)."""

from __future__ import annotations

from pathlib import Path

from simfluence_jax.cli.common import claim, read_verdict
from simfluence_jax.cli.gin_edge import configs, operative_config, write_operative_config


def cmd_run(args) -> Path:
    """``simfluence run``: makes (or reuses) the runs, fits, evaluates, retrains the
    counterfactual and writes the report; prints the table. Returns the report folder."""
    from simfluence_jax.pipeline.experiment import run_experiment

    runs_cfg, fit_cfg, cf_cfg, exp = configs()
    verdict = read_verdict(args.attribution_verdict)
    with claim(args, args.out or exp.output_dir) as out:
        result = run_experiment(
            runs_cfg, fit_cfg, cf_cfg, out_dir=out, config_text=operative_config(),
            title=exp.title, progress=not args.no_progress,
            attribution_verdict=verdict,
        )  # fmt: skip
    from simfluence_jax.evaluation import format_table

    print(format_table(result.table))
    print(f"\nReport: {out / 'report.md'}")
    return out


def cmd_generate(args) -> Path:
    """``simfluence generate``: makes or resumes the runs in a run store under the output
    folder. Returns the saved run set (``<out>/runset``), or, with ``--process_count > 1``,
    the output folder (a last call without it collects and saves the run set)."""
    from simfluence_jax.pipeline.generate import generate_runs, store_name

    runs_cfg, _, _, exp = configs()
    # The processes of one multi-process job share the folder; anyone else is kept out.
    with claim(args, args.out or exp.output_dir, shared=args.process_count > 1) as out:
        write_operative_config(out)
        runs = generate_runs(
            runs_cfg, out / store_name(runs_cfg), config_text=operative_config(),
            progress=not args.no_progress, process_index=args.process_index,
            process_count=args.process_count,
        )  # fmt: skip
        if args.process_count > 1:
            print(
                f"process {args.process_index}: {runs.num_runs} runs complete so far; run "
                "`simfluence generate` once more without --process_count when all are done"
            )
            return out
        path = runs.save(out / "runset", overwrite=True)
    print(f"{runs} saved to {path}")
    return path


def cmd_import(args) -> Path:
    """``simfluence import``: reads runs logged elsewhere and saves them as a run set.
    Returns the saved folder."""
    from simfluence_jax.importers import IMPORTERS, read_ids

    pool = {
        "train_ids": read_ids(args.train_ids) if args.train_ids else None,
        "test_ids": read_ids(args.test_ids) if args.test_ids else None,
        "batch_size": args.batch_size,
    }
    with claim(args, args.out, kind="runset", overwrite=args.overwrite) as out:
        runs = IMPORTERS.get(args.format).read_args(args, pad=args.pad, **pool)
        path = runs.save(out, overwrite=True)  # claimed: ours to replace, or new
    print(f"{runs} imported and saved to {path}")
    print(f"next: simfluence fit --runs {path} --out sims/")
    return path
