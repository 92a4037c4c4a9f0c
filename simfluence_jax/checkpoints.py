"""Checkpoints of parameter pytrees: one ``.npz`` file each, under its final name only once it
is complete and has read back as the tree it should hold.

Format (``FORMAT_VERSION`` 1): an uncompressed ``.npz`` holding ``leaf_00000``,
``leaf_00001``, ... (the array leaves) and ``tree``, a 0-d string array with JSON::

    {"format": "simfluence_jax.checkpoint", "version": 1,
     "dtypes": ["float32", "bfloat16", ...],          # one per leaf
     "tree": {"dict": [["trainable", {"list": [0, null, {"tuple": [1]}]}], ...]}}

A node of ``tree`` is a leaf index, ``null`` (``None``), or ``{"dict": [[key, node], ...]}``
(string keys, in order), ``{"list": [...]}`` or ``{"tuple": [...]}``. Leaves are plain
NumPy dtypes (bool, integers, floats, complex) stored as they are, or the extra float types
of ``ml_dtypes`` that JAX uses (``bfloat16``, float8, int4), which ``.npz`` cannot hold:
their bits are stored as unsigned integers of the same width and the dtype name says how to
read them back. Nothing is pickled, and files are read with ``allow_pickle=False``.

:func:`save` builds the file in memory (:func:`simfluence_jax.fileio.npz_bytes`; fine for the
parameter sizes here, about twice the tree's size at the peak), writes it under a temporary
name, reads it back from disk and compares it bit for bit with the tree it was given, and
only then renames it into place (:func:`simfluence_jax.fileio.atomic_write`). Every process
writes the files it saves, so each process of a ``jax.distributed`` job keeps its own
checkpoints with no barrier and no help from the other processes.

:func:`restore` and :func:`problem` also read the orbax checkpoint folders that earlier
versions wrote (the run store kept them until this format replaced them), through orbax's
public ``Checkpointer.restore``, so older stores keep loading. Anything else (a file that is
neither, a damaged file, a folder without orbax's metadata) is a ``ValueError`` naming it.

:func:`checkpointer` and :func:`save_args` remain for the pretraining cache
(``training.pretrain``), which is written by one process as an orbax folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from simfluence_jax import fileio

FORMAT_NAME = "simfluence_jax.checkpoint"
FORMAT_VERSION = 1
#: The file name suffix of a checkpoint in this format.
SUFFIX = ".npz"
#: Files every complete orbax checkpoint folder holds (the format earlier versions wrote).
REQUIRED_FILES = ("_CHECKPOINT_METADATA", "_METADATA")

_TREE = "tree"
_PLAIN_KINDS = "biufc"


class _Unreadable(Exception):
    """A checkpoint cannot be read; the message says why (e.g. ``"is missing"``)."""


# ---------------------------------------------------------------------------------------------
# The .npz format.


def _leaf_name(i: int) -> str:
    return f"leaf_{i:05d}"


def _stored_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a leaf of ``dtype`` is stored as (``ValueError`` if none)."""
    if dtype.kind in _PLAIN_KINDS:
        return dtype
    if dtype.kind == "V" and dtype.type is not np.void and dtype.itemsize in (1, 2, 4, 8):
        return np.dtype(f"uint{8 * dtype.itemsize}")  # bfloat16 and the other ml_dtypes
    raise ValueError(f"cannot save an array of dtype {dtype} in a checkpoint")


