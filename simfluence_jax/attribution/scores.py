"""Score matrices on disk: ``save_scores`` writes a ``.npz`` and a long-form ``.csv``,
``load_scores`` reads the ``.npz`` back (never unpickled)."""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simfluence_jax import fileio

SIGN_CONVENTION = (
    "score = simulated change of the test example's loss when every occurrence of the "
    "training example is removed from a curriculum, averaged over the last horizon steps and "
    "over the curricula in which it occurs; score > 0: removing it raises the loss (it helps); "
    "score < 0: it hurts; NaN: it never occurs or the simulator never saw it"
)


SCORES_FORMAT, SCORES_VERSION = "simfluence_jax.scores", 1


@dataclasses.dataclass(frozen=True)
class Scores:
    """A score matrix read back by ``load_scores``.

    Attributes:
      scores: ``float32[N, M]`` (see ``SIGN_CONVENTION``).
      train_ids: ``[N]`` names of the training examples (ints or strings).
      test_ids: ``[M]`` names of the test examples.
      texts: ``str[N]`` training texts, or ``None``.
      details: what ``save_scores`` was given as ``details`` (e.g. the horizon).
    """

    scores: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray
    texts: np.ndarray | None
    details: dict[str, Any]


def _base_path(path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".npz", ".csv") else path


def _names(values, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{what} must hold {n} entries, got shape {arr.shape}")
    if arr.dtype.kind not in "iuU":
        raise ValueError(f"{what} must be integers or strings, got dtype {arr.dtype}")
    return arr


def save_scores(
    path,
    scores,
    *,
    train_ids,
    test_ids,
    texts: Sequence[str] | None = None,
    details: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Writes a score matrix as ``<path>.npz`` and as a long-form ``<path>.csv``, atomically.

    The CSV has one row per (train, test) pair, ``train_id,test_id,score`` (NaN written as
    ``nan``), under ``#`` comment lines that state the sign convention and ``details``; read
    it with ``pandas.read_csv(path, comment="#")``. The ``.npz`` holds ``scores``,
    ``train_ids``, ``test_ids``, the optional ``train_texts`` and the details as JSON; it is
    read with ``load_scores`` (never unpickled).

    Args:
      path: the files' path without suffix (a ``.npz`` / ``.csv`` suffix is dropped).
      scores: ``float[N, M]``, e.g. from ``score_matrix``.
      train_ids: ``[N]`` names of the training examples (ints or strings).
      test_ids: ``[M]`` names of the test examples.
      texts: ``str[N]`` training texts (saved in the ``.npz`` only).
      details: JSON-serialisable facts to record (e.g. ``{"horizon": 8, "simulator": ...}``).

    Returns:
      the two paths written.
    """
    S = np.asarray(scores)
    if S.ndim != 2 or S.dtype.kind not in "fiu":
        raise ValueError(f"scores must be a float[N, M] matrix, got {S.dtype}{list(S.shape)}")
    S = S.astype(np.float32)
    N, M = S.shape
    train = _names(train_ids, N, "train_ids")
    test = _names(test_ids, M, "test_ids")
    meta = {"format": SCORES_FORMAT, "version": SCORES_VERSION, "details": dict(details or {})}
    arrays = {
        "scores": S, "train_ids": train, "test_ids": test,
        "meta": np.asarray(fileio.json_bytes(meta).decode("utf-8")),
    }  # fmt: skip
    if texts is not None:
        arrays["train_texts"] = _names(np.asarray(list(texts), dtype=str), N, "texts")
    base = _base_path(path)
    fileio.make_dirs(base.parent)
    npz, csv_path = base.with_suffix(".npz"), base.with_suffix(".csv")
    fileio.atomic_npz(npz, arrays)
    fileio.atomic_write(csv_path, _csv_text(S, train, test, meta["details"]))
    return npz, csv_path


def _csv_text(S: np.ndarray, train: np.ndarray, test: np.ndarray, details: Mapping) -> str:
    buf = _io.StringIO()
    buf.write(f"# simfluence_jax attribution scores, format version {SCORES_VERSION}\n")
    buf.write(f"# {SIGN_CONVENTION}\n")
    for key, value in details.items():
        buf.write(f"# {key}: {json.dumps(value)}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["train_id", "test_id", "score"])
    N, M = S.shape
    values = [format(float(x), ".9g") for x in S.reshape(-1)]  # 9 digits: exact float32
    tr, te = train.tolist(), test.tolist()
    writer.writerows((tr[i], te[j], values[i * M + j]) for i in range(N) for j in range(M))
    return buf.getvalue()


def load_scores(path) -> Scores:
    """Reads the ``.npz`` that ``save_scores`` wrote (``ValueError`` naming the file and the
    problem if it is missing, damaged or not a score file)."""
    npz = _base_path(path).with_suffix(".npz")
    specs = {
        "scores": fileio.ArraySpec(kinds="f", shape=("N", "M")),
        "train_ids": fileio.ArraySpec(kinds="iuU", shape=("N",)),
        "test_ids": fileio.ArraySpec(kinds="iuU", shape=("M",)),
        "train_texts": fileio.ArraySpec(kinds="U", shape=("N",), optional=True),
        "meta": fileio.ArraySpec(kinds="U", shape=()),
    }
    arrays = fileio.read_npz(npz, specs, what="scores file")
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as err:
        raise ValueError(f"{npz}: the scores file's metadata is not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{npz}: the scores file's metadata is not a JSON object")
    fileio.check_format(npz, meta, name=SCORES_FORMAT, version=SCORES_VERSION, what="scores file")
    return Scores(
        scores=arrays["scores"], train_ids=arrays["train_ids"], test_ids=arrays["test_ids"],
        texts=arrays.get("train_texts"), details=dict(meta.get("details", {})),
    )  # fmt: skip
