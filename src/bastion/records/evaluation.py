"""The record of an empirical evaluation: per-example outcomes of several attacks.

One ``EvalResult`` holds the clean predictions of a fixed set of test points and, for each
attack run on them (several attacks, several epsilons, minimal-perturbation attacks), one
``AttackOutcome`` with the per-example adversarial prediction and perturbation size. The
worst case over attacks and the robust-accuracy-against-epsilon curve both come from it:
a point counts as broken at radius ``eps`` if *any* outcome of that norm found a
misclassified point within ``eps`` of it (an adversarial example inside a smaller ball lies
inside every larger one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from bastion.records.io import record_from_dict, record_to_dict
from bastion.types import NORMS, Norm

_TOL_REL = 1e-5
_TOL_ABS = 1e-6


def _within(pert: torch.Tensor, eps: float) -> torch.Tensor:
    """bool [N]: ``pert <= eps`` up to float32 rounding of the projection."""
    if math.isinf(eps):
        return torch.ones_like(pert, dtype=torch.bool)
    return pert.double() <= eps * (1 + _TOL_REL) + _TOL_ABS


def _vector(t: Any, name: str, dtype: torch.dtype, n: int | None) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        raise TypeError(f"{name} must be a 1-D tensor")
    if t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} entries for {n} points")


@dataclass(frozen=True)
class AttackOutcome:
    """One attack's per-example result on the points of an ``EvalResult``.

    Convention: a point the model already misclassifies when clean is not attacked; its
    adversarial point is the clean input (``perturbation`` 0, ``adv_pred`` the clean
    prediction).

    Args:
        attack: the attack's name (``"pgd"``, ``"autoattack"``, ``"fmn"``, ...).
        norm: the threat model's norm.
        eps: the radius in [0, 1] pixel units; ``math.inf`` for a minimal-perturbation
            attack (its ``perturbation`` is the size of the smallest example found).
        adv_pred: int64 [N], predictions on the adversarial points.
        perturbation: float32 [N] >= 0, ``||x' - x||`` in ``norm``; at most ``eps``.
        params: the attack's settings (steps, step size, restarts, objective, seed, ...).
        seconds: wall time of this attack over all points.
    """

    attack: str
    norm: Norm
    eps: float
    adv_pred: torch.Tensor
    perturbation: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.attack, str) or not self.attack:
            raise ValueError("AttackOutcome.attack must be a non-empty name")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")
        eps = float(self.eps)
        if math.isnan(eps) or eps < 0:
            raise ValueError(f"eps must be >= 0 (or inf for a minimal attack), got {self.eps!r}")
        object.__setattr__(self, "eps", eps)
        _vector(self.adv_pred, "adv_pred", torch.int64, None)
        _vector(self.perturbation, "perturbation", torch.float32, self.adv_pred.shape[0])
        p = self.perturbation
        if not torch.isfinite(p).all() or (p < 0).any():
            raise ValueError(f"{self.attack}: perturbations must be finite and >= 0")
        if not _within(p, eps).all():
            worst = float(p.max())
            raise ValueError(f"{self.attack}: a perturbation of {worst:.6g} exceeds eps {eps:g}")

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackOutcome:
        return record_from_dict(cls, data)


@dataclass(frozen=True)
class EvalResult:
    """Per-example outcomes of attacks on a fixed set of test points.

    Invariants (checked): every outcome covers the same N points; an adversarial point is
    never classified correctly where the clean one is not (so robust accuracy never
    exceeds clean accuracy); perturbations lie within each outcome's radius.

    Args:
        index: int64 [N], dataset positions of the evaluated points.
        labels: int64 [N].
        clean_pred: int64 [N], predictions on the clean inputs.
        outcomes: one ``AttackOutcome`` per attack run on these points.
        params: settings shared by all outcomes (checkpoint, number of points, ...).

    Example:
        >>> y = torch.tensor([0, 1, 2])
        >>> out = AttackOutcome(attack="pgd", norm="linf", eps=0.1,
        ...                     adv_pred=torch.tensor([0, 0, 1]),
        ...                     perturbation=torch.tensor([0.1, 0.1, 0.0]))
        >>> r = EvalResult(index=torch.arange(3), labels=y, clean_pred=torch.tensor([0, 1, 1]),
        ...                outcomes=(out,))
        >>> r.adv_correct().tolist()
        [True, False, False]
    """

    index: torch.Tensor
    labels: torch.Tensor
    clean_pred: torch.Tensor
    outcomes: tuple[AttackOutcome, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _vector(self.labels, "labels", torch.int64, None)
        n = self.labels.shape[0]
        _vector(self.index, "index", torch.int64, n)
        _vector(self.clean_pred, "clean_pred", torch.int64, n)
        outs = tuple(o if isinstance(o, AttackOutcome) else AttackOutcome.from_dict(o)
                     for o in self.outcomes)
        object.__setattr__(self, "outcomes", outs)
        wrong = self.clean_pred != self.labels
        for o in outs:
            if o.adv_pred.shape[0] != n:
                raise ValueError(f"{o.attack} covers {o.adv_pred.shape[0]} points, not {n}")
            fixed = wrong & (o.adv_pred == self.labels)
            if fixed.any():
                i = int(fixed.nonzero()[0])
                raise ValueError(
                    f"{o.attack} eps {o.eps:g}: point {int(self.index[i])} is correct after the "
                    "attack but wrong when clean; attacks must leave misclassified points as "
                    "they are"
                )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def clean_correct(self) -> torch.Tensor:
        """bool [N]: the clean input is classified correctly."""
        return self.clean_pred == self.labels

    def select(
        self, *, attack: str | None = None, norm: str | None = None, eps: float | None = None
    ) -> tuple[AttackOutcome, ...]:
        """The outcomes matching every given field (exact ``eps``)."""
        return tuple(o for o in self.outcomes
                     if (attack is None or o.attack == attack)
                     and (norm is None or o.norm == norm)
                     and (eps is None or o.eps == float(eps)))

    def only(self, *, attack: str | None = None, norm: str | None = None,
             eps: float | None = None) -> AttackOutcome:
        """The one outcome matching the fields; ``ValueError`` if none or several do."""
        found = self.select(attack=attack, norm=norm, eps=eps)
        if len(found) != 1:
            have = [(o.attack, o.norm, o.eps) for o in self.outcomes]
            raise ValueError(f"{len(found)} outcomes match attack={attack!r} norm={norm!r} "
                             f"eps={eps!r}; the record has {have}")
        return found[0]

    def _matching(self, norm: str | None,
                  attack: str | None) -> tuple[str, tuple[AttackOutcome, ...]]:
        cands = self.select(attack=attack, norm=norm)
        if not cands:
            raise ValueError(f"no outcome for attack={attack!r} norm={norm!r}")
        norms = {o.norm for o in cands}
        if len(norms) > 1:
            raise ValueError(f"outcomes of several norms {sorted(norms)}: pass norm")
        return norms.pop(), cands

    def adv_correct(
        self, eps: float | None = None, *, norm: str | None = None, attack: str | None = None
    ) -> torch.Tensor:
        """bool [N]: correct when clean and not broken by any outcome within ``eps``.

        The worst case over the matching outcomes (every attack of the norm, or only
        ``attack``): a point is broken at ``eps`` if some outcome's adversarial point is
        misclassified and lies within ``eps`` of it. ``eps=None`` works when the matching
        outcomes have one finite radius.
        """
        _, cands = self._matching(norm, attack)
        if eps is None:
            finite = {o.eps for o in cands if math.isfinite(o.eps)}
            if len(finite) != 1:
                raise ValueError(f"outcomes at radii {sorted(finite)}: pass eps")
            eps = finite.pop()
        r = float(eps)
        broken = torch.zeros(len(self), dtype=torch.bool)
        for o in cands:
            broken |= (o.adv_pred != self.labels) & _within(o.perturbation, r)
        return self.clean_correct & ~broken

    def robust_accuracy_curve(
        self, radii: list[float] | None = None, *, norm: str | None = None,
        attack: str | None = None,
    ) -> dict[float, float]:
        """Robust accuracy (worst case over outcomes) at each radius, ``{eps: accuracy}``.

        Default radii: 0 and every finite radius of the matching outcomes.
        """
        chosen, cands = self._matching(norm, attack)
        if radii is None:
            radii = sorted({0.0} | {o.eps for o in cands if math.isfinite(o.eps)})
        return {float(r): float(self.adv_correct(r, norm=chosen, attack=attack).double().mean())
                for r in radii}

    def with_outcome(self, outcome: AttackOutcome) -> EvalResult:
        """A new record with ``outcome`` added (checked against the same invariants)."""
        return EvalResult(index=self.index, labels=self.labels, clean_pred=self.clean_pred,
                          outcomes=(*self.outcomes, outcome), params=self.params)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; ``EvalResult.from_dict`` inverts it exactly."""
        d = record_to_dict(self)
        d["outcomes"] = [o.to_dict() for o in self.outcomes]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        data = dict(data)
        outs = tuple(AttackOutcome.from_dict(o) for o in data.pop("outcomes", []))
        base = record_from_dict(cls, {**data, "outcomes": []})
        return cls(index=base.index, labels=base.labels, clean_pred=base.clean_pred,
                   outcomes=outs, params=base.params)
