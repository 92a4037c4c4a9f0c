"""Validated reads (see :mod:`simfluence_jax.fileio`): a missing, truncated or garbled file, text
that is not UTF-8, a wrong JSON type, missing keys, object arrays (never unpickled) and arrays
of the wrong dtype or shape are a ``ValueError`` that names the file and the problem."""

from __future__ import annotations

import dataclasses
import hashlib
import io as _io
import json
import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: {what} is missing") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: {what} is a folder, not a file") from None
    except PermissionError:
        raise ValueError(f"{path}: permission denied reading the {what}") from None


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in blocks of 1 MiB."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_bytes(path: str | os.PathLike, *, what: str = "file") -> bytes:
    """A file's bytes; ``ValueError`` naming the file if missing, a folder or unreadable."""
    return _read_bytes(Path(path), what)


def read_text(path: str | os.PathLike, *, what: str = "file") -> str:
    """A UTF-8 text file; ``ValueError`` naming the file if missing or not UTF-8."""
    path = Path(path)
    data = _read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: {what} is not UTF-8 text (byte {err.start}); the file is damaged"
        ) from None


def read_json(
    path: str | os.PathLike,
    *,
    what: str = "JSON file",
    expect: type = dict,
    required: Sequence[str] = (),
    types: Mapping[str, type | tuple[type, ...]] | None = None,
) -> Any:
    """Reads a JSON file and checks it.

    Args:
      path: the file.
      what: how to call it in messages.
      expect: the type of the top-level value (``dict``, ``list``, ...).
      required: keys a ``dict`` must have.
      types: expected types of some keys (checked when present; ``int`` excludes ``bool``).

    Raises:
      ValueError: naming the file and the problem (missing, not UTF-8, not JSON, wrong type,
        missing key, wrong key type).
    """
    path = Path(path)
    text = read_text(path, what=what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: {what} is not valid JSON ({err}); the file is damaged") from None
    if not isinstance(value, expect):
        raise ValueError(
            f"{path}: {what} must hold a JSON {_json_type(expect)}, found a "
            f"{_json_type(type(value))}; the file is damaged or not ours"
        )
    if isinstance(value, dict):
        check_keys(path, value, required=required, types=types, what=what)
    return value


def check_keys(
    path: str | os.PathLike,
    value: Mapping,
    *,
    required: Sequence[str] = (),
    types: Mapping[str, type | tuple[type, ...]] | None = None,
    what: str = "JSON file",
) -> None:
    """Checks that ``value`` (read from ``path``) has the ``required`` keys and that keys
    present have the given ``types``; ``ValueError`` naming the file and the key."""
    missing = [k for k in required if k not in value]
    if missing:
        raise ValueError(f"{path}: {what} lacks the key(s) {missing}; the file is damaged")
    for key, kinds in (types or {}).items():
        if key in value and not _is_instance(value[key], kinds):
            raise ValueError(
                f"{path}: key {key!r} of the {what} must be {_type_names(kinds)}, "
                f"found {value[key]!r}"
            )


def _is_instance(value, kinds) -> bool:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def _type_names(kinds) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(_json_type(k) for k in kinds)


def _json_type(t: type) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
        type(None): "null",
    }.get(t, t.__name__)


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """What an array must look like.

    Attributes:
      kinds: allowed ``dtype.kind`` letters (``"f"`` float, ``"iu"`` integer, ``"b"`` bool,
        ``"U"`` unicode); empty allows any plain dtype.
      shape: one entry per axis: an ``int`` (that size), a ``str`` (a named size that must
        agree across every array that names it, e.g. ``"M"``, ``"N"``) or ``None`` (any);
        ``None`` for the whole shape allows any rank.
      finite: float values must be finite.
      optional: the array may be absent.
    """

    kinds: str = ""
    shape: tuple[int | str | None, ...] | None = None
    finite: bool = False
    optional: bool = False


