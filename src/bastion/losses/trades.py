"""The TRADES surrogate loss: clean cross-entropy plus a KL boundary term.

Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and Accuracy",
arXiv 1901.08573.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bastion.errors import InputError


def _check_logits(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> None:
    if logits_clean.dim() != 2 or logits_clean.shape != logits_adv.shape:
        raise InputError(
            "logits_clean and logits_adv must both have shape [N, K]; got "
            f"{tuple(logits_clean.shape)} and {tuple(logits_adv.shape)}"
        )


def trades_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """``KL(f(x) || f(x'))`` summed over classes and averaged over the batch.

    ``f`` is the softmax of the logits. This is TRADES' robust term exactly as its code
    computes it (``nn.KLDivLoss(size_average=False)(log_softmax(f(x')), softmax(f(x))) / N``,
    github.com/yaodongyu/TRADES ``trades.py``); it is evaluated here in log space
    (``log_target=True``), the same value without ``log(0)`` when a probability underflows.
    Gradients flow through both arguments, as in TRADES.

    Shape:
        logits_clean [N, K], logits_adv [N, K] -> scalar.
    """
    _check_logits(logits_clean, logits_adv)
    log_p = F.log_softmax(logits_clean, dim=1)
    log_q = F.log_softmax(logits_adv, dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def trades_loss(
    logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> torch.Tensor:
    """TRADES' training loss ``CE(f(x), y) + beta * KL(f(x) || f(x'))``.

    Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
    Accuracy", arXiv 1901.08573, eq. (5) with the KL surrogate of their code: the
    cross-entropy is averaged over the batch, the KL is summed over classes and averaged
    over the batch (see :func:`trades_kl`).

    Args:
        logits_clean: logits ``f(x)`` of the clean batch, [N, K].
        logits_adv: logits ``f(x')`` of the adversarial batch, [N, K].
        y: int64 labels [N].
        beta: weight of the robust (KL) term, >= 0; 1/lambda in the paper's notation.

    Returns:
        A scalar tensor with gradients through both logits.

    Example:
        >>> z = torch.zeros(2, 3)
        >>> round(float(trades_loss(z, z, torch.tensor([0, 1]), beta=6.0)), 4)  # log 3
        1.0986
    """
    _check_logits(logits_clean, logits_adv)
    if not (math.isfinite(beta) and beta >= 0):
        raise InputError(f"beta must be a finite number >= 0, got {beta!r}")
    return F.cross_entropy(logits_clean, y) + beta * trades_kl(logits_clean, logits_adv)
