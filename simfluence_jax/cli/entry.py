"""The ``simfluence`` command line: gin-configured entry points to the pipeline.

Every subcommand takes ``--gin_file FILE`` (repeatable) and ``--gin.NAME=VALUE`` bindings,
e.g. ``--gin.RunsConfig.num_runs=24``. The configurable names are ``RunsConfig``,
``FitConfig``, ``CounterfactualConfig`` and ``Experiment`` (output folder and title). The
resolved config (every binding, includes expanded) is written as ``operative_config.gin``
next to the outputs of ``run``, ``generate``, ``fit`` and ``report``.

Examples::

    simfluence run --gin_file gin_configs/experiments/quickstart.gin
    simfluence generate --gin_file gin_configs/experiments/quickstart.gin --out runs/
    simfluence fit --runs runs/runset --out sims/
    simfluence evaluate --runs runs/runset --simulators sims/
    simfluence simulate --simulators sims/ --name linear --runs runs/runset --run 0 \\
        --remove 3,17 --out cf.csv
    simfluence attribute --runs runs/runset --simulators sims/ --run 30 --test 12 --top 10
    simfluence report --runs runs/runset --out report/
    simfluence import gptfluence runs/rte/seed-* --out imported/
    simfluence import long --losses losses.csv --curricula curricula.csv --out imported/
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from simfluence_jax import fileio
from simfluence_jax.cli.fit import cmd_evaluate, cmd_fit, cmd_report
from simfluence_jax.cli.gin_edge import parse_gin
from simfluence_jax.cli.make import cmd_generate, cmd_import, cmd_run
from simfluence_jax.cli.simulate import cmd_attribute, cmd_simulate
from simfluence_jax.locks import StoreBusyError


def _add_wait(sp) -> None:
    sp.add_argument(
        "--wait", nargs="?", const=True, default=False, type=float, metavar="SECONDS",
        help="if another process writes --out, wait for it (at most SECONDS) instead of "
        "stopping",
    )  # fmt: skip


def _add_verdict(sp) -> None:
    sp.add_argument(
        "--attribution_verdict", metavar="FILE",
        help="what real retraining measured about simulated effects (a JSON object of "
        "numbers, e.g. from the counterfactual benchmark, or a text), printed under the "
        "report's Attribution section",
    )  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    from simfluence_jax.importers import IMPORTERS

    doc = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(
        prog="simfluence", description=doc[0],
        epilog=textwrap.dedent(doc[1]), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name, fn, help_, example):
        sp = sub.add_parser(
            name, help=help_, description=f"{help_}\n\nExample:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        sp.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
        sp.set_defaults(fn=fn)
        return sp

    q = "gin_configs/experiments/quickstart.gin"
    sp = add("run", cmd_run, "Make runs, fit every simulator, evaluate, counterfactual, report.",
             f"simfluence run --gin_file {q}")  # fmt: skip
    sp.add_argument("--out", help="output folder (default: Experiment.output_dir)")
    sp.add_argument("--no_progress", action="store_true", help="no progress bars")
    _add_verdict(sp)
    _add_wait(sp)

    sp = add("generate", cmd_generate, "Make (or resume) training runs into a run store.",
             f"simfluence generate --gin_file {q} --out runs/")  # fmt: skip
    sp.add_argument("--out", help="output folder (default: Experiment.output_dir)")
    sp.add_argument("--no_progress", action="store_true")
    sp.add_argument("--process_index", type=int, default=0, help="this process (multi-host)")
    sp.add_argument("--process_count", type=int, default=1, help="processes sharing the store")
    _add_wait(sp)

    sp = add("fit", cmd_fit, "Fit the simulators of FitConfig on a saved run set.",
             "simfluence fit --runs runs/runset --out sims/")  # fmt: skip
    sp.add_argument("--runs", required=True, help="a saved RunSet folder")
    sp.add_argument("--out", required=True, help="folder for the fitted simulators")
    _add_wait(sp)

    sp = add("evaluate", cmd_evaluate, "Score saved simulators on the held-out runs.",
             "simfluence evaluate --runs runs/runset --simulators sims/")  # fmt: skip
    sp.add_argument("--runs", required=True)
    sp.add_argument("--simulators", required=True)
    sp.add_argument("--out", help="write the table as JSON here")

    sp = add("simulate", cmd_simulate,
             "Simulate a counterfactual curriculum: a file of ids, or edits of a logged run.",
             "simfluence simulate --simulators sims/ --name linear --runs runs/runset --run 0 "
             "--remove 3,17")  # fmt: skip
    sp.add_argument("--simulators", required=True)
    sp.add_argument("--name", default="linear", help="which saved simulator")
    sp.add_argument("--runs", help="a saved RunSet (its L_0 and curricula)")
    sp.add_argument("--run", type=int, default=0, help="logged run whose curriculum to edit")
    sp.add_argument("--curriculum", help="JSON or text file of ids, one batch per line")
    sp.add_argument("--remove", help="comma-separated ids to remove")
    sp.add_argument("--duplicate", help="comma-separated ids to see twice")
    sp.add_argument("--reverse", action="store_true", help="reverse the step order")
    sp.add_argument("--move_to_end", help="comma-separated ids to train on last")
    sp.add_argument("--out", help="write both trajectories as CSV here")

    sp = add("attribute", cmd_attribute,
             "Rank the training examples that help or hurt a test example, by simulated "
             "removal; or write the whole score matrix.",
             "simfluence attribute --runs runs/runset --simulators sims/ --run 30 --test 12 "
             "--top 10")  # fmt: skip
    sp.add_argument("--runs", required=True, help="a saved RunSet (curricula, L_0, texts)")
    sp.add_argument("--simulators", required=True)
    sp.add_argument("--name", default="linear", help="which saved simulator")
    sp.add_argument("--run", type=int, default=0,
                    help="logged run whose curriculum to attribute (e.g. a held-out one); its "
                    "L_0 and learning rates are used with --all too")  # fmt: skip
    sp.add_argument("--test", type=int, help="test example index (0-based)")
    sp.add_argument("--top", type=int, default=10, help="how many training examples to list")
    sp.add_argument("--direction", choices=("helpful", "harmful"), default="helpful")
    sp.add_argument("--horizon", type=int, default=1, help="average the last H steps' losses")
    sp.add_argument("--repack", action="store_true",
                    help="re-pack the remaining examples into full batches")  # fmt: skip
    sp.add_argument(
        "--all",
        action="store_true",
        help="the [train, test] score matrix over curricula sampled like the runs",
    )
    sp.add_argument("--num_curricula", type=int, default=1000, help="with --all")
    sp.add_argument("--seed", type=int, default=0, help="with --all: sampling seed")
    sp.add_argument("--out", help="with --all: path of the .npz and .csv (no suffix)")

    sp = add("import", cmd_import, "Import runs logged elsewhere into a saved run set.",
             "simfluence import gptfluence runs/rte/ --out imported/")  # fmt: skip
    formats = sp.add_subparsers(dest="format", metavar="FORMAT")
    formats.required = True
    for name in IMPORTERS:
        importer = IMPORTERS.get(name)
        fp = formats.add_parser(name, help=importer.help)
        for item in importer.inputs:
            item.add_to(fp)
    for fp in formats.choices.values():  # the pool, where the files do not carry it
        ids = "one a line, or a JSON list"
        fp.add_argument("--train_ids", metavar="FILE", help=f"the pool of training ids in "
                        f"order, {ids} (default: the ids the runs use, sorted)")  # fmt: skip
        fp.add_argument("--test_ids", metavar="FILE", help=f"the test ids in order, {ids}")
        fp.add_argument("--batch_size", type=int, metavar="B", help="the batch width")

    for fp in formats.choices.values():
        fp.add_argument("--out", required=True, help="folder for the saved run set")
        fp.add_argument(
            "--pad", action="store_true", help="cut runs of different lengths to the shortest"
        )
        fp.add_argument(
            "--overwrite", action="store_true",
            help="replace --out if it holds a run set saved by simfluence_jax (nothing else)",
        )  # fmt: skip
        _add_wait(fp)

    sp = add("report", cmd_report, "Write the report (tables, plots) for a saved run set.",
             "simfluence report --runs runs/runset --out report/")  # fmt: skip
    sp.add_argument("--runs", required=True)
    sp.add_argument("--simulators", help="saved simulators (default: fit them now)")
    sp.add_argument("--out", required=True)
    _add_verdict(sp)
    _add_wait(sp)
    return p


def _error_line(err: BaseException) -> str | None:
    """One line for an error the user can act on, or ``None`` for a bug (traceback)."""
    import errno
    import tokenize

    if isinstance(err, StoreBusyError):
        return (
            f"{err.what} is being written by another process: {err.who}. Only one writer at "
            "a time: wait for it to finish (or pass --wait to wait for it), or stop it first"
        )
    if isinstance(err, tokenize.TokenError):
        return f"bad gin configuration: unbalanced parenthesis or bracket ({err.args[0]})"
    if isinstance(err, ValueError):
        return str(err)
    if isinstance(err, OSError):
        name = f" {err.filename}" if err.filename else ""
        if not err.strerror or type(err).__name__ == "StoreWriteError":
            return str(err)
        if isinstance(err, PermissionError):
            return f"permission denied:{name} ({err.strerror})"
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            where = err.filename or "."
            return f"{err.strerror} writing{name} ({fileio.free_space(where)} there)"
        return f"{err.strerror}:{name}" if name else err.strerror
    return None


def main(argv=None) -> int:
    """Runs one ``simfluence`` subcommand. Returns the exit status: 0, or 1 after printing a
    ``ValueError`` or ``OSError`` to stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    bindings = [a[len("--gin.") :] for a in argv if a.startswith("--gin.")]
    rest = [a for a in argv if not a.startswith("--gin.")]
    debug = "--debug" in rest
    rest = [a for a in rest if a != "--debug"]
    args = _parser().parse_args(rest)
    if isinstance(getattr(args, "out", None), str) and args.command in ("run", "generate"):
        # --out is the output folder: it satisfies a config's required Experiment.output_dir.
        bindings.append(f"Experiment.output_dir = {args.out!r}")
    try:
        parse_gin(args.gin_file, bindings)
        args.fn(args)
    except Exception as e:
        line = _error_line(e)
        if line is None or debug:
            if line is None:
                raise
            import traceback

            traceback.print_exc()
        print(f"simfluence {args.command}: error: {line}", file=sys.stderr)
        return 1
    return 0
