"""One threat model: the eps-ball and the PGD settings shared by training and evaluation.

Every training method that attacks (PGD-AT, TRADES, TLA, Consistency, FAT, CAT,
RegeneratedAT) and every evaluation attack (``AttackSpec``, the run config's ``eval``)
holds a ``ThreatModel`` as its one ``threat`` field instead of repeating ``eps``, ``norm``,
``steps``, ``step_size``, ``random_init`` and the attack's model mode, and attacks through
``ThreatModel.attack``, which forwards into the one engine ``attacks.pgd.pgd`` (Madry et
al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks",
arXiv 1706.06083).

``step_size=None`` means "the owner's default rule": the owner passes it as
``default_step_size`` (TRADES and Consistency use ``eps / 4``, evaluation-time L2 PGD
``eps / 2``); with neither, the engine's Madry rule ``2.5 * eps / steps`` applies.

From YAML a threat is a mapping: ``method_options: {threat: {eps: 0.1, steps: 7}}``. A
mapping overrides only the keys it names of the owner's default threat
(``resolve_threat``), so ``{steps: 7}`` for CAT keeps CAT's ``random_init: false``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from bastion._validate import check_choice, check_radius
from bastion.attacks.core import AttackResult
from bastion.attacks.pgd import ATTACK_NORMS, pgd
from bastion.errors import InputError, InputTypeError

AttackNorm = Literal["linf", "l2"]
"""The norms the attack engine supports."""

THREAT_KEYS: tuple[str, ...] = ("eps", "norm", "steps", "step_size", "random_init", "train_mode")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True, kw_only=True)
class ThreatModel:
    """The perturbation set ``{x' : ||x' - x|| <= eps, x' in [0, 1]^d}`` and how PGD searches it.

    Args:
        eps: radius in [0, 1] pixel units (L-inf: at most 1; L2: checked against
            ``sqrt(d)`` when the attack runs).
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD steps K (an int >= 1).
        step_size: per-step length in the norm (pixel units); None means the owner's
            default rule (``default_step_size`` of ``attack``), else Madry's
            ``2.5 * eps / steps``.
        random_init: start from a random point of the ball (uniform, or the owner's
            Gaussian ``init_std``) instead of ``x``.
        train_mode: the model's mode while attacking (True: train, BatchNorm batch
            statistics and dropout on; False: eval, the default). The previous mode of
            every sub-module is restored afterwards.

    Raises:
        ValueError: for an unknown norm, a radius outside [0, 1] (L-inf) or negative,
            ``steps`` not an int >= 1, a ``step_size`` that is not finite and > 0, or a
            non-bool flag.

    Example:
        >>> t = ThreatModel(eps=0.1, steps=5)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
        >>> bool(((t.attack(model, x, y).x_adv - x).abs() <= 0.1 + 1e-6).all())
        True
    """

    eps: float = 0.1
    norm: AttackNorm = "linf"
    steps: int = 10
    step_size: float | None = None
    random_init: bool = True
    train_mode: bool = False

    def __post_init__(self) -> None:
        check_choice(self.norm, ATTACK_NORMS, "norm")
        if not _is_number(self.eps):
            raise InputError(f"eps must be a number (pixel units), got {self.eps!r}")
        check_radius(self.eps, "eps", upper=1.0 if self.norm == "linf" else None)
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise InputError(f"steps must be an int >= 1, got {self.steps!r}")
        if self.step_size is not None and not (
            _is_number(self.step_size) and math.isfinite(self.step_size) and self.step_size > 0
        ):
            raise InputError(
                f"step_size must be a finite number > 0 or None, got {self.step_size!r}"
            )
        for name in ("random_init", "train_mode"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        object.__setattr__(self, "eps", float(self.eps))
        if self.step_size is not None:
            object.__setattr__(self, "step_size", float(self.step_size))

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, default: ThreatModel | None = None
    ) -> ThreatModel:
        """A threat from a mapping (YAML); keys it does not name come from ``default``.

        Raises ``ValueError`` naming the valid keys for an unknown key.
        """
        if not isinstance(data, Mapping):
            raise InputTypeError(
                f"a threat must be a mapping of {', '.join(THREAT_KEYS)}, got {data!r}"
            )
        unknown = sorted(str(k) for k in data if k not in THREAT_KEYS)
        if unknown:
            raise InputError(
                f"unknown threat key(s) {unknown}; valid keys: {', '.join(THREAT_KEYS)}"
            )
        return dataclasses.replace(default if default is not None else cls(), **dict(data))

    def to_dict(self) -> dict[str, Any]:
        """The threat as a plain dict (YAML / JSON)."""
        return dataclasses.asdict(self)

    def step_or(self, default: float | torch.Tensor | None) -> float | torch.Tensor | None:
        """``step_size`` if set, else ``default`` (None: the engine's ``2.5 * eps / steps``)."""
        return self.step_size if self.step_size is not None else default

    def attack(
        self,
        model: nn.Module,
        x: torch.Tensor,
        target: torch.Tensor,
        *,
        eps: float | torch.Tensor | None = None,
        default_step_size: float | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **engine_options: Any,
    ) -> AttackResult:
        """Run ``attacks.pgd.pgd`` in this threat model.

        Args:
            model: classifier on [N, C, H, W] inputs in [0, 1], returning logits [N, K].
            x: clean images [N, C, H, W] in [0, 1].
            target: what the objective compares with (labels [N], probabilities [N, K]).
            eps: a radius that replaces ``self.eps`` for this call, a float or a
                per-example tensor [N] (CAT's radii e_i <= eps); pixel units.
            default_step_size: the owner's step rule, used when ``self.step_size`` is
                None (a float or a per-example tensor [N]); None: ``2.5 * eps / steps``.
            generator: source of the random start.
            **engine_options: the other ``pgd`` options (``objective``, ``restarts``,
                ``keep_best``, ``early_stop``, ``tau``, ``init_std``, ``targeted``).
                Threat fields cannot be passed here (a ``TypeError``).

        Returns:
            The engine's ``AttackResult``.
        """
        return pgd(
            model, x, target, eps=self.eps if eps is None else eps, norm=self.norm,
            steps=self.steps, step_size=self.step_or(default_step_size),
            random_init=self.random_init, train_mode=self.train_mode, generator=generator,
            **engine_options,
        )


def resolve_threat(value: ThreatModel | Mapping[str, Any], *, default: ThreatModel) -> ThreatModel:
    """The ``threat`` field of an owner: a ``ThreatModel`` as is, a mapping over ``default``.

    Owners (training methods, ``AttackSpec``) call this in ``__post_init__`` so that the
    field may be given as a dict from YAML.
    """
    if isinstance(value, ThreatModel):
        return value
    if isinstance(value, Mapping):
        return ThreatModel.from_dict(value, default=default)
    raise InputTypeError(f"threat must be a ThreatModel or a mapping, got {type(value).__name__}")


def field_default(owner: type, name: str = "threat") -> ThreatModel:
    """The default ``ThreatModel`` declared for the dataclass field ``name`` of ``owner``."""
    default = owner.__dataclass_fields__[name].default  # type: ignore[attr-defined]
    if not isinstance(default, ThreatModel):
        raise InputTypeError(f"{owner.__name__}.{name} has no ThreatModel default")
    return default


def init_threat(owner: Any, name: str = "threat") -> None:
    """In a frozen owner's ``__post_init__``: turn a mapping ``threat`` into a ``ThreatModel``.

    Keys the mapping does not name keep the owner's declared default threat.
    """
    value = getattr(owner, name)
    object.__setattr__(owner, name, resolve_threat(value, default=field_default(type(owner), name)))


__all__ = ["THREAT_KEYS", "AttackNorm", "ThreatModel", "field_default", "init_threat",
           "resolve_threat"]
