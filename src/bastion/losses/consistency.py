"""The Jensen-Shannon consistency term between temperature-scaled predictions.

Tack, Yu, Jeong, Kim, Hwang & Shin 2022, "Consistency Regularization for Adversarial
Robustness", arXiv 2103.04623 (AAAI 2022); reference code github.com/alinlab/
consistency-adversarial (``training/__init__.py``: ``_jensen_shannon_div``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from bastion.errors import InputError


def js_divergence(
    logits_p: torch.Tensor,
    logits_q: torch.Tensor,
    tau: float = 1.0,
    reduction: Literal["batchmean", "none"] = "batchmean",
) -> torch.Tensor:
    """Jensen-Shannon divergence ``JS(P || Q) = (KL(P || M) + KL(Q || M)) / 2``, ``M = (P+Q)/2``.

    ``P = softmax(logits_p / tau)`` and ``Q = softmax(logits_q / tau)`` (temperature-scaled
    predictions; ``tau < 1`` sharpens them). Natural logarithm, so the value lies in
    ``[0, log 2]``; it equals ``scipy.spatial.distance.jensenshannon(P, Q) ** 2`` (scipy
    returns the square root, the JS *distance*). ``log M`` is computed as
    ``logsumexp(log P, log Q) - log 2``, exact where the reference code clamps ``M`` at 1e-8.
    Symmetric in its two arguments; gradients flow through both.

    Args:
        logits_p: logits [N, K].
        logits_q: logits [N, K].
        tau: temperature > 0.
        reduction: ``"batchmean"`` (sum over classes, mean over the batch, as the reference
            code) or ``"none"`` (per example, [N]).

    Example:
        >>> z = torch.tensor([[0.0, 10.0]])
        >>> round(float(js_divergence(z, z)), 6)
        0.0
    """
    if not (isinstance(tau, int | float) and math.isfinite(tau) and tau > 0):
        raise InputError(f"tau must be a finite number > 0, got {tau!r}")
    if logits_p.dim() != 2 or logits_p.shape != logits_q.shape:
        raise InputError(f"logits must both have shape [N, K]; got {tuple(logits_p.shape)} "
                         f"and {tuple(logits_q.shape)}")
    if reduction not in ("batchmean", "none"):
        raise InputError(f"unknown reduction {reduction!r}; valid choices: batchmean, none")
    log_p = F.log_softmax(logits_p / tau, dim=1)
    log_q = F.log_softmax(logits_q / tau, dim=1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(dim=1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(dim=1)
    per = 0.5 * (kl_pm + kl_qm)
    return per.mean() if reduction == "batchmean" else per
