"""Pre-activation ResNet-18, the CIFAR adversarial-training baseline of Rice et al."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bastion.models.normalize import _check_positive_int


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut.

    The 1x1 projection shortcut (present when the stride or the width changes) is applied to
    the pre-activated input, as in the reference implementation.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution. Default 1.

    Shape:
        - Input: ``[N, in_planes, H, W]``.
        - Output: ``[N, planes, ceil(H / stride), ceil(W / stride)]``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 with a CIFAR-style stem (3x3 conv, no max pooling).

    Papers: He et al., "Identity Mappings in Deep Residual Networks", arXiv:1603.05027; used as
    the adversarial-training model of Rice et al., "Overfitting in adversarially robust deep
    learning", arXiv:2002.11569. State-dict keys follow Rice et al.'s code (``conv1``,
    ``layer1..layer4``, ``bn``, ``linear``), so their checkpoints load. The final average pool
    is adaptive (equal to their 4x4 pool on 32x32 inputs), so any input of at least 1x1 works,
    e.g. 28x28 Fashion-MNIST.

    Layout: conv1 3x3 (in -> w) -> layer1 (2 blocks, w) -> layer2 (2 blocks, 2w, stride 2) ->
    layer3 (2 blocks, 4w, stride 2) -> layer4 (2 blocks, 8w, stride 2) -> BN-ReLU ->
    global average pool -> linear (8w -> classes), with ``w = width``.

    Args:
        num_classes: number of output logits. Default 10.
        in_channels: input channels. Default 3.
        width: channels of the stem and of ``layer1`` (64 in the paper; smaller values give a
            cheaper network of the same shape for tests). Default 64.

    Shape:
        - Input: ``[N, in_channels, H, W]``, any ``H, W >= 1``.
        - Output: ``[N, num_classes]`` logits.

    Example:
        >>> model = PreActResNet18(num_classes=10, in_channels=3, width=8)
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, *, width: int = 64) -> None:
        super().__init__()
        _check_positive_int(num_classes, "num_classes")
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(width, "width")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self._in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(width, 2, stride=1)
        self.layer2 = self._make_layer(2 * width, 2, stride=2)
        self.layer3 = self._make_layer(4 * width, 2, stride=2)
        self.layer4 = self._make_layer(8 * width, 2, stride=2)
        self.bn = nn.BatchNorm2d(8 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(8 * width, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (num_blocks - 1):
            blocks.append(PreActBlock(self._in_planes, planes, s))
            self._in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, in_channels, H, W]``."""
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return self.linear(torch.flatten(self.pool(out), 1))
