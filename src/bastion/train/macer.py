"""MACER: attack-free robust training by maximising the smoothed classifier's certified radius."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bastion.errors import InputError
from bastion.losses.macer import macer_loss
from bastion.records import StepContext, StepOutput
from bastion.train.standard import at_least_fp32


@dataclass(frozen=True, kw_only=True)
class MACER:
    """MACER's per-batch objective on ``k`` Gaussian copies of each input.

    Zhai et al. 2020, "MACER: Attack-free and Scalable Robust Training via Maximizing
    Certified Radius", arXiv 2001.02378, Algorithm 1 (the loss is ``losses.macer``):
    ``L = mean_batch[-log G1(x)_y] + lam * sum_{correct, xi <= gamma} sigma/2 (gamma - xi) / B``
    with ``G_beta(x) = mean_i softmax(beta f(x + eta_i))``, ``eta_i ~ N(0, sigma^2 I)`` and
    ``xi = Phi^-1(G_beta(x)_y) - Phi^-1(max_{j != y} G_beta(x)_j)``. Noisy inputs are not
    clipped to [0, 1] (as in the paper's code and in certification).

    Defaults are the paper's CIFAR-10 settings at sigma 0.25 and 0.5, also the defaults of
    the official code (github.com/RuntianZ/macer ``main.py``): ``k = 16``, ``lam = 12``,
    ``gamma = 8``, ``beta = 16``. The paper uses ``lam = 4`` at sigma 1.0; its MNIST and
    ImageNet settings differ (ImageNet: ``k = 2``); check the paper's appendix before
    changing them.

    Args:
        sigma: Gaussian noise level in [0, 1] pixel units, the one to certify at (> 0).
        num_noise: noise draws ``k`` per input (the forward batch is ``k`` times larger).
        lam: weight of the radius hinge term (>= 0; 0 gives soft-smoothed Gaussian training).
        gamma: hinge threshold on ``xi`` (> 0).
        beta: inverse temperature of the soft smoothed classifier in the hinge (> 0).
    """

    sigma: float = 0.25
    num_noise: int = 16
    lam: float = 12.0
    gamma: float = 8.0
    beta: float = 16.0

    def __post_init__(self) -> None:
        for name in ("sigma", "gamma", "beta"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.lam >= 0:
            raise InputError(f"lam must be >= 0, got {self.lam}")
        if not isinstance(self.num_noise, int) or self.num_noise < 1:
            raise InputError(f"num_noise must be an int >= 1, got {self.num_noise!r}")

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        gen = ctx.generator if ctx is not None else None
        b, k = x.shape[0], self.num_noise
        noise = torch.randn((b, k, *x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype)
        noisy = (x.unsqueeze(1) + self.sigma * noise).flatten(0, 1)  # input-major [B*k, ...]
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        # an fp32 loss under bf16 autocast too (Phi^-1 has no bf16 kernel)
        logits = at_least_fp32(model(noisy))
        terms = macer_loss(
            logits.view(b, k, -1), y, sigma=self.sigma, lam=self.lam, gamma=self.gamma,
            beta=self.beta,
        )
        logs = {
            "acc": terms.accuracy,
            "ce": terms.classification.detach(),
            "radius_loss": terms.robustness.detach(),
            "hinge_frac": terms.active.float().mean(),
        }
        return StepOutput(terms.loss, logs)
