"""Sub-sampled inputs: which elements of each modality a base classifier sees.

MMCert (Wang, Fu, Zou and Jia 2024, "MMCert: Provable Defense against Adversarial Attacks
to Multi-modal Models", CVPR 2024, arXiv 2403.19080) and randomized ablation (Levine and
Feizi 2020, "Robustness Certificates for Sparse Adversarial Attacks by Randomized
Ablation", arXiv 1911.09272) classify an input from random sub-samples of its elements. This
module holds the input convention their base classifiers share, used by training
(``bastion.train.subsampling``) and certification (``bastion.certify.mmcert``):

- A multi-modal input is one NCHW tensor whose channels are grouped by modality
  (``ModalityLayout.channels``, e.g. ``(1, 1)`` for two grey-scale views of the same size);
  the elements of modality ``i`` are its ``H * W`` pixel positions, each with all of that
  modality's channels (as Levine and Feizi ablate pixels, not channel values).
- A sub-sample keeps ``k_i`` of the ``n_i = H * W`` positions of modality ``i``, uniformly
  without replacement and independently across modalities (``draw_keep_masks``).
- The base classifier sees ``ablate(x, masks)``: ``[N, C + T, H, W]``, the values with the
  dropped positions set to 0, followed by one keep-mask channel per modality (1 kept, 0
  absent), so that an absent pixel differs from a black one.

Modalities of different sizes or non-image element sets need another container; within one
tensor, modalities share ``H`` and ``W``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bastion.errors import InputError


@dataclass(frozen=True)
class ModalityLayout:
    """How the channels of an input split into modalities.

    Args:
        channels: channels of each modality, in channel order (each >= 1); their sum is the
            input's channel count C and their number is T.
        names: one distinct name per modality (default ``("m1", ..., "mT")``; ``("image",)``
            for one modality).

    Example:
        >>> ModalityLayout((1, 1)).slices
        ((0, 1), (1, 2))
    """

    channels: tuple[int, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        ch = tuple(self.channels) if isinstance(self.channels, Sequence) else ()
        if not ch or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1
                             for c in ch):
            raise InputError(f"channels must be a non-empty list of ints >= 1 (channels of "
                             f"each modality), got {self.channels!r}")
        object.__setattr__(self, "channels", ch)
        names = tuple(self.names) or (
            ("image",) if len(ch) == 1 else tuple(f"m{i + 1}" for i in range(len(ch))))
        if len(names) != len(ch) or len(set(names)) != len(names) or not all(
                isinstance(n, str) and n for n in names):
            raise InputError(f"names must be {len(ch)} distinct non-empty names (one per "
                             f"modality), got {self.names!r}")
        object.__setattr__(self, "names", names)

    @property
    def num_modalities(self) -> int:
        """T, the number of modalities."""
        return len(self.channels)

    @property
    def in_channels(self) -> int:
        """C, the channels of a complete input."""
        return sum(self.channels)

    @property
    def slices(self) -> tuple[tuple[int, int], ...]:
        """``(start, stop)`` of each modality's channels."""
        out, start = [], 0
        for c in self.channels:
            out.append((start, start + c))
            start += c
        return tuple(out)

    def per_modality(self, keep: int | Sequence[int]) -> tuple[int, ...]:
        """``keep`` with one count per modality: a single count serves every modality."""
        k = (keep,) if isinstance(keep, int) else tuple(keep)
        return k * self.num_modalities if len(k) == 1 else k

    def check_keep(self, keep: Sequence[int], hw: tuple[int, int]) -> tuple[int, ...]:
        """``keep`` as a tuple, after checking one count per modality in [1, H * W]."""
        n = hw[0] * hw[1]
        k = tuple(keep)
        if len(k) != self.num_modalities or not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= n for v in k):
            raise InputError(f"keep must give {self.num_modalities} element count(s) (one per "
                             f"modality {', '.join(self.names)}), each in [1, {n}] (the "
                             f"{hw[0]}x{hw[1]} positions), got {keep!r}")
        return k


def draw_keep_masks(
    m: int, layout: ModalityLayout, hw: tuple[int, int], keep: Sequence[int],
    generator: torch.Generator | None = None, device: torch.device | str | None = None,
) -> torch.Tensor:
    """``m`` independent sub-samples: bool ``[m, T, H, W]``, ``keep[i]`` positions of modality i.

    Each mask of modality ``i`` is a uniformly random ``keep[i]``-subset of the ``H * W``
    positions (the positions of the ``keep[i]`` largest of ``H * W`` i.i.d. uniforms),
    independent across modalities and draws; randomness from ``generator`` only.
    """
    keep = layout.check_keep(keep, hw)
    n = hw[0] * hw[1]
    masks = torch.zeros(m, layout.num_modalities, n, dtype=torch.bool, device=device)
    for i, k in enumerate(keep):
        u = torch.rand(m, n, generator=generator, device=device)
        masks[:, i].scatter_(1, u.topk(k, dim=1).indices, True)
    return masks.view(m, layout.num_modalities, *hw)


def ablate(x: torch.Tensor, masks: torch.Tensor, layout: ModalityLayout) -> torch.Tensor:
    """The base classifier's input: kept values, then one keep-mask channel per modality.

    Args:
        x: ``[C, H, W]`` (one input, broadcast over the masks) or ``[m, C, H, W]``.
        masks: bool ``[m, T, H, W]`` from ``draw_keep_masks``.
        layout: the modalities of ``x``'s channels.

    Returns:
        ``[m, C + T, H, W]`` in ``x``'s dtype: channel ``c`` of modality ``i`` is
        ``x[c] * masks[i]``, channel ``C + i`` is ``masks[i]``.
    """
    if masks.dim() != 4 or masks.shape[1] != layout.num_modalities:
        raise InputError(f"masks must have shape [m, {layout.num_modalities}, H, W], got "
                         f"{list(masks.shape)}")
    if x.shape[-3] != layout.in_channels or tuple(x.shape[-2:]) != tuple(masks.shape[2:]):
        raise InputError(f"inputs of shape {list(x.shape)} do not match {layout.in_channels} "
                         f"channel(s) and masks of {list(masks.shape[2:])} positions")
    m = masks.shape[0]
    maskf = masks.to(x.dtype)
    per_channel = torch.cat([maskf[:, i : i + 1].expand(m, c, *masks.shape[2:])
                             for i, c in enumerate(layout.channels)], dim=1)
    return torch.cat([x * per_channel, maskf], dim=1)


def random_subsamples(x: torch.Tensor, m: int, layout: ModalityLayout, keep: Sequence[int],
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``ablate(x, draw_keep_masks(m, ...))``: ``m`` independent sub-samples of ``x``
    (``[C, H, W]``, broadcast, or ``[m, C, H, W]``, one each), on ``x``'s device."""
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    return ablate(x, draw_keep_masks(m, layout, hw, keep, generator, x.device), layout)


def layout_of(model: nn.Module) -> ModalityLayout:
    """The ``ModalityLayout`` of a sub-sampling base classifier (its ``layout`` attribute).

    Raises ``InputError`` when no sub-module of ``model`` declares one (the model was not
    built for sub-sampled inputs, e.g. not ``mm-small-cnn``).
    """
    for module in model.modules():
        layout = getattr(module, "modality_layout", None)
        if isinstance(layout, ModalityLayout):
            return layout
    raise InputError("this model takes no sub-sampled inputs (no module declares a "
                     "modality_layout); build it as 'mm-small-cnn'")


__all__ = ["ModalityLayout", "ablate", "draw_keep_masks", "layout_of", "random_subsamples"]