def _encode(tree) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file that holds ``tree`` (see the module docstring).

    Raises:
      ValueError: for a node that is not a dict with string keys, list, tuple, ``None`` or
        array, or a leaf dtype the format cannot hold.
    """
    arrays: dict[str, np.ndarray] = {}
    dtypes: list[str] = []

    def node(x):
        if x is None:
            return None
        if isinstance(x, dict):
            for key in x:
                if not isinstance(key, str):
                    raise ValueError(f"checkpoint dict keys must be strings, got {key!r}")
            return {"dict": [[key, node(value)] for key, value in x.items()]}
        if type(x) is list:
            return {"list": [node(value) for value in x]}
        if type(x) is tuple:
            return {"tuple": [node(value) for value in x]}
        if isinstance(x, (bool, int, float, complex, np.generic, np.ndarray)) or hasattr(
            x, "__array__"
        ):
            a = np.asarray(x)
            stored = _stored_dtype(a.dtype)
            index = len(dtypes)
            arrays[_leaf_name(index)] = a.view(stored) if stored != a.dtype else a
            dtypes.append(a.dtype.name)
            return index
        raise ValueError(
            f"cannot save a value of type {type(x).__name__} in a checkpoint (dicts with "
            "string keys, lists, tuples, None and arrays only)"
        )

    description = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "dtypes": dtypes,
        "tree": node(tree),
    }
    arrays[_TREE] = np.asarray(json.dumps(description, sort_keys=True))
    return arrays


def _phrase(err: BaseException, path: Path) -> str:
    """What a ``ValueError`` naming ``path`` says, as a phrase after "the checkpoint"."""
    text = str(err)
    for prefix in (f"{path}: the checkpoint ", f"{path} "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return f"cannot be read ({text})"


def _leaf(arrays: dict[str, np.ndarray], index: int, name: Any) -> np.ndarray:
    try:
        want = np.dtype(name) if isinstance(name, str) else None
        stored = _stored_dtype(want) if want is not None else None
    except (TypeError, ValueError):
        stored = None
    if stored is None:
        raise _Unreadable(f"records leaf {index} with a dtype it cannot hold: {name!r}")
    a = arrays[_leaf_name(index)]
    if a.dtype != stored:
        raise _Unreadable(f"stores leaf {index} ({name}) as {a.dtype}")
    return a.view(want) if stored != want else a


def _decode(arrays: dict[str, np.ndarray]):
    """The tree that :func:`_encode` turned into ``arrays``.

    Raises:
      _Unreadable: saying what is wrong (no or a garbled description, another format or
        version, missing or extra leaves, a leaf of the wrong dtype).
    """
    text = arrays.get(_TREE)
    if text is None or text.dtype.kind != "U" or text.shape != ():
        raise _Unreadable("holds no tree description (not a simfluence_jax checkpoint)")
    try:
        description = json.loads(str(text))
    except ValueError:
        description = None
    if not isinstance(description, dict) or not isinstance(description.get("dtypes"), list):
        raise _Unreadable("has a garbled tree description")
    found = description.get("format")
    if found != FORMAT_NAME:
        raise _Unreadable(f"is not a simfluence_jax checkpoint (format {found!r})")
    version = description.get("version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = "upgrade simfluence_jax to read it" if newer else "it is not a version we wrote"
        raise _Unreadable(
            f"has format version {version!r}; this version of simfluence_jax reads "
            f"{FORMAT_VERSION} ({hint})"
        )
    dtypes = description["dtypes"]
    names = {_leaf_name(i) for i in range(len(dtypes))}
    if set(arrays) - {_TREE} != names:
        raise _Unreadable(f"does not hold the {len(dtypes)} leaves its description lists")
    leaves = [_leaf(arrays, i, name) for i, name in enumerate(dtypes)]
    used: set[int] = set()

    def node(x):
        if x is None:
            return None
        if isinstance(x, int) and not isinstance(x, bool) and 0 <= x < len(leaves):
            if x in used:
                raise _Unreadable(f"uses leaf {x} twice")
            used.add(x)
            return leaves[x]
        if isinstance(x, dict) and len(x) == 1:
            ((kind, items),) = x.items()
            pairs = isinstance(items, list) and all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in items
            )
            if kind == "dict" and pairs:
                return {key: node(value) for key, value in items}
            if kind in ("list", "tuple") and isinstance(items, list):
                values = [node(value) for value in items]
                return values if kind == "list" else tuple(values)
        raise _Unreadable("has a malformed tree description")

    tree = node(description.get("tree"))
    if len(used) != len(leaves):
        raise _Unreadable("has leaves its tree description does not use")
    return tree


def _read_npz(path: Path):
    try:
        arrays = fileio.read_npz(path, what="checkpoint")
    except ValueError as err:
        raise _Unreadable(_phrase(err, path)) from None
    return _decode(arrays)


def _npz_complete(path: Path) -> str | None:
    """Cheap check of a ``.npz`` checkpoint: its zip directory names the tree description."""
    try:
        with zipfile.ZipFile(path) as z:
            held = z.namelist()
    except (OSError, zipfile.BadZipFile) as err:
        return f"is truncated or garbled ({_first_line(err)})"
    return None if f"{_TREE}.npy" in held else "holds no tree description"


# ---------------------------------------------------------------------------------------------
# Orbax folders (written by earlier versions; the pretraining cache).


def checkpointer():
    """A process-local orbax ``Checkpointer`` (``StandardCheckpointHandler``): reads the
    orbax checkpoint folders of earlier run stores and writes the pretraining cache."""
    import orbax.checkpoint as ocp

    mp = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()}
    )
    handler = ocp.StandardCheckpointHandler(multiprocessing_options=mp)
    return ocp.Checkpointer(handler, multiprocessing_options=mp)


def save_args(tree):
    import orbax.checkpoint as ocp

    return ocp.args.StandardSave(tree)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silences orbax's logger, which prints a long traceback per worker thread when a save
    or read fails (the failure itself still raises, and is reported as one error)."""
    logger = logging.getLogger("absl")
    before = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = before


