"""JPEG compression as an input transformation.

Dziugaite, Ghahramani and Roy 2016, "A study of the effect of JPG compression on adversarial
images", arXiv 1608.00853, observed that JPEG compression undoes part of small adversarial
perturbations; Guo, Rana, Cisse and van der Maaten 2018, "Countering Adversarial Images
using Input Transformations", ICLR 2018, arXiv 1711.00117, evaluate it as a defense at
quality 75. Athalye, Carlini and Wagner 2018 (arXiv 1802.00420, sec. 4.1 and 5) break it
with BPDA and the identity stand-in, which is this class's ``bpda_standin``.

Each image is rounded to 8 bits (``round(255 x)``), encoded and decoded by torchvision's
libjpeg codec (``torchvision.io.encode_jpeg`` / ``decode_jpeg``) on the CPU, and divided
by 255. Colour images get libjpeg's default 4:2:0 chroma subsampling (colour averaged over
2 x 2 pixels) at every quality, so even quality 100 blurs colour detail; grey images at
quality 100 stay within a few 1/255 steps of the input. The codec always runs
on the CPU, whatever the input's device, so results do not depend on the device (a GPU
input is copied to the CPU and the result back).

Gradient: the codec is outside autograd. The output is ``y + 0 * x`` with ``y`` the
decoded image: the graph stays connected to the input and autograd gives an input
gradient of exactly zero, so a plain gradient attack runs (and fails, as it would against
the real defense) and ``checks.check_gradients`` reports "zero-gradients".
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torchvision.io import decode_jpeg, encode_jpeg

from bastion._validate import check_int
from bastion.errors import InputError
from bastion.preprocess.base import Preprocessor, check_batch

CHANNELS = (1, 3)


class JPEGCompression(Preprocessor):
    """JPEG-compress every image at ``quality`` and decode it (libjpeg via torchvision).

    Guo, Rana, Cisse and van der Maaten 2018, arXiv 1711.00117; Dziugaite, Ghahramani and
    Roy 2016, arXiv 1608.00853.

    Args:
        quality: JPEG quality, 1..100 (100: least loss). Default 75, Guo et al.'s setting
            (and the one Athalye et al. attack).

    Shape: input and output ``[N, C, H, W]`` in [0, 1] with ``C`` 1 (grey) or 3 (RGB),
    same dtype and device; values are multiples of 1/255. The input gradient from autograd
    is exactly zero; BPDA uses the identity.
    """

    randomized = False
    differentiable = False
    costly = False

    def __init__(self, quality: int = 75) -> None:
        super().__init__()
        check_int(quality, "quality")
        if not 1 <= quality <= 100:
            raise InputError(f"quality must be an int in 1..100 (JPEG quality), got "
                             f"{quality!r}")
        self.quality = int(quality)

    def config(self) -> dict[str, Any]:
        """The constructor keywords (JSON-serialisable): ``JPEGCompression(**config())``."""
        return {"quality": self.quality}

    def extra_repr(self) -> str:
        return f"quality={self.quality}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch(x)
        if x.shape[1] not in CHANNELS:
            raise InputError(f"JPEG compression needs 1 (grey) or 3 (RGB) channels, got "
                             f"{x.shape[1]} (input shape {tuple(x.shape)})")
        if x.shape[0] == 0:
            return x.clone()
        pixels = (x.detach().clamp(0.0, 1.0) * 255.0).round().to("cpu", torch.uint8)
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its codecs for torchcodec, which has no wheel
            # here; the libjpeg calls are unchanged, so the notice on every batch is noise
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    message=".*TorchVision are deprecated")
            decoded = decode_jpeg(encode_jpeg(list(pixels.unbind(0)), quality=self.quality))
        y = torch.stack(decoded).to(device=x.device, dtype=x.dtype) / 255.0
        return y + 0.0 * x


__all__ = ["CHANNELS", "JPEGCompression"]
