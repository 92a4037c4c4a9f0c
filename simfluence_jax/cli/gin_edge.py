"""gin at the edge: what the ``simfluence`` command and every experiment entry point
(``experiments/*.py``) share to read their configuration and write their outputs.

* **Parsing**: :func:`parse_gin` reads gin files (by path or among the bundled configs,
  :func:`find_gin_file`) and ``NAME=VALUE`` bindings; :func:`parse_experiment` is the whole
  command line of an experiment entry point, built from :func:`experiment_parser`,
  :func:`parse_arguments` and :func:`parse_record` (which entry points with flags of their
  own call directly); :func:`configs`, :func:`configured` and :func:`runs_config` make the
  bound config records, their fields checked against their annotations.
* **The operative config**: :func:`operative_config` is the resolved config (every binding,
  includes expanded); :func:`write_operative_config` saves it as ``operative_config.gin``
  next to the outputs.
* **Output folders**: :func:`claim_output` claims an output folder
  (``simfluence_jax.outputs.claim``) and writes the operative config into it.

The library never reads gin; gin is imported here, when a function needs it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

from simfluence_jax import fileio
from simfluence_jax.pipeline import config as cfgs

#: The name of the resolved config written next to every output.
OPERATIVE_CONFIG = "operative_config.gin"


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
    here = Path(__file__).resolve().parents[1]  # simfluence_jax/
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


def experiment_parser(description: str, default_gin) -> argparse.ArgumentParser:
    """The argument parser of an experiment entry point: ``--gin_file`` (repeatable; the
    entry point uses ``default_gin`` when none is given). Add the entry point's own flags,
    then read it with :func:`parse_arguments`."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--gin_file", action="append", default=None, help=f"default: {default_gin}")
    return ap


def parse_arguments(ap: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, list[str]]:
    """``(args, bindings)``: ``ap``'s arguments and the ``--gin.NAME=VALUE`` bindings (as
    ``NAME=VALUE``); any other argument is an error of ``ap``."""
    args, rest = ap.parse_known_args(argv)
    unknown = [a for a in rest if not a.startswith("--gin.")]
    if unknown:
        ap.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args, [a.split("--gin.", 1)[1] for a in rest]


def parse_record(record, gin_files, bindings):
    """Parses ``gin_files`` and ``bindings`` for an experiment whose config class is
    ``record`` (registered as a gin configurable of its name). Returns ``(record made with
    its bindings, operative config text)``."""
    register_configurable(record)
    parse_gin(gin_files, bindings)
    return configured(record.__name__), operative_config()


def runs_config(gin_files, bindings=()):
    """The ``RunsConfig`` that ``gin_files`` and ``bindings`` give (parsed afresh; the other
    config records are checked too)."""
    parse_gin(gin_files, bindings)
    return configs()[0]


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
    ap = experiment_parser(description, default_gin)
    ap.add_argument(
        flag, dest="variant", action="store_true", help=f"{variant_help} ({variant_gin})"
    )
    for name, (binding, kind) in flags.items():
        ap.add_argument(name, dest=binding, type=kind, metavar=kind.__name__.upper(),
                        help=f"sets {binding}")  # fmt: skip
    args, extra = parse_arguments(ap, argv)
    files = list(args.gin_file or []) + ([variant_gin] if args.variant else [])
    given = {binding: vars(args)[binding] for binding, _ in flags.values()}
    bindings = [f"{b} = {v!r}" for b, v in given.items() if v is not None] + extra
    exp, text = parse_record(record, files or [default_gin], bindings)
    runs_cfg, fit_cfg, _, _ = configs()
    return exp, runs_cfg, fit_cfg, text


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


def write_operative_config(folder: str | Path, text: str | None = None) -> Path:
    """Writes ``text`` (default: :func:`operative_config`) as ``folder/operative_config.gin``,
    atomically. Returns the file."""
    path = Path(folder) / OPERATIVE_CONFIG
    fileio.atomic_write(path, operative_config() if text is None else text)
    return path


@contextlib.contextmanager
def claim_output(
    path: str | Path,
    *,
    command: str,
    config_text: str | None = None,
    kind: str = "folder",
    overwrite: bool = False,
    wait: bool | float = False,
    shared: bool = False,
) -> Iterator[Path]:
    """Claims output folder ``path`` for ``command`` (``simfluence_jax.outputs.claim``: locked
    before anything is written, refused if it holds files we did not write) and, if
    ``config_text`` is given, writes it first as the operative config. Yields the folder."""
    from simfluence_jax import outputs

    with outputs.claim(
        path, command=command, kind=kind, overwrite=overwrite, wait=wait, shared=shared
    ) as out:
        if config_text is not None:
            write_operative_config(out, config_text)
        yield out
