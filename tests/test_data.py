"""Data: checksums, downloads (local server only), IDX/.amat parsing, binarization, batches.

Real-data tests read ``$VILAB_DATA_DIR`` (else ``<repo>/../shared/data``) and are skipped
when the files are absent. Nothing here touches the network: mirrors are a ``file://`` URL
or an HTTP server on 127.0.0.1 that shuts itself down.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

import vilab.data as data
from vilab.data import (
    Batches,
    ChecksumError,
    DownloadError,
    ImageDataset,
    binarize_once,
    dynamic_binarize,
    load_binarized_mnist,
    load_dataset,
    load_mnist,
    make_tiny,
    resolve_data_dir,
)
from vilab.data import download as dl
from vilab.data.mnist import parse_amat, parse_idx_images, parse_idx_labels

# ----------------------------------------------------------------------------- fixtures


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims) + payload


def amat_bytes(rows: np.ndarray) -> bytes:
    return "".join(" ".join(map(str, r)) + "\n" for r in rows.tolist()).encode()


def register(monkeypatch: pytest.MonkeyPatch, rel: str, blob: bytes, urls=()) -> dl.DataFile:
    """Make ``blob`` the known content of ``rel`` (size, SHA-256, mirrors)."""
    entry = dl.DataFile(rel, len(blob), hashlib.sha256(blob).hexdigest(), tuple(urls))
    monkeypatch.setitem(dl.KNOWN_FILES, rel, entry)
    return entry


def put(root: Path, rel: str, blob: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path


@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A data dir with 12 'training' and 5 'test' MNIST images, registered as known files."""
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 12), ("t10k", 5)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, magic, arr in (("images-idx3", 0x803, images), ("labels-idx1", 0x801, labels)):
            rel = f"mnist/{split}-{kind}-ubyte.gz"
            blob = gzip.compress(idx_bytes(magic, arr.shape, arr.tobytes()), mtime=0)
            register(monkeypatch, rel, blob)
            put(tmp_path, rel, blob)
        out[split] = (images.reshape(n, 784), labels.astype(np.int64))
    return tmp_path, out


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict, list]]:
    """A bounded HTTP server on 127.0.0.1: routes {path: body or (claimed_length, body)}."""
    routes: dict[str, bytes | tuple[int, bytes]] = {}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            hits.append(self.path)
            body = routes.get(self.path)
            if body is None:
                self.send_error(404)
                return
            length, body = body if isinstance(body, tuple) else (len(body), body)
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    watchdog = threading.Timer(60, server.shutdown)  # stops itself whatever happens
    watchdog.daemon = True
    watchdog.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes, hits
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing-listens-here"


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------------- data directory


def test_data_dir_precedence_argument_env_cache(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "arg").mkdir()
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("VILAB_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("VILAB_DATA_DIR")
    assert resolve_data_dir() == tmp_path / "xdg" / "vilab"
    assert (tmp_path / "xdg" / "vilab").is_dir()  # the cache is created


def test_missing_data_dir_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FileNotFoundError, match="does not exist.*VILAB_DATA_DIR") as err:
        load_dataset("binarized_mnist", "test", data_dir=missing)
    assert str(missing) in str(err.value) and "data_dir argument" in str(err.value)
    monkeypatch.setenv("VILAB_DATA_DIR", str(missing))
    with pytest.raises(FileNotFoundError, match=r"from \$VILAB_DATA_DIR\) does not exist"):
        load_mnist("test")
    assert not missing.exists()  # a typo never creates a directory


def test_missing_file_without_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"binarized_mnist_valid\.amat.*download=True"):
        load_binarized_mnist("valid", tmp_path, download=False)


# -------------------------------------------------------------------------- checksums


