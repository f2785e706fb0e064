"""MNIST and CIFAR-10 from a folder the user gives, read through torchvision (never downloaded).

- ``"mnist"``: LeCun et al., 60000 / 10000, 1x28x28: a torchvision root (``MNIST/raw/``, read
  by ``torchvision.datasets.MNIST``) or a folder holding the IDX files (plain or ``.gz``)
  itself or in ``mnist/``.
- ``"cifar10"``: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images" (2009),
  50000 / 10000, 3x32x32, the python batches ``cifar-10-batches-py`` in a folder the user
  gives, read by ``torchvision.datasets.CIFAR10`` (which unpickles them: only point it at a
  copy you trust, normally the official archive; torchvision checks its MD5 sums).

The folder is ``data_dir``, else ``$BASTION_DATA``; without either, or when the files are not
there, a FileNotFoundError says where it looked and how to get the data. torchvision is
imported only when one of these datasets is loaded.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np
import torch

from bastion.data.cache import _decode_idx_pair, _stamp
from bastion.data.dataset import ImageDataset, Split
from bastion.data.locate import (
    _IDX_PREFIX,
    DATA_DIR_HOWTO,
    _env_dir,
    _idx_files,
    _user_folder_candidates,
)
from bastion.errors import InputError, MissingFileError

__all__ = ["CIFAR10_CLASSES", "MNIST_CLASSES"]

logger = logging.getLogger(__name__)

MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
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


def _user_root(what: str, data_dir: str | os.PathLike[str] | None, hint: str) -> Path:
    """``data_dir``, else ``$BASTION_DATA``, else a FileNotFoundError explaining what to do."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = _env_dir()
    if env is not None:
        return env
    raise MissingFileError(
        f"{what} needs a folder: {DATA_DIR_HOWTO}. bastion never downloads data; "
        f"downloading is left to you: {hint}"
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

    try:
        ds = MNIST(root, train=train, download=False)
    except (RuntimeError, ValueError, OSError, AssertionError) as e:  # truncated raw files
        raise InputError(
            f"MNIST files in {Path(root) / 'MNIST' / 'raw'} cannot be read (torchvision: "
            f"{type(e).__name__}: {e}); replace them with the official ones. {_MNIST_HINT}"
        ) from e
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
            x, y = _decode_idx_pair(_stamp(files.images, files.labels), 10)
            logger.info("MNIST %s: %d images from %s", split, len(y), folder)
            return ImageDataset(x, y, "mnist", 10, MNIST_CLASSES)
    looked = "\n".join(f"  - {p}" for p in candidates)
    raise MissingFileError(
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
        raise InputError(
            f"CIFAR-10 files in {Path(root) / CIFAR10.base_folder} are corrupted or not the "
            f"official ones (torchvision: {e}). {_CIFAR_HINT}"
        ) from e
    data = torch.from_numpy(np.ascontiguousarray(ds.data))  # uint8 [N, H, W, C]
    if data.dim() != 4 or data.shape[-1] != 3:
        raise InputError(f"CIFAR-10 data in {root} has shape {tuple(data.shape)}, not [N,32,32,3]")
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
        raise MissingFileError(
            f"CIFAR-10 not found: none of these folders exists:\n{looked}\nbastion never "
            f"downloads data; downloading is left to you: {_CIFAR_HINT}"
        )
    names = [f for f, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    missing = [f for f in names if not (folder / base / f).is_file()]
    if missing:
        raise MissingFileError(
            f"CIFAR-10 folder {folder / base} lacks {', '.join(missing)}. {_CIFAR_HINT}"
        )
    key = _stamp(*(folder / base / f for f in names))
    x, y, classes = _cifar10_torchvision(key, str(folder), split == "train")
    if len(classes) != 10:
        raise InputError(f"CIFAR-10 metadata in {folder / base} names {len(classes)} classes")
    logger.info("CIFAR-10 %s: %d images from %s", split, len(y), folder / base)
    return ImageDataset(x, y, "cifar10", 10, classes)
