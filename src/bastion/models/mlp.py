"""A fully connected network; with no hidden layer it is a linear (affine) classifier."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from bastion.models.normalize import _as_hw


class MLP(nn.Module):
    """Flatten, then ``Linear-ReLU`` per hidden width, then a linear output layer.

    With ``hidden=()`` the model is affine in its input, the case where PGD's worst case
    and the smoothed classifier are known in closed form (used by the tests).

    Args:
        num_classes: output logits.
        in_channels: input channels.
        input_size: input height and width (int or ``(h, w)``).
        hidden: widths of the hidden layers.

    Shape:
        [N, in_channels, H, W] -> [N, num_classes].
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int | Sequence[int] = 28,
        *,
        hidden: Sequence[int] = (256,),
    ) -> None:
        super().__init__()
        h, w = _as_hw(input_size)
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        width = in_channels * h * w
        for i, out in enumerate(hidden, start=1):
            layers += [(f"fc{i}", nn.Linear(width, out)), (f"relu{i}", nn.ReLU())]
            width = out
        layers.append(("out", nn.Linear(width, num_classes)))
        self.layers = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
