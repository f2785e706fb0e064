"""The dataset record: :class:`ImageDataset`, its validation and :meth:`~ImageDataset.subset`.

Every loader of :mod:`bastion.data` returns an :class:`ImageDataset`: float32 images of shape
``[N, C, H, W]`` with values in ``[0, 1]`` (normalisation is the model's first layer, so
epsilons stay in pixel units) and int64 labels of shape ``[N]``. The split names
(:data:`Split`, :data:`SPLITS`) live here too, since every loader takes one.

Example:
    >>> import torch
    >>> ds = ImageDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 1, 0]),
    ...                   name="toy", num_classes=2, class_names=("a", "b"))
    >>> len(ds), ds.shape
    (4, (1, 2, 2))
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch.utils.data import Dataset

from bastion.errors import InputError, InputTypeError

__all__ = ["SPLITS", "ImageDataset", "Split"]

Split = Literal["train", "test"]
"""Dataset splits."""

SPLITS: tuple[str, ...] = get_args(Split)


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
            raise InputTypeError(
                f"{self.name}: images must be a float32 tensor [N, C, H, W], got {got}"
            )
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise InputTypeError(f"{self.name}: labels must be an int64 tensor [N], got {got}")
        if x.shape[0] != y.shape[0]:
            raise InputError(
                f"{self.name}: {x.shape[0]} images but {y.shape[0]} labels; they must agree"
            )
        if isinstance(self.class_names, str) or not isinstance(self.class_names, Sequence):
            raise InputTypeError(f"{self.name}: class_names must be a sequence of strings")
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise InputError(
                f"{self.name}: num_classes must be an int >= 1, got {self.num_classes}"
            )
        if len(self.class_names) != self.num_classes:
            raise InputError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
            )
        if x.shape[0] == 0:
            return
        lo, hi = (float(v) for v in torch.aminmax(x))
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise InputError(
                f"{self.name}: images must lie in [0, 1] (bastion normalises inside the model); "
                f"got values in [{lo:.4g}, {hi:.4g}]"
            )
        ylo, yhi = (int(v) for v in torch.aminmax(y))
        if ylo < 0 or yhi >= self.num_classes:
            raise InputError(
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
            raise InputError(f"start={start} must lie in [0, {size}] for {self.name}")
        if n is None:
            n = size - start
        n = operator.index(n)
        if n < 0 or start + n > size:
            raise InputError(
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