def test_checksum_accepts_good_and_rejects_corrupt_or_truncated(tmp_path, monkeypatch) -> None:
    blob = bytes(range(256)) * 4
    entry = register(monkeypatch, "mnist/t10k-labels-idx1-ubyte.gz", blob)
    path = put(tmp_path, entry.relpath, blob)
    dl.verify_file(path, entry)

    corrupt = bytearray(blob)
    corrupt[100] ^= 1
    path.write_bytes(bytes(corrupt))
    with pytest.raises(ChecksumError, match="SHA-256.*corrupt.*delete") as err:
        dl.verify_file(path, entry)
    assert "VILAB_DATA_DIR" in str(err.value) and str(path) in str(err.value)

    path.write_bytes(blob[:-10])
    with pytest.raises(ChecksumError, match=r"1,014 bytes.*1,024 bytes.*truncated"):
        dl.fetch([entry.relpath], tmp_path)


def test_verification_is_cached_per_path_size_mtime(tmp_path, monkeypatch) -> None:
    blob = b"x" * 1000
    entry = register(monkeypatch, "mnist/t10k-labels-idx1-ubyte.gz", blob)
    path = put(tmp_path, entry.relpath, blob)
    dl.verify_file(path, entry)

    def boom(_: Path) -> str:
        raise AssertionError("hashed twice")

    monkeypatch.setattr(dl, "_sha256_file", boom)
    dl.verify_file(path, entry)  # cached: not hashed again
    os.utime(path, ns=(0, 12345))  # touched: hashed again
    with pytest.raises(AssertionError, match="hashed twice"):
        dl.verify_file(path, entry)


# ------------------------------------------------------------------------------ parsing


def test_idx_round_trip_and_header_checks() -> None:
    images = np.arange(2 * 784, dtype=np.uint8).reshape(2, 28, 28)
    blob = idx_bytes(0x803, (2, 28, 28), images.tobytes())
    np.testing.assert_array_equal(parse_idx_images(blob), images.reshape(2, 784))
    labels = parse_idx_labels(idx_bytes(0x801, (3,), bytes([0, 9, 4])))
    assert labels.dtype == np.int64 and labels.tolist() == [0, 9, 4]

    with pytest.raises(ValueError, match=r"1,000 bytes.*implies 1,584.*truncated"):
        parse_idx_images(blob[:1000])
    with pytest.raises(ValueError, match="trailing bytes"):
        parse_idx_images(blob + b"\0")
    with pytest.raises(ValueError, match=r"magic number 0x00000801, expected 0x00000803"):
        parse_idx_images(idx_bytes(0x801, (3,), bytes(3)))
    with pytest.raises(ValueError, match="magic number 0x1f8b0808"):  # still gzip-compressed
        parse_idx_labels(b"\x1f\x8b\x08\x08rest")
    with pytest.raises(ValueError, match="truncated IDX header"):
        parse_idx_images(idx_bytes(0x803, (2,), b""))
    with pytest.raises(ValueError, match="expected 28×28"):
        parse_idx_images(idx_bytes(0x803, (1, 2, 2), bytes(4)))
    with pytest.raises(ValueError, match="label 10"):
        parse_idx_labels(idx_bytes(0x801, (2,), bytes([3, 10])))


def test_truncated_gzip_is_a_clear_error(fake_mnist, monkeypatch) -> None:
    root, _ = fake_mnist
    rel = "mnist/t10k-labels-idx1-ubyte.gz"
    path = root / rel
    short = path.read_bytes()[:-12]
    path.write_bytes(short)
    register(monkeypatch, rel, short)  # even with a matching checksum, parsing says why
    with pytest.raises(ValueError, match="not a complete .gz file"):
        load_mnist("test", root)


def test_amat_fast_path_fallback_and_bad_rows() -> None:
    rows = np.random.default_rng(1).integers(0, 2, (3, 784), dtype=np.uint8)
    blob = amat_bytes(rows)
    assert len(blob) == 3 * 1568
    np.testing.assert_array_equal(parse_amat(blob), rows)
    crlf = blob.replace(b"\n", b" \r\n")  # non-canonical layout: line-by-line parser
    np.testing.assert_array_equal(parse_amat(crlf), rows)

    bad = bytearray(blob)
    bad[1568 + 2 * 17] = ord("2")
    with pytest.raises(ValueError, match=r"line 2: value '2'.*784 values 0 or 1"):
        parse_amat(bytes(bad))
    short = blob[:1568] + blob[1568 + 2 :]  # row 2 has 783 values
    with pytest.raises(ValueError, match="line 2: 783 values"):
        parse_amat(short)
    with pytest.raises(ValueError, match="empty"):
        parse_amat(b"\n")


