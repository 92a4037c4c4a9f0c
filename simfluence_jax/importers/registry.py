"""The registry of importers: name -> :class:`Importer`, read by ``simfluence import``.

Each format module of this package declares its reader with what the command line needs to
call it (its one-line help and the files it reads), so neither the package nor the command
line holds a list of formats::

    EXTENSIONS = {"importer": {"long": Importer(
        read=read_long, help="long-form CSV or JSON lines",
        inputs=(Input("--losses", "rows: run, step, test_id, loss"), ...),
    )}}

``IMPORTERS`` finds the declarations by listing the package's modules (and extension modules
outside it, ``simfluence_jax.registry``).

``simfluence import NAME INPUTS... --out DIR`` then calls
``read(*inputs, pad=, train_ids=, test_ids=, batch_size=)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from simfluence_jax.registry import Registry
from simfluence_jax.runs import RunSet


@dataclasses.dataclass(frozen=True)
class Input:
    """One input of an importer, passed to its reader in order: a positional argument
    (``"run_dirs"``) or a required option (``"--losses"``) of ``simfluence import NAME``."""

    flag: str
    help: str
    nargs: str | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments that holds the value."""
        return self.flag.lstrip("-").replace("-", "_")

    def add_to(self, parser) -> None:
        """Adds the argument to an ``argparse`` parser."""
        kwargs = {"help": self.help}
        if self.nargs is not None:
            kwargs["nargs"] = self.nargs
        if self.metavar is not None:
            kwargs["metavar"] = self.metavar
        if self.flag.startswith("-"):
            kwargs["required"] = True
        parser.add_argument(self.flag, **kwargs)


@dataclasses.dataclass(frozen=True)
class Importer:
    """A format of runs logged elsewhere.

    Attributes:
      read: ``read(*inputs, pad=False, train_ids=None, test_ids=None, batch_size=None)
        -> RunSet``; every malformed input is a ``ValueError`` naming the file and line.
      help: one line, shown by ``simfluence import --help``.
      inputs: the files the reader takes, in the order of its positional arguments.
    """

    read: Callable[..., RunSet]
    help: str
    inputs: tuple[Input, ...]

    def read_args(self, args, **options) -> RunSet:
        """Calls :attr:`read` with the inputs parsed from the command line."""
        return self.read(*(getattr(args, i.dest) for i in self.inputs), **options)


IMPORTERS: Registry[Importer] = Registry("importer", packages=("simfluence_jax.importers",))
