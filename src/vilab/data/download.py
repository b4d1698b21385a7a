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
from dataclasses import dataclass
from pathlib import Path

from vilab.core.io import atomic_write_bytes

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
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FREYFACES_URLS = (
    "https://raw.githubusercontent.com/jmtomczak/vae_vampprior/master/datasets/Freyfaces/freyfaces.pkl",
    "https://raw.githubusercontent.com/riannevdberg/sylvester-flows/master/data/Freyfaces/freyfaces.pkl",
)
BINARIZED_MNIST_MIRRORS = ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",)
_USER_AGENT = "vilab/0.1 (python urllib)"
_CHUNK = 1 << 20
_HINT = f"set {ENV_VAR} to a directory that holds a verified copy"


@dataclass(frozen=True)
class DataFile:
    """One published file.

    Attributes:
        relpath: path inside the data directory, e.g. ``"mnist/t10k-labels-idx1-ubyte.gz"``.
        size: exact size in bytes.
        sha256: lowercase hex SHA-256 of the file as stored.
        urls: full download URLs, tried in order; empty for a file that is only read locally.
    """

    relpath: str
    size: int
    sha256: str
    urls: tuple[str, ...] = ()


def _mnist(name: str, size: int, sha256: str) -> DataFile:
    return DataFile(f"mnist/{name}", size, sha256, tuple(m + name for m in MNIST_MIRRORS))


def _amat(split: str, size: int, sha256: str, xz_size: int, xz_sha256: str) -> list[DataFile]:
    name = f"binarized_mnist_{split}.amat"
    urls = tuple(m + name for m in BINARIZED_MNIST_MIRRORS)
    return [
        DataFile(f"binarized_mnist/{name}", size, sha256, urls),
        DataFile(f"binarized_mnist/{name}.xz", xz_size, xz_sha256),
    ]


_TABLE = [
    _mnist(
        "train-images-idx3-ubyte.gz",
        9_912_422,
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    _mnist(
        "train-labels-idx1-ubyte.gz",
        28_881,
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    _mnist(
        "t10k-images-idx3-ubyte.gz",
        1_648_877,
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    _mnist(
        "t10k-labels-idx1-ubyte.gz",
        4_542,
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
    *_amat(
        "train",
        78_400_000,
        "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
        1_440_544,
        "1579cddb70a64b3d3d782d5a67b6c7e288b0fa07f4d666b6a038f7406f150032",
    ),
    *_amat(
        "valid",
        15_680_000,
        "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
        296_980,
        "cea836e2d653d3d39fb022572e0c01c99e7f3487662a5ef836a6729f20dd350c",
    ),
    *_amat(
        "test",
        15_680_000,
        "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
        287_268,
        "1d110222c3aec7e6b5b1d428a608709c44772cd60227b10696e78763096289c5",
    ),
]

_TABLE.append(
    DataFile(
        "freyfaces/freyfaces.pkl",
        3_568_521,
        "3b69410c6a5fd6e03f09012905168be3712373a094a776f7e58fcd0670d2138a",
        FREYFACES_URLS,
    )
)

#: Every file vilab knows, by path relative to the data directory.
KNOWN_FILES: dict[str, DataFile] = {f.relpath: f for f in _TABLE}


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