def test_amat_plain_preferred_then_xz(tmp_path, monkeypatch) -> None:
    rows = np.random.default_rng(2).integers(0, 2, (4, 784), dtype=np.uint8)
    rel = "binarized_mnist/binarized_mnist_test.amat"
    xz = lzma.compress(amat_bytes(rows))
    register(monkeypatch, rel + ".xz", xz)
    put(tmp_path, rel + ".xz", xz)
    ds = load_dataset("binarized_mnist", "test", tmp_path)
    assert ds.labels is None and not ds.dynamic and ds.image_shape == (1, 28, 28)
    torch.testing.assert_close(ds.tensor(), torch.from_numpy(rows).float())
    assert load_binarized_mnist("test", tmp_path) is ds.images  # parsed once, cached

    plain = amat_bytes(rows[:2])
    register(monkeypatch, rel, plain)
    put(tmp_path, rel, plain)
    assert load_binarized_mnist("test", tmp_path).shape == (2, 784)  # .amat wins


def test_fake_mnist_loads_and_splits(fake_mnist, monkeypatch) -> None:
    root, expected = fake_mnist
    images, labels = load_mnist("train", root)
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    np.testing.assert_array_equal(images.numpy(), expected["train"][0])
    np.testing.assert_array_equal(labels.numpy(), expected["train"][1])

    monkeypatch.setattr(data, "MNIST_VALID_SIZE", 4)
    train = load_dataset("mnist_dynamic", "train", root)
    valid = load_dataset("mnist_dynamic", "valid", root)
    test = load_dataset("mnist_dynamic", "test", root)
    assert train.dynamic and not valid.dynamic and not test.dynamic
    assert (len(train), len(valid), len(test)) == (8, 4, 5)
    torch.testing.assert_close(train.images, images[:8])
    torch.testing.assert_close(valid.labels, labels[8:])
    assert set(valid.images.unique().tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="dynamically binarized"):
        train.tensor()


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown data set 'mnist'; accepted: .*binarized_mnist"):
        load_dataset("mnist", "train")
    with pytest.raises(ValueError, match=r"unknown split 'val'; accepted: \['train', 'valid'"):
        load_dataset("tiny", "val")
    with pytest.raises(ValueError, match="unknown data file"):
        dl.fetch(["mnist/nope.gz"])


# ----------------------------------------------------------------------------- download


def test_download_falls_back_across_mirrors(http_server, tmp_path, monkeypatch) -> None:
    base, routes, hits = http_server
    blob = gzip.compress(idx_bytes(0x801, (3,), bytes([1, 2, 3])), mtime=0)
    routes["/good/t10k-labels-idx1-ubyte.gz"] = blob
    urls = [
        closed_port_url(),
        f"{base}/missing/t10k-labels-idx1-ubyte.gz",
        f"{base}/good/t10k-labels-idx1-ubyte.gz",
    ]
    rel = "mnist/t10k-labels-idx1-ubyte.gz"
    register(monkeypatch, rel, blob, urls)
    path = dl.fetch([rel], tmp_path)
    assert path == tmp_path / rel and path.read_bytes() == blob
    assert hits == ["/missing/t10k-labels-idx1-ubyte.gz", "/good/t10k-labels-idx1-ubyte.gz"]
    assert listing(tmp_path) == [rel]  # no temporary file left
    dl.fetch([rel], tmp_path)  # present and verified: no second download
    assert len(hits) == 2


