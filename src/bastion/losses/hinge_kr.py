"""The hinge Kantorovich-Rubinstein (HKR) loss for 1-Lipschitz classifiers.

Serrurier, Mamalet, Gonzalez-Sanz, Boissin, Loubes and del Barrio 2021, "Achieving robustness
in classification using optimal transport with hinge regularization", CVPR (arXiv
2006.06520); Bethune, Boissin, Serrurier, Mamalet, Friedrich and Gonzalez-Sanz 2022, "Pay
attention to your loss: understanding misconceptions about 1-Lipschitz neural networks",
NeurIPS (arXiv 2104.05097).

The multi-class formulas are those of deel-torchlip 1.0.5 (``deel.torchlip.functional``:
``kr_loss``, ``hinge_multiclass_loss``, ``hkr_multiclass_loss``; classes
``KRMulticlassLoss``, ``HingeMulticlassLoss``, ``HKRMulticlassLoss``), which take one-hot
targets; here labels are integer class indices. Notation: logits ``f`` [N, K], labels
``y`` [N], ``n_k`` the number of examples of class ``k`` in the batch, ``m`` the margin.

* KR term (one-vs-rest Wasserstein-1 estimate, averaged over classes)::

      KR = (1/K) sum_k ( mean_{i: y_i = k} f_k(x_i) - mean_{i: y_i != k} f_k(x_i) )

  an empty group's mean counts as 0 (a class absent from the batch contributes
  ``-mean_i f_k(x_i)``), as in deel-torchlip.
* hinge term (one-vs-all, the true class re-weighted by ``K - 1``)::

      H_i = (1/K) [ (K - 1) relu(m/2 - f_{y_i}(x_i)) + sum_{j != y_i} relu(m/2 + f_j(x_i)) ]

  zero exactly when ``f_y >= m/2`` and every ``f_j <= -m/2``, hence ``f_y - f_j >= m``.
* HKR: ``loss = alpha * mean_i H_i - (1 - alpha) * KR`` with ``alpha`` in ``[0, 1]``
  (deel-torchlip 1.0.5, the version checked; earlier deel-lip / deel-torchlip releases used
  ``alpha * H - KR`` with ``alpha > 1``, which is ``(1 + alpha)`` times this loss at
  ``alpha / (1 + alpha)``; deel-torchlip 1.0.5 still converts such an ``alpha`` with a
  warning, bastion raises instead).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from bastion._validate import check_choice, check_labels
from bastion.errors import InputError, InputTypeError

REDUCTIONS = ("mean", "sum", "none")
"""Valid ``reduction`` arguments."""


def _check(logits: torch.Tensor, labels: torch.Tensor, reduction: str) -> None:
    if not isinstance(logits, torch.Tensor):
        raise InputTypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise InputTypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if logits.dim() != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
        raise InputError(
            f"logits must have shape [N, K] with N >= 1 examples and K >= 2 classes, got "
            f"{tuple(logits.shape)}"
        )
    check_labels(labels, logits.shape[0], "labels")
    k = logits.shape[1]
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise InputError(f"labels must lie in [0, {k - 1}] for {k} classes, got values in "
                         f"[{lo}, {hi}]")
    if not isinstance(reduction, str):
        raise InputTypeError(f"reduction must be one of {', '.join(REDUCTIONS)}, got "
                             f"{reduction!r}")
    check_choice(reduction, REDUCTIONS, "reduction")


def _check_margin(margin: float) -> None:
    if (isinstance(margin, bool) or not isinstance(margin, numbers.Real)
            or not math.isfinite(margin) or margin <= 0):
        raise InputError(f"margin must be a finite number > 0 (in logit units), got {margin!r}")


def _reduce(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    return per_example


def kr_term(logits: torch.Tensor, labels: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Multi-class Kantorovich-Rubinstein term ``KR`` (to be maximised; see the module doc).

    ``KR = (1/K) sum_k (mean_{y_i = k} f_k(x_i) - mean_{y_i != k} f_k(x_i))``, the average
    over classes of the KR dual estimate of ``W_1(P(x | y = k), P(x | y != k))`` when ``f``
    is 1-Lipschitz (Serrurier et al. 2021; deel-torchlip 1.0.5 ``kr_loss`` with one-hot
    targets).

    Args:
        logits: float [N, K].
        labels: int64 [N] with values in ``[0, K)``.
        reduction: ``"mean"`` (``KR``), ``"sum"`` (``N * KR``) or ``"none"``: the per-example
            terms ``(1/K) sum_k w_ik f_k(x_i)`` with ``w_ik = N / n_k`` if ``y_i = k`` and
            ``-N / (N - n_k)`` otherwise, whose mean is ``KR``. They depend on the batch's
            class counts.

    Shape:
        [N, K], [N] -> scalar, or [N] with ``reduction="none"`` (logit units).
    """
    _check(logits, labels, reduction)
    n, k = logits.shape
    onehot = F.one_hot(labels, k).to(logits.dtype)
    pos = onehot.sum(dim=0)
    neg = n - pos
    pos_w = torch.where(pos > 0, n / pos.clamp(min=1), torch.zeros_like(pos))
    neg_w = torch.where(neg > 0, n / neg.clamp(min=1), torch.zeros_like(neg))
    weights = onehot * pos_w - (1.0 - onehot) * neg_w
    return _reduce((weights * logits).mean(dim=1), reduction)


