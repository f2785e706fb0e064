"""Image classification datasets as in-memory ``[0, 1]`` tensors.

Every loader returns an :class:`ImageDataset`: float32 images of shape ``[N, C, H, W]`` with
values in ``[0, 1]`` (normalisation is the model's first layer, so epsilons stay in pixel
units) and int64 labels of shape ``[N]``. Nothing is ever downloaded: the data must already be
on disk (see :func:`load_dataset` for where each dataset is looked for).

Datasets:

- ``"fashion-mnist"`` (default of the project): Xiao, Rasul and Vollgraf, "Fashion-MNIST: a
  Novel Image Dataset for Benchmarking Machine Learning Algorithms", arXiv:1708.07747.
  60000 train / 10000 test, 1x28x28. Read from the original IDX files with
  :mod:`bastion.data.idx`; found automatically where Debian's ``dataset-fashion-mnist``
  package or ``scripts/get_fashion_mnist.sh`` puts them.
- ``"mnist"``: LeCun et al., 60000 / 10000, 1x28x28, from a folder the user gives.
- ``"cifar10"``: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images" (2009),
  50000 / 10000, 3x32x32, the python batches ``cifar-10-batches-py`` in a folder the user
  gives, read by ``torchvision.datasets.CIFAR10`` (which unpickles them: only point it at a
  copy you trust, normally the official archive; torchvision checks its MD5 sums).
- ``"digits"``: scikit-learn's bundled 8x8 digits (1797 images, 1x8x8), 1500 train / 297
  test after a fixed permutation; no files needed, for fast tests.

Example:
    >>> from bastion.data import load_dataset
    >>> ds = load_dataset("digits", "train")
    >>> len(ds), ds.shape, ds.num_classes
    (1500, (1, 8, 8), 10)
    >>> image, label, index = ds[3]
    >>> image.shape, int(index)
    (torch.Size([1, 8, 8]), 3)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from torch.utils.data import Dataset

from bastion._validate import check_choice
from bastion.data.idx import IdxFormatError, read_idx

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DIGITS_CLASSES",
    "DatasetName",
    "FASHION_MNIST_CLASSES",
    "ImageDataset",
    "MNIST_CLASSES",
    "SPLITS",
    "Split",
    "fashion_mnist_search_dirs",
    "find_fashion_mnist",
    "load_dataset",
]

logger = logging.getLogger(__name__)

DatasetName = Literal["fashion-mnist", "mnist", "cifar10", "digits"]
"""Names accepted by :func:`load_dataset`."""

Split = Literal["train", "test"]
"""Dataset splits."""

DATASETS: tuple[str, ...] = get_args(DatasetName)
SPLITS: tuple[str, ...] = get_args(Split)

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
DIGITS_CLASSES: tuple[str, ...] = MNIST_CLASSES
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

ENV_VAR = "BASTION_DATA"
"""Environment variable naming a data folder (the files themselves, or a parent of them)."""

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the four IDX files."""

_DPKG_SUBDIR = Path("usr/share/datasets/fashion-mnist")
_CACHE_SUBDIR = Path("bastion/data/fashion-mnist")

_SOURCE_ROOT: Path | None = (
    Path(__file__).resolve().parents[3]
    if (Path(__file__).resolve().parents[3] / "pyproject.toml").is_file()
    else None
)
"""The repository root when bastion runs from a source checkout (``scripts/`` writes there)."""

_IDX_PREFIX: dict[str, str] = {"train": "train", "test": "t10k"}

_GET_FASHION_MNIST = (
    "To get Fashion-MNIST: `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs "
    f"into {DEBIAN_FASHION_MNIST_DIR}), or `bash scripts/get_fashion_mnist.sh` from the bastion "
    "repository (works without root: it unpacks that package into "
    ".cache/bastion/data/fashion-mnist/), or put the four IDX files (train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a "
    f"folder and pass it with --data-dir / data_dir=..., or set {ENV_VAR}."
)


