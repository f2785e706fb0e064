"""A named, serialisable description of an evaluation attack."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from bastion._validate import check_choice
from bastion.attacks.core import AttackResult
from bastion.attacks.objectives import OBJECTIVES, Objective
from bastion.attacks.pgd import fgsm
from bastion.attacks.threat import ThreatModel, init_threat
from bastion.errors import InputError

AttackName = Literal["pgd", "fgsm", "apgd-ce", "apgd-t", "autoattack"]
ATTACKS: tuple[str, ...] = ("pgd", "fgsm", "apgd-ce", "apgd-t", "autoattack")

# The step of evaluation-time L2 PGD, as a fraction of eps (see ``evaluation_default_step``).
L2_EVAL_STEP_FRACTION = 0.5


def evaluation_default_step(threat: ThreatModel) -> float | None:
    """The PGD step of an evaluation attack whose ``threat.step_size`` is None.

    L-inf: None, i.e. the engine's Madry et al. rule ``2.5 * eps / steps`` (arXiv
    1706.06083). L2: the constant ``eps / 2`` (pixel units). From a random start in the
    ball, a step of ``2.5 * eps / steps`` moves only 2.5 eps in total, too little to remove
    the start's component orthogonal to the worst-case direction (on a linear model 20
    steps end about 2% short of the closed-form worst case); a step of ``eps / 2`` shrinks
    that component geometrically (by a factor ~1.5 per step once on the sphere) and
    reaches the optimum to ~1e-7 in 20 steps (``tests/attacks/test_pgd.py``). Training
    methods keep their own rules (Madry's for PGD-AT).
    """
    return L2_EVAL_STEP_FRACTION * threat.eps if threat.norm == "l2" else None


@dataclass(frozen=True, kw_only=True)
class AttackSpec:
    """Settings of an evaluation attack; ``repr`` is the log line.

    Args:
        name: ``"pgd"``, ``"fgsm"``, or torchattacks' ``"apgd-ce"``, ``"apgd-t"`` and
            ``"autoattack"`` (standard ensemble) through ``autoattack.py``.
        threat: the threat model: radius ``eps`` in [0, 1] pixel units, ``norm``, PGD /
            APGD ``steps`` (ignored by FGSM and the AutoAttack ensemble), ``step_size`` and
            ``random_init`` (PGD). The default is ``ThreatModel(steps=20)`` (L-inf eps 0.1).
            A mapping changes only the keys it names of that default
            (``threat={"eps": 0.5, "norm": "l2"}`` keeps 20 steps); a ``ThreatModel`` is
            used as it is (its own default is 10 steps). ``step_size=None`` is the
            evaluation rule ``evaluation_default_step``: L-inf ``2.5 * eps / steps``
            (Madry et al.), L2 ``eps / 2``.
        restarts: random restarts (PGD); per example the strongest is kept.
        objective: ``"ce"``, ``"margin"`` or ``"dlr"``.
        num_classes: K, for the APGD / AutoAttack attacks.

    ``eps``, ``norm``, ``steps``, ``step_size`` and ``random_init`` read through to the
    threat (properties). ``to_dict`` nests the threat: ``{"name": ..., "threat": {...}}``.

    Example:
        >>> AttackSpec(threat={"eps": 0.5, "norm": "l2"}).steps
        20
        >>> AttackSpec(threat=ThreatModel(eps=0.5, norm="l2", steps=50)).steps
        50
    """

    name: AttackName = "pgd"
    threat: ThreatModel = ThreatModel(steps=20)
    restarts: int = 1
    objective: Objective = "ce"
    num_classes: int = 10

    def __post_init__(self) -> None:
        check_choice(self.name, ATTACKS, "attack")
        init_threat(self)
        check_choice(self.objective, [o for o in OBJECTIVES if o != "kl"], "attack objective")
        if not isinstance(self.restarts, int) or self.restarts < 1:
            raise InputError(f"restarts must be an int >= 1, got {self.restarts!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise InputError(f"num_classes must be an int >= 2, got {self.num_classes!r}")
        if self.name in ("apgd-t", "autoattack") and self.num_classes < 4:
            # the targeted DLR loss divides by z_pi1 - (z_pi3 + z_pi4) / 2 (Croce & Hein
            # 2020, arXiv 2003.01690): it needs the 4 largest logits
            raise InputError(
                f"{self.name} needs at least 4 classes (APGD-T's targeted DLR loss uses the "
                f"four largest logits), got num_classes={self.num_classes}; use 'pgd' or "
                "'apgd-ce' on this model"
            )

    @property
    def eps(self) -> float:
        """The threat's radius (pixel units)."""
        return self.threat.eps

    @property
    def norm(self) -> str:
        """The threat's norm."""
        return self.threat.norm

    @property
    def steps(self) -> int:
        """The threat's number of PGD / APGD steps."""
        return self.threat.steps

    @property
    def step_size(self) -> float | None:
        """The threat's PGD step; None: the rule of ``evaluation_default_step``."""
        return self.threat.step_size

    @property
    def random_init(self) -> bool:
        """Whether PGD starts from a random point of the ball."""
        return self.threat.random_init

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        """Attack the batch ``(x, y)``; keeps the strongest iterate per example."""
        t = self.threat
        if self.name == "fgsm":
            return fgsm(model, x, y, eps=t.eps, norm=t.norm, objective=self.objective)
        if self.name in ("apgd-ce", "apgd-t", "autoattack"):
            from bastion.attacks.autoattack import autoattack

            seed = 0 if generator is None else int(generator.initial_seed())
            version = "standard" if self.name == "autoattack" else self.name
            return autoattack(model, x, y, eps=t.eps, norm=t.norm, version=version,
                              num_classes=self.num_classes, steps=t.steps, seed=seed)
        return t.attack(
            model, x, y, default_step_size=evaluation_default_step(t), objective=self.objective,
            restarts=self.restarts, keep_best=True, generator=generator,
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict, the threat nested under ``"threat"``; AutoAttack's
        records also list every component setting (``autoattack.standard_settings``)."""
        d = asdict(self)
        if self.name in ("autoattack", "apgd-ce", "apgd-t"):
            from bastion.attacks.autoattack import standard_settings

            comps = standard_settings(self.num_classes)
            if self.name != "autoattack":
                comps = [{**c, "steps": self.steps} for c in comps if c["attack"] == self.name]
            d["components"] = comps
        return d
