"""Early, clear checks of user input shared by every public entry point."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from bastion.errors import InputError, InputTypeError


def check_images(x: torch.Tensor, name: str = "x") -> None:
    """Raise a clear error unless ``x`` is a float NCHW batch in [0, 1] without NaN.

    Args:
        x: candidate image batch, shape [N, C, H, W].
        name: the argument name used in the message.
    """
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(
            f"{name} must be an NCHW batch of images with 4 dimensions, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise InputTypeError(
            f"{name} must be a floating-point tensor in [0, 1], got dtype {x.dtype}"
        )
    if x.numel() == 0:
        raise InputError(f"{name} is empty (shape {tuple(x.shape)})")
    if torch.isnan(x).any():
        raise InputError(f"{name} contains NaN")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"{name} must lie in [0, 1] (bastion puts normalisation inside the model); "
            f"got values in [{lo:.4g}, {hi:.4g}]"
        )


def check_labels(y: torch.Tensor, n: int, name: str = "y") -> None:
    """Raise unless ``y`` is an int64 vector of length ``n``."""
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise InputTypeError(f"{name} must be an int64 tensor of shape [N], got {got}")
    if y.shape[0] != n:
        raise InputError(f"{name} has {y.shape[0]} labels but the batch has {n} images")


def check_choice(value: str, choices: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` naming the valid choices unless ``value`` is one of them."""
    choices = list(choices)
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}; valid choices: {', '.join(sorted(choices))}")


def check_radius(value: float | torch.Tensor, name: str, *, upper: float | None = None) -> None:
    """Raise unless ``value`` (a float or tensor of radii) is finite, >= 0 and <= ``upper``."""
    t = torch.as_tensor(value, dtype=torch.float64)
    if torch.isnan(t).any() or torch.isinf(t).any():
        raise InputError(f"{name} must be finite, got {value}")
    if (t < 0).any():
        raise InputError(f"{name} must be >= 0, got {value}")
    if upper is not None and (t > upper).any():
        raise InputError(
            f"{name}={float(t.max()):.4g} is larger than {upper:.4g}, the largest meaningful "
            "value for images in [0, 1]; radii are in pixel units, not in 0-255"
        )


def finite_positive(value: float, name: str) -> None:
    """Raise unless ``value`` is a finite float > 0."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a finite number > 0, got {value!r}")
