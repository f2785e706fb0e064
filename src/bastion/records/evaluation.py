"""The record of an empirical evaluation: per-example outcomes of several attacks.

One ``EvalResult`` holds the clean predictions of a fixed set of test points and, for each
attack run on them (several attacks, several epsilons, minimal-perturbation attacks), one
``AttackOutcome`` with the per-example adversarial prediction and perturbation size. The
worst case over attacks and the robust-accuracy-against-epsilon curve both come from it:
a point counts as broken at radius ``eps`` if *any* outcome of that norm found a
misclassified point within ``eps`` of it (an adversarial example inside a smaller ball lies
inside every larger one). The metrics of the seed chapter's eqs. (1)-(3) are computed from
it by ``bastion.metrics``.

Against a randomized defense a point is judged over several forward passes ("draws"): an
outcome with ``draws = d > 1`` records, per point, how many of the d passes on its returned
point were correct (``correct_draws``), and the point counts as robust only if all were
(its ``adv_pred`` is then the label, else the first wrong pass's prediction). The record
may likewise hold the clean points' counts (``clean_correct_draws``). ``draw_spread``
summarises them. Records written before these fields load with ``draws = 1`` and no counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bastion.errors import InputError, InputTypeError
from bastion.records.io import TensorRecord, record_from_dict, record_to_dict
from bastion.types import NORMS, Norm

_TOL_REL = 1e-5
_TOL_ABS = 1e-6


def _within(pert: torch.Tensor, eps: float) -> torch.Tensor:
    """bool [N]: ``pert <= eps`` up to float32 rounding of the projection."""
    if math.isinf(eps):
        return torch.ones_like(pert, dtype=torch.bool)
    return pert.double() <= eps * (1 + _TOL_REL) + _TOL_ABS


def _vector(t: Any, name: str, dtype: torch.dtype, n: int | None) -> torch.Tensor:
    """``t`` on the CPU after checking it is a 1-D ``dtype`` tensor of ``n`` entries."""
    if not isinstance(t, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise InputError(f"{name} must be 1-D of shape [N], got shape {tuple(t.shape)}")
    if t.dtype != dtype:
        raise InputTypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if n is not None and t.shape[0] != n:
        raise InputError(f"{name} has {t.shape[0]} entries for {n} points")
    return t.detach().cpu()


def _draw_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an int >= 1 (forward passes), got {value!r}")
    return value


def _counts(t: Any, name: str, n: int, draws: int) -> torch.Tensor:
    """Per-point counts of correct passes: int64 [n] in [0, draws]."""
    c = _vector(t, name, torch.int64, n)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) > draws):
        raise InputError(f"{name} must count correct passes in [0, {draws}], got values in "
                         f"[{int(c.min())}, {int(c.max())}]")
    return c


def _without_defaults(d: dict[str, Any], *, draws: str, counts: str) -> dict[str, Any]:
    """``d`` without the draw fields when they hold their defaults (1 pass, no counts)."""
    if d.get(draws) == 1 and d.get(counts) is None:
        d.pop(draws, None)
        d.pop(counts, None)
    return d


def _radius(eps: Any, name: str = "eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, int | float):
        raise InputTypeError(f"{name} must be a number, got {eps!r}")
    r = float(eps)
    if math.isnan(r) or r < 0:
        raise InputError(f"{name} must be >= 0 (inf for a minimal attack), got {eps!r}")
    return r


@dataclass(frozen=True, eq=False)
class AttackOutcome(TensorRecord):
    """One attack's per-example result on the points of an ``EvalResult``.

    Convention (checked by ``EvalResult``): a point the model already misclassifies when
    clean is not attacked; its adversarial point is the clean input (``perturbation`` 0,
    ``adv_pred`` the clean prediction).

    Args:
        attack: the attack's name (``"pgd"``, ``"autoattack"``, ``"fmn"``, ...).
        norm: the threat model's norm.
        eps: the radius in [0, 1] pixel units; ``math.inf`` for a minimal-perturbation
            attack (its ``perturbation`` is the size of the smallest example found).
        adv_pred: int64 [N], predictions on the adversarial points.
        perturbation: float32 [N], finite and >= 0, ``||x' - x||`` in ``norm`` (pixel
            units); at most ``eps`` (up to a relative 1e-5 and absolute 1e-6 for the
            float32 rounding of the projection).
        params: the attack's settings (steps, step size, restarts, objective, seed, ...),
            JSON-safe.
        seconds: time spent on this attack over all points (>= 0); the sum over the
            batches, and over the processes when they were shared out (``concat``).
        draws: d >= 1, the forward passes that judged each returned point (a randomized
            defense; ``attacks.eot.judge_over_draws``). 1: one pass.
        correct_draws: int64 [N] or None: per point, how many of the ``draws`` passes
            classified the returned point correctly (0 where the clean point is
            misclassified: it is not attacked nor judged). A point is correct after the
            attack iff all its passes were: ``adv_pred == label`` iff
            ``correct_draws == draws`` (checked). Required when ``draws > 1``.

    Tensors are kept on the CPU. ``to_dict`` leaves ``draws`` and ``correct_draws`` out at
    their defaults (1, None), so such a record reads as one written before they existed.
    """

    attack: str
    norm: Norm
    eps: float
    adv_pred: torch.Tensor
    perturbation: torch.Tensor
    params: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    draws: int = 1
    correct_draws: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.attack, str) or not self.attack:
            raise InputError("AttackOutcome.attack must be a non-empty name")
        if self.norm not in NORMS:
            raise InputError(f"unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")
        eps = _radius(self.eps)
        object.__setattr__(self, "eps", eps)
        adv = _vector(self.adv_pred, "adv_pred", torch.int64, None)
        p = _vector(self.perturbation, "perturbation", torch.float32, adv.shape[0])
        object.__setattr__(self, "adv_pred", adv)
        object.__setattr__(self, "perturbation", p)
        if not torch.isfinite(p).all() or (p < 0).any():
            raise InputError(f"{self.attack}: perturbations must be finite and >= 0")
        if not _within(p, eps).all():
            worst = float(p.max())
            raise InputError(f"{self.attack}: a perturbation of {worst:.6g} exceeds eps {eps:g}")
        if not isinstance(self.params, Mapping):
            raise InputTypeError(f"AttackOutcome.params must be a dict, got {type(self.params)}")
        object.__setattr__(self, "params", dict(self.params))
        s = self.seconds
        if isinstance(s, bool) or not isinstance(s, int | float) or not (0 <= s < math.inf):
            raise InputError(f"AttackOutcome.seconds must be a finite number >= 0, got {s!r}")
        object.__setattr__(self, "seconds", float(s))
        d = _draw_count(self.draws, f"{self.attack}: draws")
        object.__setattr__(self, "draws", d)
        if self.correct_draws is None:
            if d > 1:
                raise InputError(f"{self.attack}: draws={d} needs correct_draws, the per-point "
                                 "number of correct passes")
        else:
            c = _counts(self.correct_draws, f"{self.attack}: correct_draws", adv.shape[0], d)
            object.__setattr__(self, "correct_draws", c)

    def __len__(self) -> int:
        return int(self.adv_pred.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (``draws`` / ``correct_draws`` only when not at their defaults)."""
        return _without_defaults(record_to_dict(self), draws="draws",
                                 counts="correct_draws")

    @property
    def minimal(self) -> bool:
        """A minimal-perturbation attack (``eps`` is infinite)."""
        return math.isinf(self.eps)

