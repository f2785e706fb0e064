"""Random resizing and random zero padding (Xie et al. 2018).

Xie, Wang, Zhang, Ren and Yuille 2018, "Mitigating Adversarial Effects Through
Randomization", ICLR 2018, arXiv 1711.01991. The defense rescales the image to a random
size and pads it with zeros at a random offset before the classifier sees it; the paper
(ImageNet, Inception at 299 x 299) draws the size ``s`` uniformly from the integers in
[299, 331) and pads each resized image to 331 x 331 with ``a`` zero columns on the left and
``331 - s - a`` on the right (``b`` and ``331 - s - b`` rows on top and bottom), ``a, b``
uniform on ``{0, ..., 331 - s}``: ``(331 - s + 1)^2`` padding patterns for each size.
(The authors' challenge code, github.com/cihangxie/NIPS2017_adv_challenge_defense, draws
``s`` from [310, 331) instead.)

Differences from the paper, on purpose:

- **Back to the input size.** The paper feeds the 331 x 331 image to the network (Inception
  accepts it). Here the padded image is resized back to the input's ``H x W`` so that the
  classifier behind the defense keeps its input size; with ``pad_size`` close to ``H`` (the
  defaults) this final step is a mild rescale.
- **One draw per image.** Every image of a batch gets its own size and offsets, so an
  image's transformation does not depend on which batch it is in. (The authors' released
  code draws one size and one offset for a whole batch.)
- **Interpolation.** ``mode="nearest"`` (the default) is what the authors' code uses
  (TensorFlow 1's ``NEAREST_NEIGHBOR`` resize, which picks source pixel ``floor(i * in /
  out)``, as torch's ``"nearest"`` does); ``mode="bilinear"`` (``align_corners=False``, no
  anti-aliasing) is smooth in the input. Both resizes, and the zero padding, are linear in
  the input for fixed draws, so autograd gives the exact gradient of the sampled
  transformation (``differentiable = True``); an attack still needs EOT over the draws.

Default options for 28 x 28 Fashion-MNIST keep the paper's ratio: 331 / 299 = 1.107 and
28 * 1.107 = 31.0, so sizes in [28, 31) (28, 29 or 30 pixels) padded to 31 x 31 -- as in
the paper, the original size is the smallest draw and at least one row and one column of
padding is always added. Options are in pixels, whatever the input size; the ImageNet
setting of the paper is ``RandomResizePad(299, 331, 331)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from bastion._validate import check_choice, check_int
from bastion.errors import InputError
from bastion.preprocess.base import Preprocessor, check_batch

MODES = ("bilinear", "nearest")


class ResizePadDraw(NamedTuple):
    """One random draw per image: int64 tensors of shape [N] on the input's device.

    ``sizes``: side ``s`` of the resized square image (pixels); ``tops`` and ``lefts``: the
    zero rows above and zero columns left of it in the ``pad_size`` square (pixels).
    """

    sizes: torch.Tensor
    tops: torch.Tensor
    lefts: torch.Tensor


class RandomResizePad(Preprocessor):
    """Random resize to ``s x s``, random zero padding to ``pad_size``, resize back to H x W.

    Xie, Wang, Zhang, Ren and Yuille 2018, arXiv 1711.01991 (see the module docstring for
    the two deliberate differences: the output is resized back to the input size, and each
    image gets its own draw).

    Args:
        min_size: smallest resized side ``s`` in pixels (>= 1).
        max_size: ``s`` is drawn uniformly from the integers ``min_size <= s < max_size``;
            ``max_size == min_size`` fixes ``s = min_size``.
        pad_size: side of the zero-padded square in pixels (>= the largest ``s``).
        mode: interpolation of both resizes, ``"nearest"`` (the authors' code) or
            ``"bilinear"``.

    Attributes:
        generator: the ``torch.Generator`` the draws come from (None: torch's global RNG of
            the input's device). Set it to make the draws reproducible; the draws are made
            on the generator's device and moved to the input's.

    Shape: input and output ``[N, C, H, W]`` in [0, 1], same dtype and device.
    """

    randomized = True
    differentiable = True
    costly = False

    def __init__(self, min_size: int = 28, max_size: int = 31, pad_size: int = 31,
                 mode: str = "nearest") -> None:
        super().__init__()
        check_int(min_size, "min_size", low=1)
        check_int(max_size, "max_size", low=1)
        check_int(pad_size, "pad_size", low=1)
        if max_size < min_size:
            raise InputError(f"max_size must be >= min_size={min_size} (sizes are drawn from "
                             f"[min_size, max_size)), got {max_size}")
        largest = max(min_size, max_size - 1)
        if pad_size < largest:
            raise InputError(f"pad_size must be >= the largest resized size {largest} "
                             f"(min_size={min_size}, max_size={max_size}), got {pad_size}")
        if not isinstance(mode, str):
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        check_choice(mode, MODES, "mode")
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.pad_size = int(pad_size)
        self.mode = mode
        self.generator: torch.Generator | None = None

    def config(self) -> dict[str, Any]:
        """The constructor keywords (JSON-serialisable): ``RandomResizePad(**config())``."""
        return {"min_size": self.min_size, "max_size": self.max_size,
                "pad_size": self.pad_size, "mode": self.mode}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())

    def draw(self, n: int, device: torch.device | str = "cpu") -> ResizePadDraw:
        """``n`` independent draws (size, top, left) from ``self.generator``, on ``device``.

        Always consumes the same random numbers for a given ``n`` (sizes, then tops, then
        lefts), whatever the options.
        """
        gen = self.generator
        where = gen.device if gen is not None else torch.device(device)
        if self.max_size > self.min_size:
            sizes = torch.randint(self.min_size, self.max_size, (n,), generator=gen,
                                  device=where)
        else:
            sizes = torch.full((n,), self.min_size, dtype=torch.int64, device=where)
        room = self.pad_size - sizes  # offsets are uniform on {0, ..., room}
        u = torch.rand(2, n, generator=gen, device=where, dtype=torch.float64)
        offsets = torch.minimum((u * (room + 1)).floor().long(), room)
        return ResizePadDraw(sizes.to(device), offsets[0].to(device), offsets[1].to(device))

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.mode == "bilinear":
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=size, mode="nearest")

    def transform(self, x: torch.Tensor, d: ResizePadDraw) -> torch.Tensor:
        """The deterministic transformation of ``x`` [N, C, H, W] for the draws ``d``.

        One interpolation call per distinct size in the batch (at most
        ``max_size - min_size`` of them), one for the resize back to H x W.
        """
        check_batch(x)
        n, c, h, w = x.shape
        if d.sizes.shape != (n,):
            raise InputError(f"the draw has {tuple(d.sizes.shape)} sizes for a batch of {n}")
        p = self.pad_size
        canvas = x.new_zeros(n, c, p, p)
        sizes = d.sizes.to(x.device)
        tops, lefts = d.tops.to(x.device), d.lefts.to(x.device)
        channels = torch.arange(c, device=x.device)[None, :, None, None]
        for s in torch.unique(sizes).tolist():
            idx = (sizes == s).nonzero().squeeze(1)
            resized = self._resize(x.index_select(0, idx), (s, s))
            span = torch.arange(s, device=x.device)
            rows = (tops[idx, None] + span)[:, None, :, None]
            cols = (lefts[idx, None] + span)[:, None, None, :]
            canvas = canvas.index_put((idx[:, None, None, None], channels, rows, cols), resized)
        # Interpolation is a convex combination, so the output is in [0, 1] up to rounding.
        return self._resize(canvas, (h, w)).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch(x)
        return self.transform(x, self.draw(x.shape[0], x.device))


__all__ = ["MODES", "RandomResizePad", "ResizePadDraw"]
