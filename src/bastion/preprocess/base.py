"""What every pre-processing defense declares, and the defended model it makes.

A pre-processing defense is an ``nn.Module`` from images in [0, 1] to images in [0, 1]
(``[N, C, H, W]`` to the same shape) put in front of a classifier. Whether an attack sees
through it depends on two properties that each defense declares as class attributes:

- ``randomized``: two forward passes on the same input may differ (random resize/pad, TV's
  pixel-dropping mask, diffusion). An honest evaluation then averages the attack's gradient
  over draws (EOT; Athalye, Engstrom, Ilyas and Kwok 2018, arXiv 1707.07397) and judges the
  result over several fresh draws.
- ``differentiable``: autograd through the forward gives a useful gradient. When it does not
  (quantisation, JPEG, an optimisation solved by iteration), BPDA (Athalye, Carlini and
  Wagner 2018, arXiv 1802.00420) runs the forward pass of the defense and the backward pass
  of ``bpda_standin()``, a differentiable approximation (the identity by default, as
  Athalye et al. use for TV minimisation, JPEG and quantisation).

``costly`` marks a defense whose forward pass costs much more than the classifier's (TV
minimisation, diffusion purification), so evaluation can size its batches and EOT draws.
A diffusion purifier plugs in here too: randomized, costly, and free to override
``bpda_standin`` (or to be differentiable) with its own gradient options.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from bastion.errors import InputError


class Preprocessor(nn.Module):
    """Base class of the pre-processing defenses; subclasses implement ``forward``.

    Shape: input and output ``[N, C, H, W]`` floats in [0, 1] (same shape).
    """

    randomized: ClassVar[bool] = False
    differentiable: ClassVar[bool] = True
    costly: ClassVar[bool] = False

    def bpda_standin(self) -> nn.Module:
        """The differentiable module whose backward BPDA uses in place of this one's.

        The identity by default (the straight-through estimator): valid when the defense's
        output stays close to its input, ``g(x) ~ x``, as Athalye et al. argue for
        TV minimisation, JPEG and bit-depth reduction.
        """
        return nn.Identity()

    def declaration(self) -> dict[str, bool]:
        """The declared properties as a dict (what records and reports show)."""
        return {"randomized": self.randomized, "differentiable": self.differentiable,
                "costly": self.costly}


class Defended(nn.Module):
    """A classifier behind a pre-processing defense: ``model(preprocessor(x))``.

    Every entry point that takes a classifier (attacks, certification, checks, other
    toolkits through ``bastion.load_model``) runs the defense, because it is part of the
    forward pass. ``frozen_model=True`` keeps the classifier in eval mode whatever
    ``train()`` is called with (a denoiser trained in front of a fixed classifier).

    Args:
        preprocessor: the defense (a ``Preprocessor``).
        model: the classifier on [0, 1] inputs (``Normalize`` first).
        frozen_model: keep ``model`` in eval mode and its parameters without gradients.

    Shape: input ``[N, C, H, W]`` in [0, 1]; output the classifier's logits ``[N, K]``.
    """

    def __init__(self, preprocessor: Preprocessor, model: nn.Module, *,
                 frozen_model: bool = False) -> None:
        super().__init__()
        if not isinstance(preprocessor, Preprocessor):
            raise TypeError(f"preprocessor must be a bastion Preprocessor, got "
                            f"{type(preprocessor).__name__}")
        self.preprocessor = preprocessor
        self.model = model
        self.frozen_model = frozen_model
        if frozen_model:
            model.requires_grad_(False)
            model.eval()

    def train(self, mode: bool = True) -> Defended:
        super().train(mode)
        if self.frozen_model:
            self.model.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocessor(x))


def check_batch(x: torch.Tensor) -> None:
    """``InputError`` unless ``x`` is a floating-point ``[N, C, H, W]`` batch (the shape
    and dtype only: a defense's forward runs inside attack loops, so no range scan)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = (f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
               else type(x).__name__)
        raise InputError(f"x must be a floating-point [N, C, H, W] batch in [0, 1], got {got}")


def preprocessor_of(model: nn.Module) -> Preprocessor | None:
    """The defense in front of ``model`` if it is a ``Defended`` (else None)."""
    return model.preprocessor if isinstance(model, Defended) else None
