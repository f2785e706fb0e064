"""The dataset names and :func:`load_dataset`, which dispatches a name to its loader.

Every loader returns an :class:`~bastion.data.dataset.ImageDataset`: float32 images of shape
``[N, C, H, W]`` with values in ``[0, 1]`` and int64 labels of shape ``[N]``. Nothing is ever
downloaded: the data must already be on disk (see :func:`load_dataset` for where each dataset
is looked for). An unknown name or split raises a ValueError listing the valid ones.

Datasets and the module that loads each:

- ``"fashion-mnist"`` (default of the project): :mod:`bastion.data.fashion_mnist`.
- ``"mnist"`` and ``"cifar10"``: :mod:`bastion.data.torchvision_sets`.
- ``"digits"``: :mod:`bastion.data.digits` (no files needed, for fast tests).
- ``"fashion-mnist-pairs"`` and ``"fashion-mnist-pairs-wide"``: two views of the same class
  per example (MMCert's benchmark here), :mod:`bastion.data.pairs`.

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

import logging
import os
from dataclasses import dataclass
from typing import Literal, get_args

from bastion._validate import check_choice
from bastion.data.dataset import SPLITS, ImageDataset, Split
from bastion.data.digits import _load_digits
from bastion.data.fashion_mnist import _load_fashion_mnist
from bastion.data.pairs import paired
from bastion.data.torchvision_sets import _load_cifar10, _load_mnist

__all__ = ["DATASETS", "DATASET_INFO", "DatasetInfo", "DatasetName", "load_dataset"]

logger = logging.getLogger(__name__)

DatasetName = Literal["fashion-mnist", "mnist", "cifar10", "digits", "fashion-mnist-pairs",
                      "fashion-mnist-pairs-wide"]
"""Names accepted by :func:`load_dataset`."""

DATASETS: tuple[str, ...] = get_args(DatasetName)


@dataclass(frozen=True)
class DatasetInfo:
    """What is known of a dataset without reading its files (for checking a config early).

    Args:
        shape: ``(C, H, W)`` of one image.
        num_classes: number of classes.
        train_size: images in the training split.
        test_size: images in the test split.
    """

    shape: tuple[int, int, int]
    num_classes: int
    train_size: int
    test_size: int


DATASET_INFO: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo((1, 28, 28), 10, 60_000, 10_000),
    "mnist": DatasetInfo((1, 28, 28), 10, 60_000, 10_000),
    "cifar10": DatasetInfo((3, 32, 32), 10, 50_000, 10_000),
    "digits": DatasetInfo((1, 8, 8), 10, 1_500, 297),
    "fashion-mnist-pairs": DatasetInfo((2, 28, 28), 10, 60_000, 10_000),
    "fashion-mnist-pairs-wide": DatasetInfo((1, 28, 56), 10, 60_000, 10_000),
}
"""Image shape, classes and split sizes of each of :data:`DATASETS` (the tests check them
against the loaders)."""


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
    if name in ("fashion-mnist-pairs", "fashion-mnist-pairs-wide"):
        return paired(_load_fashion_mnist(split, data_dir), wide=name.endswith("-wide"))
    if name == "mnist":
        return _load_mnist(split, data_dir)
    if name == "cifar10":
        return _load_cifar10(split, data_dir)
    if data_dir is not None:
        logger.debug("digits ships with scikit-learn; ignoring data_dir=%s", data_dir)
    return _load_digits(split)
