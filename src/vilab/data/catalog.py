"""The data files vilab knows: where each is published and its exact size and SHA-256
(from the data README), by path relative to the data directory
(:mod:`vilab.data.download` verifies and fetches them)."""

from __future__ import annotations

from dataclasses import dataclass

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FREYFACES_URLS = (
    "https://raw.githubusercontent.com/jmtomczak/vae_vampprior/master/datasets/Freyfaces/freyfaces.pkl",
    "https://raw.githubusercontent.com/riannevdberg/sylvester-flows/master/data/Freyfaces/freyfaces.pkl",
)
BINARIZED_MNIST_MIRRORS = ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",)


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
