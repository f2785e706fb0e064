"""Noise data augmentation, the base-classifier training of randomized smoothing."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bastion._validate import check_choice
from bastion.errors import InputError
from bastion.noise import NOISES, NoiseName, from_std
from bastion.records import StepContext, StepOutput
from bastion.train.standard import batch_accuracy


@dataclass(frozen=True, kw_only=True)
class NoiseAugmentation:
    """Cross-entropy on noisy inputs ``x + eta``, ``eta`` from the smoothing noise.

    Cohen et al. 2019, "Certified Adversarial Robustness via Randomized Smoothing",
    arXiv 1902.02918 (Gaussian), and Yang et al. 2020, "Randomized Smoothing of All Shapes
    and Sizes", arXiv 2002.08118 (Laplace, uniform): the base classifier of a smoothed
    classifier is trained with the noise it will be certified with. The noisy input is
    not clipped to [0, 1] (as in the papers' code), because the smoothed classifier sees
    unclipped noise too.

    Args:
        sigma: per-pixel standard deviation of the noise, in [0, 1] pixel units (> 0);
            for Laplace and uniform noise the scale follows ``certify.noise.from_std``.
        noise: ``"gaussian"`` (l2 certificates), ``"laplace"`` or ``"uniform"`` (l1).
    """

    sigma: float = 0.25
    noise: NoiseName = "gaussian"

    def __post_init__(self) -> None:
        check_choice(self.noise, NOISES, "noise")
        if not self.sigma > 0:
            raise InputError(f"sigma must be > 0, got {self.sigma}")

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        gen = ctx.generator if ctx is not None else None
        eta = from_std(self.noise, self.sigma).sample(x.shape, gen, x.device, x.dtype)
        logits = model(x + eta)
        return StepOutput(F.cross_entropy(logits, y), {"acc": batch_accuracy(logits, y)})


GaussianNoise = NoiseAugmentation
"""Gaussian data augmentation: ``NoiseAugmentation`` with its default ``noise="gaussian"``."""
