"""Lipschitz-constrained chain networks: ``lipschitz-cnn`` and ``lipschitz-mlp``.

Both are plain compositions (no skip connections, no pooling with unknown constants), so
``bound.network_bound`` bounds them exactly as they run, with 1-Lipschitz,
gradient-norm-preserving activations (MaxMin / GroupSort / FullSort; Anil, Lucas and Grosse
2019, arXiv 1811.05381), or learnable 1-Lipschitz linear splines (``"lls"``; Ducotterd et al.
2024, arXiv 2210.16222), and an optional weight constraint (``constraints.constrain``:
spectral normalisation or Björck orthonormalisation to a total constant ``lipschitz``).

The CNN follows GloRo's small MNIST networks (Leino, Wang and Fredrikson 2021, arXiv
2102.08452, "2C2F"): two 4x4 convolutions with stride 2 (28 -> 14 -> 7 with padding 1),
then dense layers; downsampling by stride keeps every layer's norm computable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from bastion.errors import InputError
from bastion.models.lipschitz.activations import ACTIVATIONS
from bastion.models.lipschitz.constraints import CONSTRAINTS, constrain
from bastion.models.lipschitz.spline import LinearSpline
from bastion.models.normalize import _as_hw, _check_positive_int

ACTIVATION_NAMES: tuple[str, ...] = (*ACTIVATIONS, "lls")
"""Activation names of the Lipschitz architectures (``"lls"``: a learnable linear spline
per channel)."""


def _activation(name: str, channels: int, knots: int) -> nn.Module:
    if name not in ACTIVATION_NAMES:
        raise InputError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATION_NAMES)}")
    if name == "lls":
        return LinearSpline(channels, num_knots=knots)
    if name in ("groupsort", "maxmin") and channels % 2:
        raise InputError(f"activation {name!r} sorts pairs of channels; {channels} is odd")
    return ACTIVATIONS[name]()


def _check_sizes(values: Sequence[int], name: str) -> tuple[int, ...]:
    out = tuple(values)
    if not out:
        raise InputError(f"{name} must list at least one width")
    for v in out:
        _check_positive_int(v, name)
    return out


def _dense_head(d: int, widths: tuple[int, ...], num_classes: int, activation: str,
                knots: int, act_name: str) -> list[tuple[str, nn.Module]]:
    """``fc1 act fc2 act ... logits``: the dense layers from ``d`` inputs to the logits
    (activation ``i`` named ``act_name.format(i)``)."""
    items: list[tuple[str, nn.Module]] = []
    for i, width in enumerate(widths, 1):
        items += [(f"fc{i}", nn.Linear(d, width)),
                  (act_name.format(i), _activation(activation, width, knots))]
        d = width
    return [*items, ("logits", nn.Linear(d, num_classes))]


class _Chain(nn.Module):
    """A named ``nn.Sequential`` with a constraint applied after construction."""

    layers: nn.Sequential

    def _finish(self, items: list[tuple[str, nn.Module]], constraint: str, lipschitz: float,
                conv_inputs: dict[str, tuple[int, int]], power_iters: int) -> None:
        if constraint not in CONSTRAINTS:
            raise InputError(f"unknown constraint {constraint!r}; valid: "
                             f"{', '.join(CONSTRAINTS)}")
        self.layers = nn.Sequential(OrderedDict(items))
        constrain(self.layers, constraint, total=lipschitz, input_sizes=conv_inputs,
                  power_iters=power_iters)
        self.constraint = constraint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]``."""
        return self.layers(x)


class LipschitzCNN(_Chain):
    """Convolutions with stride 2, then dense layers, with Lipschitz activations.

    Args:
        num_classes, in_channels, input_size: from the dataset.
        channels: output channels of each 4x4 stride-2 conv (padding 1). Default (16, 32).
        hidden: widths of the dense layers before the logits. Default (100,).
        activation: ``"maxmin"`` (default), ``"groupsort"``, ``"fullsort"``, ``"relu"`` or
            ``"lls"``.
        constraint: ``"none"`` (GloRo: the loss controls the constant; default),
            ``"spectral"`` or ``"bjorck"``.
        lipschitz: the total constant of the constrained layers (the ``Normalize`` layer in
            front adds ``1/std``).
        spline_knots: knots per channel of ``"lls"``.
        power_iters: power steps per training forward of a constraint.

    Shape: ``[N, in_channels, H, W]`` -> ``[N, num_classes]``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 input_size: int | Sequence[int] = 28, *, channels: Sequence[int] = (16, 32),
                 hidden: Sequence[int] = (100,), activation: str = "maxmin",
                 constraint: str = "none", lipschitz: float = 1.0, spline_knots: int = 21,
                 power_iters: int = 1) -> None:
        super().__init__()
        _check_positive_int(num_classes, "num_classes")
        _check_positive_int(in_channels, "in_channels")
        h, w = _as_hw(input_size)
        chans = _check_sizes(channels, "channels")
        widths = _check_sizes(hidden, "hidden")
        items: list[tuple[str, nn.Module]] = []
        conv_inputs: dict[str, tuple[int, int]] = {}
        c_prev = in_channels
        for i, c in enumerate(chans, 1):
            if h < 2 or w < 2:
                raise InputError(f"input_size {input_size} is too small for {len(chans)} "
                                 "stride-2 convolutions")
            conv_inputs[f"conv{i}"] = (h, w)
            items += [(f"conv{i}", nn.Conv2d(c_prev, c, 4, stride=2, padding=1)),
                      (f"act{i}", _activation(activation, c, spline_knots))]
            h, w, c_prev = (h + 2 - 4) // 2 + 1, (w + 2 - 4) // 2 + 1, c
        items.append(("flatten", nn.Flatten()))
        items += _dense_head(c_prev * h * w, widths, num_classes, activation, spline_knots,
                             "act_fc{}")
        self.num_classes, self.in_channels = num_classes, in_channels
        self.input_size = _as_hw(input_size)
        self._finish(items, constraint, lipschitz, conv_inputs, power_iters)


class LipschitzMLP(_Chain):
    """Dense layers with Lipschitz activations on flattened images.

    Args:
        num_classes, in_channels, input_size: from the dataset.
        hidden: widths of the hidden layers. Default (256, 256).
        activation: as :class:`LipschitzCNN` (default ``"groupsort"``, group size 2).
        constraint: default ``"bjorck"`` (orthonormal layers: a 1-Lipschitz network with
            gradient-norm preservation, as Anil et al.).
        lipschitz, spline_knots, power_iters: as :class:`LipschitzCNN`.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 input_size: int | Sequence[int] = 28, *, hidden: Sequence[int] = (256, 256),
                 activation: str = "groupsort", constraint: str = "bjorck",
                 lipschitz: float = 1.0, spline_knots: int = 21, power_iters: int = 1) -> None:
        super().__init__()
        _check_positive_int(num_classes, "num_classes")
        _check_positive_int(in_channels, "in_channels")
        h, w = _as_hw(input_size)
        widths = _check_sizes(hidden, "hidden")
        items = [("flatten", nn.Flatten()), *_dense_head(
            in_channels * h * w, widths, num_classes, activation, spline_knots, "act{}")]
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, (h, w)
        self._finish(items, constraint, lipschitz, {}, power_iters)
