"""Datasets as in-memory float32 ``[N, C, H, W]`` tensors in [0, 1] (nothing is downloaded).

Fashion-MNIST is the project's default and is found where Debian's ``dataset-fashion-mnist``
package or ``scripts/get_fashion_mnist.sh`` puts it; MNIST and CIFAR-10 come from a folder the
user gives; scikit-learn's 8x8 digits need no files and serve fast tests.

Modules: ``dataset`` (the :class:`ImageDataset` record and the splits), ``registry``
(:func:`load_dataset` and the dataset names), ``fashion_mnist``, ``torchvision_sets`` (MNIST,
CIFAR-10) and ``digits`` (one loader each), ``locate`` (``$BASTION_DATA`` and IDX file names),
``cache`` (decoded files cached per process) and ``idx`` (the IDX format).

Example:
    >>> from bastion.data import load_dataset
    >>> train = load_dataset("digits", "train")
    >>> image, label, index = train[0]
"""

from bastion.data.dataset import SPLITS, ImageDataset, Split
from bastion.data.digits import DIGITS_CLASSES
from bastion.data.fashion_mnist import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    SearchDir,
    fashion_mnist_search_dirs,
    find_fashion_mnist,
)
from bastion.data.idx import IdxFormatError, read_idx, write_idx
from bastion.data.locate import IdxFiles
from bastion.data.registry import DATASET_INFO, DATASETS, DatasetInfo, DatasetName, load_dataset
from bastion.data.torchvision_sets import CIFAR10_CLASSES, MNIST_CLASSES

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "DATASET_INFO",
    "DEBIAN_FASHION_MNIST_DIR",
    "DIGITS_CLASSES",
    "DatasetInfo",
    "DatasetName",
    "FASHION_MNIST_CLASSES",
    "IdxFiles",
    "IdxFormatError",
    "ImageDataset",
    "MNIST_CLASSES",
    "SPLITS",
    "SearchDir",
    "Split",
    "fashion_mnist_search_dirs",
    "find_fashion_mnist",
    "load_dataset",
    "read_idx",
    "write_idx",
]
