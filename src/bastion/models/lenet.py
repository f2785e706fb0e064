"""LeNet-5 style convolutional network, adapted to the input size."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from bastion.errors import InputError
from bastion.models.normalize import (
    _as_hw,
    _check_positive_int,
    _min_input_side,
)


def _lenet_side(side: int, padding: int) -> int:
    """Spatial side after conv 5x5 (padding) - pool 2 - conv 5x5 - pool 2."""
    side = side + 2 * padding - 4
    side = side // 2 if side >= 1 else 0
    side = side - 4
    return side // 2 if side >= 1 else 0


class LeNet(nn.Module):
    """LeNet-5 style CNN with ReLU activations and max pooling.

    Paper: LeCun et al., "Gradient-Based Learning Applied to Document Recognition",
    Proc. IEEE 1998 (no arXiv id). The layout is the common modern variant::

        features:   conv1 5x5 (in->6, padding 2) relu1 pool1 2x2
                    conv2 5x5 (6->16)            relu2 pool2 2x2
        classifier: fc1 (16*h*w -> 120) relu1  fc2 (120 -> 84) relu2  fc3 (84 -> classes)

    With 28x28 inputs and ``padding=2`` the conv stack ends at 16x5x5, as LeNet-5 on 32x32
    without padding; for other sizes the flatten size is computed from ``input_size``
    (32x32 with padding 2 gives 16x6x6). PyTorch's default initialisation.

    Args:
        num_classes: number of output logits. Default 10.
        in_channels: input channels. Default 1.
        input_size: input height and width in pixels, an int or an ``(h, w)`` pair. Default 28.
        padding: zero padding of the first convolution, in pixels. Default 2.

    Shape:
        - Input: ``[N, in_channels, H, W]`` with ``(H, W) == input_size``.
        - Output: ``[N, num_classes]`` logits.

    Example:
        >>> model = LeNet(num_classes=10, in_channels=1, input_size=28)
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int | Sequence[int] = 28,
        *,
        padding: int = 2,
    ) -> None:
        super().__init__()
        _check_positive_int(num_classes, "num_classes")
        _check_positive_int(in_channels, "in_channels")
        h, w = _as_hw(input_size)
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise InputError(f"padding must be an int >= 0, got {padding!r}")
        fh, fw = _lenet_side(h, padding), _lenet_side(w, padding)
        if fh < 1 or fw < 1:
            least = _min_input_side(lambda s: _lenet_side(s, padding))
            raise InputError(
                f"input_size {h}x{w} is too small for LeNet with padding={padding}: the conv "
                f"stack needs at least {least} pixels on each side"
            )
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_size = (h, w)
        self.feature_shape = (16, fh, fw)

        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 6, 5, padding=padding)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2, 2)),
                    ("conv2", nn.Conv2d(6, 16, 5)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2, 2)),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(16 * fh * fw, 120)),
                    ("relu1", nn.ReLU()),
                    ("fc2", nn.Linear(120, 84)),
                    ("relu2", nn.ReLU()),
                    ("fc3", nn.Linear(84, num_classes)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, in_channels, H, W]``."""
        feats = self.features(x)
        if tuple(feats.shape[1:]) != self.feature_shape:
            raise InputError(
                f"LeNet was built for {self.input_size[0]}x{self.input_size[1]} inputs, got "
                f"input shape {tuple(x.shape)}; build it with input_size=(H, W) of your data"
            )
        return self.classifier(torch.flatten(feats, 1))
