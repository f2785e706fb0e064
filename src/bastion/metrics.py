"""Robustness metrics of the seed chapter, equations (1)-(6), one definition each.

Every function takes per-example records (``EvalResult`` for attacks, ``Certificate`` for
certifiers), so curves over several epsilons or radii cost nothing extra. The points each
rate averages over are stated in its docstring; "all points" means every evaluated test
point, including those the model misclassifies when clean. ``docs/metrics.md`` lists the
definitions side by side.

Average perturbation has two named definitions, and every summary that shows one (FMN's
summary through ``attacks.evaluate.evaluate_minimal``, the benchmark tables) names it:

- ``average_perturbation`` -- the seed's equation (3), E[||x - x'|| 1{f(x') != y}] over
  *all* points: unbroken points count 0, and so do points misclassified when clean (their
  x' is x).
- ``average_perturbation_of_successes`` -- the mean of ||x - x'|| over the points the attack
  *flipped* (correct when clean, wrong after the attack); NaN if there is none. For a
  minimal-perturbation attack this is "the average distance to the decision boundary of
  the points the model gets right".

Attack rates (eqs. (1), (2)) take the worst case over the record's outcomes: a point is
broken at ``eps`` if any outcome of the norm found a misclassified point within ``eps``
(``EvalResult.adv_correct``). Certified rates (eqs. (4)-(6)) take ``labels=None`` to use the
certificate's own ``labels``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from bastion.errors import InputError, InputTypeError
from bastion.records import AttackOutcome, Certificate, EvalResult


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``pred == labels`` over all points."""
    if pred.shape != labels.shape:
        raise InputError(f"shape mismatch: {tuple(pred.shape)} vs {tuple(labels.shape)}")
    return float((pred == labels).double().mean())


def attack_success_rate(
    result: EvalResult,
    over: Literal["all", "clean-correct"] = "all",
    *,
    eps: float | None = None,
    norm: str | None = None,
    attack: str | None = None,
) -> float:
    """Attack success rate, eq. (1): E[1{f(x') != y}], worst case over the record's attacks.

    ``over="all"`` (the seed's definition): over all evaluated points, so a point
    misclassified when clean counts as a success (its x' is x). ``over="clean-correct"``:
    over points classified correctly when clean only, the fraction the attacks flip.
    ``eps``, ``norm`` and ``attack`` select the threat (see ``EvalResult.adv_correct``):
    a point counts as fooled if any matching outcome found a misclassified point within
    ``eps`` of it.
    """
    fooled = ~result.adv_correct(eps, norm=norm, attack=attack)
    if over == "all":
        return float(fooled.double().mean())
    if over == "clean-correct":
        cc = result.clean_correct
        if not cc.any():
            raise InputError("no point is classified correctly; the rate is undefined")
        return float(fooled[cc].double().mean())
    raise InputError(f"unknown over={over!r}; valid: 'all', 'clean-correct'")


def robust_accuracy(
    result: EvalResult, *, eps: float | None = None, norm: str | None = None,
    attack: str | None = None,
) -> float:
    """Robust accuracy, eq. (2): RA = 1 - ASR(over="all"), the fraction of all points
    correct when clean and not broken by any matching outcome within ``eps``."""
    return float(result.adv_correct(eps, norm=norm, attack=attack).double().mean())


def _flipped(result: EvalResult, o: AttackOutcome) -> torch.Tensor:
    return result.clean_correct & (o.adv_pred != result.labels)


def average_perturbation(
    result: EvalResult, *, attack: str | None = None, norm: str | None = None,
    eps: float | None = None,
) -> float:
    """Average perturbation, the seed's eq. (3): E[||x - x'|| 1{f(x') != y}] over all points.

    The sum of ``||x - x'||`` over the points the attack flipped, divided by the number of
    *all* evaluated points: points the attack did not break contribute 0, and so do points
    misclassified when clean (x' = x). In pixel units of the outcome's norm. It is one
    attack's number: ``attack``, ``norm`` and ``eps`` must pick exactly one outcome of the
    record (``ValueError`` otherwise).
    """
    o = result.only(attack=attack, norm=norm, eps=eps)
    wrong = (o.adv_pred != result.labels).double()
    return float((o.perturbation.double() * wrong).mean())


def average_perturbation_of_successes(
    result: EvalResult, *, attack: str | None = None, norm: str | None = None,
    eps: float | None = None,
) -> float:
    """Mean ``||x - x'||`` over the points the attack flipped (correct when clean, wrong
    after the attack); NaN if it flipped none. Clean-misclassified points are excluded.

    The sum of the flipped points' norms divided by their number. For a minimal attack
    (``evaluate_minimal``) it is the mean distance to the decision boundary found for the
    points the model gets right. One outcome, chosen as in ``average_perturbation``.
    """
    o = result.only(attack=attack, norm=norm, eps=eps)
    flipped = _flipped(result, o)
    return float(o.perturbation.double()[flipped].mean()) if flipped.any() else math.nan


def _labels_of(cert: Certificate, labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        if cert.labels is None:
            raise InputError("the certificate carries no labels; pass labels")
        labels = cert.labels
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
        raise InputTypeError("labels must be an int64 tensor of shape [N]")
    if labels.shape != cert.prediction.shape:
        raise InputError(
            f"{labels.shape[0] if labels.dim() else 0} labels for a certificate of "
            f"{cert.prediction.shape[0]} points"
        )
    return labels.to(cert.prediction.device)


def _certified_correct(cert: Certificate, labels: torch.Tensor | None) -> torch.Tensor:
    return (~cert.abstained) & (cert.prediction == _labels_of(cert, labels))


def certified_radius(cert: Certificate, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Certified radius per example, eq. (5), as far as the certificate shows it: its radius
    where the certified prediction is correct, else 0 (abstained or wrong). float64 [N], in
    the certificate's norm. ``labels=None`` uses the certificate's own ``labels``."""
    return torch.where(_certified_correct(cert, labels), cert.radius, 0.0)


def certified_accuracy(
    cert: Certificate, labels: torch.Tensor | None, radii: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Certified robust accuracy, eq. (4), at each radius r: the fraction of all points
    that are not abstained, certified with the correct class and have ``radius >= r``.

    float64 [len(radii)], non-increasing in r; at r = 0 it is the certified classifier's
    accuracy (abstentions count as wrong). ``labels=None`` uses the certificate's own.
    """
    ok = _certified_correct(cert, labels)
    r = torch.as_tensor(radii, dtype=torch.float64).flatten()
    if torch.isnan(r).any() or (r < 0).any():
        raise InputError(f"radii must be >= 0, got {r.tolist()}")
    return ((cert.radius[None, :] >= r[:, None]) & ok[None, :]).double().mean(dim=1)


def average_certified_radius(cert: Certificate, labels: torch.Tensor | None = None) -> float:
    """Average certified radius, eq. (6): E[CR(x, y) 1{g(x) = y}] over all points
    (abstentions and wrong predictions count as 0). ``labels=None`` uses the
    certificate's own."""
    return float(certified_radius(cert, labels).mean())
