"""A named, serialisable description of an evaluation attack.

Besides the attacks on plain classifiers, three names see through pre-processing defenses
(``bastion.preprocess.Defended``; ``eot.py``): ``"bpda-pgd"`` (PGD through BPDA, Athalye,
Carlini and Wagner 2018, arXiv 1802.00420), ``"eot-pgd"`` (PGD with EOT over
``eot_samples`` draws, Athalye, Engstrom, Ilyas and Kwok 2018, arXiv 1707.07397) and
``"autoattack-rand"`` (AutoAttack's version for randomized defenses). ``draws`` judges every
attack's result over several fresh draws of a randomized defense.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from bastion._validate import check_choice
from bastion.attacks.core import AttackResult
from bastion.attacks.eot import BPDA, needs_bpda, require_defended, through_bpda_if_needed
from bastion.attacks.objectives import OBJECTIVES, Objective
from bastion.attacks.pgd import fgsm
from bastion.attacks.threat import ThreatModel, init_threat
from bastion.errors import InputError
from bastion.preprocess import Defended

AttackName = Literal["pgd", "fgsm", "apgd-ce", "apgd-t", "autoattack", "bpda-pgd", "eot-pgd",
                     "autoattack-rand"]
ATTACKS: tuple[str, ...] = ("pgd", "fgsm", "apgd-ce", "apgd-t", "autoattack", "bpda-pgd",
                            "eot-pgd", "autoattack-rand")

DEFAULT_EOT_SAMPLES = 10
"""EOT draws per PGD step of ``"eot-pgd"`` when ``eot_samples`` is not given."""

_AUTOATTACK_NAMES = ("apgd-ce", "apgd-t", "autoattack", "autoattack-rand")
# through BPDA where the defense is non-differentiable (bpda-pgd: always); torchattacks'
# components need an autograd path, bastion's engine meets a zero gradient instead
_BPDA_INSIDE = ("eot-pgd", *_AUTOATTACK_NAMES)

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
            ``"autoattack"`` (standard ensemble) through ``autoattack.py``; and, for a
            pre-processed model (``bastion.preprocess.Defended``), ``"bpda-pgd"`` (PGD
            through ``eot.BPDA``), ``"eot-pgd"`` (PGD with EOT over ``eot_samples`` draws,
            through BPDA too when the defense is non-differentiable); and, for any
            randomized model, ``"autoattack-rand"`` (APGD-CE and APGD-DLR with EOT over 20
            draws, ``autoattack.rand_settings``). The torchattacks-based attacks
            (``"apgd-ce"``, ``"apgd-t"``, ``"autoattack"``, ``"autoattack-rand"``) run
            through BPDA when the model is a ``Defended`` with a non-differentiable
            defense (they need an autograd path); ``"pgd"`` and ``"fgsm"`` never do: they
            show what a non-adaptive attack finds (bastion's engine takes a zero gradient
            where there is no path). ``eot.adaptive_attack_for`` picks the name from the
            defense's declarations.
        threat: the threat model: radius ``eps`` in [0, 1] pixel units, ``norm``, PGD /
            APGD ``steps`` (ignored by FGSM and the AutoAttack ensembles), ``step_size`` and
            ``random_init`` (PGD). The default is ``ThreatModel(steps=20)`` (L-inf eps 0.1).
            A mapping changes only the keys it names of that default
            (``threat={"eps": 0.5, "norm": "l2"}`` keeps 20 steps); a ``ThreatModel`` is
            used as it is (its own default is 10 steps). ``step_size=None`` is the
            evaluation rule ``evaluation_default_step``: L-inf ``2.5 * eps / steps``
            (Madry et al.), L2 ``eps / 2``.
        restarts: random restarts (PGD); per example the strongest is kept.
        objective: ``"ce"``, ``"margin"`` or ``"dlr"``.
        num_classes: K, for the APGD / AutoAttack attacks.
        eot_samples: EOT draws per PGD step of ``"eot-pgd"`` (an int >= 1; None:
            ``DEFAULT_EOT_SAMPLES`` = 10). Other attacks take no value (AutoAttack's rand
            version uses its authors' 20).
        draws: judging passes d >= 1 (``evaluate_attacks``): a point the attack leaves
            robust counts as robust only if all d forward passes on its returned point
            classify it correctly (``eot.judge_over_draws``; the per-point number of
            correct passes is recorded). 1: one pass, as before. Use more against a
            randomized defense (``eot.default_draws``: 10).

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
    eot_samples: int | None = None
    draws: int = 1

    def __post_init__(self) -> None:
        check_choice(self.name, ATTACKS, "attack")
        init_threat(self)
        check_choice(self.objective, [o for o in OBJECTIVES if o != "kl"], "attack objective")
        if not isinstance(self.restarts, int) or self.restarts < 1:
            raise InputError(f"restarts must be an int >= 1, got {self.restarts!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise InputError(f"num_classes must be an int >= 2, got {self.num_classes!r}")
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise InputError(f"draws must be an int >= 1 (judging forward passes), got "
                             f"{self.draws!r}")
        if self.name == "eot-pgd":
            k = DEFAULT_EOT_SAMPLES if self.eot_samples is None else self.eot_samples
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise InputError(f"eot_samples must be an int >= 1, got {k!r}")
            object.__setattr__(self, "eot_samples", k)
        elif self.eot_samples is not None:
            raise InputError(
                f"eot_samples applies to 'eot-pgd' only, not {self.name!r} (autoattack-rand "
                "uses AutoAttack's 20 draws per step); leave it unset or use 'eot-pgd'"
            )
        if self.name == "autoattack-rand" and self.num_classes < 3:
            raise InputError(
                f"autoattack-rand needs at least 3 classes (APGD-DLR's loss uses the three "
                f"largest logits), got num_classes={self.num_classes}; use 'eot-pgd' on "
                "this model"
            )
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
        """Attack the batch ``(x, y)``; keeps the strongest iterate per example.

        ``draws`` is not applied here (``evaluate_attacks`` judges over draws).

        Raises:
            InputError: ``"bpda-pgd"`` or ``"eot-pgd"`` on a model that is not a
                ``bastion.preprocess.Defended``.
        """
        t = self.threat
        if self.name in ("bpda-pgd", "eot-pgd"):
            model = require_defended(model, self.name)
        if self.name == "fgsm":
            return fgsm(model, x, y, eps=t.eps, norm=t.norm, objective=self.objective)
        if self.name in _AUTOATTACK_NAMES:
            from bastion.attacks.autoattack import autoattack

            seed = 0 if generator is None else int(generator.initial_seed())
            version = {"autoattack": "standard", "autoattack-rand": "rand"}.get(self.name,
                                                                               self.name)
            net = through_bpda_if_needed(model)
            return autoattack(net, x, y, eps=t.eps, norm=t.norm,
                              version=version,  # type: ignore[arg-type]
                              num_classes=self.num_classes, steps=t.steps, seed=seed)
        net = model
        if self.name == "bpda-pgd":
            net = BPDA(model)
        elif self.name == "eot-pgd":
            net = through_bpda_if_needed(model)
        return t.attack(
            net, x, y, default_step_size=evaluation_default_step(t), objective=self.objective,
            restarts=self.restarts, keep_best=True, generator=generator,
            eot_samples=self.eot_samples if self.name == "eot-pgd" else 1,
        )

    def uses_bpda(self, model: nn.Module) -> bool:
        """Whether ``run`` attacks ``model`` through ``eot.BPDA``."""
        if self.name == "bpda-pgd":
            return True
        return self.name in _BPDA_INSIDE and needs_bpda(model)

    def settings_for(self, model: nn.Module) -> dict[str, Any]:
        """``to_dict`` plus what ``run`` adapts to ``model``: for a pre-processed model
        (``bastion.preprocess.Defended``), ``"bpda"``, whether the attack goes through
        BPDA. For any other model this is ``to_dict()`` itself."""
        d = self.to_dict()
        if isinstance(model, Defended):
            d["bpda"] = self.uses_bpda(model)
        return d

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict, the threat nested under ``"threat"``; AutoAttack's
        records also list every component setting (``autoattack.standard_settings``,
        ``autoattack.rand_settings``). ``eot_samples`` appears for ``"eot-pgd"`` only,
        ``draws`` always."""
        d = asdict(self)
        if self.name != "eot-pgd":
            del d["eot_samples"]
        if self.name in _AUTOATTACK_NAMES:
            from bastion.attacks.autoattack import rand_settings, standard_settings

            if self.name == "autoattack-rand":
                comps = rand_settings(self.num_classes)
            else:
                comps = standard_settings(self.num_classes)
            if self.name in ("apgd-ce", "apgd-t"):
                comps = [{**c, "steps": self.steps} for c in comps if c["attack"] == self.name]
            d["components"] = comps
        return d