def test_download_rejects_bad_checksum_and_truncation(http_server, tmp_path, monkeypatch) -> None:
    base, routes, _ = http_server
    blob = b"0 1 " * 100
    routes["/wrong"] = blob[:-1] + b"X"
    routes["/short"] = blob[:-50]
    routes["/cut"] = (len(blob), blob[:-50])  # Content-Length says more than is sent
    rel = "binarized_mnist/binarized_mnist_valid.amat"
    register(monkeypatch, rel, blob, [f"{base}/wrong", f"{base}/short", f"{base}/cut"])
    with pytest.raises(DownloadError) as err:
        load_binarized_mnist("valid", tmp_path)
    msg = str(err.value)
    assert "/wrong: SHA-256" in msg and "/short: got 350 bytes, expected 400 (truncated)" in msg
    cut = next(line for line in msg.splitlines() if "/cut: " in line)
    assert "truncated" in cut or "IncompleteRead" in cut  # depends on the Python version
    assert "VILAB_DATA_DIR" in msg
    assert listing(tmp_path) == []  # nothing written, not even a temporary file


def test_download_from_file_url(tmp_path, monkeypatch) -> None:
    blob = b"some bytes"
    source = put(tmp_path / "mirror", "f.bin", blob)
    rel = "mnist/t10k-labels-idx1-ubyte.gz"
    entry = register(monkeypatch, rel, blob)
    dest = tmp_path / "data" / rel
    dl.download_file(entry, dest, urls=[source.as_uri()])
    assert dest.read_bytes() == blob
    with pytest.raises(DownloadError, match="no download mirror"):
        dl.download_file(entry, dest)


# ------------------------------------------------------------------------- binarization


def test_dynamic_binarization_mean_is_pixel_over_255() -> None:
    pixels = torch.tensor([0, 1, 30, 64, 128, 200, 254, 255], dtype=torch.uint8)
    draws = dynamic_binarize(pixels.expand(20_000, -1), torch.Generator().manual_seed(0))
    assert draws.dtype == torch.float32 and set(draws.unique().tolist()) <= {0.0, 1.0}
    p = pixels.double() / 255
    mean = draws.double().mean(0)
    assert (mean - p).abs().max() < 5 * (0.25 / 20_000) ** 0.5
    assert mean[0] == 0 and mean[-1] == 1
    with pytest.raises(ValueError, match="dtype torch.float32.*uint8"):
        dynamic_binarize(torch.rand(3))


def test_fixed_binarization_is_reproducible() -> None:
    images, _ = make_tiny(50, seed=3)
    a, b = binarize_once(images, 7), binarize_once(images, 7)
    assert torch.equal(a, b) and not torch.equal(a, binarize_once(images, 8))
    v1, v2 = load_dataset("tiny", "valid"), load_dataset("tiny", "valid")
    assert torch.equal(v1.images, v2.images) and not v1.dynamic
    assert not torch.equal(v1.images, load_dataset("tiny", "valid", binarize_seed=1).images)
    static = load_dataset("tiny_static", "train")
    assert not static.dynamic and set(static.images.unique().tolist()) == {0, 1}


def test_tiny_set_is_deterministic_grey_and_labelled() -> None:
    x1, y1 = make_tiny(200, seed=5)
    x2, y2 = make_tiny(200, seed=5)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, make_tiny(200, seed=6)[0])
    assert x1.shape == (200, 784) and x1.dtype == torch.uint8
    assert set(y1.unique().tolist()) == set(range(10))
    on = (x1 > 0).double().mean()
    assert 0.08 < on < 0.3  # like MNIST: ~19% of pixels carry ink
    assert ((x1 > 0) & (x1 < 255)).any() and (x1 == 255).any()  # grey edges, saturated strokes
    train = load_dataset("tiny", "train")
    assert train.dynamic and len(train) == 4000 and train.labels is not None
    with pytest.raises(ValueError, match="n=0"):
        make_tiny(0)


# ------------------------------------------------------------------------------ batches


def _toy(dynamic: bool, n: int = 10) -> ImageDataset:
    images = torch.arange(n, dtype=torch.uint8)[:, None].expand(n, 4) * (25 if dynamic else 0)
    if not dynamic:
        images = (torch.arange(n)[:, None] % 2).expand(n, 4).to(torch.uint8)
    return ImageDataset(images.contiguous(), torch.arange(n), dynamic, "toy", "train", (1, 2, 2))


