"""A named, serialisable description of an evaluation attack."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from bastion._validate import check_choice, check_radius
from bastion.attacks.core import AttackResult
from bastion.attacks.objectives import OBJECTIVES, Objective
from bastion.attacks.pgd import ATTACK_NORMS, fgsm, pgd
from bastion.types import Norm

AttackName = Literal["pgd", "fgsm", "apgd-ce", "apgd-t", "autoattack"]
ATTACKS: tuple[str, ...] = ("pgd", "fgsm", "apgd-ce", "apgd-t", "autoattack")


@dataclass(frozen=True, kw_only=True)
class AttackSpec:
    """Settings of an evaluation attack; ``repr`` is the log line.

    Args:
        name: ``"pgd"``, ``"fgsm"``, or torchattacks' ``"apgd-ce"``, ``"apgd-t"`` and
            ``"autoattack"`` (standard ensemble) through ``autoattack.py``.
        eps: radius in [0, 1] pixel units.
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD / APGD steps (ignored by FGSM and the AutoAttack ensemble).
        step_size: PGD step length; None means ``2.5 * eps / steps``.
        restarts: random restarts (PGD).
        objective: ``"ce"``, ``"margin"`` or ``"dlr"``.
        random_init: PGD starts from a random point of the ball.
    """

    name: AttackName = "pgd"
    eps: float = 0.1
    norm: Norm = "linf"
    steps: int = 20
    step_size: float | None = None
    restarts: int = 1
    objective: Objective = "ce"
    random_init: bool = True
    num_classes: int = 10

    def __post_init__(self) -> None:
        check_choice(self.name, ATTACKS, "attack")
        check_choice(self.norm, ATTACK_NORMS, "attack norm")
        check_choice(self.objective, [o for o in OBJECTIVES if o != "kl"], "attack objective")
        check_radius(self.eps, "eps", upper=1.0 if self.norm == "linf" else None)
        if self.steps < 1 or self.restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got {self.steps}, {self.restarts}")

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        """Attack the batch ``(x, y)``; keeps the strongest iterate per example."""
        if self.name == "fgsm":
            return fgsm(model, x, y, eps=self.eps, norm=self.norm, objective=self.objective)
        if self.name in ("apgd-ce", "apgd-t", "autoattack"):
            from bastion.attacks.autoattack import autoattack

            seed = 0 if generator is None else int(generator.initial_seed())
            version = "standard" if self.name == "autoattack" else self.name
            return autoattack(model, x, y, eps=self.eps, norm=self.norm, version=version,
                              num_classes=self.num_classes, steps=self.steps, seed=seed)
        return pgd(
            model, x, y, eps=self.eps, norm=self.norm, steps=self.steps,
            step_size=self.step_size, random_init=self.random_init, objective=self.objective,
            restarts=self.restarts, keep_best=True, generator=generator,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
