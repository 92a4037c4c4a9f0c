"""What a failed write means: the errno of a storage failure behind an error, the free space
where it happened, and what to do about it."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path


def free_space(path: str | os.PathLike) -> str:
    """``"1.2 GiB free"`` on the file system holding ``path`` (or its nearest parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "free space unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit} free" if unit == "bytes" else f"{free:.1f} {unit} free"
        free /= 1024
    return "free space unknown"


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}


def storage_errno(err: BaseException) -> int | None:
    """The errno of a storage failure behind ``err`` (an ``OSError``, or a library error
    that wraps one, such as orbax's ``ValueError`` with ``os_error_code='28'``), else
    ``None``."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _STORAGE_ERRNOS:
            return err.errno
        text = str(err)
        code = re.search(r"os_error_code='?(\d+)", text)
        if code and int(code.group(1)) in _STORAGE_ERRNOS:
            return int(code.group(1))
        if "No space left on device" in text or "RESOURCE_EXHAUSTED" in text:
            return errno.ENOSPC
        if "Disk quota exceeded" in text:
            return errno.EDQUOT
        if "Permission denied" in text or "PERMISSION_DENIED" in text:
            return errno.EACCES
        if "Read-only file system" in text:
            return errno.EROFS
        err = err.__cause__ or err.__context__
    return None


def storage_advice(code: int | None) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free space"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "fix the permissions"
    return "fix the cause"


def storage_reason(code: int | None, err: BaseException) -> str:
    """A short reason: the system's words for ``code``, else the error's first line."""
    if code is not None:
        return os.strerror(code)
    return str(err).splitlines()[0] if str(err) else type(err).__name__
