"""Robustness metrics of the seed chapter, equations (1)-(6).

Every function takes per-example records (``EvalResult`` for attacks, ``Certificate`` for
certifiers), so curves over several epsilons or radii cost nothing extra. The points each
rate averages over are stated in its docstring; "all points" means every evaluated test
point, including those the model misclassifies when clean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from bastion.bench.results import EvalResult
from bastion.certify.records import Certificate


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``pred == labels`` over all points."""
    if pred.shape != labels.shape:
        raise ValueError(f"shape mismatch: {tuple(pred.shape)} vs {tuple(labels.shape)}")
    return float((pred == labels).double().mean())


def attack_success_rate(
    result: EvalResult, over: Literal["all", "clean-correct"] = "all"
) -> float:
    """Attack success rate, eq. (1): E[1{f(x') != y}].

    ``over="all"`` (the seed's definition): over all evaluated points, so a point
    misclassified when clean counts as a success (its x' is x). ``over="clean-correct"``:
    over points classified correctly when clean only, the fraction the attack flips.
    """
    fooled = ~result.adv_correct
    if over == "all":
        return float(fooled.double().mean())
    if over == "clean-correct":
        cc = result.clean_correct
        if not cc.any():
            raise ValueError("no point is classified correctly; the rate is undefined")
        return float(fooled[cc].double().mean())
    raise ValueError(f"unknown over={over!r}; valid: 'all', 'clean-correct'")


def robust_accuracy(result: EvalResult) -> float:
    """Robust accuracy, eq. (2): RA = 1 - ASR over all points (correct clean and adversarial)."""
    return 1.0 - attack_success_rate(result, over="all")


def average_perturbation(
    result: EvalResult, over: Literal["successful", "all"] = "successful"
) -> float:
    """Average perturbation size in the attack's norm, eq. (3).

    ``over="successful"`` (default): mean of ``||x - x'||`` over the points the attack
    flipped (clean-correct and adversarially wrong); NaN if there is none.
    ``over="all"``: the seed's literal eq. (3), E[||x - x'|| 1{f(x') != y}] over all
    points (unflipped points contribute 0).
    """
    flipped = result.clean_correct & ~result.adv_correct
    pert = result.perturbation.double()
    if over == "successful":
        return float(pert[flipped].mean()) if flipped.any() else float("nan")
    if over == "all":
        return float((pert * (~result.adv_correct).double()).mean())
    raise ValueError(f"unknown over={over!r}; valid: 'successful', 'all'")


def _certified_correct(cert: Certificate, labels: torch.Tensor) -> torch.Tensor:
    if labels.shape != cert.prediction.shape:
        raise ValueError(
            f"{labels.shape[0]} labels for a certificate of {cert.prediction.shape[0]} points"
        )
    return (~cert.abstained) & (cert.prediction == labels.to(cert.prediction.device))


def certified_radius(cert: Certificate, labels: torch.Tensor) -> torch.Tensor:
    """Certified radius per example, eq. (5): the certificate's radius where the certified
    prediction is correct, else 0 (abstained or wrong). float64 [N]."""
    return torch.where(_certified_correct(cert, labels), cert.radius.double(), 0.0)


def certified_accuracy(
    cert: Certificate, labels: torch.Tensor, radii: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Certified robust accuracy, eq. (4), at each radius: fraction of all points that are
    certified, correctly, with ``radius >= r``. float64 [len(radii)]."""
    cr = certified_radius(cert, labels)
    ok = _certified_correct(cert, labels)
    r = torch.as_tensor(radii, dtype=torch.float64).flatten()
    return ((cr[None, :] >= r[:, None]) & ok[None, :]).double().mean(dim=1)


def average_certified_radius(cert: Certificate, labels: torch.Tensor) -> float:
    """Average certified radius, eq. (6): E[CR(x, y) 1{g(x) = y}] over all points
    (abstentions and wrong predictions count as 0)."""
    return float(certified_radius(cert, labels).mean())
