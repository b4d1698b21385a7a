"""Data files: where they live, how they are verified, and how they are fetched.

Every file vilab reads is named by its path relative to a data directory, with the
layout of the project's offline copy::

    <data_dir>/mnist/train-images-idx3-ubyte.gz            (and the three other IDX files)
    <data_dir>/binarized_mnist/binarized_mnist_train.amat  (or .amat.xz; valid, test)

The data directory is, in order: the ``data_dir`` argument, the environment variable
``VILAB_DATA_DIR``, or the user cache ``$XDG_CACHE_HOME/vilab`` (``~/.cache/vilab``).
A directory named by the argument or the variable must exist; the cache is created.

Every file has a known size and SHA-256 (:data:`KNOWN_FILES`, from the data README). A
local file is checked before it is read (once per process for a given path, size and
modification time); a file that is missing is downloaded from a list of mirrors tried in
order. A download is held in memory, checked, and only then written to a temporary file
in the target directory and renamed over the final name, so an interrupted or corrupt
download never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from vilab.core.io import atomic_write_bytes
from vilab.data.catalog import KNOWN_FILES, DataFile

__all__ = [
    "KNOWN_FILES",
    "ChecksumError",
    "DataFile",
    "DownloadError",
    "download_file",
    "fetch",
    "resolve_data_dir",
    "verify_file",
]

logger = logging.getLogger(__name__)

ENV_VAR = "VILAB_DATA_DIR"
_USER_AGENT = "vilab/0.1 (python urllib)"
_CHUNK = 1 << 20
_HINT = f"set {ENV_VAR} to a directory that holds a verified copy"


class ChecksumError(ValueError):
    """A local file has the wrong size or SHA-256 (truncated, corrupt or a different file)."""


class DownloadError(OSError):
    """No mirror delivered a file with the expected checksum."""


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "vilab"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the data directory: the argument, else ``$VILAB_DATA_DIR``, else the cache.

    A directory named by the argument or the variable must exist (a typo should not start a
    download into a new directory); the default cache directory is created.

    Raises:
        FileNotFoundError: the named directory does not exist, or is not a directory.
    """
    named = data_dir if data_dir is not None else (os.environ.get(ENV_VAR) or None)
    if named is None:
        path = _default_cache_dir()
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(named).expanduser()
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        via = "the data_dir argument" if data_dir is not None else f"${ENV_VAR}"
        raise FileNotFoundError(
            f"data directory {str(path)!r} (from {via}) {what}; create it (files are then "
            f"downloaded into it on first use), point {via} at a directory laid out as "
            f"mnist/<file>.gz and binarized_mnist/<file>.amat[.xz], or unset {ENV_VAR} to "
            f"use the cache {str(_default_cache_dir())!r}"
        )
    return path


# (resolved path, size, mtime_ns, sha256) of files already verified in this process.
_VERIFIED: set[tuple[str, int, int, str]] = set()


def _verified_key(path: Path, sha256: str) -> tuple[str, int, int, str]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, sha256)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, expected: DataFile) -> None:
    """Check a local file's size and SHA-256 against ``expected``.

    The result is cached per process for the file's (path, size, modification time), so a
    file is hashed once however often it is loaded.

    Raises:
        ChecksumError: the size differs (a truncated or incomplete file) or the SHA-256 does.
    """
    key = _verified_key(path, expected.sha256)
    size = key[1]
    if key in _VERIFIED:
        return
    if size != expected.size:
        kind = "truncated or incomplete" if size < expected.size else "too long"
        problem = (
            f"is {size:,} bytes but {expected.relpath} is {expected.size:,} bytes: the file is "
            f"{kind} (an interrupted download or copy?)"
        )
    elif (digest := _sha256_file(path)) != expected.sha256:
        problem = (
            f"has SHA-256 {digest} but {expected.relpath} has {expected.sha256}: the file is "
            "corrupt or not the published one"
        )
    else:
        _VERIFIED.add(key)
        return
    raise ChecksumError(
        f"{str(path)!r} {problem}; delete it and run again to download it, or {_HINT}"
    )


