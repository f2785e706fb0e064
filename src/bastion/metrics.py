"""Robustness metrics of the seed chapter, equations (1)-(6), one definition each.

Every function takes per-example records (``EvalResult`` for attacks, ``Certificate`` for
certifiers), so curves over several epsilons or radii cost nothing extra. The points each
rate averages over are stated in its docstring; "all points" means every evaluated test
point, including those the model misclassifies when clean. ``docs/metrics.md`` lists the
definitions side by side.

Average perturbation has two named definitions, and every summary in bastion (the
evaluation CLI, FMN's summary, the benchmark tables) says which one it shows:

- ``average_perturbation`` -- the seed's equation (3), E[||x - x'|| 1{f(x') != y}] over
  *all* points: unbroken points count 0, and so do points misclassified when clean (their
  x' is x).
- ``average_perturbation_of_successes`` -- the mean of ||x - x'|| over the points the attack
  *flipped* (correct when clean, wrong after the attack); NaN if there is none. For a
  minimal-perturbation attack this is "the average distance to the decision boundary of
  the points the model gets right".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from bastion.records import AttackOutcome, Certificate, EvalResult


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``pred == labels`` over all points."""
    if pred.shape != labels.shape:
        raise ValueError(f"shape mismatch: {tuple(pred.shape)} vs {tuple(labels.shape)}")
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
    ``eps``, ``norm`` and ``attack`` select the threat (see ``EvalResult.adv_correct``).
    """
    fooled = ~result.adv_correct(eps, norm=norm, attack=attack)
    if over == "all":
        return float(fooled.double().mean())
    if over == "clean-correct":
        cc = result.clean_correct
        if not cc.any():
            raise ValueError("no point is classified correctly; the rate is undefined")
        return float(fooled[cc].double().mean())
    raise ValueError(f"unknown over={over!r}; valid: 'all', 'clean-correct'")


def robust_accuracy(
    result: EvalResult, *, eps: float | None = None, norm: str | None = None,
    attack: str | None = None,
) -> float:
    """Robust accuracy, eq. (2): RA = 1 - ASR over all points (correct clean and adversarial,
    for every attack of the record within ``eps``)."""
    return 1.0 - attack_success_rate(result, "all", eps=eps, norm=norm, attack=attack)


def _outcome(result: EvalResult, attack: str | None, eps: float | None) -> AttackOutcome:
    return result.only(attack=attack, eps=eps)


def _flipped(result: EvalResult, o: AttackOutcome) -> torch.Tensor:
    return result.clean_correct & (o.adv_pred != result.labels)


def average_perturbation(
    result: EvalResult, *, attack: str | None = None, eps: float | None = None
) -> float:
    """Average perturbation, the seed's eq. (3): E[||x - x'|| 1{f(x') != y}] over all points.

    Points the attack did not break contribute 0, and so do points misclassified when
    clean (x' = x). In the norm of the chosen outcome (``attack``/``eps`` pick one when
    the record holds several).
    """
    o = _outcome(result, attack, eps)
    wrong = (o.adv_pred != result.labels).double()
    return float((o.perturbation.double() * wrong).mean())


def average_perturbation_of_successes(
    result: EvalResult, *, attack: str | None = None, eps: float | None = None
) -> float:
    """Mean ``||x - x'||`` over the points the attack flipped (correct when clean, wrong
    after the attack); NaN if it flipped none. Clean-misclassified points are excluded."""
    o = _outcome(result, attack, eps)
    flipped = _flipped(result, o)
    return float(o.perturbation.double()[flipped].mean()) if flipped.any() else math.nan


def _labels_of(cert: Certificate, labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        if cert.labels is None:
            raise ValueError("the certificate carries no labels; pass labels")
        labels = cert.labels
    if labels.shape != cert.prediction.shape:
        raise ValueError(
            f"{labels.shape[0]} labels for a certificate of {cert.prediction.shape[0]} points"
        )
    return labels.to(cert.prediction.device)


def _certified_correct(cert: Certificate, labels: torch.Tensor | None) -> torch.Tensor:
    return (~cert.abstained) & (cert.prediction == _labels_of(cert, labels))


def certified_radius(cert: Certificate, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Certified radius per example, eq. (5): the certificate's radius where the certified
    prediction is correct, else 0 (abstained or wrong). float64 [N]. ``labels`` default to
    the certificate's own."""
    return torch.where(_certified_correct(cert, labels), cert.radius.double(), 0.0)


def certified_accuracy(
    cert: Certificate, labels: torch.Tensor | None, radii: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Certified robust accuracy, eq. (4), at each radius: fraction of all points that are
    certified, correctly, with ``radius >= r``. float64 [len(radii)]. ``labels=None``
    uses the certificate's own."""
    ok = _certified_correct(cert, labels)
    cr = torch.where(ok, cert.radius.double(), 0.0)
    r = torch.as_tensor(radii, dtype=torch.float64).flatten()
    return ((cr[None, :] >= r[:, None]) & ok[None, :]).double().mean(dim=1)


def average_certified_radius(cert: Certificate, labels: torch.Tensor | None = None) -> float:
    """Average certified radius, eq. (6): E[CR(x, y) 1{g(x) = y}] over all points
    (abstentions and wrong predictions count as 0)."""
    return float(certified_radius(cert, labels).mean())
