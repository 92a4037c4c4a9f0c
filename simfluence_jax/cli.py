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
import dataclasses
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import numpy as np

from simfluence_jax import io as sio
from simfluence_jax.locks import StoreBusyError
from simfluence_jax.pipeline import config as cfgs


def _gin():
    # gin's system-path reader calls importlib.util without importing it; outside a source
    # checkout nothing else may have imported it yet.
    import importlib.util  # noqa: F401

    import gin

    return gin


_CONFIGURED = False


def _bundled_gin_configs() -> Path:
    """``simfluence_jax/gin_configs`` in an installed wheel (package data), else the
    ``gin_configs/`` folder of the source checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "gin_configs"
    return installed if installed.is_dir() else here.parent / "gin_configs"


#: The bundled gin files; ``include 'models/minilm.gin'`` resolves against this folder.
GIN_CONFIGS = _bundled_gin_configs()


def find_gin_file(name: str | Path) -> Path:
    """A gin file by path, or else among the bundled configs: ``quickstart.gin``,
    ``experiments/quickstart.gin`` and ``gin_configs/experiments/quickstart.gin`` all name
    the bundled quickstart, from any working directory."""
    path = Path(name)
    if path.exists():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("gin_configs",) else path.parts
    for folder in (GIN_CONFIGS, GIN_CONFIGS / "experiments"):
        candidate = folder.joinpath(*parts)
        if parts and candidate.is_file():
            return candidate
    raise ValueError(
        f"gin file {name} does not exist (nor among the bundled configs in {GIN_CONFIGS})"
    )


def _register_configurables():
    """Makes the pipeline's config records gin-configurable (once, at the entry point)."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    gin = _gin()
    for cls in (cfgs.RunsConfig, cfgs.FitConfig, cfgs.CounterfactualConfig):
        gin.external_configurable(cls, cls.__name__)
    gin.external_configurable(Experiment, "Experiment")
    _CONFIGURED = True


class Experiment:
    """Where the experiment writes and what it calls itself (gin: ``Experiment.output_dir``)."""

    def __init__(self, output_dir: str = "outputs/experiment", title: str = "simfluence_jax"):
        self.output_dir = output_dir
        self.title = title


def parse_gin(gin_files, bindings) -> None:
    """Parses gin files and ``NAME=VALUE`` bindings; errors name the file or binding."""
    _register_configurables()
    gin = _gin()
    gin.clear_config()
    gin_files = [find_gin_file(f) for f in gin_files]
    for f in gin_files:
        gin.add_config_file_search_path(str(f.resolve().parent.parent))
    gin.add_config_file_search_path(str(GIN_CONFIGS))
    # gin logs an error for every search path an include is not found in before the one it
    # is found in; a missing include still raises below, naming the file.
    quiet = logging.Filter()
    quiet.filter = lambda record: not str(record.msg).startswith("Path not found")
    logging.getLogger().addFilter(quiet)
    try:
        gin.parse_config_files_and_bindings([str(f) for f in gin_files], list(bindings))
    except (ValueError, KeyError, SyntaxError, ImportError, OSError) as e:
        raise ValueError(f"bad gin configuration: {_one_line(e)}") from None
    finally:
        logging.getLogger().removeFilter(quiet)


