"""The small CNN of the TRADES paper (4 conv + 3 fully connected layers), used for MNIST."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from bastion.errors import InputError
from bastion.models.normalize import (
    _as_hw,
    _check_dropout,
    _check_positive_int,
    _min_input_side,
)


def _small_cnn_side(side: int) -> int:
    """Spatial side after the conv stack: two 3x3 convs, pool 2, two 3x3 convs, pool 2."""
    side = (side - 4) // 2 if side >= 4 else 0
    return (side - 4) // 2 if side >= 4 else 0


class SmallCNN(nn.Module):
    """The 4-conv / 3-fc network that TRADES trains on MNIST.

    Paper: Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy"
    (TRADES), arXiv:1901.08573. Layers and initialisation follow the authors' code
    (``models/small_cnn.py`` of github.com/yaodongyu/TRADES)::

        features:   conv1 3x3 (in->32) relu1  conv2 3x3 (32->32) relu2  maxpool1 2x2
                    conv3 3x3 (32->64) relu3  conv4 3x3 (64->64) relu4  maxpool2 2x2
        classifier: fc1 (64*h*w -> 200) relu1  drop  fc2 (200 -> 200) relu2  fc3 (200 -> classes)

    For 28x28 inputs the conv stack ends at 64x4x4 (as in the paper); for other sizes the
    flatten size is computed from ``input_size`` (32x32 gives 64x5x5). Intermediate layers can
    be picked by name, e.g. ``model.get_submodule("classifier.fc2")`` (names as in
    ``named_modules()``).

    Initialisation (as TRADES): conv weights ``kaiming_normal_`` with PyTorch's defaults
    (fan-in, gain sqrt(2)), conv biases 0, linear layers fc1/fc2 with PyTorch's default, and
    ``fc3`` weight and bias 0. With ``zero_init_last=True`` (the TRADES default) an untrained
    model outputs all-zero logits and its input gradient is exactly zero; pass
    ``zero_init_last=False`` to keep PyTorch's default init for ``fc3`` (useful for tests of
    attacks on untrained networks).

    The state-dict keys equal TRADES' except that ``feature_extractor.*`` is named
    ``features.*`` here.

    Args:
        num_classes: number of output logits. Default 10.
        in_channels: input channels (1 for MNIST/Fashion-MNIST). Default 1.
        input_size: input height and width in pixels, an int or an ``(h, w)`` pair; at least
            16. Default 28.
        dropout: dropout probability after ``fc1`` (active in train mode only). Default 0.5.
        zero_init_last: zero the last layer's weight and bias as TRADES does. Default True.

    Shape:
        - Input: ``[N, in_channels, H, W]`` with ``(H, W) == input_size``.
        - Output: ``[N, num_classes]`` logits.

    Example:
        >>> model = SmallCNN(num_classes=10, in_channels=1, input_size=28)
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int | Sequence[int] = 28,
        *,
        dropout: float = 0.5,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        _check_positive_int(num_classes, "num_classes")
        _check_positive_int(in_channels, "in_channels")
        h, w = _as_hw(input_size)
        dropout = _check_dropout(dropout)
        fh, fw = _small_cnn_side(h), _small_cnn_side(w)
        if fh < 1 or fw < 1:
            raise InputError(
                f"input_size {h}x{w} is too small for SmallCNN: the conv stack needs at least "
                f"{_min_input_side(_small_cnn_side)} pixels on each side"
            )
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_size = (h, w)
        self.feature_shape = (64, fh, fw)
        flat = 64 * fh * fw

        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 32, 3)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(32, 32, 3)),
                    ("relu2", nn.ReLU()),
                    ("maxpool1", nn.MaxPool2d(2, 2)),
                    ("conv3", nn.Conv2d(32, 64, 3)),
                    ("relu3", nn.ReLU()),
                    ("conv4", nn.Conv2d(64, 64, 3)),
                    ("relu4", nn.ReLU()),
                    ("maxpool2", nn.MaxPool2d(2, 2)),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(flat, 200)),
                    ("relu1", nn.ReLU()),
                    ("drop", nn.Dropout(dropout)),
                    ("fc2", nn.Linear(200, 200)),
                    ("relu2", nn.ReLU()),
                    ("fc3", nn.Linear(200, num_classes)),
                ]
            )
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if zero_init_last:
            nn.init.zeros_(self.classifier.fc3.weight)
            nn.init.zeros_(self.classifier.fc3.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, in_channels, H, W]``."""
        feats = self.features(x)
        if tuple(feats.shape[1:]) != self.feature_shape:
            raise InputError(
                f"SmallCNN was built for {self.input_size[0]}x{self.input_size[1]} inputs, got "
                f"input shape {tuple(x.shape)}; build it with input_size=(H, W) of your data"
            )
        return self.classifier(torch.flatten(feats, 1))
