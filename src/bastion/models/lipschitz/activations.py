"""Gradient-norm-preserving sorting activations: GroupSort, MaxMin and FullSort.

Anil, Lucas and Grosse 2019, "Sorting Out Lipschitz Function Approximation", ICML,
arXiv 1811.05381, Sec. 4. A sorting activation only reorders its input: on every input
whose values within a group are distinct its Jacobian is a permutation matrix, so it is
1-Lipschitz in the L2 norm and preserves the norm of every back-propagated gradient
(``||J^T g||_2 = ||g||_2``), unlike ReLU, which discards the gradient of every negative
unit. Ties are broken stably (first occurrence first), so the autograd Jacobian is a
permutation matrix for every input, ties included.

The activations act on one dimension (``dim``, the channel dimension 1 by default) of a
tensor of any rank >= 2: [N, C] for dense layers, [N, C, H, W] for convolutional feature
maps (sorting is then done independently at each spatial position, over channels).
"""

from __future__ import annotations

import torch
from torch import nn

from bastion._validate import check_int
from bastion.errors import InputError, InputTypeError


def _channel_dim(x: torch.Tensor, dim: int, who: str) -> int:
    """``dim`` made non-negative for ``x``; raises unless ``x`` is a float tensor with it."""
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{who} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputTypeError(f"{who} expects a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2 or not -x.dim() <= dim < x.dim():
        raise InputError(
            f"{who}(dim={dim}) expects a tensor of shape [N, C, ...] with a dimension {dim}, "
            f"got shape {tuple(x.shape)}"
        )
    if dim % x.dim() == 0:
        raise InputError(f"{who}(dim={dim}) would sort across the batch dimension, mixing "
                         "examples; sort along a feature dimension (dim >= 1)")
    return dim % x.dim()


def group_sort(x: torch.Tensor, group_size: int, dim: int = 1) -> torch.Tensor:
    """Sort each group of ``group_size`` consecutive entries of ``x`` along ``dim`` (ascending).

    Anil et al. 2019 (arXiv 1811.05381), GroupSort: channels ``[g*G, (g+1)*G)`` form group
    ``g``; each group is sorted in ascending order and written back in place, so the output
    has the shape of the input. ``group_size=2`` is MaxMin (``[min, max]`` per pair),
    ``group_size=C`` is FullSort.

    Args:
        x: float tensor [N, C, ...]; ``C = x.shape[dim]`` must be divisible by ``group_size``.
        group_size: entries per group, >= 1.
        dim: the dimension split into groups (default 1, channels).

    Shape:
        [N, C, ...] -> [N, C, ...] (same units as the input).
    """
    check_int(group_size, "group_size", low=1)
    d = _channel_dim(x, dim, "GroupSort")
    c = x.shape[d]
    if c % group_size != 0:
        raise InputError(
            f"GroupSort(group_size={group_size}) needs the size of dimension {d} to be a "
            f"multiple of {group_size}; got {c} channels (input shape {tuple(x.shape)}); "
            f"choose a group size that divides {c} or change the layer width"
        )
    if group_size == 1:
        return x
    groups = x.unflatten(d, (c // group_size, group_size))
    if group_size == 2:
        # Two `where`s are faster than a sort on CPU and route each gradient to exactly
        # one input (ties: the first entry goes first), so J stays a permutation.
        a, b = groups.select(d + 1, 0), groups.select(d + 1, 1)
        first = a <= b
        lo, hi = torch.where(first, a, b), torch.where(first, b, a)
        return torch.stack((lo, hi), dim=d + 1).flatten(d, d + 1)
    return torch.sort(groups, dim=d + 1, stable=True).values.flatten(d, d + 1)


class GroupSort(nn.Module):
    """GroupSort activation (Anil, Lucas, Grosse 2019, arXiv 1811.05381, Sec. 4).

    Splits dimension ``dim`` into groups of ``group_size`` consecutive channels and sorts
    each group in ascending order (see :func:`group_sort`). 1-Lipschitz in L2 and
    gradient-norm preserving; no parameters.

    Args:
        group_size: channels per group, >= 1 (2 is MaxMin).
        dim: the channel dimension (default 1).
        num_channels: optional number of channels; when given it must be a multiple of
            ``group_size`` (checked here) and every input must have exactly that many.

    Shape:
        [N, C, ...] -> [N, C, ...]; ``C`` divisible by ``group_size``.
    """

    def __init__(self, group_size: int = 2, dim: int = 1, *, num_channels: int | None = None):
        super().__init__()
        check_int(group_size, "group_size", low=1)
        check_int(dim, "dim")
        check_int(num_channels, "num_channels", low=1, none_ok=True)
        if num_channels is not None and num_channels % group_size != 0:
            raise InputError(
                f"num_channels={num_channels} is not a multiple of group_size={group_size}; "
                f"GroupSort sorts groups of {group_size} consecutive channels"
            )
        self.group_size = int(group_size)
        self.dim = int(dim)
        self.num_channels = None if num_channels is None else int(num_channels)

    def _check_channels(self, x: torch.Tensor) -> None:
        if self.num_channels is not None:
            d = _channel_dim(x, self.dim, type(self).__name__)
            if x.shape[d] != self.num_channels:
                raise InputError(
                    f"{type(self).__name__} was built for {self.num_channels} channels but "
                    f"got {x.shape[d]} (input shape {tuple(x.shape)}, dim={self.dim})"
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_channels(x)
        return group_sort(x, self.group_size, self.dim)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, dim={self.dim}"


class MaxMin(GroupSort):
    """MaxMin activation: GroupSort with groups of 2 (Anil et al. 2019, arXiv 1811.05381).

    Ordering: channels ``(2i, 2i+1)`` become ``(min, max)`` of the pair, interleaved in
    place -- the same output as deel-torchlip's ``GroupSort2`` / ``group_sort(x, 2)``.
    Anil et al.'s LNets code instead concatenates all maxima then all minima
    (``[max_0, ..., max_{C/2-1}, min_0, ...]``), a fixed channel permutation of this output
    that a following linear layer absorbs. (deel-torchlip's ``MaxMin`` is a different
    activation, ``cat(relu(x), relu(-x))`` of Blot et al. 2016, that doubles the channels.)

    Args:
        dim: the channel dimension (default 1).
        num_channels: optional channel count, must be even.

    Shape:
        [N, C, ...] -> [N, C, ...]; ``C`` even.
    """

    def __init__(self, dim: int = 1, *, num_channels: int | None = None):
        super().__init__(2, dim, num_channels=num_channels)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class FullSort(nn.Module):
    """FullSort activation: sort the whole channel dimension (Anil et al. 2019, 1811.05381).

    GroupSort with a single group of all ``C`` channels. On [N, C, H, W] each spatial
    position's ``C`` channel values are sorted ascending, independently of other positions.

    Args:
        dim: the channel dimension (default 1).

    Shape:
        [N, C, ...] -> [N, C, ...].
    """

    def __init__(self, dim: int = 1):
        super().__init__()
        check_int(dim, "dim")
        self.dim = int(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = _channel_dim(x, self.dim, "FullSort")
        return torch.sort(x, dim=d, stable=True).values

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "groupsort": GroupSort,
    "maxmin": MaxMin,
    "fullsort": FullSort,
    "relu": nn.ReLU,
}
"""Activation name -> class (constructed with its defaults: ``ACTIVATIONS[name]()``)."""

__all__ = ["ACTIVATIONS", "FullSort", "GroupSort", "MaxMin", "group_sort"]