def _one_line(err: BaseException) -> str:
    """gin's message on one line: its first line, then where (``In bindings string line 1``
    and the binding itself) in parentheses."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(err).__name__
    return f"{lines[0]} ({'; '.join(lines[1:])})"


def register_configurable(cls, name: str | None = None) -> None:
    """Makes an experiment's own config record gin-configurable as ``name`` (default: its
    class name), before its gin files are parsed; a name already registered is kept."""
    gin = _gin()
    try:
        gin.get_configurable(name or cls.__name__)
    except ValueError:
        # An earlier parse in the same process locks the config; registering is still fine.
        with gin.unlock_config():
            gin.external_configurable(cls, name or cls.__name__)


def configured(name: str):
    """The configurable ``name`` made with its gin bindings; a dataclass record's fields are
    checked against their annotations. ``ValueError`` names a missing or bad binding."""
    try:
        out = _gin().get_configurable(name)()
    except (TypeError, ValueError) as e:
        raise ValueError(f"missing or bad gin binding: {e}") from None
    if dataclasses.is_dataclass(out):
        _check_types(out)
    return out


def parse_experiment(argv, record, *, description: str, default_gin, flags, variant):
    """The command line of an experiment entry point (``experiments/*.py``), parsed into gin.

    Args:
      argv: the arguments (``--gin_file``, the variant flag, ``flags``, ``--gin.NAME=VALUE``).
      record: the experiment's config class, registered as a gin configurable of its name.
      description: the ``--help`` text.
      default_gin: the gin file used when no ``--gin_file`` (and no variant) is given.
      flags: ``{"--flag": (gin binding, type)}`` shortcuts for bindings.
      variant: ``(flag, gin file, help)``: a switch that adds a bundled config (small sizes).

    Returns:
      ``(record, RunsConfig, FitConfig, operative config text)``.
    """
    flag, variant_gin, variant_help = variant
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--gin_file", action="append", default=None, help=f"default: {default_gin}")
    ap.add_argument(
        flag, dest="variant", action="store_true", help=f"{variant_help} ({variant_gin})"
    )
    for name, (binding, kind) in flags.items():
        ap.add_argument(name, dest=binding, type=kind, metavar=kind.__name__.upper(),
                        help=f"sets {binding}")  # fmt: skip
    args, rest = ap.parse_known_args(argv)
    unknown = [a for a in rest if not a.startswith("--gin.")]
    if unknown:
        ap.error(f"unrecognized arguments: {' '.join(unknown)}")
    files = list(args.gin_file or []) + ([variant_gin] if args.variant else [])
    given = {binding: vars(args)[binding] for binding, _ in flags.values()}
    bindings = [f"{b} = {v!r}" for b, v in given.items() if v is not None]
    bindings += [a.split("--gin.", 1)[1] for a in rest]
    register_configurable(record)
    parse_gin(files or [default_gin], bindings)
    runs_cfg, fit_cfg, _, _ = configs()
    return configured(record.__name__), runs_cfg, fit_cfg, operative_config()


def configs():
    """The gin-bound ``(RunsConfig, FitConfig, CounterfactualConfig, Experiment)``."""
    return tuple(configured(n) for n in ("RunsConfig", "FitConfig", "CounterfactualConfig",
                                         "Experiment"))  # fmt: skip


def _check_types(cfg) -> None:
    """Checks the gin-bound fields of a config record against their annotations (so that
    ``--gin.FitConfig.num_fit="'abc'"`` is named here, not a TypeError deep inside)."""
    import typing

    hints = typing.get_type_hints(type(cfg))
    for field in dataclasses.fields(cfg):
        hint = hints.get(field.name, typing.Any)
        value = getattr(cfg, field.name)
        if not _matches(value, hint):
            raise ValueError(
                f"bad gin value: {type(cfg).__name__}.{field.name} = {value!r} "
                f"({type(value).__name__}); expected {_hint_name(hint)}"
            )


def _matches(value, hint) -> bool:
    import collections.abc
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
    if origin in (collections.abc.Mapping, dict):
        return isinstance(value, collections.abc.Mapping)
    return True


def _hint_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def operative_config() -> str:
    """Every gin binding after parsing, includes expanded (``gin.config_str()``): the text
    saved as ``operative_config.gin``. Unlike gin's own operative config it lists bindings
    whether or not anything has used them yet."""
    return _gin().config_str()


def _claim(args, out, *, kind: str = "folder", overwrite: bool = False, shared: bool = False):
    """Claims output folder ``out`` for this command (``simfluence_jax.outputs.claim``):
    locked before anything is written, refused if it holds files we did not write."""
    from simfluence_jax import outputs

    return outputs.claim(
        out, command=f"simfluence {args.command}", kind=kind, overwrite=overwrite,
        wait=getattr(args, "wait", False), shared=shared,
    )  # fmt: skip


def _write_operative_config(out: Path) -> None:
    sio.atomic_write(out / "operative_config.gin", operative_config())


# ------------------------------------------------------------------------------------------
# Subcommands.


def cmd_run(args) -> Path:
    """``simfluence run``: makes (or reuses) the runs, fits, evaluates, retrains the
    counterfactual and writes the report; prints the table. Returns the report folder."""
    from simfluence_jax.pipeline.experiment import run_experiment

    runs_cfg, fit_cfg, cf_cfg, exp = configs()
    verdict = _read_verdict(args.attribution_verdict)
    with _claim(args, args.out or exp.output_dir) as out:
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
    with _claim(args, args.out or exp.output_dir, shared=args.process_count > 1) as out:
        _write_operative_config(out)
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


def _load_runs(path):
    from simfluence_jax.runs import RunSet

    return RunSet.load(path)


def _split(runs, fit_cfg):
    return runs.split(fit_cfg.num_fit, fit_cfg.num_val, fit_cfg.num_heldout)


def cmd_fit(args) -> Path:
    """``simfluence fit``: fits FitConfig's simulators on the fitting split of a saved run set,
    except those that need more than runs (the gradient baselines need the model and
    checkpoints, the featurized simulator embeddings), and saves each to ``<out>/<name>``.
    Returns ``--out``."""
    from simfluence_jax.fitting import required_inputs
    from simfluence_jax.pipeline.experiment import fit_simulators
    from simfluence_jax.simulators.io import save_simulator

    _, fit_cfg, _, _ = configs()
    runs = _load_runs(args.runs)
    fit, val, _ = _split(runs, fit_cfg)
    needs = {n: required_inputs(n) for n in fit_cfg.simulators}
    names = tuple(n for n in fit_cfg.simulators if not needs[n])
    skipped = [n for n in fit_cfg.simulators if needs[n]]
    if skipped:
        print(f"note: {', '.join(skipped)} need gradients or features; use `simfluence run`")
    with _claim(args, args.out) as out:
        sims = fit_simulators(dataclasses.replace(fit_cfg, simulators=names), fit, val)
        for name, sim in sims.items():
            save_simulator(sim, out / name)
        _write_operative_config(out)
    print(f"fitted {', '.join(sims)} on {fit.num_runs} runs; saved to {out}")
    return out


def _load_sims(folder):
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


def cmd_evaluate(args) -> dict:
    """``simfluence evaluate``: scores saved simulators on the held-out split. Returns the
    table ``{simulator: {metric: value}}``, also printed and, with ``--out``, saved as JSON."""
    from simfluence_jax.evaluation import evaluate_all, format_table

    _, fit_cfg, _, _ = configs()
    runs = _load_runs(args.runs)
    _, _, heldout = _split(runs, fit_cfg)
    if heldout is None:
        raise ValueError("the split leaves no held-out runs (FitConfig.num_heldout = 0)")
    table = evaluate_all(_load_sims(args.simulators), heldout)
    print(format_table(table))
    if args.out:
        sio.atomic_write(args.out, json.dumps(table, indent=1))
    return table


def _curriculum(args, runs):
    from simfluence_jax import counterfactuals as cf
    from simfluence_jax.sampling import load_curricula

    if args.curriculum:
        batches = load_curricula(args.curriculum, pool_size=runs.num_train if runs else None)
        base = batches[0] if batches.ndim == 3 else batches
    elif runs is not None:
        if not 0 <= args.run < runs.num_runs:
            raise ValueError(f"--run {args.run} out of range for {runs.num_runs} runs")
        base = runs.batches[args.run]
    else:
        raise ValueError("give --curriculum FILE, or --runs DIR with --run INDEX")

    pool = runs.num_train if runs is not None else None

    def ids(text, option):
        try:
            out = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"{option}: ids must be comma-separated integers, got {text!r}"
            ) from None
        outside = [i for i in out if i < 0 or (pool is not None and i >= pool)]
        if outside:
            raise ValueError(
                f"{option}: ids {outside} are not in the pool of {pool} training examples "
                f"(ids 0..{pool - 1})"
                if pool is not None
                else f"{option}: ids must be >= 0, got {outside}"
            )
        absent = sorted(set(out) - set(cf.flatten(base).tolist()))
        if absent:
            raise ValueError(
                f"{option}: ids {absent} do not occur in the curriculum being edited, so the "
                "edit would not change it"
            )
        return out

    edited = base
    if args.remove:
        edited = cf.remove(edited, ids(args.remove, "--remove"))
    if args.duplicate:
        edited = cf.duplicate(edited, ids(args.duplicate, "--duplicate"))
    if args.reverse:
        edited = cf.reverse(edited)
    if args.move_to_end:
        for i in ids(args.move_to_end, "--move_to_end"):
            edited = cf.move_to_end(edited, i)
    return base, edited


def cmd_simulate(args) -> np.ndarray:
    """``simfluence simulate``: simulates a curriculum and its edited version from a logged
    run's ``L_0``. Returns ``float32[2, T+1, M]``, the given and the edited trajectories (the
    shorter curriculum padded with empty steps), also written as CSV with ``--out``."""
    from simfluence_jax import counterfactuals as cf
    from simfluence_jax.rollout import simulate

    sims = _load_sims(args.simulators)
    if args.name not in sims:
        raise ValueError(f"no simulator {args.name!r} in {args.simulators}; have {sorted(sims)}")
    sim = sims[args.name]
    runs = _load_runs(args.runs) if args.runs else None
    sim_pool = getattr(sim, "num_train", None)
    if runs is not None and sim_pool is not None and sim_pool != runs.num_train:
        raise ValueError(
            f"the simulator {args.name!r} in {args.simulators} covers {sim_pool} training "
            f"examples but the run set {args.runs} has a pool of {runs.num_train}"
        )
    base, edited = _curriculum(args, runs)
    if runs is not None:
        r = args.run if not args.curriculum else 0
        L0 = runs.L0[r]
    else:
        raise ValueError("--runs is needed for the starting losses L_0")
    both = cf.stack([base, edited])
    rates = None if runs.learning_rates is None else runs.learning_rates[r]
    traj = simulate(sim, both, L0, learning_rates=cf.keep_schedule(rates, both.shape[1]))
    T0, T1 = base.shape[0], edited.shape[0]
    before, after = traj[0, T0], traj[1, T1]
    print(f"{args.name}: mean final test loss {before.mean():.4f} (given curriculum) -> "
          f"{after.mean():.4f} (edited); largest change on test example "
          f"{int(np.argmax(np.abs(after - before)))}")  # fmt: skip
    if args.out:
        header = "curriculum,step," + ",".join(f"test_{j}" for j in range(traj.shape[-1]))
        rows = [f"{c},{t}," + ",".join(f"{v:.6g}" for v in traj[c, t])
                for c in range(2) for t in range(traj.shape[1])]  # fmt: skip
        sio.atomic_write(args.out, header + "\n" + "\n".join(rows) + "\n")
        print(f"trajectories written to {args.out}")
    return traj


def cmd_attribute(args):
    """``simfluence attribute``: the training examples that help (or hurt) a test example
    most under a logged curriculum, by simulated removal (``attribution.removal_effects``),
    printed as a table; with ``--all``, the ``[N, M]`` score matrix over curricula sampled
    like the runs, written with ``attribution.save_scores`` to ``--out``. Returns the
    ``Effects`` or the score matrix."""
    from simfluence_jax import attribution

    sims = _load_sims(args.simulators)
    if args.name not in sims:
        raise ValueError(f"no simulator {args.name!r} in {args.simulators}; have {sorted(sims)}")
    sim = sims[args.name]
    runs = _load_runs(args.runs)
    sim_pool = getattr(sim, "num_train", None)
    if sim_pool is not None and sim_pool != runs.num_train:
        raise ValueError(
            f"the simulator {args.name!r} in {args.simulators} covers {sim_pool} training "
            f"examples but the run set {args.runs} has a pool of {runs.num_train}"
        )
    if not 0 <= args.run < runs.num_runs:
        raise ValueError(f"--run {args.run} out of range for {runs.num_runs} runs")
    r = args.run
    rates = None if runs.learning_rates is None else runs.learning_rates[r]
    opts = dict(learning_rates=rates, horizon=args.horizon, repack=args.repack)
    train_texts = runs.metadata.get("train_texts") or None
    if args.all:
        if not args.out:
            raise ValueError("--all writes the score matrix: give --out PATH (no suffix)")
        S = attribution.score_matrix(
            sim, runs, runs.L0[r], num_curricula=args.num_curricula, seed=args.seed, **opts
        )
        details = {"simulator": args.name, "runs": str(args.runs), "horizon": args.horizon,
                   "repack": args.repack, "num_curricula": args.num_curricula,
                   "seed": args.seed}  # fmt: skip
        paths = attribution.save_scores(
            args.out, S, train_ids=runs.train_ids, test_ids=runs.test_ids,
            texts=train_texts, details=details,
        )  # fmt: skip
        print(f"{args.name}: scores of {S.shape[0]} training x {S.shape[1]} test examples "
              f"over {args.num_curricula} sampled curricula written to "
              f"{' and '.join(map(str, paths))} (score > 0: removing the example raises "
              "the test loss, i.e. it helps)")  # fmt: skip
        return S
    if args.test is None:
        raise ValueError("give --test INDEX (a test example), or --all for the score matrix")
    effects = attribution.removal_effects(sim, runs.batches[r], runs.L0[r], **opts)
    k = min(args.top, len(effects.ids))
    ids, delta = attribution.top(effects, args.test, k=k, direction=args.direction)
    test_texts = runs.metadata.get("test_texts") or None
    about = f": {test_texts[args.test]}" if test_texts else ""
    print(f"{args.name}, run {r}, test example {runs.test_ids[args.test]}{about}")
    print(f"the {k} most {args.direction} training examples: the simulated change of its loss "
          f"(mean of the last {args.horizon} steps) when each is removed; > 0 means it "
          "helps")  # fmt: skip
    header = ["rank", "id", "effect"] + (["text"] if train_texts else [])
    rows = [
        [str(n + 1), str(runs.train_ids[i]), f"{d:+.5f}"]
        + ([_shorten(train_texts[i], 70)] if train_texts else [])
        for n, (i, d) in enumerate(zip(ids, delta))
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for line in [header, *rows]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip())
    return effects


def _shorten(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_import(args) -> Path:
    """``simfluence import``: reads runs logged elsewhere and saves them as a run set.
    Returns the saved folder."""
    from simfluence_jax.importers import IMPORTERS, read_ids

    pool = {
        "train_ids": read_ids(args.train_ids) if args.train_ids else None,
        "test_ids": read_ids(args.test_ids) if args.test_ids else None,
        "batch_size": args.batch_size,
    }
    with _claim(args, args.out, kind="runset", overwrite=args.overwrite) as out:
        runs = IMPORTERS.get(args.format).read_args(args, pad=args.pad, **pool)
        path = runs.save(out, overwrite=True)  # claimed: ours to replace, or new
    print(f"{runs} imported and saved to {path}")
    print(f"next: simfluence fit --runs {path} --out sims/")
    return path


def _read_verdict(path) -> str | dict | None:
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


def cmd_report(args) -> Path:
    """``simfluence report``: the report on a saved run set's held-out split, for saved
    simulators or, without ``--simulators``, ones fitted now into ``<out>/simulators``.
    Returns the report folder."""
    from simfluence_jax.evaluation import predict
    from simfluence_jax.fitting import simulator_group
    from simfluence_jax.reports import write_report

    _, fit_cfg, _, exp = configs()
    verdict = _read_verdict(args.attribution_verdict)
    runs = _load_runs(args.runs)
    _, _, heldout = _split(runs, fit_cfg)
    if heldout is None:
        raise ValueError("the split leaves no held-out runs (FitConfig.num_heldout = 0)")
    with _claim(args, args.out) as claimed:
        if args.simulators:
            sims = _load_sims(args.simulators)
        else:
            fit_dir = claimed / "simulators"
            cmd_fit(argparse.Namespace(runs=args.runs, out=fit_dir, wait=False, command="fit"))
            sims = _load_sims(fit_dir)
        out = write_report(
            claimed, heldout=heldout,
            predictions={n: predict(s, heldout) for n, s in sims.items()},
            groups={n: simulator_group(n) for n in sims}, config_text=operative_config(),
            title=exp.title, simulators=sims, attribution_verdict=verdict,
        )  # fmt: skip
    print(f"Report: {Path(out) / 'report.md'}")
    return Path(out)


# ------------------------------------------------------------------------------------------


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
            return f"{err.strerror} writing{name} ({sio.free_space(where)} there)"
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


if __name__ == "__main__":
    sys.exit(main())
