"""What the experiment entry points share on top of the gin edge (``simfluence_jax.cli.gin_edge``:
gin parsing, the operative config, claiming the output folder): their command lines, their
progress lines, the names chosen on the command line, and writing their results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any


def parse(argv, record, doc: str, gin, flags, variant):
    """``(record, RunsConfig, FitConfig, operative config text)``: the command line of an
    entry point (``gin_edge.parse_experiment``) whose ``--help`` is the first paragraph of
    ``doc`` (its module docstring)."""
    from simfluence_jax.cli import gin_edge

    return gin_edge.parse_experiment(argv, record, description=doc.split("\n\n")[0],
                                     default_gin=gin, flags=flags, variant=variant)  # fmt: skip


def parse_chosen(argv, record, doc: str, gin, field: str):
    """``(record, operative config text, names)`` for an entry point over a table of named
    entries (the mapping ``record.<field>``): ``--gin_file`` (default ``gin``), the bindings
    and ``--<field> A,B`` (the names to run, ``None`` for all; see :func:`chosen`)."""
    from simfluence_jax.cli import gin_edge

    parser = gin_edge.experiment_parser(doc.split("\n\n")[0], gin)
    parser.add_argument(f"--{field}", default=None, help="comma-separated names (default: all)")
    args, bindings = gin_edge.parse_arguments(parser, argv)
    exp, text = gin_edge.parse_record(record, args.gin_file or [gin], bindings)
    return exp, text, chosen(getattr(args, field), getattr(exp, field), field)


def logger(name: str) -> Callable[[str], None]:
    """A ``log(msg)`` that prints ``[name] msg`` at once (flushed)."""

    def log(msg: str) -> None:
        print(f"[{name}] {msg}", flush=True)

    return log


def chosen(names: str | None, known: Iterable[str], what: str) -> list[str] | None:
    """The comma-separated ``names`` of a command-line option (``None`` or none named: all of
    them, ``None``); ``SystemExit`` names the unknown ones and lists the known ``what``."""
    if names is None:
        return None
    picked = [n.strip() for n in names.split(",") if n.strip()]
    missing = sorted(set(picked) - set(known))
    if missing:
        raise SystemExit(f"unknown {what} {missing}; known: {sorted(known)}")
    return picked or None


def write_outputs(out: Path, files: Mapping[str, Any]) -> None:
    """Writes every ``name: content`` of ``files`` into folder ``out``, each atomically: text
    as it is, anything else as strict JSON (``reports.render.json_text``)."""
    from simfluence_jax.fileio import atomic_write
    from simfluence_jax.reports.render import json_text

    for name, content in files.items():
        atomic_write(Path(out) / name, content if isinstance(content, str) else json_text(content))


def claim_with_retrained(output_dir, retrained_dir, *, command: str, config_text: str):
    """A context manager claiming ``output_dir`` (with the operative config) and, when it is
    another folder, ``retrained_dir`` shared: only its ``retrained/`` cache of real
    retrainings is read and written, as the counterfactual benchmark (which claims its own
    folder shared) and other studies may do at the same time. Yields ``output_dir``."""
    import contextlib

    from simfluence_jax import outputs
    from simfluence_jax.cli import gin_edge

    @contextlib.contextmanager
    def claims():
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(
                gin_edge.claim_output(output_dir, command=command, config_text=config_text)
            )
            if outputs.resolve(retrained_dir) != out:
                stack.enter_context(gin_edge.claim_output(retrained_dir, command=command,
                                                          shared=True))  # fmt: skip
            yield out

    return claims()
