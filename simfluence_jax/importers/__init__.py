"""Runs logged by other frameworks, read into a validated :class:`~simfluence_jax.runs.RunSet`.

Formats, one module each, declared in its ``EXTENSIONS`` and found by :data:`IMPORTERS`
(which ``simfluence import`` reads):

* ``gptfluence`` (:mod:`.gptfluence`): GPTfluence's run directories, one per run
  (:func:`read_gptfluence`; :func:`write_gptfluence` writes them, with a manifest that makes
  reading them back exact);
* ``long`` (:mod:`.long`): long form, CSV (with a header row) or JSON lines, one file of
  losses and one of curricula (:func:`read_long`).

:func:`read_ids` reads the pool or the test ids from a file, for runs whose files do not
carry them. The checks every format shares are in :mod:`.checks` and :mod:`.readers`; the
assembly of the runs read into one ``RunSet`` is :mod:`.assemble`.

Every format follows one convention: a run's losses are logged at consecutive steps s0,
s0+1, ..., s0+T; the losses at the first logged step s0 are L_0, and the batch of step t moves
the loss from step t-1 to step t, so the curriculum is the batches of steps s0+1 .. s0+T.
Batches logged at steps up to s0 are ignored (no logged loss precedes them).

Ids may be integers or strings, and are never guessed: they are compared as the files
spell them (JSON keeps its types; text ids, as CSV holds them, become integers only when
every id of the file is a canonical integer such as ``7``, not ``07``, ``+7`` or `` 7``), and
two spellings of one integer (``1`` and ``01``) are an error naming both. Training ids become
positions in ``train_ids``: the sorted distinct ids of all runs, or the ``train_ids`` you pass
(``train_ids=range(200)`` keeps integer ids 0..199 as they are). Test examples keep the order
of their first appearance, or the order of the ``test_ids`` you pass; every run must log the
same test examples. Batches of different sizes are padded with -1 to the widest batch, or to
the ``batch_size`` you pass.

Every malformed input raises a ``ValueError`` that starts ``FILE:LINE:`` (or ``FILE:`` when
the problem is something missing) and names the problem: a missing file, a line that is not
valid JSON (a truncated file), a step missing from the middle of a run or given twice, a
test example missing in one run, an id given twice, NaN or infinite losses or ones beyond
float32's range, empty batches, one run directory given twice (also through a symbolic
link), and runs of different lengths unless ``pad=True``. Files may start with a UTF-8
byte-order mark; CSV fields may be of any length.

``pad=True`` accepts runs of different lengths by cutting every run to the shortest one
(the later steps of longer runs are dropped, and ``metadata["logged_steps"]`` records the
original lengths). The time axis cannot be padded instead: a run set holds no empty steps,
because under alpha = sum A_i an empty batch would read as the loss collapsing to zero.

A new format is a module here that declares an :class:`Importer` in its ``EXTENSIONS`` (see
:mod:`.registry`), and its test (CONTRIBUTING.md, "Adding an importer"); nothing else lists
it. The imports below export the built-in readers; they register nothing.
"""

from simfluence_jax.importers.assemble import common_length
from simfluence_jax.importers.checks import Id
from simfluence_jax.importers.gptfluence import (
    GPTFLUENCE_BATCHES,
    GPTFLUENCE_LOSSES,
    GPTFLUENCE_MANIFEST,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    find_run_dirs,
    read_gptfluence,
)
from simfluence_jax.importers.gptfluence_writer import write_gptfluence
from simfluence_jax.importers.ids import read_ids
from simfluence_jax.importers.long import CURRICULUM_COLUMNS, LOSS_COLUMNS, read_long
from simfluence_jax.importers.registry import IMPORTERS, Importer, Input

__all__ = [
    "CURRICULUM_COLUMNS",
    "GPTFLUENCE_BATCHES",
    "GPTFLUENCE_LOSSES",
    "GPTFLUENCE_MANIFEST",
    "IMPORTERS",
    "LOSS_COLUMNS",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "Id",
    "Importer",
    "Input",
    "common_length",
    "find_run_dirs",
    "read_gptfluence",
    "read_ids",
    "read_long",
    "write_gptfluence",
]
