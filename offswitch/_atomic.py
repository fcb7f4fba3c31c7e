"""Files on bad paths: crash-safe writes, append-only row logs, and reads that refuse what is
not a regular file.

Writes go to a temp file in the same directory, fsync, rename, fsync dir: a reader never sees
a partial file, and a failure leaves no temp file behind. :func:`read_regular` opens without
blocking and refuses a FIFO, device or socket (reading a FIFO with no writer would hang).

A row log (``results.jsonl`` of the attack runner, the research scripts' rows) is one JSON
object per line, appended whole: :func:`append_row` writes a line under an exclusive lock,
flushed and fsynced, and :func:`read_rows` reads the complete lines. A killed writer leaves
at most a torn last line, which readers leave out and the next append drops.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from .errors import OutputDirError, OutputExistsError, SpecialFileError


def complete_lines(data: bytes) -> tuple[bytes, bytes]:
    """An append-only log's bytes split into its complete lines and a cut tail: a last line
    without its newline is a write cut short by a crash. The one rule for every reader of
    ``results.jsonl`` and ``samples.jsonl`` (the attack runner drops the tail on resume and
    measures that point again; the report leaves it out)."""
    end = data.rfind(b"\n") + 1
    return data[:end], data[end:]


def _lock(fh: Any) -> Any:
    import fcntl

    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    return fh


def _drop_tail(fh: Any, path: Path) -> None:
    """Under the caller's lock: cut a last line without its newline off ``path``."""
    size = fh.seek(0, os.SEEK_END)
    if not size:
        return
    with path.open("rb") as rd:  # only the tail needs reading: back to its last newline
        pos, cut = size, 0
        while pos > 0:
            step = min(65536, pos)
            rd.seek(pos - step)
            chunk = rd.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                cut = size - (pos - step + nl + 1)
                break
            pos -= step
        else:
            cut = size
    if cut:
        fh.truncate(size - cut)
        fh.flush()
        os.fsync(fh.fileno())


def append_row(path: str | os.PathLike[str], row: Any) -> None:
    """``row`` as one JSON line (keys sorted) at the end of ``path`` (created with its
    folder), under an exclusive lock — several processes may append to one log — flushed and
    fsynced; a torn last line left by a killed writer is cut off first, or the new line
    would glue onto it."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path.open("a", encoding="utf-8")) as fh:
        _drop_tail(fh, path)
        fh.seek(0, os.SEEK_END)
        fh.write(json.dumps(row, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def repair_rows(path: str | os.PathLike[str]) -> None:
    """Cut a torn last line off the log at ``path`` (in place, under the lock); nothing is
    parsed, nothing else is rewritten."""
    path = Path(path)
    if path.is_file():
        with _lock(path.open("a", encoding="utf-8")) as fh:
            _drop_tail(fh, path)


def read_rows(path: str | os.PathLike[str], repair: bool = False) -> list[Any]:
    """Every row of the log at ``path`` (none if it does not exist): its complete, non-blank
    lines, parsed; with ``repair`` a torn last line is also cut off the file."""
    import json

    path = Path(path)
    if not path.is_file():
        return []
    if repair:
        repair_rows(path)
    keep, _ = complete_lines(path.read_bytes())
    return [json.loads(line) for line in keep.decode("utf-8").splitlines() if line.strip()]


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """The bytes of ``path``, which must be a regular file (symlinks are followed).

    ``FileNotFoundError``, ``IsADirectoryError`` and ``PermissionError`` as ``open`` raises
    them; :class:`SpecialFileError` for a FIFO, device or socket, found without blocking.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(mode):
            raise SpecialFileError(f"{os.fspath(path)} is a FIFO, device or socket")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


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
