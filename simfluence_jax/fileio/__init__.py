"""Files on disk: atomic writes, directory replacement, validated reads, format versions.

Every module that writes or reads our files goes through these functions, so the guarantees
hold in one place:

* **Atomic files.** :func:`atomic_write` writes to a temporary sibling, flushes, fsyncs,
  renames over the target and fsyncs the folder: a reader sees the old file or the new one,
  never a torn one, even after a crash.
* **Atomic folders.** :func:`replace_directory` fills a temporary sibling folder, then swaps
  it in: with one atomic exchange of the two names where the system has it (Linux
  ``renameat2(RENAME_EXCHANGE)``), else by renaming the old folder aside, renaming the new
  one in and only then removing the old. It never deletes before renaming. Readers go through
  :func:`resolve_directory`, which finds the set-aside old version if a crash fell between
  the two renames, so a reader always finds the old or the new version.
* **Temporaries** are named ``.NAME.new.PID@HOST~RANDOM`` (``old`` for a set-aside folder,
  ``del`` for one being deleted);
  :func:`remove_stale` deletes those whose process is gone (same host), so a killed save
  leaves nothing behind after the next save or store open.
* **Permissions follow the umask**, as ``open`` and ``mkdir`` do (``tempfile`` would make
  files 0600 and folders 0700, unreadable to colleagues sharing results).
* **Reads are validated where they happen**: :func:`read_json` and :func:`read_npz` turn a
  missing, truncated or garbled file, text that is not UTF-8, a wrong JSON type, missing
  keys, object arrays (never unpickled) and arrays of the wrong dtype or shape into a
  ``ValueError`` that names the file and the problem.
* :func:`check_format` checks a file's format name and version (a newer version says so).
* :func:`git_revision` is the one way to record the code's commit.

Modules: :mod:`.files` (temporaries, atomic files and folders), :mod:`.reads` (validated
reads), :mod:`.storage` (what a failed write means), :mod:`.versions` (format versions, the
git revision); every name is imported here, so ``from simfluence_jax import fileio`` and
``fileio.atomic_write`` read as one module.

This package is part of the core: it imports only the standard library and NumPy.
"""

from simfluence_jax.fileio.files import (
    atomic_json,
    atomic_npz,
    atomic_write,
    fsync_dir,
    hostname,
    is_temporary,
    json_bytes,
    make_dirs,
    npz_bytes,
    process_alive,
    remove_stale,
    replace_directory,
    resolve_directory,
    temp_sibling,
    write_files,
)
from simfluence_jax.fileio.reads import (
    ArraySpec,
    check_arrays,
    check_keys,
    read_bytes,
    read_json,
    read_npy,
    read_npz,
    read_text,
    sha256_file,
)
from simfluence_jax.fileio.storage import (
    free_space,
    storage_advice,
    storage_errno,
    storage_reason,
)
from simfluence_jax.fileio.versions import (
    check_format,
    git_revision,
    split_revision,
)

__all__ = [
    "ArraySpec",
    "atomic_json",
    "atomic_npz",
    "atomic_write",
    "check_arrays",
    "check_format",
    "check_keys",
    "free_space",
    "fsync_dir",
    "git_revision",
    "hostname",
    "is_temporary",
    "json_bytes",
    "make_dirs",
    "npz_bytes",
    "process_alive",
    "read_bytes",
    "read_json",
    "read_npy",
    "read_npz",
    "read_text",
    "remove_stale",
    "replace_directory",
    "resolve_directory",
    "sha256_file",
    "split_revision",
    "storage_advice",
    "storage_errno",
    "storage_reason",
    "temp_sibling",
    "write_files",
]