def hinge_term(
    logits: torch.Tensor, labels: torch.Tensor, margin: float, *, reduction: str = "mean"
) -> torch.Tensor:
    """One-vs-all multi-class hinge term ``H`` of the HKR loss (see the module doc).

    ``H_i = (1/K) [(K - 1) relu(m/2 - f_{y_i}) + sum_{j != y_i} relu(m/2 + f_j)]``
    (deel-torchlip 1.0.5 ``hinge_multiclass_loss`` / ``HingeMulticlassLoss``; deel-lip's
    ``MulticlassHinge``). Zero when ``f_y >= m/2`` and every other ``f_j <= -m/2``.

    Args:
        logits: float [N, K].
        labels: int64 [N] with values in ``[0, K)``.
        margin: ``m`` > 0, in logit units: the enforced gap between ``f_y`` and each ``f_j``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per example).

    Shape:
        [N, K], [N] -> scalar, or [N] with ``reduction="none"``.
    """
    _check(logits, labels, reduction)
    _check_margin(margin)
    k = logits.shape[1]
    onehot = F.one_hot(labels, k).to(torch.bool)
    sign = torch.where(onehot, 1.0, -1.0).to(logits.dtype)
    hinge = F.relu(margin / 2.0 - sign * logits)
    hinge = torch.where(onehot, hinge * (k - 1.0), hinge)
    return _reduce(hinge.mean(dim=1), reduction)


def hinge_kr_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    margin: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """Multi-class hinge-KR loss ``alpha * H - (1 - alpha) * KR`` (deel-torchlip 1.0.5).

    Serrurier et al. 2021 (CVPR, arXiv 2006.06520), in the convex-combination form of
    deel-torchlip 1.0.5 ``HKRMulticlassLoss(alpha, min_margin=margin)`` (``loss =
    alpha * hinge_multiclass - (1 - alpha) * kr``, per example, then reduced); ``H`` is
    :func:`hinge_term` and ``KR`` is :func:`kr_term`. ``alpha = 0`` gives ``-KR`` only and
    ``alpha = 1`` the hinge only; as in deel-torchlip, those two ends evaluate only their term.
    The loss is meant for 1-Lipschitz networks, whose logit gaps bound the certified L2
    radius (Bethune et al. 2022, arXiv 2104.05097).

    Args:
        logits: float [N, K].
        labels: int64 [N] with values in ``[0, K)``.
        alpha: weight of the hinge term in ``[0, 1]``. (Old deel-lip / deel-torchlip used
            ``alpha * H - KR`` with ``alpha`` > 1: pass ``alpha / (1 + alpha)`` instead.)
        margin: ``m`` > 0 in logit units (deel-torchlip's ``min_margin``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-example values, whose KR part
            uses batch-dependent class weights, see :func:`kr_term`).

    Shape:
        [N, K], [N] -> scalar, or [N] with ``reduction="none"``.
    """
    if (isinstance(alpha, bool) or not isinstance(alpha, numbers.Real)
            or not 0.0 <= float(alpha) <= 1.0):
        raise InputError(
            f"alpha must be a number in [0, 1] (weight of the hinge term), got {alpha!r}; "
            "for the old 'alpha * hinge - KR' convention with alpha > 1 pass "
            "alpha / (1 + alpha)"
        )
    alpha = float(alpha)
    if alpha == 1.0:
        return hinge_term(logits, labels, margin, reduction=reduction)
    _check_margin(margin)
    kr = kr_term(logits, labels, reduction="none")
    if alpha == 0.0:
        return _reduce(-kr, reduction)
    hinge = hinge_term(logits, labels, margin, reduction="none")
    return _reduce(alpha * hinge - (1.0 - alpha) * kr, reduction)


def multiclass_hinge(
    logits: torch.Tensor, labels: torch.Tensor, margin: float, *, reduction: str = "mean"
) -> torch.Tensor:
    """Margin (Crammer-Singer) multi-class hinge ``relu(m - (f_y - max_{j != y} f_j))``.

    Crammer and Singer 2001, "On the algorithmic implementation of multiclass kernel-based
    vector machines", JMLR. Zero exactly when the true logit beats every other one by at
    least ``m``; for an L-Lipschitz (L2) network the gap ``f_y - max_{j!=y} f_j`` bounds the
    certified L2 radius by ``gap / (sqrt(2) L)`` (Bethune et al. 2022, arXiv 2104.05097).
    Matches deel-torchlip 1.0.5 ``CategoricalHingeLoss(min_margin=margin)``. Unlike
    :func:`hinge_term` (the one-vs-all hinge inside HKR) it looks only at the runner-up.

    Args:
        logits: float [N, K].
        labels: int64 [N] with values in ``[0, K)``.
        margin: ``m`` > 0 in logit units.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per example).

    Shape:
        [N, K], [N] -> scalar, or [N] with ``reduction="none"``.
    """
    _check(logits, labels, reduction)
    _check_margin(margin)
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).to(torch.bool), -math.inf)
    runner_up = others.amax(dim=1)
    return _reduce(F.relu(margin - (true - runner_up)), reduction)


__all__ = ["REDUCTIONS", "hinge_kr_loss", "hinge_term", "kr_term", "multiclass_hinge"]