def _read_url(url: str, limit: int, timeout: float) -> bytes:
    """Read at most ``limit`` bytes from ``url`` (one more would mean the file is too long)."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        chunks, total = [], 0
        while total <= limit:
            chunk = response.read(min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    return b"".join(chunks)


def download_file(
    expected: DataFile,
    dest: Path,
    *,
    urls: Sequence[str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``expected`` to ``dest``, trying each mirror in order.

    Each mirror's bytes are checked (size, SHA-256) before anything is written; the first
    good copy is written atomically (temporary file in ``dest``'s directory, then rename).
    A mirror that fails (HTTP error, unreachable, wrong size or checksum) is logged and the
    next one is tried.

    Args:
        expected: the file's size, checksum and mirrors.
        dest: final path.
        urls: mirrors to use instead of ``expected.urls``.
        timeout: seconds to wait on a connection or a read.

    Returns:
        ``dest``.

    Raises:
        DownloadError: no mirror gave a good copy; the message lists each mirror's failure.
    """
    urls = tuple(expected.urls if urls is None else urls)
    if not urls:
        raise DownloadError(
            f"{expected.relpath} has no download mirror; copy it into {str(dest)!r} or {_HINT}"
        )
    failures = []
    for url in urls:
        logger.info("downloading %s -> %s", url, dest)
        try:
            data = _read_url(url, expected.size, timeout)
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError
            failures.append(f"{url}: {type(err).__name__}: {err}")
            logger.warning("mirror failed: %s", failures[-1])
            continue
        if len(data) != expected.size:
            more = len(data) > expected.size  # _read_url stops one byte past the size
            failures.append(
                f"{url}: got {len(data):,} bytes{'+' * more}, expected {expected.size:,} "
                f"({'too long' if more else 'truncated'})"
            )
        elif (digest := hashlib.sha256(data).hexdigest()) != expected.sha256:
            failures.append(f"{url}: SHA-256 {digest}, expected {expected.sha256}")
        else:
            atomic_write_bytes(dest, data)
            _VERIFIED.add(_verified_key(dest, expected.sha256))  # checked: no second hash
            return dest
        logger.warning("mirror rejected: %s", failures[-1])
    tried = "\n  ".join(failures)
    raise DownloadError(
        f"could not download {expected.relpath} from any mirror:\n  {tried}\n"
        f"Download it by hand into {str(dest)!r}, or {_HINT}."
    )


def fetch(
    candidates: Sequence[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
) -> Path:
    """Find a verified local copy of a file, downloading it if there is none.

    Args:
        candidates: relative paths (keys of :data:`KNOWN_FILES`) that hold the same data,
            in order of preference, e.g. ``.amat`` then ``.amat.xz``. The first that exists
            is verified and returned; if none exists, the first one with mirrors is
            downloaded.
        data_dir: see :func:`resolve_data_dir`.
        download: if False, a missing file is an error instead of a download.

    Returns:
        The path of a verified file.

    Raises:
        ValueError: a candidate is not a known file.
        FileNotFoundError: the data directory is missing, or the file is and ``download``
            is False.
        ChecksumError: the local file is truncated or corrupt.
        DownloadError: every mirror failed.
    """
    unknown = [c for c in candidates if c not in KNOWN_FILES]
    if unknown or not candidates:
        raise ValueError(
            f"unknown data file(s) {unknown or list(candidates)!r}; known: {sorted(KNOWN_FILES)}"
        )
    root = resolve_data_dir(data_dir)
    for rel in candidates:
        path = root / rel
        if path.is_file():
            verify_file(path, KNOWN_FILES[rel])
            return path
    wanted = " or ".join(repr(str(root / rel)) for rel in candidates)
    if not download:
        raise FileNotFoundError(f"no {wanted}; pass download=True to fetch it, or {_HINT}")
    for rel in candidates:
        if KNOWN_FILES[rel].urls:
            return download_file(KNOWN_FILES[rel], root / rel)
    raise FileNotFoundError(f"no {wanted}, and none of these files can be downloaded")
