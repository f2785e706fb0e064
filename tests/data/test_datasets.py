"""Tests of bastion.data: the IDX reader, the dataset record, and each loader's lookup."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import bastion.data.fashion_mnist as fm
from bastion.data import (
    CIFAR10_CLASSES,
    DATASETS,
    FASHION_MNIST_CLASSES,
    IdxFiles,
    IdxFormatError,
    ImageDataset,
    SearchDir,
    load_dataset,
    read_idx,
    write_idx,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DPKG_SUB = Path("usr/share/datasets/fashion-mnist")


def _real_fashion_mnist_present() -> bool:
    try:
        fm.find_fashion_mnist("train")
        fm.find_fashion_mnist("test")
    except FileNotFoundError:
        return False
    return True


needs_fashion_mnist = pytest.mark.skipif(
    not _real_fashion_mnist_present(),
    reason="Fashion-MNIST not installed (run: bash scripts/get_fashion_mnist.sh)",
)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_DATA", raising=False)


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point every default Fashion-MNIST location at empty folders under tmp_path."""
    monkeypatch.setattr(fm, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian" / DPKG_SUB)
    monkeypatch.setattr(fm, "_SOURCE_ROOT", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


def _write_fashion(folder: Path, n_train: int = 12, n_test: int = 7, gz: bool = True) -> dict:
    """A tiny Fashion-MNIST-like IDX set of 5x4 images; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 5, 4), dtype=np.uint8)
        x[0, 0, 0], x[0, 0, 1] = 0, 255  # both ends of the range
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", y)
        arrays[prefix] = (x, y)
    return arrays


# --------------------------------------------------------------------------------------------
# IDX reader
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path: Path, name: str, dtype: type) -> None:
    arr = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype is np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    path = tmp_path / name
    write_idx(path, arr)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, arr)
    assert back.flags.writeable
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")


def test_idx_header_bytes_are_the_published_format(tmp_path: Path) -> None:
    """Magic 0x00000803, then big-endian uint32 sizes, then the bytes (MNIST's layout)."""
    arr = np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8)  # 1 x 2 x 3
    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, arr)
    assert path.read_bytes() == bytes(
        [0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]
    )
    # int32 payload is big-endian in the file and native after reading
    write_idx(tmp_path / "y", np.array([1, 258], dtype=np.int32))
    assert (tmp_path / "y").read_bytes()[8:] == b"\x00\x00\x00\x01\x00\x00\x01\x02"
    assert read_idx(tmp_path / "y").tolist() == [1, 258]


def test_idx_gzip_detected_from_content_not_name(tmp_path: Path) -> None:
    arr = np.arange(6, dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte"  # no .gz suffix, gzipped content
    write_idx(path, arr, compress=True)
    np.testing.assert_array_equal(read_idx(path), arr)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b"\x12" + b[1:], "magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "magic"),  # unknown type code
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\x00", "truncated or corrupt"),
        (lambda b: b[:3], "too short"),
        (lambda b: b"<html>404</html>", "magic"),
    ],
)
def test_idx_corrupt_file_raises(tmp_path: Path, mutate, match: str) -> None:
    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, np.zeros((2, 3, 3), dtype=np.uint8))
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(IdxFormatError, match=match):
        read_idx(path)


