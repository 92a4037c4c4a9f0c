"""Reading user examples from JSONL or TSV files, with errors that name the file and line.

Both formats give rows ``(line, text, target, split)``:

* JSONL: one JSON object per line, ``{"text": ..., "target": ..., "split": ...}``; blank
  lines are skipped; integer targets are turned into strings (``1`` -> ``"1"``);
* TSV: a header row naming the columns (``text``, ``target`` and optionally ``split``; any
  order, extra columns ignored), then one example per line; fields are split on tabs with no
  quoting, so a text must not contain a tab.

``split`` is only required when one file holds both the training pool and the test examples.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Row:
    """One example read from a file; ``line`` is 1-based."""

    path: str
    line: int
    text: str
    target: str
    split: str | None


def _target_string(value: object, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{where}: row has no target")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: target must be a string or an integer, got {value!r}")
    return str(value).strip()


def _text_string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: row has no text (got {value!r})")
    return value.strip()


def _check_nonempty(rows: list[Row], path: Path) -> list[Row]:
    if not rows:
        raise ValueError(f"{path} is empty: it holds no examples")
    return rows


def read_jsonl(
    path: str | Path,
    *,
    text_field: str = "text",
    target_field: str = "target",
    split_field: str | None = None,
    encoding: str = "utf-8",
) -> list[Row]:
    """Rows of a JSONL file; ``split_field=None`` ignores any split."""
    path = Path(path)
    rows = []
    with open(path, encoding=encoding) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                kind = type(obj).__name__
                raise ValueError(f"{where}: expected a JSON object, got {kind}")
            text = _text_string(obj.get(text_field), where)
            target = _target_string(obj.get(target_field), where)
            split = None
            if split_field is not None:
                if not isinstance(obj.get(split_field), str):
                    raise ValueError(f"{where}: row has no {split_field!r} field")
                split = obj[split_field]
            rows.append(Row(str(path), lineno, text, target, split))
    return _check_nonempty(rows, path)


def read_tsv(
    path: str | Path,
    *,
    text_field: str = "text",
    target_field: str = "target",
    split_field: str | None = None,
    encoding: str = "utf-8",
) -> list[Row]:
    """Rows of a TSV file with a header row; ``split_field=None`` ignores any split."""
    path = Path(path)
    with open(path, encoding=encoding, newline="") as f:
        lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    numbered = [(i, r) for i, r in enumerate(lines, start=1) if any(c.strip() for c in r)]
    if not numbered:
        raise ValueError(f"{path} is empty: it holds no header and no examples")
    header_line, header = numbered[0]
    header = [h.strip() for h in header]
    needed = [text_field, target_field] + ([split_field] if split_field else [])
    missing = [c for c in needed if c not in header]
    if missing:
        raise ValueError(
            f"{path}:{header_line}: the header row {header} lacks the column(s) {missing}"
        )
    col = {name: header.index(name) for name in needed}
    rows = []
    for lineno, fields in numbered[1:]:
        where = f"{path}:{lineno}"
        if len(fields) <= col[target_field]:
            raise ValueError(f"{where}: row has no target (no {target_field!r} column)")
        if len(fields) != len(header):
            raise ValueError(
                f"{where}: {len(fields)} tab-separated fields, header has {len(header)}"
            )
        text = _text_string(fields[col[text_field]], where)
        target = _target_string(fields[col[target_field]], where)
        split = fields[col[split_field]].strip() if split_field else None
        rows.append(Row(str(path), lineno, text, target, split))
    return _check_nonempty(rows, path)