@dataclass(frozen=True, eq=False)
class EvalResult(TensorRecord):
    """Per-example outcomes of attacks on a fixed set of test points.

    Invariants (checked): every outcome covers the same N points; a point misclassified
    when clean is not attacked (its adversarial prediction is the clean one and its
    perturbation 0), so an adversarial point is never classified correctly where the
    clean one is not and robust accuracy never exceeds clean accuracy; perturbations lie
    within each outcome's radius.

    Args:
        index: int64 [N], dataset positions of the evaluated points.
        labels: int64 [N].
        clean_pred: int64 [N], predictions on the clean inputs.
        outcomes: one ``AttackOutcome`` per attack run on these points.
        params: settings shared by all outcomes (checkpoint, number of points, ...).
        clean_draws: d >= 1, the forward passes on each clean point counted in
            ``clean_correct_draws`` (the first is the one ``clean_pred`` comes from).
        clean_correct_draws: int64 [N] or None: per point, how many of the
            ``clean_draws`` passes on the clean input were correct (at least 1 where
            ``clean_pred`` is right, at most d - 1 where it is wrong; checked). Clean
            accuracy stays that of the one pass, ``clean_pred``. Required when
            ``clean_draws > 1``.

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
    params: Mapping[str, Any] = field(default_factory=dict)
    clean_draws: int = 1
    clean_correct_draws: torch.Tensor | None = None

    def __post_init__(self) -> None:
        labels = _vector(self.labels, "labels", torch.int64, None)
        n = labels.shape[0]
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "index", _vector(self.index, "index", torch.int64, n))
        clean = _vector(self.clean_pred, "clean_pred", torch.int64, n)
        object.__setattr__(self, "clean_pred", clean)
        cd = _draw_count(self.clean_draws, "clean_draws")
        object.__setattr__(self, "clean_draws", cd)
        if self.clean_correct_draws is None:
            if cd > 1:
                raise InputError(f"clean_draws={cd} needs clean_correct_draws, the per-point "
                                 "number of correct passes on the clean inputs")
        else:
            cc = _counts(self.clean_correct_draws, "clean_correct_draws", n, cd)
            object.__setattr__(self, "clean_correct_draws", cc)
            right = clean == labels
            off = (right & (cc < 1)) | (~right & (cc > cd - 1))
            if off.any():
                i = int(off.nonzero()[0, 0])
                raise InputError(
                    f"clean_correct_draws of point {int(self.index[i])} is {int(cc[i])} of "
                    f"{cd} passes but its clean_pred {int(clean[i])} (label {int(labels[i])}) "
                    "is the first pass: a right first pass counts at least 1, a wrong one "
                    f"at most {cd - 1}"
                )
        if isinstance(self.outcomes, AttackOutcome | Mapping):
            raise InputTypeError("EvalResult.outcomes must be a sequence of AttackOutcome")
        outs = tuple(o if isinstance(o, AttackOutcome) else AttackOutcome.from_dict(o)
                     for o in self.outcomes)
        object.__setattr__(self, "outcomes", outs)
        if not isinstance(self.params, Mapping):
            raise InputTypeError(f"EvalResult.params must be a dict, got {type(self.params)}")
        object.__setattr__(self, "params", dict(self.params))
        wrong = clean != labels
        for o in outs:
            what = f"{o.attack} ({o.norm}, eps {o.eps:g})"
            if len(o) != n:
                raise InputError(f"{what} covers {len(o)} points, not {n}")
            fixed = wrong & (o.adv_pred == labels)
            if fixed.any():
                i = int(fixed.nonzero()[0, 0])
                raise InputError(
                    f"{what}: point {int(self.index[i])} is correct after the attack but "
                    "wrong when clean; attacks must leave misclassified points as they are"
                )
            moved = wrong & ((o.adv_pred != clean) | (o.perturbation != 0))
            if moved.any():
                i = int(moved.nonzero()[0, 0])
                raise InputError(
                    f"{what}: point {int(self.index[i])} is misclassified when clean but was "
                    f"attacked (prediction {int(clean[i])} -> {int(o.adv_pred[i])}, "
                    f"perturbation {float(o.perturbation[i]):.6g}); its adversarial point "
                    "must be the clean input"
                )
            if o.correct_draws is not None:
                robust = o.adv_pred == labels
                off = robust != (o.correct_draws == o.draws)
                off |= wrong & (o.correct_draws != 0)
                if off.any():
                    i = int(off.nonzero()[0, 0])
                    raise InputError(
                        f"{what}: point {int(self.index[i])} has {int(o.correct_draws[i])} of "
                        f"{o.draws} correct passes but adv_pred {int(o.adv_pred[i])} (label "
                        f"{int(labels[i])}); a point is correct after the attack iff every "
                        "pass is, and a point wrong when clean counts 0"
                    )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the clean draw fields only when not at their defaults)."""
        return _without_defaults(record_to_dict(self), draws="clean_draws",
                                 counts="clean_correct_draws")

    def draw_spread(self, *, attack: str | None = None, norm: str | None = None,
                    eps: float | None = None) -> dict[str, float | int]:
        """The spread over judging draws of the one outcome matching the fields.

        With d = its ``draws`` and c_i the correct passes of point i (over all N points):

        - ``"mean"``: ``sum_i c_i / (N d)``, the accuracy of one pass, averaged over the d
          passes (what a one-pass evaluation reports on average);
        - ``"std"``: the standard deviation of one pass's accuracy over draws, estimated
          from the counts as ``sqrt(sum_i p_i (1 - p_i) d / (d - 1)) / N`` with
          ``p_i = c_i / d`` (0 for d = 1);
        - ``"all"``: the fraction of points correct on every pass, the robust accuracy
          this outcome reports (a lower bound of the worst single pass);
        - ``"any"``: the fraction correct on at least one pass (an upper bound of the
          best single pass).

        An outcome without counts (one pass, or an older record) has all four equal to its
        one-pass accuracy and std 0. ``"draws"`` is d.
        """
        o = self.only(attack=attack, norm=norm, eps=eps)
        n = len(self)
        if o.correct_draws is None:
            acc = float((self.clean_correct & (o.adv_pred == self.labels)).double().mean())
            return {"draws": o.draws, "mean": acc, "std": 0.0, "all": acc, "any": acc}
        d = o.draws
        c = o.correct_draws.double() * self.clean_correct.double()
        p = c / d
        var = float((p * (1 - p)).sum()) * (d / (d - 1) if d > 1 else 0.0)
        return {"draws": d, "mean": float(c.sum()) / (n * d), "std": math.sqrt(var) / n,
                "all": float((c == d).double().mean()), "any": float((c > 0).double().mean())}

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
            raise InputError(f"{len(found)} outcomes match attack={attack!r} norm={norm!r} "
                             f"eps={eps!r}; the record has {have}")
        return found[0]

    def _matching(self, norm: str | None,
                  attack: str | None) -> tuple[str, tuple[AttackOutcome, ...]]:
        cands = self.select(attack=attack, norm=norm)
        if not cands:
            have = [(o.attack, o.norm, o.eps) for o in self.outcomes]
            raise InputError(f"no outcome for attack={attack!r} norm={norm!r}; the record "
                             f"has {have}")
        norms = {o.norm for o in cands}
        if len(norms) > 1:
            raise InputError(f"outcomes of several norms {sorted(norms)}: pass norm")
        return norms.pop(), cands

    def adv_correct(
        self, eps: float | None = None, *, norm: str | None = None, attack: str | None = None
    ) -> torch.Tensor:
        """bool [N]: correct when clean and not broken by any outcome within ``eps``.

        The worst case over the matching outcomes (every attack of the norm, or only
        ``attack``): a point is broken at ``eps`` if some outcome's adversarial point is
        misclassified and lies within ``eps`` of it (pixel units of the norm). Outcomes at
        a larger radius count only where their perturbation is within ``eps``; outcomes at
        a smaller radius count in full.

        ``eps=None`` takes the one finite radius of the matching outcomes (``ValueError``
        if they have several), or ``inf`` when all of them are minimal-perturbation
        outcomes (then a point is broken wherever the attack found any adversarial point).
        """
        _, cands = self._matching(norm, attack)
        if eps is None:
            finite = {o.eps for o in cands if math.isfinite(o.eps)}
            if len(finite) > 1:
                raise InputError(f"outcomes at radii {sorted(finite)}: pass eps")
            r = finite.pop() if finite else math.inf
        else:
            r = _radius(eps)
        broken = torch.zeros(len(self), dtype=torch.bool)
        for o in cands:
            broken |= (o.adv_pred != self.labels) & _within(o.perturbation, r)
        return self.clean_correct & ~broken

    def robust_accuracy_curve(
        self, radii: Sequence[float] | None = None, *, norm: str | None = None,
        attack: str | None = None,
    ) -> dict[float, float]:
        """Robust accuracy (worst case over outcomes, over all N points) at each radius.

        Returns ``{eps: accuracy}`` in the order of ``radii``; non-increasing in ``eps``.
        Default radii: 0 and every finite radius of the matching outcomes (pass ``radii``
        for a minimal-perturbation outcome, whose curve changes at every found norm).
        """
        chosen, cands = self._matching(norm, attack)
        if radii is None:
            radii = sorted({0.0} | {o.eps for o in cands if math.isfinite(o.eps)})
        return {_radius(r, "radius"): float(self.adv_correct(r, norm=chosen, attack=attack)
                                             .double().mean())
                for r in radii}

    def with_outcome(self, outcome: AttackOutcome) -> EvalResult:
        """A new record with ``outcome`` added (checked against the same invariants)."""
        return EvalResult(index=self.index, labels=self.labels, clean_pred=self.clean_pred,
                          outcomes=(*self.outcomes, outcome), params=self.params,
                          clean_draws=self.clean_draws,
                          clean_correct_draws=self.clean_correct_draws)

    @classmethod
    def concat(cls, parts: Sequence[EvalResult]) -> EvalResult:
        """One record of the points of ``parts``, in order (e.g. the batches of a sharded
        evaluation put back together).

        Every part must hold the same attacks in the same order (equal ``attack``,
        ``norm``, ``eps``, ``params`` and ``draws`` of each outcome, each with or without
        ``correct_draws`` in every part), equal record ``params`` and equal
        ``clean_draws``. ``index``, ``labels``, ``clean_pred``, each outcome's
        ``adv_pred``, ``perturbation`` and ``correct_draws``, and the
        ``clean_correct_draws`` are concatenated; each outcome's ``seconds`` is the sum over the
        parts (process-seconds when the parts ran in parallel). The parts should cover
        disjoint points; this is not checked.

        Example:
            >>> out = AttackOutcome(attack="pgd", norm="linf", eps=0.1,
            ...                     adv_pred=torch.tensor([1]), perturbation=torch.tensor([0.1]))
            >>> one = EvalResult(index=torch.tensor([0]), labels=torch.tensor([0]),
            ...                  clean_pred=torch.tensor([0]), outcomes=(out,))
            >>> two = EvalResult(index=torch.tensor([1]), labels=torch.tensor([2]),
            ...                  clean_pred=torch.tensor([2]), outcomes=(out,))
            >>> both = EvalResult.concat([one, two])
            >>> both.index.tolist(), both.only().adv_pred.tolist()
            ([0, 1], [1, 1])
        """
        if isinstance(parts, EvalResult) or not isinstance(parts, Sequence):
            raise InputTypeError("EvalResult.concat needs a sequence of EvalResult, got "
                                 f"{type(parts).__name__}")
        if not parts:
            raise InputError("EvalResult.concat needs at least one EvalResult")
        bad = sorted({type(p).__name__ for p in parts if not isinstance(p, EvalResult)})
        if bad:
            raise InputTypeError(f"EvalResult.concat joins EvalResult objects, got {bad}")
        first = parts[0]

        def key_of(r: EvalResult) -> list[tuple[Any, ...]]:
            return [(o.attack, o.norm, o.eps, o.params, o.draws, o.correct_draws is None)
                    for o in r.outcomes]

        key = key_of(first)
        clean_key = (first.clean_draws, first.clean_correct_draws is None)
        for i, p in enumerate(parts[1:], start=1):
            if p.params != first.params:
                raise InputError(f"part {i} has params {p.params!r}, part 0 {first.params!r}")
            if (p.clean_draws, p.clean_correct_draws is None) != clean_key:
                raise InputError(
                    f"part {i} has clean_draws {p.clean_draws} "
                    f"({'without' if p.clean_correct_draws is None else 'with'} counts), "
                    f"part 0 {first.clean_draws} "
                    f"({'without' if first.clean_correct_draws is None else 'with'} counts)"
                )
            other = key_of(p)
            if other != key:
                raise InputError(
                    f"part {i} has outcomes {[k[:3] for k in other]} but part 0 has "
                    f"{[k[:3] for k in key]} (with their params and draws): concat joins "
                    "records of the same attacks in the same order"
                )

        outcomes = []
        for j, o in enumerate(first.outcomes):
            each = [p.outcomes[j] for p in parts]
            outcomes.append(AttackOutcome(
                attack=o.attack, norm=o.norm, eps=o.eps,
                adv_pred=torch.cat([e.adv_pred for e in each]),
                perturbation=torch.cat([e.perturbation for e in each]),
                params=o.params, seconds=sum(e.seconds for e in each), draws=o.draws,
                correct_draws=None if o.correct_draws is None else torch.cat(
                    [e.correct_draws for e in each]),  # type: ignore[misc]
            ))
        clean_counts = None if first.clean_correct_draws is None else torch.cat(
            [p.clean_correct_draws for p in parts])  # type: ignore[misc]
        return cls(index=torch.cat([p.index for p in parts]),
                   labels=torch.cat([p.labels for p in parts]),
                   clean_pred=torch.cat([p.clean_pred for p in parts]),
                   outcomes=tuple(outcomes), params=first.params,
                   clean_draws=first.clean_draws, clean_correct_draws=clean_counts)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        data = dict(data)
        outs = tuple(AttackOutcome.from_dict(o) for o in data.pop("outcomes", []))
        base = record_from_dict(cls, {**data, "outcomes": []})
        return cls(index=base.index, labels=base.labels, clean_pred=base.clean_pred,
                   outcomes=outs, params=base.params, clean_draws=base.clean_draws,
                   clean_correct_draws=base.clean_correct_draws)