def test_idx_corrupt_gzip_and_wrong_ndim(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    write_idx(path, np.zeros((4, 2, 2), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-12])  # cut the gzip trailer and some data
    with pytest.raises(IdxFormatError, match="gzip"):
        read_idx(path)
    write_idx(path, np.zeros(4, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="3 dimensions"):
        read_idx(path, ndim=3)
    assert isinstance(IdxFormatError("x"), ValueError)
    with pytest.raises(ValueError, match="no IDX code"):
        write_idx(tmp_path / "z", np.zeros(3, dtype=np.uint32))


# --------------------------------------------------------------------------------------------
# The real Fashion-MNIST (installed by dataset-fashion-mnist or scripts/get_fashion_mnist.sh)
# --------------------------------------------------------------------------------------------


@needs_fashion_mnist
@pytest.mark.parametrize(("split", "n"), [("train", 60000), ("test", 10000)])
def test_fashion_mnist_real_data(split: str, n: int) -> None:
    ds = load_dataset("fashion-mnist", split)
    assert ds.images.shape == (n, 1, 28, 28) and ds.shape == (1, 28, 28) and len(ds) == n
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert float(ds.images.min()) == 0.0 and float(ds.images.max()) == 1.0
    assert torch.bincount(ds.labels, minlength=10).tolist() == [n // 10] * 10
    assert ds.name == "fashion-mnist" and ds.num_classes == 10
    assert ds.class_names == FASHION_MNIST_CLASSES and ds.class_names[9] == "Ankle boot"
    # the published first labels: train starts 9, 0, 0, 3, 0; test starts 9, 2, 1, 1, 6
    first = {"train": [9, 0, 0, 3, 0], "test": [9, 2, 1, 1, 6]}[split]
    assert ds.labels[:5].tolist() == first
    # the in-process cache makes the second load share the decoded tensors
    again = load_dataset("fashion-mnist", split)
    assert again.images is ds.images and again.labels is ds.labels


@needs_fashion_mnist
def test_fashion_mnist_pixels_match_an_independent_decode() -> None:
    images_path = fm.find_fashion_mnist("test").images
    opener = gzip.open if images_path.suffix == ".gz" else open
    with opener(images_path, "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(10000, 28, 28)
    ds = load_dataset("fashion-mnist", "test")
    expected = torch.from_numpy(raw[:50].astype(np.float32) / 255.0).unsqueeze(1)
    torch.testing.assert_close(ds.images[:50], expected, rtol=0, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST lookup
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_data_dir_is_used_over_the_default_locations(tmp_path: Path, gz: bool) -> None:
    arrays = _write_fashion(tmp_path / "mine", gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("fashion-mnist", split, data_dir=tmp_path / "mine")
        x, y = arrays[prefix]
        assert ds.images.shape == (len(y), 1, 5, 4)
        torch.testing.assert_close(ds.images[:, 0], torch.from_numpy(x).float() / 255)
        assert ds.labels.tolist() == y.tolist()
    ds = load_dataset("fashion-mnist", "train", data_dir=str(tmp_path / "mine"))
    assert len(ds) == 12


def test_data_dir_without_files_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", "train", data_dir=tmp_path / "empty")
    msg = str(info.value)
    assert str(tmp_path / "empty") in msg and "/usr/share/datasets" in msg  # the how-to
    assert "data_dir" in msg


@pytest.mark.parametrize("sub", [".", "fashion-mnist", "FashionMNIST/raw", str(DPKG_SUB)])
def test_bastion_data_env_is_honoured(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, sub: str
) -> None:
    root = isolated / "envdata"
    _write_fashion(root / sub, n_train=9)
    monkeypatch.setenv("BASTION_DATA", str(root))
    assert len(load_dataset("fashion-mnist", "train")) == 9


@pytest.mark.parametrize("place", ["user cache", "repository cache", "torchvision root"])
def test_cache_locations_filled_by_the_script_are_found(isolated: Path, place: str) -> None:
    folder = {
        "user cache": isolated / "xdg" / "bastion/data/fashion-mnist" / DPKG_SUB,
        "repository cache": isolated / "cwd/.cache/bastion/data/fashion-mnist" / DPKG_SUB,
        "torchvision root": isolated / "cwd/data/FashionMNIST/raw",
    }[place]
    _write_fashion(folder, n_test=3)
    files = fm.find_fashion_mnist("test")
    assert files.images.parent == folder and files.labels.parent == folder
    assert len(load_dataset("fashion-mnist", "test")) == 3


def test_search_dirs_are_folder_and_origin_records(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = isolated / "mine"
    dirs = fm.fashion_mnist_search_dirs(mine)
    assert all(isinstance(d, SearchDir) for d in dirs)
    assert [d.path for d in dirs] == [mine, mine / "fashion-mnist", mine / "FashionMNIST/raw",
                                      mine / DPKG_SUB]
    assert {d.origin for d in dirs} == {"data_dir"}
    monkeypatch.setenv("BASTION_DATA", str(isolated / "env"))
    default = fm.fashion_mnist_search_dirs()
    assert [d.origin for d in default[:4]] == ["BASTION_DATA"] * 4
    assert default[4] == SearchDir(isolated / "debian" / DPKG_SUB,
                                   "Debian package dataset-fashion-mnist")
    assert [d.origin for d in default[5:]] == ["user cache", "repository cache",
                                               "torchvision root ./data"]
    _write_fashion(isolated / "debian" / DPKG_SUB)
    with pytest.warns(UserWarning, match="BASTION_DATA"):
        files = fm.find_fashion_mnist("train")
    assert isinstance(files, IdxFiles)
    assert files.images.name == "train-images-idx3-ubyte.gz"
    assert files.labels.name == "train-labels-idx1-ubyte.gz"


def test_debian_location_comes_before_the_caches(isolated: Path) -> None:
    _write_fashion(isolated / "debian" / DPKG_SUB, n_train=4)
    _write_fashion(isolated / "cwd/.cache/bastion/data/fashion-mnist" / DPKG_SUB, n_train=5)
    assert len(load_dataset("fashion-mnist", "train")) == 4


def test_bastion_data_without_files_warns_and_falls_back(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_fashion(isolated / "debian" / DPKG_SUB, n_train=4)
    (isolated / "typo").mkdir()
    monkeypatch.setenv("BASTION_DATA", str(isolated / "typo"))
    with pytest.warns(UserWarning, match="BASTION_DATA.*typo.*holds no"):
        assert len(load_dataset("fashion-mnist", "train")) == 4


def test_nothing_found_lists_every_place_and_how_to_get_the_data(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASTION_DATA", str(isolated / "nothing-here"))
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", "test")
    msg = str(info.value)
    for needle in (
        "apt-get install dataset-fashion-mnist",
        "scripts/get_fashion_mnist.sh",
        "`data_dir: FOLDER` in the run config",
        "`--set data_dir=FOLDER`",
        "BASTION_DATA=FOLDER",
        str(isolated / "debian" / DPKG_SUB),
        str(isolated / "xdg"),
        str(isolated / "cwd" / ".cache"),
        str(isolated / "nothing-here"),
        "t10k-images-idx3-ubyte",
    ):
        assert needle in msg, needle
    assert "--data-dir" not in msg  # no such flag: the hint names the options that exist


def test_corrupt_fashion_file_gives_a_clear_error(tmp_path: Path) -> None:
    _write_fashion(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(IdxFormatError, match="train-images"):
        load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(6, dtype=np.uint8))  # 7 images
    with pytest.raises(IdxFormatError, match="7 images but"):
        load_dataset("fashion-mnist", "test", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# Names, the record, digits
# --------------------------------------------------------------------------------------------


def test_unknown_name_or_split_lists_the_choices() -> None:
    assert DATASETS == ("fashion-mnist", "mnist", "cifar10", "digits", "fashion-mnist-pairs",
                        "fashion-mnist-pairs-wide")
    with pytest.raises(ValueError, match="imagenet") as info:
        load_dataset("imagenet", "train")  # type: ignore[arg-type]
    assert all(name in str(info.value) for name in DATASETS)
    with pytest.raises(ValueError, match="train, test|test, train"):
        load_dataset("digits", "val")  # type: ignore[arg-type]


def test_digits_shapes_split_and_determinism() -> None:
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.images.shape == (1500, 1, 8, 8) and test.images.shape == (297, 1, 8, 8)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    bunch = load_digits()
    perm = np.random.RandomState(0).permutation(1797)
    expected = bunch.data[perm].reshape(-1, 1, 8, 8) / 16.0
    both = torch.cat([train.images, test.images]).double().numpy()
    np.testing.assert_allclose(both, expected, atol=1e-7)
    assert torch.cat([train.labels, test.labels]).tolist() == bunch.target[perm].tolist()
    again = load_dataset("digits", "train", data_dir="/ignored")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)


def test_getitem_returns_the_position_and_works_with_a_dataloader() -> None:
    ds = load_dataset("digits", "test")
    image, label, index = ds[5]
    assert index == 5 and torch.equal(image, ds.images[5]) and label == ds.labels[5]
    assert image.shape == (1, 8, 8) and label.dtype == torch.int64
    assert ds[-1][2] == len(ds) - 1 and ds[np.int64(7)][2] == 7
    with pytest.raises(IndexError):
        ds[len(ds)]
    loader = DataLoader(ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    x, y, idx = next(iter(loader))
    assert x.shape == (64, 1, 8, 8) and idx.dtype == torch.int64
    assert torch.equal(x, ds.images[idx]) and torch.equal(y, ds.labels[idx])


def test_subset() -> None:
    ds = load_dataset("digits", "train")
    sub = ds.subset(10, start=5)
    assert len(sub) == 10 and isinstance(sub, ImageDataset)
    assert torch.equal(sub.images, ds.images[5:15]) and torch.equal(sub.labels, ds.labels[5:15])
    assert sub[0][2] == 0 and sub.name == ds.name and sub.class_names == ds.class_names
    assert len(ds.subset()) == 1500 and len(ds.subset(start=1490)) == 10
    assert len(ds.subset(0)) == 0 and len(ds.subset(3)) == 3
    for bad in ({"n": 1501}, {"n": 5, "start": 1499}, {"start": -1}, {"n": -2}):
        with pytest.raises(ValueError, match="start|examples"):
            ds.subset(**bad)


def test_image_dataset_validates_its_fields() -> None:
    x, y = torch.rand(4, 1, 3, 3), torch.tensor([0, 1, 2, 1])
    ok = ImageDataset(x, y, "toy", 3, ["a", "b", "c"])
    assert ok.class_names == ("a", "b", "c") and ok.shape == (1, 3, 3)
    assert "toy" in repr(ok) and "n=4" in repr(ok)
    with pytest.raises(TypeError, match="float32"):
        ImageDataset(x.double(), y, "toy", 3, ("a", "b", "c"))
    with pytest.raises(TypeError, match=r"float32 tensor \[N, C, H, W\]"):
        ImageDataset(x[0], y, "toy", 3, ("a", "b", "c"))
    with pytest.raises(TypeError, match="int64"):
        ImageDataset(x, y.int(), "toy", 3, ("a", "b", "c"))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        ImageDataset(x, y[:3], "toy", 3, ("a", "b", "c"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImageDataset(x * 255, y, "toy", 3, ("a", "b", "c"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImageDataset(x.clone().fill_(float("nan")), y, "toy", 3, ("a", "b", "c"))
    with pytest.raises(ValueError, match="labels must lie"):
        ImageDataset(x, y + 1, "toy", 3, ("a", "b", "c"))
    with pytest.raises(ValueError, match="class names"):
        ImageDataset(x, y, "toy", 3, ("a", "b"))
    with pytest.raises(AttributeError):
        ok.name = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# MNIST (user folder; torchvision root or plain IDX folder)
# --------------------------------------------------------------------------------------------


def test_mnist_missing_folder_says_download_is_left_to_the_user(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloads") as info:
        load_dataset("mnist", "train", data_dir=tmp_path / "absent")
    assert str(tmp_path / "absent") in str(info.value)
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_dataset("mnist", "train")  # no folder given at all


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_no_folder_hint_names_the_options_that_exist(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BASTION_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(name, "test")  # type: ignore[arg-type]
    msg = str(info.value)
    for needle in ("`data_dir: FOLDER` in the run config", "`--set data_dir=FOLDER`",
                   "load_dataset(..., data_dir=FOLDER)", "BASTION_DATA=FOLDER"):
        assert needle in msg, needle
    assert "--data-dir" not in msg  # bastion has no such flag


def test_truncated_mnist_files_are_a_user_error_naming_the_folder(tmp_path: Path) -> None:
    from bastion.errors import BastionError

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for p, n in (("train", 3), ("t10k", 2)):
        write_idx(raw / f"{p}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(raw / f"{p}-labels-idx1-ubyte", np.zeros(n, np.uint8))
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:500])
    with pytest.raises(BastionError, match=r"MNIST files in .*MNIST/raw cannot be read"):
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert issubclass(IdxFormatError, BastionError)  # a corrupt IDX file is a user error too


def test_mnist_torchvision_root_and_plain_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    sizes = {"train": 6, "t10k": 4}
    x = {p: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for p, n in sizes.items()}
    y = {p: (np.arange(n)[::-1] % 10).astype(np.uint8) for p, n in sizes.items()}
    raw = tmp_path / "tv" / "MNIST" / "raw"  # torchvision keeps the uncompressed files here
    plain = tmp_path / "plain"  # the four files, gzipped, directly in the folder
    raw.mkdir(parents=True)
    plain.mkdir()
    for p in sizes:
        write_idx(raw / f"{p}-images-idx3-ubyte", x[p])
        write_idx(raw / f"{p}-labels-idx1-ubyte", y[p])
        write_idx(plain / f"{p}-images-idx3-ubyte.gz", x[p])
        write_idx(plain / f"{p}-labels-idx1-ubyte.gz", y[p])
    monkeypatch.setenv("BASTION_DATA", str(tmp_path / "tv"))
    assert load_dataset("mnist", "test").labels.tolist() == y["t10k"].tolist()
    monkeypatch.delenv("BASTION_DATA")
    for root in (tmp_path / "tv", tmp_path / "plain"):
        for split, p in (("train", "train"), ("test", "t10k")):
            ds = load_dataset("mnist", split, data_dir=root)
            assert ds.images.shape == (len(y[p]), 1, 28, 28) and ds.name == "mnist"
            torch.testing.assert_close(ds.images[:, 0], torch.from_numpy(x[p]).float() / 255)
            assert ds.labels.tolist() == y[p].tolist()


# --------------------------------------------------------------------------------------------
# CIFAR-10 (torchvision, python batches)
# --------------------------------------------------------------------------------------------


def _write_cifar(root: Path, n: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A tiny cifar-10-batches-py folder. The real batches were pickled by Python 2, whose str
    keys torchvision's latin1 unpickling turns into str ("data", "labels"), so str keys here."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(2)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(n)]
        with open(base / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f, protocol=2)
        written[name] = (data, labels)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES), "num_vis": 3072}, f, protocol=2)
    return written


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar10_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import CIFAR10

    written = _write_cifar(tmp_path, n=2)
    base = tmp_path / "cifar-10-batches-py"
    # With the official MD5 sums torchvision rejects our synthetic files ...
    with pytest.raises(ValueError, match="corrupted"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    # ... so give torchvision the sums of the files we wrote (its own extension point).
    monkeypatch.setattr(CIFAR10, "train_list", [[f, _md5(base / f)] for f, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[f, _md5(base / f)] for f, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": _md5(base / "batches.meta")})
    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    test = load_dataset("cifar10", "test", data_dir=base)  # the batches folder itself works too
    assert train.images.shape == (10, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert train.images.is_contiguous() and train.class_names == CIFAR10_CLASSES
    # one row of a batch is 1024 red, 1024 green, 1024 blue values, each 32x32 row-major
    data, labels = written["test_batch"]
    c, h, w = 2, 5, 17
    pixel = data[1, c * 1024 + h * 32 + w]
    assert test.images[1, c, h, w].item() == np.float32(pixel) / np.float32(255)  # exact
    assert test.images[1, c, h, w].item() != np.float32(data[1, h * 96 + w * 3 + c]) / 255
    torch.testing.assert_close(
        test.images, torch.from_numpy(data.reshape(2, 3, 32, 32)).float() / 255
    )
    assert test.labels.tolist() == labels
    data3, labels3 = written["data_batch_3"]
    torch.testing.assert_close(
        train.images[4:6], torch.from_numpy(data3.reshape(2, 3, 32, 32)).float() / 255
    )
    assert train.labels[4:6].tolist() == labels3


def test_cifar10_missing_folder_or_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloads") as info:
        load_dataset("cifar10", "train", data_dir=tmp_path)
    assert "cifar-10-batches-py" in str(info.value)
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# scripts/get_fashion_mnist.sh
# --------------------------------------------------------------------------------------------


def test_get_script_is_valid_bash_and_exits_early_when_data_is_cached(tmp_path: Path) -> None:
    script = REPO_ROOT / "scripts" / "get_fashion_mnist.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert "set -euo pipefail" in script.read_text()
    _write_fashion(tmp_path / "bastion/data/fashion-mnist" / DPKG_SUB)  # a filled user cache
    out = subprocess.run(
        ["bash", str(script)],
        env={"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "already present" in out.stdout and "apt-get install" not in out.stdout
