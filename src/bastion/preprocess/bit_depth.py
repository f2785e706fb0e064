"""Colour-depth reduction, the first squeezer of feature squeezing (Xu, Evans and Qi 2018).

Xu, Evans and Qi 2018, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
Networks", NDSS 2018, arXiv 1704.01155, sec. 3.1: each pixel value ``x`` in [0, 1] becomes
``round(x * (2^bits - 1)) / (2^bits - 1)``, one of ``2^bits`` evenly spaced levels (bits=1
is binarisation at 0.5, the squeezer Xu et al. pick for MNIST). Guo, Rana, Cisse and van
der Maaten 2018, "Countering Adversarial Images using Input Transformations", ICLR 2018,
arXiv 1711.00117, use it as a baseline input transformation.

Feature squeezing proper compares the model's predictions on the original and squeezed
inputs to *detect* adversarial examples; here the squeezer is used as a pre-processing
defense (the classifier sees the squeezed image), as in Guo et al.

Gradient: rounding is piecewise constant, so the true gradient is zero almost everywhere.
The forward uses ``torch.round``, whose autograd backward is exactly zero: a plain
gradient attack gets an all-zero input gradient (the graph stays connected, so the attack
runs and ``checks.check_gradients`` reports "zero-gradients"). Attack it with BPDA and the
identity stand-in (Athalye, Carlini and Wagner 2018, arXiv 1802.00420, sec. 4.1).
"""

from __future__ import annotations

from typing import Any

import torch

from bastion._validate import check_int
from bastion.errors import InputError
from bastion.preprocess.base import Preprocessor, check_batch


class BitDepthReduction(Preprocessor):
    """Quantise every pixel to ``2^bits`` levels: ``round(x * (2^bits - 1)) / (2^bits - 1)``.

    Xu, Evans and Qi 2018, arXiv 1704.01155. Ties round half to even (``torch.round``):
    with ``bits=1``, 0.49 -> 0, 0.51 -> 1 and 0.5 -> 0.

    Args:
        bits: colour depth in bits per channel, 1..8 (8 leaves 8-bit images unchanged).
            Default 1: binarisation, the setting Xu et al. choose for MNIST (grey 28 x 28
            images like Fashion-MNIST, bastion's grey dataset); they choose 5 bits for
            CIFAR-10 and 4 bits for ImageNet.

    Shape: input and output ``[N, C, H, W]`` in [0, 1], same dtype and device. The input
    gradient from autograd is exactly zero (see the module docstring); BPDA uses the
    identity.
    """

    randomized = False
    differentiable = False
    costly = False

    def __init__(self, bits: int = 1) -> None:
        super().__init__()
        check_int(bits, "bits")
        if not 1 <= bits <= 8:
            raise InputError(f"bits must be an int in 1..8 (bits per channel), got {bits!r}")
        self.bits = int(bits)

    @property
    def levels(self) -> int:
        """The number of output values, ``2^bits``."""
        return 2 ** self.bits

    def config(self) -> dict[str, Any]:
        """The constructor keywords (JSON-serialisable): ``BitDepthReduction(**config())``."""
        return {"bits": self.bits}

    def extra_repr(self) -> str:
        return f"bits={self.bits}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch(x)
        top = float(self.levels - 1)
        return torch.round(x.clamp(0.0, 1.0) * top) / top


__all__ = ["BitDepthReduction"]
