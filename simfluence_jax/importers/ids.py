"""Id files: the pool or the test ids, for runs whose files do not carry them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from simfluence_jax.importers.assemble import check_id_kind, id_list
from simfluence_jax.importers.checks import Id, check_id, file_error, settle_ids
from simfluence_jax.importers.readers import require_file


def read_ids(path: str | os.PathLike) -> list[Id]:
    """Ids from a file, in order: a JSON list (ids keep their JSON types), or one id a line
    (blank lines skipped; integers when every id is a canonical integer, as in
    :func:`read_long`). For ``train_ids=`` and ``test_ids=`` (``--train_ids``, ``--test_ids``).

    Raises:
      ValueError: ``FILE:LINE:`` for an id given twice, two spellings of one integer, a
        value that is not an id, or a file with no ids.
    """
    path = require_file(Path(path), "ids")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise file_error(path, None, f"not UTF-8 text ({e.reason})") from None
    if text.lstrip().startswith("["):
        try:
            ids = json.loads(text)
        except json.JSONDecodeError as e:
            raise file_error(path, e.lineno, f"not a valid JSON list ({e.msg})") from None
        if not isinstance(ids, list):
            raise file_error(path, None, "expected a JSON list of ids")
        ids = [check_id(i, path, None, "id") for i in ids]
        check_id_kind(ids, path, "ids")
        try:
            ids = id_list(ids, "the list") if ids else ids
        except ValueError as err:
            raise file_error(path, None, str(err)) from None
    else:
        where: dict[Id, tuple[Path, int]] = {}
        for n, line in enumerate(text.splitlines(), start=1):
            name = line.strip()
            if not name:
                continue
            if name in where:
                raise file_error(
                    path, n, f"id {name!r} appears twice (also on line {where[name][1]})"
                )
            where[name] = (path, n)
        ids = list(settle_ids(where, "id").values())
    if not ids:
        raise file_error(path, None, "no ids (the file is empty)")
    return ids
