"""Reading the files of an importer: JSON lines and CSV/TSV tables with a header row, line by
line, each problem a ``ValueError`` naming the file and line."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from simfluence_jax.importers.checks import file_error


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise file_error(path, None, f"file not found ({what})")
    return path


def json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line of a JSON-lines file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for n, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise file_error(
                        path, n, f"not valid JSON ({e.msg} at column {e.colno}); truncated line?"
                    ) from None
                if not isinstance(obj, dict):
                    raise file_error(path, n, f"expected a JSON object, got {type(obj).__name__}")
                yield n, obj
    except UnicodeDecodeError as e:
        raise file_error(path, None, f"not UTF-8 text ({e.reason})") from None


def get_key(obj: dict, key: str, path: Path, line: int) -> Any:
    if key not in obj:
        raise file_error(path, line, f"missing key {key!r} (have {sorted(obj)})")
    return obj[key]


def _is_jsonl(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return True
    if suffix in (".csv", ".tsv"):
        return False
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for text in f:
            if text.strip():
                return text.lstrip().startswith("{")
    return False


def table_rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` of a CSV/TSV file with a header row, or of a JSON-lines file;
    every row has ``columns`` (optional ones may be absent)."""
    if _is_jsonl(path):
        for n, obj in json_lines(path):
            for key in columns:
                get_key(obj, key, path, n)
            yield n, obj
        return
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        # A cut CSV row can still parse (``1.2345`` cut to ``1.2``): refuse the ambiguity.
        raise file_error(
            path,
            data.count(b"\n") + 1,
            "the last line does not end with a "
            "newline; truncated line? (end the file with a newline if it is complete)",
        )
    # No field is longer than the file (a 200k-id batch exceeds csv's default 128 KiB).
    csv.field_size_limit(max(csv.field_size_limit(), len(data) + 1))
    reader = None
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in columns if c not in header]
            if missing:
                raise file_error(
                    path,
                    1,
                    f"the header row lacks columns {missing} (it has {header}); "
                    f"expected {list(columns)}",
                )
            reader.fieldnames = header
            for row in reader:
                if None in row or any(row[c] is None for c in columns):
                    raise file_error(
                        path, reader.line_num, f"expected {len(header)} fields; truncated line?"
                    )
                if all(not (v or "").strip() for v in row.values()):
                    continue
                yield reader.line_num, {k: v.strip() for k, v in row.items()}
    except UnicodeDecodeError as e:
        raise file_error(path, None, f"not UTF-8 text ({e.reason})") from None
    except csv.Error as e:
        line = reader.line_num if reader is not None and reader.line_num else None
        raise file_error(path, line, f"not a valid CSV row ({e})") from None
