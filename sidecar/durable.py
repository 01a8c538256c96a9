"""Files written whole or not at all, and durable once written.

A temporary file in the same directory, ``fsync``, ``rename`` over the target, then ``fsync`` of
the directory: a crash at any point leaves the old file or the new one, never a mix, and a write
that returned survives power loss (POSIX: a rename is durable only once its directory entry is).
The pin store, the evidence archive and the provenance archive all write this way.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename, a new file) durable.

    Raises:
        OSError: the directory cannot be opened or synced.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than asked).

    Raises:
        OSError: the write failed.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def replace_durably(target: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``target`` atomically and durably (see the module docstring).

    A unique temporary name lets concurrent writers of one file each rename a whole file.

    Raises:
        OSError: the file cannot be written; ``target`` is then unchanged and no temporary
            file is left behind.
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)
