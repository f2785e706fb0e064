"""A base classifier for sub-sampled multi-modal inputs: one small-cnn encoder per modality.

The base model of MMCert (Wang, Fu, Zou and Jia 2024, arXiv 2403.19080) sees each modality
with part of its elements absent. ``MultiModalCNN`` reads the input convention of
``bastion.models.ablation``: ``[N, C + T, H, W]``, the values of the T modalities (channel
groups ``layout.channels``) followed by one keep-mask channel per modality. Modality ``i`` is
encoded by a small-cnn (Zhang et al. 2019, TRADES, arXiv 1901.08573) on its values and its
mask; the encodings are concatenated and a linear layer gives the logits (late fusion). With
one modality it is the small-cnn itself with the mask as an extra input channel, the base
classifier of randomized ablation (Levine and Feizi 2020, arXiv 1911.09272).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bastion.errors import InputError
from bastion.models.ablation import ModalityLayout
from bastion.models.normalize import _as_hw, _check_positive_int
from bastion.models.small_cnn import SmallCNN


class MultiModalCNN(nn.Module):
    """Late fusion of per-modality small-cnn encoders over sub-sampled inputs.

    Args:
        num_classes: number of output logits. Default 10.
        in_channels: C, the channels of a complete input (the sum of ``channels``).
        input_size: ``(H, W)`` (or one int) of every modality. Default 28.
        channels: channels of each modality in order (default: one modality with all
            ``in_channels``).
        names: the modalities' names (default ``ModalityLayout``'s).
        embedding: width of each modality's encoding (the small-cnn's output). Default 200.
        dropout: the small-cnn's dropout. Default 0.5.
        zero_init_last: with one modality, zero the small-cnn's last layer as TRADES does
            (``SmallCNN``'s default, True); with several, the fusion layer keeps PyTorch's
            default initialisation either way.

    Attributes:
        modality_layout: the ``ModalityLayout`` (read by ``ablation.layout_of``).

    Shape:
        - Input: ``[N, C + T, H, W]`` (values, then keep masks); ``build`` puts a
          ``Normalize(mask_channels=T)`` in front, which also accepts a complete
          ``[N, C, H, W]`` input (all masks 1).
        - Output: ``[N, num_classes]`` logits.

    Example:
        >>> net = MultiModalCNN(10, in_channels=2, channels=(1, 1))
        >>> net(torch.rand(3, 4, 28, 28)).shape
        torch.Size([3, 10])
    """

    takes_keep_masks = True
    """``build`` reads this: put a Normalize with T mask channels in front."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int | Sequence[int] = 28,
        *,
        channels: Sequence[int] | None = None,
        names: Sequence[str] = (),
        embedding: int = 200,
        dropout: float = 0.5,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        _check_positive_int(num_classes, "num_classes")
        _check_positive_int(embedding, "embedding")
        layout = ModalityLayout(tuple(channels) if channels is not None else (in_channels,),
                                tuple(names))
        if layout.in_channels != in_channels:
            raise InputError(f"the modalities' channels {list(layout.channels)} add up to "
                             f"{layout.in_channels}, but the input has {in_channels}")
        self.modality_layout = layout
        self.input_size = _as_hw(input_size)
        t = layout.num_modalities
        if t == 1:
            self.encoders = nn.ModuleList([SmallCNN(num_classes, in_channels + 1, input_size,
                                                    dropout=dropout,
                                                    zero_init_last=zero_init_last)])
            self.head: nn.Module = nn.Identity()
        else:
            self.encoders = nn.ModuleList([
                SmallCNN(embedding, c + 1, input_size, dropout=dropout, zero_init_last=False)
                for c in layout.channels
            ])
            self.head = nn.Sequential(nn.ReLU(), nn.Linear(t * embedding, num_classes))

    @property
    def num_modalities(self) -> int:
        return self.modality_layout.num_modalities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = self.modality_layout
        c, t = layout.in_channels, layout.num_modalities
        if x.dim() != 4 or x.shape[1] != c + t:
            raise InputError(f"the model expects [N, {c + t}, H, W] (values and keep masks), "
                             f"got {list(x.shape)}")
        if t == 1:
            return self.encoders[0](x)
        parts = [enc(torch.cat([x[:, a:b], x[:, c + i : c + i + 1]], dim=1))
                 for i, (enc, (a, b)) in enumerate(zip(self.encoders, layout.slices,
                                                       strict=True))]
        return self.head(torch.cat(parts, dim=1))


__all__ = ["MultiModalCNN"]