# --------------------------------------------------------------------------------------------
# The record
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """An in-memory image classification dataset.

    Args:
        images: float32 tensor in [0, 1] pixel units.
        labels: int64 class indices in ``[0, num_classes)``.
        name: dataset name, e.g. ``"fashion-mnist"``.
        num_classes: number of classes.
        class_names: one human-readable name per class (``len == num_classes``).

    Shape:
        - images: ``[N, C, H, W]``
        - labels: ``[N]``
        - ``ds[i]``: ``(image [C, H, W], label [] int64, i)``

    Loaders may share ``images``/``labels`` with an in-process cache and :meth:`subset`
    returns views: treat the tensors as read-only (``clone()`` before editing in place).

    Example:
        >>> import torch
        >>> ds = ImageDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 1, 0]),
        ...                   name="toy", num_classes=2, class_names=("a", "b"))
        >>> ds[2][2], ds.subset(2, start=1).labels.tolist(), ds.shape
        (2, [1, 1], (1, 2, 2))
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    num_classes: int
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() != 4:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"{self.name}: images must be a float32 tensor [N, C, H, W], got {got}")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise TypeError(f"{self.name}: labels must be an int64 tensor [N], got {got}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{self.name}: {x.shape[0]} images but {y.shape[0]} labels; they must agree"
            )
        if isinstance(self.class_names, str) or not isinstance(self.class_names, Sequence):
            raise TypeError(f"{self.name}: class_names must be a sequence of strings")
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(
                f"{self.name}: num_classes must be an int >= 1, got {self.num_classes}"
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
            )
        if x.shape[0] == 0:
            return
        lo, hi = (float(v) for v in torch.aminmax(x))
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise ValueError(
                f"{self.name}: images must lie in [0, 1] (bastion normalises inside the model); "
                f"got values in [{lo:.4g}, {hi:.4g}]"
            )
        ylo, yhi = (int(v) for v in torch.aminmax(y))
        if ylo < 0 or yhi >= self.num_classes:
            raise ValueError(
                f"{self.name}: labels must lie in [0, {self.num_classes - 1}], got [{ylo}, {yhi}]"
            )

    def __len__(self) -> int:
        """Number of examples N."""
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Return ``(image [C, H, W], label [] int64, i)``, ``i`` the position in ``[0, N)``.

        Negative indices count from the end; the returned position is the non-negative one,
        so per-example state can be keyed on it.
        """
        i = operator.index(index)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.name} with {n} examples")
        if i < 0:
            i += n
        return self.images[i], self.labels[i], i

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, n: int | None = None, start: int = 0) -> ImageDataset:
        """Return the ``n`` examples from position ``start`` on (all the rest when ``n=None``).

        The result shares memory with this dataset (tensor views); its positions restart at 0.

        Raises:
            ValueError: ``start`` or ``n`` is negative or asks for examples beyond the end.
        """
        size = len(self)
        start = operator.index(start)
        if not 0 <= start <= size:
            raise ValueError(f"start={start} must lie in [0, {size}] for {self.name}")
        if n is None:
            n = size - start
        n = operator.index(n)
        if n < 0 or start + n > size:
            raise ValueError(
                f"cannot take n={n} examples from start={start}: {self.name} has {size} examples"
            )
        return dataclasses.replace(
            self, images=self.images[start : start + n], labels=self.labels[start : start + n]
        )

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, shape={self.shape}, "
            f"num_classes={self.num_classes})"
        )


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def load_dataset(
    name: DatasetName, split: Split, data_dir: str | os.PathLike[str] | None = None
) -> ImageDataset:
    """Load a dataset split into memory as float32 ``[N, C, H, W]`` images in [0, 1].

    Nothing is downloaded. Where each dataset is looked for:

    - ``"fashion-mnist"``: ``data_dir`` if given (only there); else ``$BASTION_DATA``; else
      Debian's ``/usr/share/datasets/fashion-mnist``; else the caches that
      ``scripts/get_fashion_mnist.sh`` fills (``${XDG_CACHE_HOME:-~/.cache}`` and
      ``./.cache`` under ``bastion/data/fashion-mnist/usr/share/datasets/fashion-mnist``);
      else a torchvision root ``./data/FashionMNIST/raw``. A folder given by the user may hold
      the files itself or in ``fashion-mnist/`` or ``FashionMNIST/raw/``. See
      :func:`fashion_mnist_search_dirs`.
    - ``"mnist"``: ``data_dir`` or ``$BASTION_DATA``: a torchvision root (``MNIST/raw/``, read
      by ``torchvision.datasets.MNIST``) or a folder holding the IDX files (plain or ``.gz``)
      itself or in ``mnist/``.
    - ``"cifar10"``: ``data_dir`` or ``$BASTION_DATA``: the folder holding
      ``cifar-10-batches-py/`` (or that folder itself, or a ``cifar10/`` subfolder), read by
      ``torchvision.datasets.CIFAR10`` with its checksums.
    - ``"digits"``: scikit-learn's bundled copy; ``data_dir`` is ignored.

    Decoded tensors are cached per process (keyed on the resolved files, their size and
    modification time), so loading again is instant; the returned datasets then share tensors.

    Args:
        name: one of :data:`DATASETS`.
        split: ``"train"`` or ``"test"``.
        data_dir: folder to read from; overrides every default location.

    Returns:
        An :class:`ImageDataset` with ``name`` set to the dataset name.

    Shape:
        images ``[N, C, H, W]``: fashion-mnist/mnist ``[60000|10000, 1, 28, 28]``, cifar10
        ``[50000|10000, 3, 32, 32]``, digits ``[1500|297, 1, 8, 8]``; labels ``[N]``.

    Raises:
        ValueError: unknown ``name`` or ``split`` (the message lists the valid ones).
        FileNotFoundError: the files are not found; the message lists where it looked and
            how to get the data.
        bastion.data.idx.IdxFormatError: an IDX file is corrupt.

    Example:
        >>> load_dataset("digits", "test").images.shape
        torch.Size([297, 1, 8, 8])
    """
    check_choice(name, DATASETS, "dataset")
    check_choice(split, SPLITS, "split")
    if name == "fashion-mnist":
        return _load_fashion_mnist(split, data_dir)
    if name == "mnist":
        return _load_mnist(split, data_dir)
    if name == "cifar10":
        return _load_cifar10(split, data_dir)
    if data_dir is not None:
        logger.debug("digits ships with scikit-learn; ignoring data_dir=%s", data_dir)
    return _load_digits(split)


