"""The user's own data: arrays, image folders, Python tensors, Frey Faces and digits; any
image shape in the networks; every bad input refused in one line before training."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from vilab.config import load_train_config
from vilab.data.named import ArrayUnpickler, load_pickled_arrays
from vilab.data.vae_data import load_vae_data
from vilab.nets import GatedConvDecoder, GatedConvEncoder, ResNetDecoder, ResNetEncoder
from vilab.train.vae import vae_data_for
from vilab.vae import build_vae, vae_objective

FREY = Path(os.environ.get("VILAB_DATA_DIR", "/nonexistent")) / "freyfaces" / "freyfaces.pkl"


def cfg(*overrides: str):
    return load_train_config(overrides=list(overrides))


def grey(n: int = 40, shape=(12, 8), seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (n, *shape)).astype(np.uint8)


# --- arrays --------------------------------------------------------------------------


def test_npz_with_splits_and_labels(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, train=grey(30), valid=grey(5), test=grey(6), train_labels=np.arange(30))
    c = cfg("data.name=arrays", f"data.path={p}", "likelihood=categorical", "data.batch_size=8")
    data = vae_data_for(c, None)
    assert data.image_shape == (1, 12, 8)
    assert data.valid.shape == (5, 96) and data.test.shape == (6, 96)
    x = data.train.batch(0)
    assert x.shape == (8, 96) and x.max() <= 1 and torch.allclose(x * 255, (x * 255).round())


def test_npy_is_memory_mapped_and_split_by_seed(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "d.npy"
    np.save(p, grey(50, (3, 8, 8)))
    seen = {}
    real = np.load

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(np, "load", spy)
    c = cfg("data.name=arrays", f"data.path={p}", "likelihood=logistic", "data.split=[0.6,0.2,0.2]")
    a, b = vae_data_for(c, None), vae_data_for(c, None)
    assert seen["mmap_mode"] == "r"
    assert a.image_shape == (3, 8, 8) and len(a.valid) == 10 and torch.equal(a.test, b.test)
    c2 = cfg("data.name=arrays", f"data.path={p}", "likelihood=logistic", "data.split_seed=5")
    assert not torch.equal(vae_data_for(c2, None).test, a.test[: len(vae_data_for(c2, None).test)])


def test_binarization_choices(tmp_path: Path) -> None:
    p = tmp_path / "d.npy"
    np.save(p, grey(40))
    base = ("data.name=arrays", f"data.path={p}", "data.batch_size=8")
    static = vae_data_for(cfg(*base, "data.binarize=static"), None)
    dyn = vae_data_for(cfg(*base, "data.binarize=dynamic"), None)
    assert static.train.batch(0).unique().tolist() == [0.0, 1.0]
    assert dyn.train.dataset.dynamic and not static.train.dataset.dynamic
    assert torch.equal(static.test, dyn.test)  # valid/test binarized once, same seed


def test_gaussian_dequantizes_grey_levels(tmp_path: Path) -> None:
    p = tmp_path / "d.npy"
    np.save(p, grey(40))
    c = cfg("data.name=arrays", f"data.path={p}", "likelihood=gaussian", "data.batch_size=8")
    data = vae_data_for(c, None)
    x0, x1 = data.train.batch(0), data.train.batch(1)
    assert 0 <= float(data.test.min()) and float(data.test.max()) < 1
    assert not torch.equal(x0 * 256 // 1, x0 * 256)  # noise added
    assert build_vae(c, data.image_shape).likelihood.offset_nats == pytest.approx(np.log(256))
    del x1


# --- folders -------------------------------------------------------------------------


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_with_class_subfolders(tmp_path: Path) -> None:
    for i, a in enumerate(grey(20, (8, 12))):
        _png(tmp_path / f"c{i % 2}" / f"{i}.png", a)
    c = cfg("data.name=folder", f"data.path={tmp_path}", "likelihood=categorical",
            "data.batch_size=4")  # fmt: skip
    data = vae_data_for(c, None)
    assert data.image_shape == (1, 8, 12)
    assert set(data.test_labels.tolist()) <= {0, 1}


def test_folder_mixed_sizes_and_unreadable(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", grey(1, (8, 8))[0])
    _png(tmp_path / "b.png", grey(1, (8, 12))[0])
    c = cfg("data.name=folder", f"data.path={tmp_path}", "likelihood=categorical")
    with pytest.raises(ValueError, match=r"b\.png: an image of size \(12, 8\).*one size"):
        vae_data_for(c, None)
    (tmp_path / "b.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"b\.png: not a readable image"):
        vae_data_for(c, None)


# --- Python data ---------------------------------------------------------------------


def test_python_tensor_and_dataset() -> None:
    from vilab.train.vae import as_python_data

    x = torch.from_numpy(grey(30, (8, 8)))
    c = as_python_data(cfg("data.name=python", "likelihood=categorical", "data.batch_size=4"))
    assert c.data.name == "python" and vae_data_for(c, x).image_shape == (1, 8, 8)
    ds = torch.utils.data.TensorDataset(x, torch.arange(30))
    data = vae_data_for(c, ds)
    assert data.test_labels is not None and data.valid.shape[1] == 64


# --- bad input -----------------------------------------------------------------------


def test_nan_and_inf_are_refused(tmp_path: Path) -> None:
    a = np.random.RandomState(0).rand(20, 4, 4).astype(np.float32)
    a[3, 1, 1] = np.nan
    p = tmp_path / "bad.npz"
    np.savez(p, images=a)
    with pytest.raises(ValueError, match=r"bad\.npz:images: 1 NaN or infinite value\(s\)"):
        vae_data_for(cfg("data.name=arrays", f"data.path={p}", "likelihood=gaussian"), None)


def test_values_the_likelihood_does_not_accept(tmp_path: Path) -> None:
    p, f = tmp_path / "g.npy", tmp_path / "f.npy"
    np.save(p, grey(20))
    np.save(f, np.random.RandomState(0).rand(20, 4, 4).astype(np.float32))
    with pytest.raises(ValueError, match=r"g\.npy: grey levels 0–255, but likelihood=bernoulli"):
        vae_data_for(cfg("data.name=arrays", f"data.path={p}"), None)
    with pytest.raises(
        ValueError,
        match=r"f\.npy: float values \(or integers outside 0–255\), but a 256-way categorical",
    ):
        vae_data_for(cfg("data.name=arrays", f"data.path={f}", "likelihood=categorical"), None)
    with pytest.raises(ValueError, match="data.name=freyfaces holds grey levels"):
        cfg("data.name=freyfaces")  # Bernoulli without a binarization, at config time
    with pytest.raises(ValueError, match="data.name=binarized_mnist is binary"):
        cfg("likelihood=categorical")


def test_empty_split_and_bad_key(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=grey(5), y=grey(5))
    c = cfg("data.name=arrays", f"data.path={p}", "data.key=x", "likelihood=categorical",
            "data.split=[0.9,0.1,0.0]")  # fmt: skip
    with pytest.raises(ValueError, match=r"d\.npz:x: data.split=.* leaves \['test'\] empty"):
        vae_data_for(c, None)
    with pytest.raises(ValueError, match=r"data.key=None; accepted: arrays train, valid"):
        vae_data_for(cfg("data.name=arrays", f"data.path={p}", "likelihood=categorical"), None)


# --- named sets ----------------------------------------------------------------------


@pytest.mark.skipif(not FREY.is_file(), reason="needs $VILAB_DATA_DIR/freyfaces")
def test_freyfaces_papers_split() -> None:
    digest = hashlib.sha256(FREY.read_bytes()).hexdigest()
    assert digest.startswith("3b69410c")
    data = load_vae_data(cfg("data.name=freyfaces", "likelihood=categorical").data, 0,
                         values="grey")  # fmt: skip
    assert data.image_shape == (1, 28, 20)
    assert (len(data.train.dataset), len(data.valid), len(data.test)) == (1565, 200, 200)
    # the papers' split: np.random.seed(123); np.random.shuffle(faces)
    faces = load_pickled_arrays(FREY.read_bytes())[0].copy()
    np.random.seed(123)  # noqa: NPY002 - the papers' own calls
    np.random.shuffle(faces)  # noqa: NPY002
    assert torch.equal(data.test * 255, torch.from_numpy(faces[1765:]).float())


def test_unpickler_admits_arrays_only() -> None:
    ok = pickle.dumps([np.arange(6, dtype=np.uint8).reshape(2, 3)], protocol=0)
    assert load_pickled_arrays(ok)[0].shape == (2, 3)
    evil = pickle.dumps(os.system, protocol=0)
    with pytest.raises(pickle.UnpicklingError, match="refused global (posix|nt).system"):
        load_pickled_arrays(evil)
    assert issubclass(ArrayUnpickler, pickle.Unpickler)


def test_digits() -> None:
    pytest.importorskip("sklearn")
    data = vae_data_for(cfg("data.name=digits", "likelihood=categorical"), None)
    assert data.image_shape == (1, 8, 8) and data.test_labels is not None


# --- any image shape -----------------------------------------------------------------


@pytest.mark.parametrize("enc,dec", [(GatedConvEncoder, GatedConvDecoder),
                                     (ResNetEncoder, ResNetDecoder)])  # fmt: skip
def test_conv_nets_take_any_hw_divisible_by_4(enc, dec) -> None:
    e, d = enc(3, (28, 20), out_features=16), dec(5, 2, 3, (28, 20))
    assert e(torch.zeros(2, 3 * 28 * 20)).shape == (2, 16)
    assert d(torch.zeros(4, 2, 5)).shape == (4, 2, 2 * 3 * 28 * 20)
    with pytest.raises(
        ValueError, match=r"H and W must each be a positive multiple of 4; got H=28, W=10"
    ):
        enc(1, (28, 10))


def test_vae_on_frey_shape_with_each_likelihood() -> None:
    x = torch.randint(0, 256, (3, 560)).float() / 255
    for lik in ("categorical", "logistic", "logistic_mixture", "gaussian"):
        c = cfg("data.name=freyfaces", f"likelihood={lik}", "mixture_components=2",
                "encoder.kind=gated", "decoder.kind=gated", "latent_dim=4")  # fmt: skip
        vae = build_vae(c, (1, 28, 20))
        obj = vae_objective(vae, x, c.objective)
        assert obj.value.shape == (3,) and torch.isfinite(obj.value).all()


def test_cli_run_records_shape_and_reports_bpd(tmp_path: Path) -> None:
    """A digits run end to end: config.yaml records data.image_shape, the test result has
    bits per dimension, and ``vilab eval`` reloads the run from its config."""
    import json

    import yaml

    from vilab import cli

    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    args = ["train", "--set", "data.name=digits", "--set", "likelihood=logistic_mixture",
            "--set", "mixture_components=2", "--set", "latent_dim=2", "--set", "steps=3",
            "--set", "eval.samples=4", "--set", "eval.valid_samples=2", "--set", "threads=1",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert cli.main(args) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["image_shape"] == [1, 8, 8]
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert test["bpd"] == pytest.approx(test["nll"] / (64 * np.log(2)))
    assert cli.main(["eval", str(out), "--samples", "4"]) == 0
    assert "bpd" in json.loads((out / "metrics.json").read_text())["eval_test"]


def test_recorded_checksum_is_checked(tmp_path: Path) -> None:
    p = tmp_path / "d.npy"
    np.save(p, grey(20))
    base = ("data.name=arrays", f"data.path={p}", "likelihood=categorical")
    digest = vae_data_for(cfg(*base), None).sha256
    assert digest == hashlib.sha256(b"d.npy\0" + p.read_bytes()).hexdigest()
    assert vae_data_for(cfg(*base, f"data.sha256={digest}"), None).sha256 == digest
    np.save(p, grey(20, seed=1))
    with pytest.raises(ValueError, match=r"d\.npy: sha256 .* but data.sha256=.* data changed"):
        vae_data_for(cfg(*base, f"data.sha256={digest}"), None)


@pytest.mark.skipif(not FREY.is_file(), reason="needs VILAB_DATA_DIR with freyfaces/")
def test_freyfaces_named_as_arrays_and_as_a_folder_train_and_evaluate_the_same(tmp_path) -> None:
    """The papers' split by name, the same faces saved as a .npy and written as PNG files
    (split by the fractions 1565/200/200 of 1965 with the same seed): the same batches, so
    the same bound after training and the same test log p(x), bit for bit."""
    from PIL import Image

    from vilab.commands.train import train_vae

    faces = np.asarray(load_pickled_arrays(FREY.read_bytes())[0]).reshape(-1, 28, 20)
    np.save(tmp_path / "faces.npy", faces)
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, face in enumerate(faces):
        Image.fromarray(face, mode="L").save(folder / f"{i:04d}.png")
    split = "[0.7964376590330788,0.10178117048346055,0.10178117048346055]"  # 1565/200/200
    common = ["likelihood=categorical", "latent_dim=4", "steps=6", "threads=1",
              "eval.samples=3", "eval.valid_samples=2", "eval.valid_images=20",
              "eval_every=6", "data.batch_size=50"]  # fmt: skip
    sources = {
        "named": ["data.name=freyfaces"],
        "arrays": [
            "data.name=arrays",
            f"data.path={tmp_path / 'faces.npy'}",
            f"data.split={split}",
        ],
        "folder": ["data.name=folder", f"data.path={folder}", f"data.split={split}"],
    }
    results = {}
    for name, data in sources.items():
        config = load_train_config(overrides=[*common, *data])
        results[name] = train_vae(config, tmp_path / name, progress=False, tensorboard=False)
    a, b, c = (results[k]["test"] for k in ("named", "arrays", "folder"))
    assert a["nll"] == b["nll"] == c["nll"] and a["bpd"] == b["bpd"] == c["bpd"]
