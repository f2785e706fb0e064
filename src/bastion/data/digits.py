"""scikit-learn's bundled 8x8 digits as a dataset that needs no files, for fast tests.

1797 images, 1x8x8, permuted once by ``numpy.random.RandomState(0)`` and cut into 1500 train /
297 test (:data:`DIGITS_TRAIN_SIZE`). scikit-learn is an optional (test) dependency, imported
only when the digits are loaded.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from bastion.data.dataset import ImageDataset, Split

__all__ = ["DIGITS_CLASSES", "DIGITS_TRAIN_SIZE"]

DIGITS_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
"""The ten digits ``"0"`` to ``"9"`` (equal to MNIST's class names)."""

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
