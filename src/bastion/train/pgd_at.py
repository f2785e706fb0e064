"""PGD adversarial training (Madry et al.)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.pgd import check_attack_options, pgd
from bastion.records import StepContext, StepOutput
from bastion.train.standard import batch_accuracy
from bastion.types import Norm


@dataclass(frozen=True, kw_only=True)
class PGDAT:
    """Adversarial training on PGD examples.

    Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks",
    arXiv 1706.06083: minimise E[max_{||d|| <= eps} CE(f(x + d), y)], the inner max
    approximated by PGD. With ``clean_weight = w > 0`` the loss is
    ``(1 - w) CE(f(x'), y) + w CE(f(x), y)``; ``w = 0.5`` trains on the seed's
    D_adv ∪ D with D' = D (every batch appears clean and attacked).

    Args:
        eps: radius in [0, 1] pixel units.
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD steps for the inner maximisation.
        step_size: PGD step; None means ``2.5 * eps / steps``.
        random_init: PGD random start.
        clean_weight: weight of the clean loss in [0, 1].
        attack_train_mode: run the model in train mode while attacking (BatchNorm batch
            statistics, dropout on); default eval mode, restored afterwards.
    """

    eps: float = 0.1
    norm: Norm = "linf"
    steps: int = 10
    step_size: float | None = None
    random_init: bool = True
    clean_weight: float = 0.0
    attack_train_mode: bool = False

    def __post_init__(self) -> None:
        check_attack_options(eps=self.eps, norm=self.norm, steps=self.steps,
                             step_size=self.step_size)
        if not 0.0 <= self.clean_weight <= 1.0:
            raise ValueError(f"clean_weight must be in [0, 1], got {self.clean_weight}")

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        attack = pgd(
            model, x, y, eps=self.eps, norm=self.norm, steps=self.steps,
            step_size=self.step_size, random_init=self.random_init,
            train_mode=self.attack_train_mode, generator=ctx.generator if ctx else None,
        )
        if self.clean_weight > 0:
            logits = model(torch.cat([attack.x_adv, x]))
            adv_logits, clean_logits = logits[: len(x)], logits[len(x) :]
            loss = (1 - self.clean_weight) * F.cross_entropy(adv_logits, y)
            loss = loss + self.clean_weight * F.cross_entropy(clean_logits, y)
        else:
            adv_logits = model(attack.x_adv)
            loss = F.cross_entropy(adv_logits, y)
        return StepOutput(loss, {"adv_acc": batch_accuracy(adv_logits, y)})
