"""PGD adversarial training (Madry et al.)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.threat import ThreatModel, init_threat
from bastion.errors import InputError
from bastion.records import StepContext, StepOutput
from bastion.train.standard import batch_accuracy


@dataclass(frozen=True, kw_only=True)
class PGDAT:
    """Adversarial training on PGD examples.

    Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks",
    arXiv 1706.06083: minimise E[max_{||d|| <= eps} CE(f(x + d), y)], the inner max
    approximated by PGD. With ``clean_weight = w > 0`` the loss is
    ``(1 - w) CE(f(x'), y) + w CE(f(x), y)``; ``w = 0.5`` trains on the seed's
    D_adv ∪ D with D' = D (every batch appears clean and attacked).

    Args:
        threat: the inner PGD (``ThreatModel``; a mapping overrides the default's keys):
            radius ``eps`` in [0, 1] pixel units (default 0.1), ``norm``, ``steps`` (10),
            ``step_size`` (None: ``2.5 * eps / steps``), ``random_init`` (True) and
            ``train_mode`` (False: the model attacks in eval mode, restored afterwards;
            True: BatchNorm batch statistics and dropout on).
        clean_weight: weight of the clean loss in [0, 1].

    Example:
        >>> method = PGDAT(threat=ThreatModel(eps=0.1, steps=7, step_size=0.025))
        >>> method.threat.steps
        7
    """

    threat: ThreatModel = ThreatModel(eps=0.1, steps=10)
    clean_weight: float = 0.0

    def __post_init__(self) -> None:
        init_threat(self)
        if not 0.0 <= self.clean_weight <= 1.0:
            raise InputError(f"clean_weight must be in [0, 1], got {self.clean_weight}")

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        attack = self.threat.attack(model, x, y, generator=ctx.generator if ctx else None)
        if self.clean_weight > 0:
            logits = model(torch.cat([attack.x_adv, x]))
            adv_logits, clean_logits = logits[: len(x)], logits[len(x) :]
            loss = (1 - self.clean_weight) * F.cross_entropy(adv_logits, y)
            loss = loss + self.clean_weight * F.cross_entropy(clean_logits, y)
        else:
            adv_logits = model(attack.x_adv)
            loss = F.cross_entropy(adv_logits, y)
        return StepOutput(loss, {"adv_acc": batch_accuracy(adv_logits, y)})
