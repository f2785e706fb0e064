"""TRADES: clean cross-entropy plus a KL term at a KL-maximising perturbation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion.attacks.core import AttackResult
from bastion.attacks.threat import ThreatModel, init_threat
from bastion.errors import InputError
from bastion.losses.trades import trades_kl
from bastion.records import StepContext, StepOutput
from bastion.train.standard import batch_accuracy


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
        threat: the inner maximisation (``ThreatModel``; a mapping overrides the
            default's keys): radius ``eps`` in [0, 1] pixel units (default 0.1), ``norm``,
            ``steps`` (10), ``step_size`` (None means ``eps / 4``), ``random_init`` (True:
            the Gaussian start of ``init_std``; False: start at ``x``) and ``train_mode``
            (False: eval mode during the attack and for the target ``f(x)``, restored).
        init_std: std of the Gaussian random start (pixel units, >= 0).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> method = TRADES(threat=ThreatModel(eps=0.1))
        >>> out = method(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]))
        >>> sorted(out.logs)
        ['adv_acc', 'ce', 'kl', 'nat_acc']
    """

    beta: float = 6.0
    threat: ThreatModel = ThreatModel(eps=0.1, steps=10)
    init_std: float = 0.001

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, int | float) and math.isfinite(self.beta)
                and self.beta >= 0):
            raise InputError(f"beta must be a finite number >= 0, got {self.beta!r}")
        init_threat(self)
        if not (math.isfinite(self.init_std) and self.init_std >= 0):
            raise InputError(f"init_std must be a finite number >= 0, got {self.init_std!r}")

    def perturb(
        self, model: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> AttackResult:
        """TRADES' inner maximisation: PGD on ``KL(f(x) || f(x'))`` (labels unused)."""
        net = unwrap(model)
        with torch.no_grad(), model_mode(net, self.threat.train_mode):
            p_clean = F.softmax(net(x), dim=1)
        return self.threat.attack(
            model, x, p_clean, default_step_size=self.threat.eps / 4, objective="kl",
            init_std=self.init_std, generator=generator,
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
            "nat_acc": batch_accuracy(logits_clean, y),
            "adv_acc": batch_accuracy(logits_adv, y),
            "ce": ce.detach(),
            "kl": kl.detach(),
        })
