"""The denoiser of the high-level representation guided denoiser (HGD) defense.

Liao, Liang, Dong, Pang, Hu and Zhu 2018, "Defense against Adversarial Attacks Using
High-Level Representation Guided Denoiser", CVPR, arXiv 1712.02976. Their denoiser, DUNET,
is a U-Net (Ronneberger et al. 2015, arXiv 1505.04597) that predicts the adversarial noise
``d(x)`` rather than the clean image: an encoder of conv blocks that halve the resolution,
a decoder that upsamples bilinearly, concatenates the encoder's feature map of the same
resolution (the lateral connection) and convolves, and a final 1x1 convolution to the image
channels; the denoised image is ``x - d(x)``. The paper sizes it for 299x299 ImageNet
(five encoder levels, 64 to 256 channels); ``GuidedDenoiser`` is the same design sized for
28x28 and 32x32 images (``depth`` levels, ``width * 2**i`` channels at level ``i``).

What makes HGD a *guided* denoiser is its training loss (``bastion.train.hgd.HGD``): the
classifier's logits or features, not the pixels, of the denoised image are pulled to those
of the clean image.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bastion._validate import check_choice, check_int
from bastion.errors import InputError, InputTypeError
from bastion.preprocess.base import Preprocessor

ClampGradient = Literal["straight-through", "exact"]
CLAMP_GRADIENTS: tuple[str, ...] = ("straight-through", "exact")
"""How the gradient passes the final clamp to [0, 1] (see ``GuidedDenoiser``)."""

MAX_DEPTH = 6


def _conv_block(c_in: int, c_out: int, *, stride: int, batch_norm: bool) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by BatchNorm (optional) and ReLU; the first one
    has ``stride`` (2 halves the resolution, as DUNET's down-sampling blocks do)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(((c_in, c_out), (c_out, c_out))):
        layers.append(nn.Conv2d(a, b, 3, stride=stride if i == 0 else 1, padding=1,
                                bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(b))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _straight_through_clamp(y: torch.Tensor) -> torch.Tensor:
    """``clamp(y, 0, 1)`` in the forward pass, the identity in the backward pass.

    Written as ``clamp(y).detach() + (y - y.detach())``: the second term is exactly 0 in the
    forward pass, so the output is exactly the clamped value (in [0, 1]), and its gradient
    with respect to ``y`` is 1 everywhere.
    """
    return y.clamp(0.0, 1.0).detach() + (y - y.detach())


class GuidedDenoiser(Preprocessor):
    """DUNET-style denoiser: ``D(x) = clamp(x - d(x), 0, 1)`` with ``d`` a small U-Net.

    Liao et al. 2018 (HGD), arXiv 1712.02976, the pixel guided denoiser DUNET. ``d`` is

    - encoder level 0: a block of two 3x3 conv (+ BatchNorm) + ReLU layers,
      ``in_channels -> width``, at full resolution;
    - encoder level ``i = 1 .. depth``: the same block, ``width * 2**(i-1) -> width * 2**i``
      channels, whose first convolution has stride 2 (half the resolution);
    - decoder level ``i = depth-1 .. 0``: bilinear 2x upsampling of the level below,
      concatenated with encoder level ``i`` (the lateral connection), then a block to
      ``width * 2**i`` channels;
    - a 1x1 convolution ``width -> in_channels``, the predicted perturbation ``d(x)`` in
      pixel units.

    Odd sizes: the input is padded (replicating its border pixels, split evenly between
    the two sides) to a multiple of ``2**depth`` in each dimension, and ``d(x)`` is
    cropped back to ``H x W``; 28x28 with ``depth=2`` needs no padding, 32x32 none up to
    ``depth=5``.

    Initialisation: PyTorch's defaults, except that the final 1x1 convolution's weight
    and bias are zero, so ``d(x) = 0`` and an untrained denoiser is exactly the identity
    (``D(x) = x`` bit for bit for ``x`` in [0, 1]). Training (``train.hgd.HGD``) thus
    starts from the undefended classifier and only moves away from it as far as the loss
    asks; the other layers still receive gradients because the final weight's gradient
    is non-zero.

    Clamp: ``x - d(x)`` is clamped to [0, 1]. With ``clamp_gradient="straight-through"``
    (the default) the backward pass treats the clamp as the identity, so a pixel pushed
    out of range still passes its gradient (to the denoiser in training, which can pull
    it back, and to an attacker: the gradient of the unclamped output, BPDA's identity
    approximation applied to the clamp alone). ``"exact"`` is ``torch.clamp``'s own
    gradient (0 for a pixel outside [0, 1]).

    Declared properties: deterministic (``randomized = False``; in eval mode BatchNorm
    uses its running statistics), ``differentiable = True`` (attacks differentiate
    through it), ``costly = False`` (a few classifier forward passes' worth of compute).

    Args:
        in_channels: image channels C (1 for (Fashion-)MNIST, 3 for CIFAR-10). Default 1.
        width: channels of the first level (the paper's DUNET starts at 64); level ``i``
            has ``width * 2**i``. Default 32.
        depth: number of stride-2 down-sampling levels, 1 to 6. Default 2 (28 -> 14 -> 7).
        batch_norm: BatchNorm after each 3x3 convolution, as DUNET's conv units. Default
            True.
        clamp_gradient: ``"straight-through"`` or ``"exact"`` (see above).

    Shape:
        - Input: ``[N, in_channels, H, W]`` in [0, 1], any ``H, W >= 1``.
        - Output: ``[N, in_channels, H, W]`` in [0, 1], the input's dtype.

    Example:
        >>> den = GuidedDenoiser(in_channels=1, width=8, depth=2)
        >>> x = torch.rand(2, 1, 28, 28)
        >>> torch.equal(den(x), x)  # untrained: the identity
        True
    """

    randomized: ClassVar[bool] = False
    differentiable: ClassVar[bool] = True
    costly: ClassVar[bool] = False
    contract_kwargs: ClassVar[dict[str, Any]] = {"in_channels": 1, "width": 8, "depth": 2}
    """Small options that build a working denoiser for the contract tests' 8x8 images."""

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 32,
        depth: int = 2,
        *,
        batch_norm: bool = True,
        clamp_gradient: ClampGradient = "straight-through",
    ) -> None:
        super().__init__()
        check_int(in_channels, "in_channels", low=1)
        check_int(width, "width", low=1)
        check_int(depth, "depth", low=1)
        if depth > MAX_DEPTH:
            raise InputError(f"depth must be an int in [1, {MAX_DEPTH}], got {depth}")
        if not isinstance(batch_norm, bool):
            raise InputTypeError(f"batch_norm must be true or false, got {batch_norm!r}")
        check_choice(clamp_gradient, CLAMP_GRADIENTS, "clamp_gradient")
        self.in_channels = int(in_channels)
        self.width = int(width)
        self.depth = int(depth)
        self.batch_norm = batch_norm
        self.clamp_gradient = clamp_gradient

        chans = [self.width * 2**i for i in range(self.depth + 1)]
        self.encoder = nn.ModuleList(
            [_conv_block(self.in_channels, chans[0], stride=1, batch_norm=batch_norm)]
            + [_conv_block(chans[i - 1], chans[i], stride=2, batch_norm=batch_norm)
               for i in range(1, self.depth + 1)]
        )
        # decoder[i] makes level i from (upsampled level i+1, encoder level i)
        self.decoder = nn.ModuleList(
            [_conv_block(chans[i + 1] + chans[i], chans[i], stride=1, batch_norm=batch_norm)
             for i in range(self.depth)]
        )
        self.head = nn.Conv2d(chans[0], self.in_channels, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def config(self) -> dict[str, Any]:
        """The constructor keywords (JSON-serialisable, what a run config's
        ``preprocess.options`` holds): ``GuidedDenoiser(**d.config())``."""
        return {"in_channels": self.in_channels, "width": self.width, "depth": self.depth,
                "batch_norm": self.batch_norm, "clamp_gradient": self.clamp_gradient}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    def _padding(self, h: int, w: int) -> tuple[int, int, int, int]:
        """``(left, right, top, bottom)`` that bring ``h x w`` to multiples of 2**depth."""
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2

    def perturbation(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted adversarial perturbation ``d(x)``, ``[N, C, H, W]`` pixel units."""
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(
                f"GuidedDenoiser(in_channels={self.in_channels}) takes images "
                f"[N, {self.in_channels}, H, W], got shape {tuple(x.shape)}; build it with "
                "in_channels equal to your images' channels"
            )
        h, w = x.shape[-2:]
        pad = self._padding(h, w)
        z = F.pad(x, pad, mode="replicate") if any(pad) else x
        skips: list[torch.Tensor] = []
        for block in self.encoder:
            z = block(z)
            skips.append(z)
        z = skips.pop()
        for i in reversed(range(self.depth)):
            lateral = skips[i]
            up = F.interpolate(z, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            z = self.decoder[i](torch.cat([up, lateral.to(up.dtype)], dim=1))
        d = self.head(z)
        left, right, top, bottom = pad
        return d[..., top : top + h, left : left + w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The denoised images ``clamp(x - d(x), 0, 1)``, ``[N, C, H, W]``, dtype of ``x``."""
        y = x - self.perturbation(x).to(x.dtype)
        if self.clamp_gradient == "exact":
            return y.clamp(0.0, 1.0)
        return _straight_through_clamp(y)


__all__ = ["CLAMP_GRADIENTS", "GuidedDenoiser"]
