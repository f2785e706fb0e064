"""Training a 1-Lipschitz network with the hinge-Kantorovich-Rubinstein loss.

Serrurier, Mamalet, González-Sanz, Boissin, Loubes and del Barrio 2021, "Achieving robustness
in classification using optimal transport with hinge regularization" (CVPR); Béthune,
Boissin, Serrurier, Mamalet, Friedrich and González-Sanz 2022, "Pay attention to your loss:
understanding misconceptions about 1-Lipschitz neural networks" (NeurIPS, arXiv 2104.05097);
the seed's "Certified Deterministic Defenses (1)". The network's constraint (spectral
normalisation or Björck, ``models.lipschitz``) keeps it Lipschitz; the loss
(``losses.hinge_kr``) asks for a margin, which the certificate turns into a radius
(``certify.lipschitz``: margin / K_yj).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bastion.errors import InputError
from bastion.losses.hinge_kr import hinge_kr_loss
from bastion.records import StepContext, StepOutput
from bastion.train.standard import at_least_fp32, batch_accuracy


@dataclass(frozen=True, kw_only=True)
class HingeKR:
    """Hinge-KR loss on clean inputs (see the module docstring).

    Args:
        alpha: weight of the hinge term against the KR term, in [0, 1]
            (``losses.hinge_kr.hinge_kr_loss``).
        margin: the hinge margin on the logit differences (logit units; with a
            ``L``-Lipschitz network a margin ``m`` is a radius ``m / (sqrt(2) L)`` or more).
    """

    alpha: float = 0.98
    margin: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if not self.margin > 0:
            raise InputError(f"margin must be > 0, got {self.margin!r}")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 ctx: StepContext | None = None) -> StepOutput:
        logits = at_least_fp32(model(x))
        loss = hinge_kr_loss(logits, y, alpha=self.alpha, margin=self.margin)
        return StepOutput(loss, {"acc": batch_accuracy(logits, y)})
