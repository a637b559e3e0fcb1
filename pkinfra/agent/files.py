"""Files written whole: beside their target, on disk, then renamed over it.

A reader (a service, the CA store, node_exporter) sees the old file or the new one, never half a
file or one with a wider mode, and a crash leaves at most a staged file beside the target
(``.<name>.pkinfra-<pid>-<random>``, which ``drop_staged`` removes). The one implementation for
Python, on the controller and on hosts (the standard library only); the shell's is
``operations.util.upload_atomic``.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

_MARK = ".pkinfra-"
_STAGED = re.compile(r"[0-9]+-[0-9a-f]+")


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a rename, a new or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create(
    path: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> None:
    """A new file at ``path`` (never one that exists): its final owner (uid, gid) and mode
    before its content, all on disk; nothing is left at ``path`` if writing fails."""
    # Created 0600, so the data is never readable by more than the final mode allows.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def stage(path: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None) -> Path:
    """``data`` in a new file beside ``path`` (``create``); returns the staged file, for the
    caller to rename over ``path``."""
    tmp = path.with_name(f".{path.name}{_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    create(tmp, data, mode, owner)
    return tmp


def write_atomic(
    path: Path,
    data: bytes,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
    *,
    sync_dir: bool = True,
) -> None:
    """Write ``data`` to ``path`` whole (``stage``, then rename); with ``sync_dir`` the rename
    is on disk when this returns (leave it to the caller that writes many files at once)."""
    tmp = stage(path, data, mode, owner)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def drop_staged(path: Path) -> None:
    """Remove what an interrupted writer of ``path`` left beside it (call with no writer of
    ``path`` running, e.g. under the writers' lock)."""
    if not path.parent.is_dir():
        return
    prefix = f".{path.name}{_MARK}"
    for entry in path.parent.iterdir():
        if entry.name.startswith(prefix) and _STAGED.fullmatch(entry.name[len(prefix) :]):
            entry.unlink(missing_ok=True)
