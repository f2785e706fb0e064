"""MACER's loss: cross-entropy of the soft smoothed classifier plus a hinge on its radius.

Zhai et al. 2020, "MACER: Attack-free and Scalable Robust Training via Maximizing Certified
Radius", arXiv 2001.02378 (ICLR 2020), Algorithm 1, as their code computes it
(github.com/RuntianZ/macer, ``macer.py``). For an input ``x`` with label ``y`` and ``k``
Gaussian draws ``eta_1..eta_k ~ N(0, sigma^2 I)``:

- soft smoothed classifier: ``G(x) = 1/k sum_i softmax(beta f(x + eta_i))`` (inverse
  temperature ``beta``); the classification term uses ``beta = 1``:
  ``L_C = -log(1/k sum_i softmax(f(x + eta_i))_y)``, averaged over the batch;
- soft radius: ``xi = Phi^-1(G(x)_y) - Phi^-1(max_{j != y} G(x)_j)`` (the certified radius
  ``sigma/2 xi`` of Cohen et al.'s two-class bound, with the soft classifier's
  probabilities in place of hard ones, so it is differentiable);
- robustness term: ``L_R = sigma/2 max(gamma - xi, 0)`` on the inputs ``G`` classifies
  correctly; the code drops the others and also those where ``xi`` is not finite (a
  probability of exactly 0 or 1) or larger than ``gamma`` (where the hinge is 0 anyway);
- loss: ``(sum_batch L_C + lam sum_correct L_R) / batch size``.

``Phi^-1`` is ``torch.special.ndtri`` (differentiable; the paper's code uses
``torch.distributions.Normal(0, 1).icdf``, the same function, which loses precision for
probabilities below about 1e-7 in float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bastion.errors import InputError


def normal_icdf(p: torch.Tensor) -> torch.Tensor:
    """``Phi^-1(p)``, the standard normal quantile, differentiable (``torch.special.ndtri``)."""
    return torch.special.ndtri(p)


def soft_smoothed_probs(logits: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """MACER's soft smoothed classifier: ``mean_i softmax(beta * logits_i)`` over the draws.

    Shape:
        logits [B, k, K] (k noise draws per input) -> probabilities [B, K].
    """
    if logits.dim() != 3:
        raise InputError(f"logits must have shape [B, k, K], got {tuple(logits.shape)}")
    return F.softmax(beta * logits, dim=-1).mean(dim=1)


def soft_radius(probs: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """``sigma/2 (Phi^-1(p_y) - Phi^-1(max_{j != y} p_j))`` per input (negative if wrong).

    Shape:
        probs [B, K], y [B] -> [B].
    """
    p_y = probs.gather(1, y.view(-1, 1)).squeeze(1)
    others = probs.scatter(1, y.view(-1, 1), float("-inf"))
    return 0.5 * sigma * (normal_icdf(p_y) - normal_icdf(others.max(dim=1).values))


@dataclass(frozen=True)
class MacerTerms:
    """MACER's loss and its parts for one batch.

    Args:
        loss: scalar, ``classification + lam * robustness`` (with gradients).
        classification: scalar, mean ``L_C`` (with gradients).
        robustness: scalar, ``sum_correct L_R / batch size`` (with gradients).
        correct: bool [B], inputs the soft smoothed classifier (with ``beta``) gets right.
        active: bool [B], inputs whose hinge term is in the loss.
        radius: float [B], detached soft radius ``sigma/2 xi`` (NaN where not correct).
        accuracy: scalar, detached accuracy of ``argmax_c mean_i softmax(f(x + eta_i))``.
    """

    loss: torch.Tensor
    classification: torch.Tensor
    robustness: torch.Tensor
    correct: torch.Tensor
    active: torch.Tensor
    radius: torch.Tensor
    accuracy: torch.Tensor


def macer_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    *,
    sigma: float,
    lam: float = 12.0,
    gamma: float = 8.0,
    beta: float = 16.0,
) -> MacerTerms:
    """MACER's training loss from the logits of ``k`` noisy copies of each input.

    Zhai et al. 2020, arXiv 2001.02378, Algorithm 1 (see the module docstring).

    Args:
        logits: base-model logits of the noisy copies, [B, k, K] (input-major).
        y: int64 labels [B].
        sigma: the Gaussian noise level the copies were drawn with (pixel units).
        lam: weight of the robustness term (paper: 12 for CIFAR-10 at sigma 0.25/0.5).
        gamma: hinge threshold on ``xi`` (paper: 8).
        beta: inverse temperature of the soft classifier in the robustness term (paper: 16).

    Shape:
        logits [B, k, K], y [B] -> scalars and [B] masks.

    Returns:
        ``MacerTerms``.

    Example:
        >>> logits = torch.randn(4, 8, 3, requires_grad=True)
        >>> terms = macer_loss(logits, torch.tensor([0, 1, 2, 0]), sigma=0.25)
        >>> terms.loss.backward()
    """
    if logits.dim() != 3 or y.shape != (logits.shape[0],):
        raise InputError(
            f"need logits [B, k, K] and labels [B]; got {tuple(logits.shape)}, {tuple(y.shape)}"
        )
    for name, v in (("sigma", sigma), ("gamma", gamma), ("beta", beta)):
        if not v > 0:
            raise InputError(f"{name} must be > 0, got {v}")
    if lam < 0:
        raise InputError(f"lam must be >= 0, got {lam}")
    b = logits.shape[0]
    probs = soft_smoothed_probs(logits, 1.0)
    classification = F.nll_loss(torch.log(probs + 1e-10), y)  # the code's guard against log 0
    soft = soft_smoothed_probs(logits, beta)
    top2 = soft.topk(2, dim=1)
    correct = top2.indices[:, 0] == y
    with torch.no_grad():
        xi_all = normal_icdf(top2.values[:, 0]) - normal_icdf(top2.values[:, 1])
        active = correct & torch.isfinite(xi_all) & (xi_all <= gamma)
    sel = active.nonzero().squeeze(1)
    xi = normal_icdf(top2.values[sel, 0]) - normal_icdf(top2.values[sel, 1])
    robustness = 0.5 * sigma * (gamma - xi).sum() / b
    radius = torch.where(correct, 0.5 * sigma * xi_all, torch.full_like(xi_all, float("nan")))
    accuracy = (probs.detach().argmax(dim=1) == y).float().mean()
    return MacerTerms(
        loss=classification + lam * robustness,
        classification=classification,
        robustness=robustness,
        correct=correct,
        active=active,
        radius=radius.detach(),
        accuracy=accuracy,
    )


__all__ = ["MacerTerms", "macer_loss", "normal_icdf", "soft_radius", "soft_smoothed_probs"]