def check_arrays(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    specs: Mapping[str, ArraySpec],
    sizes: Mapping[str, int] | None = None,
    *,
    what: str = "arrays",
) -> dict[str, int]:
    """Checks ``arrays`` against ``specs``; returns the named sizes (given ``sizes`` plus
    those read off the arrays). ``ValueError`` names the file, the array and the problem."""
    bound = dict(sizes or {})
    origin = {k: "the metadata" for k in bound}
    for name, spec in specs.items():
        if name not in arrays:
            if spec.optional:
                continue
            raise ValueError(f"{path}: array {name!r} is missing from the {what}; damaged")
        arr = np.asarray(arrays[name])
        if arr.dtype.hasobject:
            raise ValueError(f"{path}: array {name!r} holds Python objects; refused")
        if spec.kinds and arr.dtype.kind not in spec.kinds:
            raise ValueError(
                f"{path}: array {name!r} has dtype {arr.dtype}, expected {_kinds(spec.kinds)}"
            )
        if spec.shape is not None:
            if arr.ndim != len(spec.shape):
                raise ValueError(
                    f"{path}: array {name!r} has shape {list(arr.shape)}, expected "
                    f"{_shape(spec.shape)}"
                )
            for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
                if isinstance(want, int) and want != got:
                    raise ValueError(
                        f"{path}: array {name!r} has shape {list(arr.shape)}, expected "
                        f"{_shape(spec.shape)} (axis {axis} must be {want})"
                    )
                if isinstance(want, str):
                    if want in bound and bound[want] != got:
                        raise ValueError(
                            f"{path}: array {name!r} has shape {list(arr.shape)}: {want} = "
                            f"{got} on axis {axis}, but {want} = {bound[want]} in "
                            f"{origin[want]}; the file is damaged or inconsistent"
                        )
                    bound.setdefault(want, int(got))
                    origin.setdefault(want, f"array {name!r}")
        if spec.finite and arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            bad = np.argwhere(~np.isfinite(arr))
            where = tuple(int(i) for i in bad[0]) if arr.ndim else ()
            raise ValueError(
                f"{path}: array {name!r} has {len(bad)} NaN or infinite value(s) (first at "
                f"index {list(where)}); the file is damaged"
            )
    return bound


def _kinds(kinds: str) -> str:
    names = {"f": "float", "i": "integer", "u": "unsigned", "b": "bool", "U": "unicode"}
    return " or ".join(names.get(k, k) for k in kinds)


def _shape(shape) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


_NPZ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def read_npz(
    path: str | os.PathLike,
    specs: Mapping[str, ArraySpec] | None = None,
    sizes: Mapping[str, int] | None = None,
    *,
    what: str = "arrays file",
) -> dict[str, np.ndarray]:
    """Reads every array of an ``.npz`` with ``allow_pickle=False`` and checks them.

    Args:
      path: the file.
      specs: :class:`ArraySpec` per expected array (others are read unchecked).
      sizes: named sizes known from metadata (e.g. ``{"M": 5}``) the arrays must agree with.
      what: how to call the file in messages.

    Raises:
      ValueError: naming the file: missing, truncated or garbled, object arrays, missing
        arrays, wrong dtype or shape.
    """
    path = Path(path)
    data = _read_bytes(path, what)
    if not data.startswith(b"PK"):  # else np.load takes it for a pickle and says so
        raise ValueError(f"{path}: the {what} is truncated or garbled (not a zip archive)")
    try:
        with np.load(_io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise ValueError(f"{path}: the {what} holds object arrays (pickled); refused") from None
        raise ValueError(f"{path}: the {what} is truncated or garbled ({err})") from None
    except _NPZ_ERRORS as err:
        raise ValueError(f"{path}: the {what} is truncated or garbled ({err})") from None
    if specs:
        check_arrays(path, arrays, specs, sizes, what=what)
    return arrays


def read_npy(
    path: str | os.PathLike,
    *,
    shape: tuple[int, ...] | None = None,
    dtype=None,
    mmap_mode: str | None = None,
    what: str = "array file",
) -> np.ndarray:
    """Reads a ``.npy`` file (``allow_pickle=False``), checking its shape and dtype."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: {what} is missing") from None
    except PermissionError:
        raise ValueError(f"{path}: permission denied reading the {what}") from None
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise ValueError(f"{path}: the {what} holds object arrays (pickled); refused") from None
        raise ValueError(f"{path}: the {what} is truncated or garbled ({err})") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: the {what} is truncated or garbled ({err})") from None
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise ValueError(f"{path}: the {what} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{path}: the {what} has shape {list(arr.shape)}, expected {list(shape)}")
    return arr
