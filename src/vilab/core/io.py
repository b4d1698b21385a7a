"""Atomic file writes: a run's files and downloads are whole or absent, never half written.

A file is written to a temporary file in the same directory, flushed and fsync'ed, then
renamed over the old one (``os.replace`` is atomic on POSIX), and the directory is
fsync'ed: a crash, a kill or a full disk leaves the previous version intact.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

_TEMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()  # read once, at import: os.umask is process-wide


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory,
    fsync, rename over ``path``, fsync of the directory (so the rename survives a power
    loss too).

    Raises:
        OSError: the write failed (disk full, file too large, no permission); the message
            says that ``path`` — the previous version, if any — is untouched, and the
            temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _FILE_MODE)  # mkstemp makes 0600; a finished file is not
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        full = err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        raise OSError(
            err.errno,
            f"could not write {str(path)!r} ({err.strerror or err}); "
            + ("the disk is full or the file too large; " if full else "")
            + ("the previous version is intact" if path.exists() else "nothing was written"),
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename stands
    finally:
        os.close(fd)


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete the temporary files that a process killed mid-write left in ``directory``
    (``.<name>.*.tmp``; never a finished file). Returns what was removed."""
    removed = []
    for p in directory.glob(f".*{_TEMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