def _folder_complete(folder: Path) -> str | None:
    missing = [f for f in REQUIRED_FILES if not (folder / f).exists()]
    return f"is incomplete (no {', '.join(missing)})" if missing else None


def _read_folder(folder: Path):
    found = _folder_complete(folder)
    if found is not None:
        raise _Unreadable(found)
    try:
        with quiet():
            return checkpointer().restore(folder.absolute())
    except Exception as err:  # orbax raises many kinds; all mean "not readable"
        raise _Unreadable(f"cannot be read ({_first_line(err)})") from None


# ---------------------------------------------------------------------------------------------
# Either format.


def _first_line(err: BaseException) -> str:
    text = str(err).splitlines()[0][:200] if str(err) else ""
    return f"{type(err).__name__}: {text}"


def _unknown() -> str:
    return f"is in an unknown format (neither a {SUFFIX} file nor an orbax folder)"


def _read(path: Path):
    if not path.exists():
        raise _Unreadable("is missing")
    if path.is_dir():
        return _read_folder(path)
    if path.suffix == SUFFIX:
        return _read_npz(path)
    raise _Unreadable(_unknown())


def _same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _differs(tree, expected) -> bool:
    """Whether two trees differ in structure, or in any leaf's dtype, shape or bits (NaNs
    with the same bits are equal, 0.0 and -0.0 are not)."""
    got, want = jax.tree_util.tree_flatten(tree), jax.tree_util.tree_flatten(expected)
    return got[1] != want[1] or not all(_same_bits(a, b) for a, b in zip(got[0], want[0]))


def _keys_problem(tree, keys: set[str] | None) -> str | None:
    if keys is not None and (not isinstance(tree, dict) or set(tree) != set(keys)):
        return f"does not hold {sorted(keys)}"
    return None


def problem(
    path: str | os.PathLike,
    *,
    keys: set[str] | None = None,
    expected: Any = None,
    check: Any = None,
) -> str | None:
    """What is wrong with a checkpoint (a ``.npz`` file or an older orbax folder), or
    ``None`` if it is complete.

    Only its files are checked unless more is asked (a ``.npz`` file's zip directory, a
    folder's orbax metadata files): ``keys`` (the top-level keys the tree must have),
    ``expected`` (a tree it must equal bit for bit) or ``check`` (a function of the restored
    tree returning a problem or ``None``) read it back.
    """
    path = Path(path)
    if keys is None and expected is None and check is None:
        if not path.exists():
            return "is missing"
        if path.is_dir():
            return _folder_complete(path)
        return _npz_complete(path) if path.suffix == SUFFIX else _unknown()
    try:
        tree = _read(path)
    except _Unreadable as err:
        return str(err)
    found = _keys_problem(tree, keys)
    if found is None and check is not None:
        found = check(tree)
    if found is None and expected is not None and _differs(tree, expected):
        found = "differs from the tree it should hold"
    return found


def save(path: str | os.PathLike, tree) -> None:
    """Saves ``tree`` (host arrays) to the ``.npz`` file ``path``, replacing any file there:
    written under a temporary name, read back from disk and compared bit for bit, then
    renamed into place. The whole file is built in memory first.

    Raises:
      ValueError: if ``tree`` holds something the format cannot (see the module docstring), or
        the file does not read back as ``tree`` (nothing is left under ``path`` then).
      OSError: from the file system (the caller names it; see
        ``simfluence_jax.fileio.storage_errno``).
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"{path}: a checkpoint file name must end in {SUFFIX}")
    data = fileio.npz_bytes(_encode(tree))

    def read_back(tmp: Path) -> None:
        try:
            differs = _differs(_read_npz(tmp), tree)
        except _Unreadable as err:
            raise ValueError(f"{path}: the checkpoint did not read back: it {err}") from None
        if differs:
            raise ValueError(f"{path}: the checkpoint did not read back as the tree saved")

    fileio.make_dirs(path.parent)
    fileio.atomic_write(path, data, check=read_back)


def restore(path: str | os.PathLike, *, keys: set[str] | None = None):
    """The tree saved in ``path`` (a ``.npz`` checkpoint, or an orbax folder of an earlier
    version).

    Raises:
      ValueError: naming ``path`` if it is missing, incomplete, damaged, in an unknown
        format or (with ``keys``) does not hold those top-level keys.
    """
    path = Path(path)
    try:
        tree = _read(path)
        found = _keys_problem(tree, keys)
    except _Unreadable as err:
        found = str(err)
    if found is not None:
        raise ValueError(f"{path}: the checkpoint {found}")
    return tree


def discard(path: str | os.PathLike) -> None:
    """Removes a file or folder by renaming it aside first (never half-deleted under its
    name)."""
    path = Path(path)
    aside = fileio.temp_sibling(path, "del")
    os.rename(path, aside)
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            aside.unlink()
