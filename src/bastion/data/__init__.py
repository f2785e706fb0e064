"""Datasets as in-memory float32 ``[N, C, H, W]`` tensors in [0, 1] (nothing is downloaded).

Fashion-MNIST is the project's default and is found where Debian's ``dataset-fashion-mnist``
package or ``scripts/get_fashion_mnist.sh`` puts it; MNIST and CIFAR-10 come from a folder the
user gives; scikit-learn's 8x8 digits need no files and serve fast tests.

Example:
    >>> from bastion.data import load_dataset
    >>> train = load_dataset("digits", "train")
    >>> image, label, index = train[0]
"""

from bastion.data.datasets import (
    CIFAR10_CLASSES,
    DATASETS,
    DEBIAN_FASHION_MNIST_DIR,
    DIGITS_CLASSES,
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    SPLITS,
    DatasetName,
    ImageDataset,
    Split,
    fashion_mnist_search_dirs,
    find_fashion_mnist,
    load_dataset,
)
from bastion.data.idx import IdxFormatError, read_idx, write_idx

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DIGITS_CLASSES",
    "DatasetName",
    "FASHION_MNIST_CLASSES",
    "IdxFormatError",
    "ImageDataset",
    "MNIST_CLASSES",
    "SPLITS",
    "Split",
    "fashion_mnist_search_dirs",
    "find_fashion_mnist",
    "load_dataset",
    "read_idx",
    "write_idx",
]
