"""From runs as read by an importer (:class:`RawRun`) to a validated ``RunSet``: one pool of
training ids, one order of test ids, one batch width and one length for every run."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simfluence_jax.importers.checks import Id, file_error
from simfluence_jax.runs import RunSet


@dataclasses.dataclass
class RawRun:
    """One run as read from disk, before ids are mapped (see :func:`assemble`)."""

    name: str
    losses_file: Path
    batches_file: Path
    test_ids: list[Id]  # in column order of ``losses``
    losses: np.ndarray  # float64[T+1, M]
    batches: list[list[Id]]  # T batches of raw training ids
    batch_lines: list[int]  # the line of each batch in ``batches_file``
    learning_rates: list[float] | None
    first_step: int

    @property
    def num_steps(self) -> int:
        return len(self.batches)


def common_length(lengths: Sequence[int], sources: Sequence[str], *, pad: bool) -> int:
    """The number of steps all runs keep: the common length, or the shortest with ``pad``."""
    longest = int(np.argmax(lengths))
    for n, source in zip(lengths, sources):
        if n != lengths[longest] and not pad:
            raise ValueError(
                f"{source}: the run has {n} steps but {sources[longest]} has "
                f"{lengths[longest]}; runs must have the same length (pass pad=True, or --pad, "
                f"to cut every run to the shortest, {min(lengths)} steps)"
            )
    return int(min(lengths))


def check_id_kind(ids: Iterable[Id], path: Path, what: str) -> None:
    kinds = {type(i) for i in ids}
    if len(kinds) > 1:
        raise file_error(path, None, f"{what} mix integers and strings; use one kind")


def kind_of(ids: Sequence[Id] | np.ndarray | None) -> type | None:
    """``int`` or ``str``: the kind of a pool passed in (``None`` if none is)."""
    if ids is None:
        return None
    kind = np.asarray(ids).dtype.kind
    return int if kind in "iu" else str if kind == "U" else None


def id_list(ids: Sequence[Id] | np.ndarray, what: str) -> list[Id]:
    """``ids`` as a list of distinct ints or strings; ``ValueError`` naming a duplicate."""
    values = np.asarray(ids)
    if values.ndim != 1 or values.dtype.kind not in "iuU":
        raise ValueError(f"{what} must be a list of integers or strings, got {values!r}")
    values = values.tolist()
    first: dict[Id, int] = {}
    for k, name in enumerate(values):
        if name in first:
            raise ValueError(f"{what} holds {name!r} twice (entries {first[name]} and {k})")
        first[name] = k
    return values


def _test_order(ref: RawRun, test_ids) -> list[Id]:
    """The test ids of ``ref`` in the order of ``test_ids`` (the same set), or as logged."""
    if test_ids is None:
        return ref.test_ids
    order = id_list(test_ids, "test_ids")
    logged = set(ref.test_ids)
    missing = [t for t in ref.test_ids if t not in set(order)]
    if missing:
        raise file_error(ref.losses_file, None, f"test example {missing[0]!r} is logged but not "
                     "in test_ids; test_ids must list every logged test example")  # fmt: skip
    extra = [t for t in order if t not in logged]
    if extra:
        raise file_error(ref.losses_file, None, f"test_ids holds {extra[0]!r}, which run "
                     f"{ref.name!r} does not log")  # fmt: skip
    return order


def assemble(
    runs: list[RawRun],
    *,
    pad: bool,
    train_ids,
    source: str,
    test_ids=None,
    batch_size: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> RunSet:
    ref = runs[0]
    ref_set = set(ref.test_ids)
    for run in runs[1:]:
        here = set(run.test_ids)
        missing = [t for t in ref.test_ids if t not in here]
        if missing:
            raise file_error(
                run.losses_file,
                None,
                f"run {run.name!r} has no test example {missing[0]!r} (run {ref.name!r} has it)",
            )
        extra = [t for t in run.test_ids if t not in ref_set]
        if extra:
            raise file_error(
                run.losses_file,
                None,
                f"run {run.name!r} has test example {extra[0]!r}, which run {ref.name!r} lacks",
            )
    check_id_kind(ref.test_ids, ref.losses_file, "test ids")
    test_order = _test_order(ref, test_ids)

    steps = common_length(
        [r.num_steps for r in runs], [f"{r.losses_file} (run {r.name!r})" for r in runs], pad=pad
    )
    has_lr = [r.learning_rates is not None for r in runs]
    if any(has_lr) and not all(has_lr):
        bad = runs[has_lr.index(False)]
        raise file_error(
            bad.batches_file,
            None,
            f"run {bad.name!r} has no learning rates but "
            f"run {runs[has_lr.index(True)].name!r} does; give all runs or none",
        )

    if train_ids is None:
        seen = {i for r in runs for b in r.batches[:steps] for i in b}
        for r in runs:
            check_id_kind([i for b in r.batches for i in b], r.batches_file, "training ids")
        check_id_kind(seen, runs[0].batches_file, "training ids (across runs)")
        pool = sorted(seen)
    else:
        pool = id_list(train_ids, "train_ids")
    position = {name: i for i, name in enumerate(pool)}

    width = max(len(b) for r in runs for b in r.batches[:steps])
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size < width:
            run, t = next((r, t) for r in runs for t in range(steps) if len(r.batches[t]) == width)
            raise file_error(run.batches_file, run.batch_lines[t], f"the batch has {width} ids, "
                         f"more than batch_size = {batch_size}")  # fmt: skip
        width = batch_size
    batches = np.full((len(runs), steps, width), -1, np.int32)
    losses = np.empty((len(runs), steps + 1, len(test_order)), np.float32)
    for k, run in enumerate(runs):
        for t, batch in enumerate(run.batches[:steps]):
            for slot, name in enumerate(batch):
                if name not in position:
                    raise file_error(
                        run.batches_file,
                        run.batch_lines[t],
                        f"training id {name!r} is not in train_ids",
                    )
                batches[k, t, slot] = position[name]
        column = {t: j for j, t in enumerate(run.test_ids)}
        order = [column[t] for t in test_order]
        losses[k] = run.losses[: steps + 1][:, order]
    learning_rates = None
    if all(has_lr):
        learning_rates = np.asarray([r.learning_rates[:steps] for r in runs], np.float32)
    metadata = {
        **(metadata or {}),
        "source": source,
        "runs": [r.name for r in runs],
        "first_step": ref.first_step
        if all(r.first_step == ref.first_step for r in runs)
        else [r.first_step for r in runs],
    }
    if any(r.num_steps != steps for r in runs):
        metadata["logged_steps"] = {r.name: r.num_steps for r in runs}
    try:
        return RunSet(
            batches=batches,
            losses=losses,
            num_train=len(pool),
            train_ids=np.asarray(pool),
            test_ids=np.asarray(test_order),
            metadata=metadata,
            learning_rates=learning_rates,
        )
    except ValueError as err:  # every value was checked above; name the input all the same
        raise file_error(ref.losses_file, None, str(err)) from None