def test_batches_cover_each_epoch_and_are_reproducible_and_resumable() -> None:
    ds = _toy(dynamic=False)
    b = Batches(ds, 4, seed=1)
    assert b.steps_per_epoch == 3
    epoch0 = torch.cat([b.indices(s) for s in range(3)])
    epoch1 = torch.cat([b.indices(s) for s in range(3, 6)])
    assert sorted(epoch0.tolist()) == list(range(10)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1)
    assert b.epoch(5) == 1 and len(b.indices(2)) == 2  # last batch of an epoch is smaller
    torch.testing.assert_close(b.labels(4), b.indices(4))
    torch.testing.assert_close(b.batch(4), ds.images[b.indices(4)].float())

    again = Batches(ds, 4, seed=1)
    resumed = again.iterate(start_step=4)
    for step in (4, 5, 6):
        assert torch.equal(next(resumed), b.batch(step))
    assert not torch.equal(Batches(ds, 4, seed=2).indices(0), b.indices(0))
    assert Batches(ds, 4, drop_last=True).steps_per_epoch == 2
    assert Batches(ds, 4, shuffle=False).indices(1).tolist() == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="batch_size=11"):
        Batches(ds, 11)


def test_dynamic_batches_redraw_every_step() -> None:
    ds = _toy(dynamic=True, n=8)  # grey levels 0, 25, …, 175
    b = Batches(ds, 8, seed=0, shuffle=False)
    x0, x1 = b.batch(0), b.batch(1)
    assert x0.shape == (8, 4) and set(x0.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(x0, x1)  # same images, fresh binarization
    assert torch.equal(x0, Batches(ds, 8, seed=0, shuffle=False).batch(0))
    draws = torch.stack([b.batch(s) for s in range(400)])
    p = ds.images[:, 0].double() / 255
    assert (draws.double().mean((0, 2)) - p).abs().max() < 0.05


# ---------------------------------------------------------------------------- real data


def _real_data_dir() -> Path | None:
    env = os.environ.get("VILAB_DATA_DIR")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return root if (root / "mnist").is_dir() and (root / "binarized_mnist").is_dir() else None


REAL = _real_data_dir()
needs_real = pytest.mark.skipif(REAL is None, reason="MNIST files not found ($VILAB_DATA_DIR)")


@needs_real
def test_real_binarized_mnist() -> None:
    sizes, ones = {}, {}
    for split in ("train", "valid", "test"):
        ds = load_dataset("binarized_mnist", split, REAL, download=False)
        assert ds.images.shape[1] == 784 and ds.images.max() == 1 and ds.labels is None
        sizes[split], ones[split] = len(ds), int(ds.images.sum())
    assert sizes == {"train": 50_000, "valid": 10_000, "test": 10_000}
    assert ones == {"train": 5_118_041, "valid": 1_028_036, "test": 1_038_896}


@needs_real
def test_real_mnist_and_dynamic_splits() -> None:
    images, labels = load_mnist("train", REAL, download=False)
    test_images, test_labels = load_mnist("test", REAL, download=False)
    assert images.shape == (60_000, 784) and test_images.shape == (10_000, 784)
    assert images.dtype == torch.uint8 and int(images.max()) == 255
    assert torch.bincount(labels).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]  # fmt: skip
    assert torch.bincount(test_labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009
    ]  # fmt: skip
    train = load_dataset("mnist_dynamic", "train", REAL, download=False)
    valid = load_dataset("mnist_dynamic", "valid", REAL, download=False)
    test = load_dataset("mnist_dynamic", "test", REAL, download=False)
    assert (len(train), len(valid), len(test)) == (50_000, 10_000, 10_000)
    assert torch.equal(train.images, images[:50_000]) and torch.equal(valid.labels, labels[50_000:])
    x = Batches(train, 128, seed=0).batch(0)
    assert x.shape == (128, 784) and set(x.unique().tolist()) == {0.0, 1.0}
    fixed = test.tensor()
    assert fixed.shape == (10_000, 784) and set(fixed.unique().tolist()) == {0.0, 1.0}
    # a fixed Bernoulli(pixel/255) draw keeps the mean ink: ~0.13 for MNIST
    assert abs(fixed.mean().item() - test_images.double().mean().item() / 255) < 2e-3