# --------------------------------------------------------------------------------------------
# IDX helpers shared by Fashion-MNIST and MNIST
# --------------------------------------------------------------------------------------------


def _idx_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    """Return the (images, labels) IDX files of ``split`` in ``folder``, plain or gzipped."""
    found: list[Path] = []
    for kind, nd in (("images", 3), ("labels", 1)):
        base = f"{_IDX_PREFIX[split]}-{kind}-idx{nd}-ubyte"
        path = next((folder / f for f in (base, base + ".gz") if (folder / f).is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def _stamp(*paths: Path) -> tuple[tuple[str, int, int], ...]:
    """Cache key: resolved path, size and mtime of each file (so a replaced file is re-read)."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _decode_idx_pair(
    key: tuple[tuple[str, int, int], ...], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an (images, labels) IDX pair to float32 [N, 1, H, W] in [0, 1] and int64 [N]."""
    (images_path, *_), (labels_path, *_) = key
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise IdxFormatError(
            f"expected uint8 IDX files, got {images.dtype} ({images_path}) and "
            f"{labels.dtype} ({labels_path})"
        )
    if images.shape[0] != labels.shape[0]:
        raise IdxFormatError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise IdxFormatError(f"{labels_path}: label {int(labels.max())} >= {num_classes} classes")
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div_(255.0)
    y = torch.from_numpy(labels).to(torch.int64)
    logger.debug("decoded %s: %s", images_path, tuple(x.shape))
    return x, y


def _env_dir() -> Path | None:
    value = os.environ.get(ENV_VAR, "")
    return Path(value).expanduser() if value else None


def _user_folder_candidates(root: Path, *subdirs: str) -> list[Path]:
    """``root`` itself, then the given subfolders of it."""
    return [root, *(root / s for s in subdirs)]


# --------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------

_FASHION_SUBDIRS = ("fashion-mnist", "FashionMNIST/raw", str(_DPKG_SUBDIR))


def fashion_mnist_search_dirs(
    data_dir: str | os.PathLike[str] | None = None,
) -> list[tuple[Path, str]]:
    """The folders searched for the Fashion-MNIST IDX files, in order, with their origin.

    With ``data_dir`` only ``data_dir`` (and its ``fashion-mnist/``, ``FashionMNIST/raw/`` and
    ``usr/share/datasets/fashion-mnist/`` subfolders) is searched. Otherwise: ``$BASTION_DATA``
    (same subfolders), :data:`DEBIAN_FASHION_MNIST_DIR`, the user cache
    ``${XDG_CACHE_HOME:-~/.cache}/bastion/data/fashion-mnist/usr/share/datasets/fashion-mnist``,
    the repository cache ``./.cache/bastion/data/fashion-mnist/usr/share/datasets/fashion-mnist``
    (also under the source checkout when bastion runs from one), then the torchvision root
    ``./data/FashionMNIST/raw``.

    Returns:
        ``[(folder, origin), ...]`` without duplicates; ``origin`` is a short description.
    """
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [(p, "data_dir") for p in _user_folder_candidates(root, *_FASHION_SUBDIRS)]
    out: list[tuple[Path, str]] = []
    env = _env_dir()
    if env is not None:
        out += [(p, ENV_VAR) for p in _user_folder_candidates(env, *_FASHION_SUBDIRS)]
    out.append((Path(DEBIAN_FASHION_MNIST_DIR), "Debian package dataset-fashion-mnist"))
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache_home = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    out.append((cache_home / _CACHE_SUBDIR / _DPKG_SUBDIR, "user cache"))
    out.append((Path.cwd() / ".cache" / _CACHE_SUBDIR / _DPKG_SUBDIR, "repository cache"))
    if _SOURCE_ROOT is not None:
        out.append((_SOURCE_ROOT / ".cache" / _CACHE_SUBDIR / _DPKG_SUBDIR, "repository cache"))
    out.append((Path.cwd() / "data" / "FashionMNIST" / "raw", "torchvision root ./data"))
    seen: set[Path] = set()
    unique = []
    for p, origin in out:
        key = p.absolute()
        if key not in seen:
            seen.add(key)
            unique.append((p, origin))
    return unique


def find_fashion_mnist(
    split: Split, data_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """Locate the Fashion-MNIST (images, labels) IDX files of ``split``.

    Args:
        split: ``"train"`` or ``"test"``.
        data_dir: a folder to use instead of the default locations.

    Returns:
        Paths of the images file and the labels file (``.gz`` or plain).

    Raises:
        FileNotFoundError: with every folder looked at and how to get the data.

    Warns:
        UserWarning: ``$BASTION_DATA`` is set but holds no files, so another folder is used.
    """
    check_choice(split, SPLITS, "split")
    candidates = fashion_mnist_search_dirs(data_dir)
    for folder, origin in candidates:
        files = _idx_files(folder, split)
        if files is not None:
            logger.debug("Fashion-MNIST %s found in %s (%s)", split, folder, origin)
            env = _env_dir()
            if data_dir is None and env is not None and origin != ENV_VAR:
                warnings.warn(
                    f"{ENV_VAR}={env} holds no Fashion-MNIST {split} files; using {folder}",
                    stacklevel=2,
                )
            return files
    looked = "\n".join(f"  - {folder}  ({origin})" for folder, origin in candidates)
    prefix = _IDX_PREFIX[split]
    raise FileNotFoundError(
        f"Fashion-MNIST {split} split not found: no {prefix}-images-idx3-ubyte[.gz] together "
        f"with {prefix}-labels-idx1-ubyte[.gz] in any of:\n{looked}\n{_GET_FASHION_MNIST}"
    )


def _load_fashion_mnist(split: Split, data_dir: str | os.PathLike[str] | None) -> ImageDataset:
    images_path, labels_path = find_fashion_mnist(split, data_dir)
    x, y = _decode_idx_pair(_stamp(images_path, labels_path), len(FASHION_MNIST_CLASSES))
    logger.info("Fashion-MNIST %s: %d images from %s", split, len(y), images_path.parent)
    return ImageDataset(x, y, "fashion-mnist", len(FASHION_MNIST_CLASSES), FASHION_MNIST_CLASSES)


# --------------------------------------------------------------------------------------------
# MNIST and CIFAR-10 (user-provided folders, never downloaded)
# --------------------------------------------------------------------------------------------


def _user_root(what: str, data_dir: str | os.PathLike[str] | None, hint: str) -> Path:
    """``data_dir``, else ``$BASTION_DATA``, else a FileNotFoundError explaining what to do."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = _env_dir()
    if env is not None:
        return env
    raise FileNotFoundError(
        f"{what} needs a folder: pass data_dir=... (--data-dir) or set {ENV_VAR}. bastion never "
        f"downloads data; downloading is left to you: {hint}"
    )


_MNIST_HINT = (
    "e.g. `torchvision.datasets.MNIST(ROOT, download=True)` once, then data_dir=ROOT; or put "
    "the four IDX files (train-images-idx3-ubyte[.gz], ...) in a folder and pass that folder."
)


@functools.lru_cache(maxsize=4)
def _mnist_torchvision(
    key: tuple[tuple[str, int, int], ...], root: str, train: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read MNIST via torchvision from ``root`` (``key`` only invalidates the cache)."""
    from torchvision.datasets import MNIST

    ds = MNIST(root, train=train, download=False)
    x = ds.data.unsqueeze(1).to(torch.float32).div_(255.0)
    return x, ds.targets.to(torch.int64)


def _load_mnist(split: Split, data_dir: str | os.PathLike[str] | None) -> ImageDataset:
    root = _user_root("MNIST", data_dir, _MNIST_HINT)
    raw = root / "MNIST" / "raw"
    tv_names = [
        f"{p}-{k}-idx{nd}-ubyte"
        for p in ("train", "t10k")
        for k, nd in (("images", 3), ("labels", 1))
    ]
    if all((raw / f).is_file() for f in tv_names):
        x, y = _mnist_torchvision(_stamp(*(raw / f for f in tv_names)), str(root), split == "train")
        logger.info("MNIST %s: %d images via torchvision from %s", split, len(y), root)
        return ImageDataset(x, y, "mnist", 10, MNIST_CLASSES)
    candidates = _user_folder_candidates(root, "mnist", "MNIST/raw", "raw")
    for folder in candidates:
        files = _idx_files(folder, split)
        if files is not None:
            x, y = _decode_idx_pair(_stamp(*files), 10)
            logger.info("MNIST %s: %d images from %s", split, len(y), folder)
            return ImageDataset(x, y, "mnist", 10, MNIST_CLASSES)
    looked = "\n".join(f"  - {p}" for p in candidates)
    raise FileNotFoundError(
        f"MNIST {split} split not found: no torchvision root ({raw} with the four uncompressed "
        f"files) and no {_IDX_PREFIX[split]}-images/labels IDX files in:\n{looked}\n"
        f"bastion never downloads data; downloading is left to you: {_MNIST_HINT}"
    )


_CIFAR_HINT = (
    "download and extract the official cifar-10-python.tar.gz into ROOT (or run "
    "`torchvision.datasets.CIFAR10(ROOT, download=True)` once), then pass data_dir=ROOT."
)


@functools.lru_cache(maxsize=4)
def _cifar10_torchvision(
    key: tuple[tuple[str, int, int], ...], root: str, train: bool
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Read CIFAR-10 via torchvision (``key`` only invalidates the cache)."""
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(root, train=train, download=False)
    except RuntimeError as e:  # torchvision's "not found or corrupted" (MD5 mismatch)
        raise ValueError(
            f"CIFAR-10 files in {Path(root) / CIFAR10.base_folder} are corrupted or not the "
            f"official ones (torchvision: {e}). {_CIFAR_HINT}"
        ) from e
    data = torch.from_numpy(np.ascontiguousarray(ds.data))  # uint8 [N, H, W, C]
    if data.dim() != 4 or data.shape[-1] != 3:
        raise ValueError(f"CIFAR-10 data in {root} has shape {tuple(data.shape)}, not [N,32,32,3]")
    x = data.permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()
    y = torch.as_tensor(ds.targets, dtype=torch.int64)
    return x, y, tuple(str(c) for c in ds.classes)


def _load_cifar10(split: Split, data_dir: str | os.PathLike[str] | None) -> ImageDataset:
    from torchvision.datasets import CIFAR10

    root = _user_root("CIFAR-10", data_dir, _CIFAR_HINT)
    base = CIFAR10.base_folder  # "cifar-10-batches-py"
    candidates = [root, root / "cifar10"]
    if root.name == base:
        candidates.insert(0, root.parent)
    folder = next((c for c in candidates if (c / base).is_dir()), None)
    if folder is None:
        looked = "\n".join(f"  - {c / base}" for c in candidates)
        raise FileNotFoundError(
            f"CIFAR-10 not found: none of these folders exists:\n{looked}\nbastion never "
            f"downloads data; downloading is left to you: {_CIFAR_HINT}"
        )
    names = [f for f, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    missing = [f for f in names if not (folder / base / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 folder {folder / base} lacks {', '.join(missing)}. {_CIFAR_HINT}"
        )
    key = _stamp(*(folder / base / f for f in names))
    x, y, classes = _cifar10_torchvision(key, str(folder), split == "train")
    if len(classes) != 10:
        raise ValueError(f"CIFAR-10 metadata in {folder / base} names {len(classes)} classes")
    logger.info("CIFAR-10 %s: %d images from %s", split, len(y), folder / base)
    return ImageDataset(x, y, "cifar10", 10, classes)


# --------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------

DIGITS_TRAIN_SIZE = 1500
"""Number of digits images in the train split (the other 297 are the test split)."""


@functools.lru_cache(maxsize=1)
def _digits_all() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits, permuted by ``numpy.random.RandomState(0)``: [N,1,8,8] in [0,1], [N]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # scikit-learn is an optional (test) dependency
        raise ImportError(
            "the 'digits' dataset ships with scikit-learn: pip install scikit-learn"
        ) from e
    bunch = load_digits()
    perm = np.random.RandomState(0).permutation(len(bunch.target))
    images = np.asarray(bunch.data, dtype=np.float64)[perm] / 16.0  # values 0..16
    x = torch.from_numpy(images.astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(np.asarray(bunch.target)[perm].astype(np.int64))
    return x, y


def _load_digits(split: Split) -> ImageDataset:
    x, y = _digits_all()
    sl = slice(0, DIGITS_TRAIN_SIZE) if split == "train" else slice(DIGITS_TRAIN_SIZE, None)
    return ImageDataset(x[sl], y[sl], "digits", 10, DIGITS_CLASSES)
