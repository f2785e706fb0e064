"""Gaussian data augmentation, the base-classifier training of randomized smoothing."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bastion.train.standard import batch_accuracy
from bastion.types import StepContext, StepOutput


@dataclass(frozen=True, kw_only=True)
class GaussianNoise:
    """Cross-entropy on noisy inputs ``x + N(0, sigma^2 I)``.

    Cohen et al. 2019, "Certified Adversarial Robustness via Randomized Smoothing",
    arXiv 1902.02918: the base classifier of a smoothed classifier is trained with the noise
    level it will be certified at. The noisy input is not clipped to [0, 1] (as in the
    paper's code), because the smoothed classifier sees unclipped noise too.

    Args:
        sigma: noise standard deviation in [0, 1] pixel units (> 0).
    """

    sigma: float = 0.25

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        gen = ctx.generator if ctx is not None else None
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        logits = model(x + self.sigma * noise)
        return StepOutput(F.cross_entropy(logits, y), {"acc": batch_accuracy(logits, y)})
