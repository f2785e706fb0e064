"""TRADES: clean cross-entropy plus a KL term at a KL-maximising perturbation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion.attacks.core import AttackResult
from bastion.attacks.pgd import check_attack_options, pgd
from bastion.losses.trades import trades_kl
from bastion.records import StepContext, StepOutput
from bastion.train.standard import batch_accuracy
from bastion.types import Norm


@dataclass(frozen=True, kw_only=True)
class TRADES:
    """TRADES adversarial training.

    Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
    Accuracy", arXiv 1901.08573. The loss of a batch is

        ``CE(f(x), y) + beta * KL(f(x) || f(x'))``,
        ``x' = argmax_{||x' - x|| <= eps} KL(f(x) || f(x'))``  (approximately, by PGD)

    with ``f`` the softmax output, the KL summed over classes and averaged over the batch
    (:func:`bastion.losses.trades.trades_loss`). As in the authors' code
    (github.com/yaodongyu/TRADES ``trades.py``): ``x'`` comes from ``steps`` signed-gradient
    steps on the KL from a Gaussian start ``x + 0.001 N(0, I)``, the model in eval mode
    during the attack with the target ``f(x)`` fixed (detached) at its eval-mode value; the
    loss is then computed in the model's own mode with gradients through both ``f(x)`` and
    ``f(x')``. One difference: the code runs ``model(x)`` twice in train mode (once for the
    CE, once for the KL), this runs it once and uses it for both (the same loss without
    dropout, one forward pass less).

    Defaults: ``beta = 6`` (the authors' CIFAR-10 recipe, ``train_trades_cifar10.py``; their
    MNIST recipe uses ``beta = 1``), ``steps = 10`` and ``step_size = eps / 4`` (their
    CIFAR-10 step is 0.007 for eps 0.031), ``init_std = 0.001``.

    Args:
        beta: weight of the KL term, >= 0 (0 gives standard training).
        eps: radius in [0, 1] pixel units.
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD steps of the inner maximisation.
        step_size: PGD step; None means ``eps / 4``.
        init_std: std of the Gaussian random start (pixel units, >= 0).
        attack_train_mode: attack with the model in train mode (default eval, restored).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> out = TRADES(eps=0.1)(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]))
        >>> sorted(out.logs)
        ['adv_acc', 'ce', 'clean_acc', 'kl']
    """

    beta: float = 6.0
    eps: float = 0.1
    norm: Norm = "linf"
    steps: int = 10
    step_size: float | None = None
    init_std: float = 0.001
    attack_train_mode: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, int | float) and math.isfinite(self.beta)
                and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta!r}")
        check_attack_options(eps=self.eps, norm=self.norm, steps=self.steps,
                             step_size=self.step_size)
        if not (math.isfinite(self.init_std) and self.init_std >= 0):
            raise ValueError(f"init_std must be a finite number >= 0, got {self.init_std!r}")

    def perturb(
        self, model: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> AttackResult:
        """TRADES' inner maximisation: PGD on ``KL(f(x) || f(x'))`` (labels unused)."""
        net = unwrap(model)
        with torch.no_grad(), model_mode(net, self.attack_train_mode):
            p_clean = F.softmax(net(x), dim=1)
        step = self.eps / 4 if self.step_size is None else self.step_size
        return pgd(
            model, x, p_clean, eps=self.eps, norm=self.norm, steps=self.steps,
            step_size=step, objective="kl", init_std=self.init_std,
            train_mode=self.attack_train_mode, generator=generator,
        )

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        attack = self.perturb(model, x, ctx.generator if ctx is not None else None)
        logits_clean = model(x)
        logits_adv = model(attack.x_adv)
        ce = F.cross_entropy(logits_clean, y)
        kl = trades_kl(logits_clean, logits_adv)
        loss = ce + self.beta * kl
        return StepOutput(loss, {
            "clean_acc": batch_accuracy(logits_clean, y),
            "adv_acc": batch_accuracy(logits_adv, y),
            "ce": ce.detach(),
            "kl": kl.detach(),
        })
