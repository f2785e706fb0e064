"""Early, clear checks of user input shared by every public entry point."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from bastion.errors import InputError, InputTypeError, MissingFileError, RunFolderError


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


def check_int(value: object, name: str, *, low: int | None = None, none_ok: bool = False) -> None:
    """Raise unless ``value`` is an integer (not a bool; numpy integers count) ``>= low`` (or
    None with ``none_ok``): ``InputTypeError`` for another type, ``InputError`` below
    ``low``; the message names ``name``."""
    if value is None and none_ok:
        return
    also = " or None" if none_ok else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        bound = f" >= {low}" if low is not None else ""
        raise InputTypeError(f"{name} must be an int{bound}{also}, got {value!r}")
    if low is not None and value < low:
        raise InputError(f"{name} must be an int >= {low}{also}, got {value!r}")


def device_choices() -> list[str]:
    """The device names that exist on this machine: ``auto``, ``cpu`` and each accelerator."""
    names = ["auto", "cpu"]
    if torch.accelerator.is_available():
        acc = torch.accelerator.current_accelerator()
        if acc is not None:
            count = torch.accelerator.device_count()
            names += [acc.type, *(f"{acc.type}:{i}" for i in range(count))]
    return names


def check_device(value: object, name: str = "device") -> None:
    """Raise unless ``value`` is ``"auto"``, ``"cpu"`` or an accelerator present here.

    A CUDA device on a machine without a GPU, a device index beyond the ones present, or a
    misspelt name all raise ``InputError`` naming the valid choices on this machine.
    """
    if not isinstance(value, str) or not value:
        raise InputError(f"{name} must be a non-empty name ('auto', 'cpu', 'cuda:0', ...), "
                         f"got {value!r}")
    if value in ("auto", "cpu"):
        return
    choices = ", ".join(repr(c) for c in device_choices())
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"{name}: {value!r} is not a device name; valid choices on this "
                         f"machine: {choices}") from None
    if dev.type == "cpu":
        return
    acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if acc is None or acc.type != dev.type:
        raise InputError(f"{name}: {value!r}: this machine has no {dev.type} device; valid "
                         f"choices on this machine: {choices}")
    if dev.index is not None and dev.index >= torch.accelerator.device_count():
        raise InputError(f"{name}: {value!r}: this machine has "
                         f"{torch.accelerator.device_count()} {dev.type} device(s); valid "
                         f"choices on this machine: {choices}")


def check_run_dir(path: str | os.PathLike[str], what: str = "run folder") -> Path:
    """``path`` as a ``Path`` if it is an existing folder; else a clear error.

    A missing path raises ``MissingFileError``; a path that is a file raises
    ``RunFolderError`` saying so (a run folder is the folder ``bastion train --out`` wrote,
    not one of its files).
    """
    p = Path(path)
    if p.is_dir():
        return p
    if p.exists():
        raise RunFolderError(
            f"{what} {str(p)!r} is a file, not a folder; give the folder that 'bastion train "
            "--out' wrote (it holds config.yaml, model.json and checkpoints/)"
        )
    raise MissingFileError(f"{what} {str(p)!r} does not exist")
