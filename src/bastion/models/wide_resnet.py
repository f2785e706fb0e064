"""Wide residual networks (WRN-depth-k), e.g. WRN-34-10, the common adversarial-training model."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bastion.errors import InputError
from bastion.models.normalize import _check_dropout, _check_positive_int


class WideBasicBlock(nn.Module):
    """Pre-activation wide basic block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus shortcut.

    When the width changes, the input is pre-activated once and feeds both the residual branch
    and the 1x1 projection shortcut (``convShortcut``), as in the reference implementation.

    Args:
        in_planes: input channels.
        out_planes: output channels.
        stride: stride of the first convolution (and of the shortcut).
        dropout: dropout probability between the two convolutions (train mode only).

    Shape:
        - Input: ``[N, in_planes, H, W]``.
        - Output: ``[N, out_planes, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(
                in_planes, out_planes, 1, stride=stride, padding=0, bias=False
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class _NetworkBlock(nn.Module):
    """A stage of ``num_layers`` wide basic blocks (kept as a module so that the state-dict keys
    read ``block1.layer.0.conv1.weight`` as in the reference implementation)."""

    def __init__(
        self, num_layers: int, in_planes: int, out_planes: int, stride: int, dropout: float
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    dropout,
                )
                for i in range(num_layers)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """Wide residual network WRN-``depth``-``widen_factor``.

    Paper: Zagoruyko & Komodakis, "Wide Residual Networks", arXiv:1605.07146. WRN-34-10 is the
    model of Madry et al. (arXiv:1706.06083) and TRADES (arXiv:1901.08573) on CIFAR-10. The
    layout, initialisation and state-dict keys follow the implementation used by TRADES and
    Rice et al. (``conv1``, ``block1..block3``, ``bn1``, ``fc``; TRADES' unused ``sub_block1``
    is left out, so load its checkpoints with that prefix dropped)::

        conv1 3x3 (in -> 16) -> block1 (n blocks, 16k) -> block2 (n blocks, 32k, stride 2)
        -> block3 (n blocks, 64k, stride 2) -> BN-ReLU -> global average pool -> fc (64k -> classes)

    with ``n = (depth - 4) / 6`` and ``k = widen_factor``. The average pool is adaptive (equal
    to the reference 8x8 pool on 32x32 inputs), so any input size works.

    Initialisation: conv weights normal with std ``sqrt(2 / (k*k*out_channels))`` (fan-out),
    BN weight 1 and bias 0, linear bias 0.

    Args:
        num_classes: number of output logits. Default 10.
        in_channels: input channels. Default 3.
        depth: total depth, of the form ``6n + 4`` with ``n >= 1`` (10, 16, 22, 28, 34, ...).
            Default 34.
        widen_factor: width multiplier ``k`` (an int >= 1). Default 10.
        dropout: dropout probability inside each block (train mode only). Default 0.0.

    Shape:
        - Input: ``[N, in_channels, H, W]``, any ``H, W >= 1``.
        - Output: ``[N, num_classes]`` logits.

    Example:
        >>> model = WideResNet(num_classes=10, in_channels=3, depth=10, widen_factor=1)
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        depth: int = 34,
        widen_factor: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_positive_int(num_classes, "num_classes")
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(widen_factor, "widen_factor")
        dropout = _check_dropout(dropout)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise InputError(
                f"WideResNet depth must be an int of the form 6n + 4 with n >= 1 "
                f"(10, 16, 22, 28, 34, 40, ...), got {depth!r}"
            )
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.depth = depth
        self.widen_factor = widen_factor

        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _NetworkBlock(n, channels[0], channels[1], 1, dropout)
        self.block2 = _NetworkBlock(n, channels[1], channels[2], 2, dropout)
        self.block3 = _NetworkBlock(n, channels[2], channels[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, in_channels, H, W]``."""
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return self.fc(torch.flatten(self.pool(out), 1))
