"""Checks shared by every importer: single values (ids, steps, losses, learning rates,
batches), consecutive steps, and how ids spelled in text files are settled.

Every problem is a ``ValueError`` made by :func:`file_error`: ``FILE:LINE: problem``, or
``FILE: problem`` when the problem is something missing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

Id = int | str


def file_error(path: Path | str, line: int | None, problem: str) -> ValueError:
    where = f"{path}:{line}" if line is not None else str(path)
    return ValueError(f"{where}: {problem}")


def check_id(value: Any, path: Path, line: int, what: str) -> Id:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise file_error(path, line, f"{what} {value!r} is not an integer or a string")
    return value


def check_step(value: Any, path: Path, line: int) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise file_error(path, line, f"step {value!r} is not an integer")
    if value < 0:
        raise file_error(path, line, f"step {value} is negative")
    return value


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_number(value: Any, path: Path, line: int, what: str) -> float:
    """A finite number that float32 holds (losses and learning rates are stored as float32)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise file_error(path, line, f"{what} {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise file_error(path, line, f"{what} {value!r} is not a number")
    if not math.isfinite(value):
        raise file_error(path, line, f"{what} is {value} (NaN or infinite)")
    if abs(value) > _FLOAT32_MAX:
        raise file_error(path, line, f"{what} is {value}, beyond float32's range (|x| <= 3.4e38)")
    return float(value)


def same_lr_presence(first, has_lr: bool, path, n: int, what: str) -> tuple[bool, int]:
    """``(has_lr, line)`` of the first line; a ``ValueError`` if line ``n`` differs from it."""
    if first is None:
        return (has_lr, n)
    if has_lr != first[0]:
        raise file_error(
            path, n, f"learning_rate is given on some {what} and not on others (line "
            f"{first[1]} {'has' if first[0] else 'lacks'} it)",
        )  # fmt: skip
    return first


def check_learning_rate(value: Any, path: Path, line: int) -> float:
    lr = check_number(value, path, line, "learning_rate")
    if lr < 0:
        raise file_error(path, line, f"learning_rate {lr} is negative")
    return lr


def check_batch_line(
    step: Any, ids: Any, lr: Any, has_lr: bool, path: Path, n: int, with_lr, what: str
) -> tuple[int, list[Id], float | None, tuple[bool, int]]:
    """The fields every format's batch line has, checked: ``(step, ids, learning rate or None,
    with_lr)``. ``has_lr``: whether line ``n`` gives a learning rate; ``with_lr``: what
    ``same_lr_presence`` returned for the previous lines (``None`` before the first), so that
    every line of a file gives one or none does; ``what``: ``"rows"`` or ``"lines"``."""
    step = check_step(step, path, n)
    ids = split_ids(ids, path, n)
    with_lr = same_lr_presence(with_lr, has_lr, path, n, what)
    return step, ids, check_learning_rate(lr, path, n) if has_lr else None, with_lr


def split_ids(value: Any, path: Path, line: int) -> list[Id]:
    """A batch: a JSON list of ids, or a string of ids joined by ``;`` (or a JSON list)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise file_error(
                    path, line, f"train_ids {text!r} is not a JSON list ({e.msg})"
                ) from None
        else:
            value = [x.strip() for x in text.split(";") if x.strip()]
    if not isinstance(value, list):
        raise file_error(
            path, line, f"train_ids must be a list or a ';'-joined string, got {value!r}"
        )
    return [check_id(x, path, line, "training id") for x in value]


def first_line_after(lines_by_step: dict[int, int], step: int) -> int | None:
    later = [s for s in lines_by_step if s > step]
    return lines_by_step[min(later)] if later else None


def check_consecutive(steps: Sequence[int], lines: dict[int, int], path: Path, what: str):
    """Raises unless ``steps`` (sorted, distinct) are consecutive, naming the first gap."""
    for prev, nxt in zip(steps[:-1], steps[1:]):
        if nxt != prev + 1:
            raise file_error(
                path,
                lines.get(nxt),
                f"{what}: step {prev + 1} is missing (the steps jump from {prev} to {nxt})",
            )


_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")
_CANONICAL = re.compile(r"0|-?[1-9][0-9]*")


def settle_ids(
    where: dict[Id, tuple[Path, int]], what: str, *, kind: type | None = None
) -> dict[Id, Id]:
    """Maps every id as spelled in a file to the id kept.

    Ids are compared as the file spells them. Strings become integers only when every id is
    a canonical integer (``7``, not ``07``, ``+7`` or `` 7``), or, when ``kind`` is given (the
    kind of a pool passed in), only if ``kind`` is ``int``.

    Args:
      where: every distinct id as read (``str`` from text, ``int`` from JSON), with the file
        and line of its first appearance.
      what: ``"test id"`` or ``"training id"``, for messages.
      kind: the kind of the ids they are compared with, if given.

    Raises:
      ValueError: ``FILE:LINE:`` for integers mixed with strings, or two spellings of one
        integer (``1`` and ``01``), naming both and their lines.
    """
    ints = [i for i in where if isinstance(i, int)]
    strs = [i for i in where if isinstance(i, str)]
    if ints and strs:
        path, line = where[strs[0]]
        other = where[ints[0]]
        raise file_error(path, line, f"{what}s mix integers and strings ({strs[0]!r} here, "
                     f"{ints[0]!r} at {other[0]}:{other[1]}); use one kind")  # fmt: skip
    by_value: dict[int, str] = {}
    for spelled in strs:
        if not _INTEGER.fullmatch(spelled):
            continue
        first = by_value.setdefault(int(spelled), spelled)
        if first != spelled:
            path, line = where[spelled]
            other = where[first]
            raise file_error(path, line, f"{what} {spelled!r} and {what} {first!r} (at "
                         f"{other[0]}:{other[1]}) spell the same integer; spell every id "
                         "one way")  # fmt: skip
    canonical = strs and all(_CANONICAL.fullmatch(i) for i in strs)
    if canonical and kind in (None, int):
        return {i: int(i) for i in strs}
    return {i: i for i in where}
