"""Crash-safe file writes: write a temp file in the same directory, fsync, rename, fsync dir.

A reader never sees a partial file, and a failure leaves no temp file behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from .errors import OutputDirError, OutputExistsError


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable_dir(path: Path) -> None:
    """Raise a clear error if ``path``'s parent directory is missing or not writable."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputDirError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputDirError(f"output directory {parent} is not writable")


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    _fsync_dir(directory)


def user_os_error(e: OSError, path: Path) -> OSError:
    """``e`` naming the file the caller asked for, not one of our temp files."""
    if type(e) is OutputExistsError or not e.errno:
        return e
    return OSError(e.errno, e.strerror, str(path))


def write_temp(path: Path, data: bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` to a new temp file beside ``path`` (mode ``mode``, fsynced); return it.

    The caller renames it into place or removes it; on failure nothing is left behind.
    """
    # pid + random part: a temp file left by a crashed writer (pids are reused) or another
    # thread never collides with ours, and we only ever delete the file we created
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # umask must not widen or narrow the requested mode
            with os.fdopen(fd, "wb", closefd=False) as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, force: bool = True) -> None:
    """Atomically write ``data`` to ``path`` with permission bits ``mode``.

    With ``force=False`` an existing ``path`` is left untouched and ``OutputExistsError``
    raised (the check is repeated at rename time with ``os.link``, so a file created by a
    racing writer is not clobbered either).
    """
    path = Path(path)
    check_writable_dir(path)
    if not force and path.exists():
        raise OutputExistsError(f"{path} already exists (use --force to overwrite)")
    tmp = None
    try:
        tmp = write_temp(path, data, mode=mode)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path appeared meanwhile
            except FileExistsError:
                raise OutputExistsError(
                    f"{path} already exists (use --force to overwrite)"
                ) from None
            os.unlink(tmp)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:
        raise user_os_error(e, path) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
