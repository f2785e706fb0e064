"""Per-channel normalisation as the first layer of every bastion model.

bastion keeps inputs as NCHW floats in [0, 1] everywhere (attacks, purifiers, certifiers), so
that epsilons and certified radii are in pixel units. Dataset normalisation therefore lives
inside the model, as this layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from bastion.errors import InputError, InputTypeError


class Normalize(nn.Module):
    """Subtract a per-channel mean and divide by a per-channel standard deviation.

    ``forward(x) = (x - mean) / std`` with ``mean`` and ``std`` stored as buffers of shape
    ``[1, C, 1, 1]`` (persistent, so they travel with the checkpoint). The layer is
    differentiable, so gradient-based attacks see through it, and it keeps the memory format of
    its input (NCHW or channels-last).

    As the first layer of every model it is also where a wrong input shape is caught: an
    image of another size than the one the model was built for raises ``InputError`` naming
    the expected shape, instead of a raw matrix-size error deep inside the network.

    Args:
        mean: per-channel means, one float per channel, in [0, 1] pixel units.
        std: per-channel standard deviations, one finite float > 0 per channel.
        input_size: ``(H, W)`` (or one int for square images) the model was built for;
            None (the default) accepts any size (architectures with global pooling). Kept
            as a plain attribute, not a buffer, so checkpoints do not change.
        mask_channels: T keep-mask channels that may follow the C image channels (the
            sub-sampled inputs of ``bastion.models.ablation``; default 0, none). They pass
            unchanged; an input without them is complete and gets all-ones masks.

    Shape:
        - Input: ``[N, C, H, W]`` with ``C == len(mean)`` (and ``(H, W) == input_size``
          when given).
        - Output: ``[N, C, H, W]``, same dtype and memory format as the input; with
          ``mask_channels=T``, input ``[N, C, H, W]`` or ``[N, C + T, H, W]`` and output
          ``[N, C + T, H, W]``.

    Example:
        >>> norm = Normalize((0.5,), (0.25,))
        >>> norm(torch.full((1, 1, 2, 2), 0.75)).flatten().tolist()
        [1.0, 1.0, 1.0, 1.0]
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        input_size: int | Sequence[int] | None = None,
        mask_channels: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(mask_channels, bool) or not isinstance(mask_channels, int) or (
                mask_channels < 0):
            raise InputError(f"mask_channels must be an int >= 0, got {mask_channels!r}")
        self.mask_channels = mask_channels
        mean_t = [float(m) for m in mean]
        std_t = [float(s) for s in std]
        if len(mean_t) == 0:
            raise InputError("mean must have at least one entry (one per channel)")
        if len(mean_t) != len(std_t):
            raise InputError(
                f"mean and std must have one entry per channel and the same length; "
                f"got {len(mean_t)} means and {len(std_t)} standard deviations"
            )
        if not all(math.isfinite(m) for m in mean_t):
            raise InputError(f"mean must be finite, got {mean_t}")
        if not all(math.isfinite(s) and s > 0 for s in std_t):
            raise InputError(f"std must be finite and > 0 in every channel, got {std_t}")
        self.register_buffer("mean", torch.tensor(mean_t).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std_t).view(1, -1, 1, 1))
        self.input_size: tuple[int, int] | None = (
            None if input_size is None else _as_hw(input_size)
        )

    @property
    def num_channels(self) -> int:
        """Number of channels the layer expects."""
        return int(self.mean.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``[N, C, H, W]`` channel by channel."""
        size = self.input_size
        c, t = self.num_channels, self.mask_channels
        if (
            x.dim() != 4
            or x.shape[1] not in ((c, c + t) if t else (c,))
            or (size is not None and tuple(x.shape[2:]) != size)
        ):
            built = "" if size is None else f", built for {size[0]}x{size[1]} images"
            raise InputError(
                f"the model expects an NCHW batch of shape {self.expected_shape()} "
                f"({self.num_channels} channel(s){built}), got shape {tuple(x.shape)}"
            )
        if not t:
            return (x - self.mean) / self.std
        values = (x[:, :c] - self.mean) / self.std
        masks = x[:, c:] if x.shape[1] == c + t else values.new_ones(
            (x.shape[0], t, *x.shape[2:]))
        return torch.cat([values, masks], dim=1)

    def expected_shape(self) -> str:
        """The input shape the layer accepts, e.g. ``[N, 1, 28, 28]`` or ``[N, 3, H, W]``."""
        h, w = ("H", "W") if self.input_size is None else self.input_size
        masks = f" or {self.num_channels + self.mask_channels}" if self.mask_channels else ""
        return f"[N, {self.num_channels}{masks}, {h}, {w}]"

    def extra_repr(self) -> str:
        mean = ", ".join(f"{m:.4g}" for m in self.mean.flatten().tolist())
        std = ", ".join(f"{s:.4g}" for s in self.std.flatten().tolist())
        size = "" if self.input_size is None else f", input_size={self.input_size}"
        return f"mean=({mean}), std=({std}){size}"


# Small argument checks shared by the architectures in this sub-package.


def _check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is an int >= 1, else raise a clear error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise InputError(f"{name} must be >= 1, got {value}")
    return value


def _as_hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    """Turn ``28`` or ``(28, 28)`` into a ``(height, width)`` pair of ints >= 1."""
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        pair: tuple[object, ...] = (input_size, input_size)
    else:
        pair = tuple(input_size)
        if len(pair) != 2:
            raise InputError(f"input_size must be an int or an (height, width) pair, got {pair}")
    h = _check_positive_int(pair[0], "input_size height")
    w = _check_positive_int(pair[1], "input_size width")
    return h, w


def _check_dropout(p: object, name: str = "dropout") -> float:
    """Return ``p`` as a float if it is a probability in [0, 1), else raise."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= float(p) < 1.0:
        raise InputError(f"{name} must be a probability in [0, 1), got {p!r}")
    return float(p)


def _min_input_side(out_side: Callable[[int], int]) -> int:
    """Smallest input side for which ``out_side`` (input side -> feature side) is >= 1."""
    return next(s for s in range(1, 4097) if out_side(s) >= 1)
