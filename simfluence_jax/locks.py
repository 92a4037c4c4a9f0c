"""Advisory file locks that say who holds them.

A :class:`FileLock` is an ``fcntl.flock`` lock on a small file. The holder writes one JSON
line into the file (pid, host, time, what it is doing), so a process that finds the lock
taken can name the other process instead of damaging what it writes. Locks are released by
the kernel when their process exits, however it exits (``SIGKILL`` included), so a crash
never leaves a store locked; a stale line left in the file is ignored (the lock is free).

Exclusive and shared modes: an exclusive holder excludes everyone; shared holders (the
processes of one multi-process job) exclude exclusive ones but not each other, and each
appends its own line. ``flock`` works on local file systems and, on Linux, on NFS (as a
byte-range lock); it is advisory: only code that takes the lock is excluded.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import time
from pathlib import Path

from simfluence_jax import fileio


class StoreBusyError(ValueError):
    """Another process holds the lock (it is writing the same store, run or folder).

    ``what`` names the locked thing and ``who`` its holders, so that an entry point can
    phrase the advice in its own terms (the command line says ``--wait``, not ``wait=True``).
    """

    def __init__(self, what: str, who: str, *, wait_hint: str = "pass wait=True to wait"):
        self.what, self.who = what, who
        super().__init__(
            f"{what} is being written by another process: {who}. Only one writer at a time: "
            f"wait for it to finish (or {wait_hint}), or stop it first"
        )


def _describe(line: dict) -> str:
    text = f"pid {line.get('pid', '?')} on host {line.get('host', '?')}"
    extra = [str(line[k]) for k in ("doing", "since") if line.get(k)]
    return text + (f" ({', '.join(extra)})" if extra else "")


class FileLock:
    """An advisory lock on ``path`` (created if missing; folders must exist).

    Args:
      path: the lock file.
      what: what the lock protects, for messages (e.g. ``"the run store /x"``).
      doing: what this process does while holding it, written into the file.

    Use ``acquire``/``release`` or ``with lock.acquire(...):``.
    """

    def __init__(self, path: str | os.PathLike, *, what: str, doing: str = ""):
        self.path = Path(path)
        self.what = what
        self.doing = doing
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holders(self) -> list[dict]:
        """The lines written by the current holders (possibly stale ones of past holders)."""
        try:
            text = self.path.read_text(errors="replace")
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    out.append(item)
        host = fileio.hostname()

        def live(h: dict) -> bool:
            if h.get("host") != host or not isinstance(h.get("pid"), int):
                return True  # another machine's process: cannot tell
            return h["pid"] != os.getpid() and fileio.process_alive(h["pid"])

        return [h for h in out if live(h)] or out

    def _busy(self) -> StoreBusyError:
        others = self.holders()
        who = "; ".join(_describe(h) for h in others) if others else "another process"
        return StoreBusyError(self.what, who)

    def _line(self, mode: str) -> bytes:
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        info = {"pid": os.getpid(), "host": fileio.hostname(), "mode": mode, "since": since}
        if self.doing:
            info["doing"] = self.doing
        return (json.dumps(info) + "\n").encode()

    def acquire(self, *, shared: bool = False, wait: bool | float = False) -> FileLock:
        """Takes the lock.

        Args:
          shared: a shared lock (several shared holders may hold it at once).
          wait: ``False`` fails at once if the lock is taken, ``True`` waits for it, a number
            waits at most that many seconds.

        Raises:
          StoreBusyError: naming the holders, if the lock is taken and not waited for.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this object")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = None if wait is True else time.monotonic() + (float(wait) if wait else 0.0)
        try:
            while True:
                try:
                    # Anyone holding it? Exclusive first, so that a shared holder that finds
                    # no other holder clears the lines of past ones.
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os.ftruncate(fd, 0)
                    if shared:
                        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if shared:
                        with contextlib.suppress(BlockingIOError):
                            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                            break
                if deadline is not None and time.monotonic() >= deadline:
                    raise self._busy()
                time.sleep(0.2)
            os.lseek(fd, 0, os.SEEK_END)
            os.write(fd, self._line("shared" if shared else "exclusive"))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(OSError):
                # Clear our line if we were the last holder; others' lines stay.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def __enter__(self) -> FileLock:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
