"""Runs in long form, CSV (with a header row) or JSON lines, read into a ``RunSet``
(:func:`read_long`):

- losses: one row per (run, step, test example), columns ``run, step, test_id, loss``;
- curricula: one row per (run, step), columns ``run, step, train_ids`` (and optionally
  ``learning_rate``); ``train_ids`` is a JSON list or a ``;``-joined string.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from simfluence_jax.importers.assemble import RawRun, assemble, kind_of
from simfluence_jax.importers.checks import (
    Id,
    check_batch_line,
    check_consecutive,
    check_id,
    check_number,
    check_step,
    file_error,
    first_line_after,
    settle_ids,
)
from simfluence_jax.importers.readers import require_file, table_rows
from simfluence_jax.importers.registry import Importer, Input
from simfluence_jax.runs import RunSet

LOSS_COLUMNS = ("run", "step", "test_id", "loss")
CURRICULUM_COLUMNS = ("run", "step", "train_ids")


def read_long(
    losses_path: str | os.PathLike,
    curricula_path: str | os.PathLike,
    *,
    pad: bool = False,
    train_ids: Sequence[Id] | np.ndarray | None = None,
    test_ids: Sequence[Id] | np.ndarray | None = None,
    batch_size: int | None = None,
) -> RunSet:
    """Reads runs in long form (CSV with a header row, or JSON lines) into a ``RunSet``.

    Args:
      losses_path: rows ``run, step, test_id, loss``, one per run, step and test example.
      curricula_path: rows ``run, step, train_ids`` (a JSON list, or ids joined by ``;``),
        optionally ``learning_rate``; one per run and step.
      pad: accept runs of different lengths by cutting all of them to the shortest.
      train_ids: the pool of training ids; batch entries become positions in it. Defaults
        to the sorted distinct ids the runs use.
      test_ids: the test examples in the order to keep (exactly those logged). Defaults to
        the order of their first appearance.
      batch_size: the batch width B (at least the widest batch). Defaults to the widest.

    Runs keep the order of their first appearance in the losses file and are matched to the
    curricula by name. Ids are compared as the file spells them; text ids become integers
    only when every test id (or every training id) of the file is a canonical integer
    (``7``, not ``07`` or ``+7``), and two spellings of one integer are an error. The
    format is told by the suffix (``.csv``, ``.tsv``; ``.jsonl``, ``.json``, ``.ndjson``) or
    else by the first character (``{`` for JSON lines).

    Returns:
      A validated ``RunSet``; ``metadata`` holds ``source``, ``runs`` (the run names, as
      strings) and ``first_step``.

    Raises:
      ValueError: ``FILE:LINE: problem`` for every malformed input.
    """
    losses_path = require_file(Path(losses_path), "the long-form losses")
    curricula_path = require_file(Path(curricula_path), "the long-form curricula")

    # run -> step -> test id -> (loss, line)
    losses: dict[str, dict[int, dict[Id, tuple[float, int]]]] = {}
    test_where: dict[Id, tuple[Path, int]] = {}  # first line of every test id, in order
    for n, row in table_rows(losses_path, LOSS_COLUMNS):
        run = str(row["run"])
        step = check_step(row["step"], losses_path, n)
        tid = check_id(row["test_id"], losses_path, n, "test id")
        loss = check_number(row["loss"], losses_path, n, f"the loss of test example {tid!r}")
        at_step = losses.setdefault(run, {}).setdefault(step, {})
        if tid in at_step:
            raise file_error(
                losses_path,
                n,
                f"run {run!r}, step {step}, test example {tid!r} "
                f"appears twice (also on line {at_step[tid][1]})",
            )
        at_step[tid] = (loss, n)
        test_where.setdefault(tid, (losses_path, n))
    if not losses:
        raise file_error(losses_path, None, "no rows (the file is empty)")

    # run -> step -> (ids, lr, line)
    curricula: dict[str, dict[int, tuple[list[Id], float | None, int]]] = {}
    train_where: dict[Id, tuple[Path, int]] = {}
    with_lr: tuple[bool, int] | None = None
    for n, row in table_rows(curricula_path, CURRICULUM_COLUMNS):
        run = str(row["run"])
        step, ids, lr, with_lr = check_batch_line(
            row["step"], row["train_ids"], row.get("learning_rate"),
            row.get("learning_rate") not in (None, ""), curricula_path, n, with_lr, "rows",
        )  # fmt: skip
        steps = curricula.setdefault(run, {})
        if step in steps:
            raise file_error(
                curricula_path,
                n,
                f"run {run!r}, step {step} appears twice (also on line {steps[step][2]})",
            )
        steps[step] = (ids, lr, n)
        for i in ids:
            train_where.setdefault(i, (curricula_path, n))
    if not curricula:
        raise file_error(curricula_path, None, "no rows (the file is empty)")
    for run in curricula:
        if run not in losses:
            line = min(v[2] for v in curricula[run].values())
            raise file_error(
                curricula_path, line, f"run {run!r} has batches but no losses in {losses_path}"
            )

    as_test = settle_ids(test_where, "test id", kind=kind_of(test_ids))
    as_train = settle_ids(train_where, "training id", kind=kind_of(train_ids))
    runs = []
    for run, by_step in losses.items():
        steps = sorted(by_step)
        first_lines = {s: min(v[1] for v in by_step[s].values()) for s in steps}
        check_consecutive(steps, first_lines, losses_path, f"run {run!r}")
        if len(steps) < 2:
            raise file_error(
                losses_path,
                first_lines[steps[0]],
                f"run {run!r} has losses at one "
                "step only; a run needs L_0 and at least one step after it",
            )
        tids = list(by_step[steps[0]])
        for s in steps[1:]:
            missing = [t for t in tids if t not in by_step[s]]
            extra = [t for t in by_step[s] if t not in set(tids)]
            if missing:
                raise file_error(
                    losses_path,
                    None,
                    f"run {run!r} has no loss for test example "
                    f"{missing[0]!r} at step {s} (it has one at step {steps[0]})",
                )
            if extra:
                raise file_error(
                    losses_path,
                    by_step[s][extra[0]][1],
                    f"run {run!r}: test example "
                    f"{extra[0]!r} has a loss at step {s} but none at step {steps[0]}",
                )
        matrix = np.asarray([[by_step[s][t][0] for t in tids] for s in steps], np.float64)
        first, last = steps[0], steps[-1]
        if run not in curricula:
            raise file_error(
                curricula_path, None, f"run {run!r} has losses in {losses_path} but no batches"
            )
        batches = curricula[run]
        lines = {s: v[2] for s, v in batches.items()}
        for s, (ids, _, line) in batches.items():
            if s > last:
                raise file_error(
                    curricula_path,
                    line,
                    f"run {run!r}, step {s} has a batch but its losses end at step {last}",
                )
            if s > first and not ids:
                raise file_error(curricula_path, line, f"run {run!r}, step {s} has an empty batch")
        for s in range(first + 1, last + 1):
            if s not in batches:
                raise file_error(
                    curricula_path,
                    first_line_after(lines, s),
                    f"run {run!r}: the batch of step {s} is missing",
                )
        kept = range(first + 1, last + 1)
        runs.append(
            RawRun(
                name=run,
                losses_file=losses_path,
                batches_file=curricula_path,
                test_ids=[as_test[t] for t in tids],
                losses=matrix,
                batches=[[as_train[i] for i in batches[s][0]] for s in kept],
                batch_lines=[batches[s][2] for s in kept],
                learning_rates=[batches[s][1] for s in kept] if with_lr[0] else None,
                first_step=first,
            )
        )
    return assemble(
        runs, pad=pad, train_ids=train_ids, test_ids=test_ids, batch_size=batch_size,
        source="long",
    )  # fmt: skip


EXTENSIONS = {
    "importer": {
        "long": Importer(
            read=read_long,
            help="long-form CSV or JSON lines",
            inputs=(
                Input("--losses", "rows: run, step, test_id, loss"),
                Input("--curricula", "rows: run, step, train_ids [, learning_rate]"),
            ),
        ),
    },
}
