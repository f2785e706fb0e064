"""Confidence bounds and tests on binomial counts, for Monte Carlo certification.

Randomized smoothing estimates class probabilities of the base classifier under noise from
counts of noisy predictions (Cohen et al. 2019, "Certified Adversarial Robustness via
Randomized Smoothing", arXiv 1902.02918, Section 3.2 and Appendix). This module holds the
statistics it needs, each checked against scipy/statsmodels in the tests:

- ``cp_lower`` / ``cp_upper``: one-sided (1 - alpha) Clopper-Pearson bounds on a binomial
  proportion (Clopper and Pearson 1934). The one-sided lower bound at level alpha equals the
  lower end of the two-sided interval at level 2 alpha, i.e. statsmodels'
  ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]`` used by Cohen's code.
- ``binomial_pvalue``: the two-sided exact binomial test p-value (``scipy.stats.binomtest``)
  of PREDICT's abstain rule (Hung and Fithian 2019, arXiv 1610.03944).
- ``two_class_bounds``: the bounds of the two-class radius
  ``R = sigma / 2 (Phi^-1(p_A) - Phi^-1(p_B))``, with the error probability split between
  the two estimates (see its docstring), as a :class:`TwoClassBounds` record.

All functions take Python ints or integer tensors/arrays and are vectorised; tensors in give
float64 tensors out (on the input's device), anything else gives numpy float64 arrays (or a
float for scalar inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats as sps

from bastion.errors import InputError


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0):
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}")


def _as_counts(k: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
    k_np = np.asarray(k.detach().cpu() if isinstance(k, torch.Tensor) else k, dtype=np.float64)
    n_np = np.asarray(n.detach().cpu() if isinstance(n, torch.Tensor) else n, dtype=np.float64)
    k_np, n_np = np.broadcast_arrays(k_np, n_np)
    if np.isnan(k_np).any() or (n_np < 1).any() or (k_np < 0).any() or (k_np > n_np).any():
        raise InputError("counts must satisfy 0 <= k <= n and n >= 1")
    return k_np, n_np


def _out(value: np.ndarray, like: Any, other: Any) -> Any:
    for ref in (like, other):
        if isinstance(ref, torch.Tensor):
            return torch.as_tensor(value, dtype=torch.float64, device=ref.device)
    return float(value) if value.ndim == 0 else value


def cp_lower(k: Any, n: Any, alpha: float) -> Any:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion.

    ``P(p >= cp_lower(K, n, alpha)) >= 1 - alpha`` for ``K ~ Binomial(n, p)``.
    ``Beta(alpha; k, n - k + 1)`` quantile, and 0 for ``k = 0``.

    Args:
        k: successes (int, array or integer tensor), ``0 <= k <= n``.
        n: trials (broadcast against ``k``), ``n >= 1``.
        alpha: error probability in (0, 1).

    Returns:
        float64 tensor (if ``k`` or ``n`` is a tensor), numpy array or float, shaped like
        ``k`` and ``n`` broadcast.

    Example:
        >>> round(cp_lower(100, 100, 0.001), 4)
        0.9333
    """
    _check_alpha(alpha)
    kk, nn = _as_counts(k, n)
    with np.errstate(invalid="ignore"):
        lo = sps.beta.ppf(alpha, kk, nn - kk + 1)
    lo = np.where(kk == 0, 0.0, lo)
    return _out(lo, k, n)


def cp_upper(k: Any, n: Any, alpha: float) -> Any:
    """One-sided (1 - alpha) Clopper-Pearson upper confidence bound on a binomial proportion.

    ``Beta(1 - alpha; k + 1, n - k)`` quantile, and 1 for ``k = n``. Same arguments and
    return type as :func:`cp_lower`.
    """
    _check_alpha(alpha)
    kk, nn = _as_counts(k, n)
    with np.errstate(invalid="ignore"):
        hi = sps.beta.ppf(1.0 - alpha, kk + 1, nn - kk)
    hi = np.where(kk == nn, 1.0, hi)
    return _out(hi, k, n)


def binomial_pvalue(k: Any, n: Any, p: float = 0.5) -> Any:
    """Two-sided exact binomial test p-value of ``H0: success probability = p``.

    Equal to ``scipy.stats.binomtest(k, n, p).pvalue`` element-wise. For ``p = 1/2`` (the
    case of PREDICT, where ``k = n_A`` and ``n = n_A + n_B``) the null distribution is
    symmetric and the p-value is ``min(1, 2 P(X <= min(k, n - k)))``, computed vectorised;
    other ``p`` fall back to ``binomtest`` per element.

    Args:
        k: successes, ``0 <= k <= n``.
        n: trials, ``n >= 1``.
        p: the null success probability in (0, 1).

    Returns:
        float64 p-values, same container rules as :func:`cp_lower`.
    """
    if not 0.0 < p < 1.0:
        raise InputError(f"p must be in (0, 1), got {p!r}")
    kk, nn = _as_counts(k, n)
    if p == 0.5:
        tail = sps.binom.cdf(np.minimum(kk, nn - kk), nn, 0.5)
        pv = np.minimum(1.0, 2.0 * tail)
    else:
        flat = [
            sps.binomtest(int(a), int(b), p).pvalue
            for a, b in zip(kk.ravel(), nn.ravel(), strict=True)
        ]
        pv = np.asarray(flat, dtype=np.float64).reshape(kk.shape)
    return _out(pv, k, n)


@dataclass(frozen=True, eq=False)
class TwoClassBounds:
    """Simultaneous confidence bounds of :func:`two_class_bounds`, per example.

    Both hold together with probability at least ``1 - alpha`` (Bonferroni split).

    Args:
        p_lower: float64 [N], lower bound on ``p_A``, the probability (in [0, 1]) of the
            guessed top class under noise.
        p_upper_b: float64 [N], upper bound on ``p_B``, the largest probability of any other
            class, capped at ``1 - p_lower``.
    """

    p_lower: torch.Tensor
    p_upper_b: torch.Tensor


def two_class_bounds(
    counts: torch.Tensor, top: torch.Tensor, alpha: float
) -> TwoClassBounds:
    """Simultaneous bounds on ``p_A`` (lower) and ``p_B`` (upper) for the two-class radius.

    The two-class form of Cohen et al.'s Theorem 1 needs a lower bound on ``p_A`` and an
    upper bound on ``p_B = max_{c != c_A} p_c``; both must hold together with probability
    at least ``1 - alpha``. Bonferroni: ``alpha / 2`` goes to the Clopper-Pearson lower
    bound on ``p_A``, and ``alpha / 2`` to the upper bound on ``p_B``. Because ``p_B`` is a
    maximum over the ``K - 1`` other classes (which class is the runner-up is unknown), that
    half is split again over them: ``p_B upper = max_c cp_upper(n_c, n, alpha / (2 (K - 1)))``
    (union bound over the classes). On the event that the ``p_A`` bound holds,
    ``p_B <= 1 - p_A <= 1 - p_A lower``, so the upper bound is also capped at
    ``1 - p_A lower``; the two-class radius is then never smaller than the one-class radius
    at level ``alpha / 2``.

    Args:
        counts: int64 [N, K] counts of the base classifier's noisy predictions (the
            estimation draws, independent of the draws that chose ``top``).
        top: int64 [N], the guessed top class ``c_A`` per example.
        alpha: total error probability in (0, 1).

    Returns:
        :class:`TwoClassBounds` with ``p_lower`` and ``p_upper_b``, float64 tensors [N] on
        ``counts``' device.
    """
    _check_alpha(alpha)
    if counts.dim() != 2 or counts.shape[1] < 2:
        raise InputError(f"counts must have shape [N, K] with K >= 2, got {tuple(counts.shape)}")
    n = counts.sum(dim=1)
    k_classes = counts.shape[1]
    n_a = counts.gather(1, top.view(-1, 1)).squeeze(1)
    p_a = cp_lower(n_a, n, alpha / 2)
    upper = cp_upper(counts, n.view(-1, 1).expand_as(counts), alpha / (2 * (k_classes - 1)))
    upper = upper.scatter(1, top.view(-1, 1).to(upper.device), float("-inf"))
    p_b = torch.minimum(upper.max(dim=1).values, 1.0 - p_a)
    return TwoClassBounds(p_lower=p_a, p_upper_b=p_b)


__all__ = ["TwoClassBounds", "binomial_pvalue", "cp_lower", "cp_upper", "two_class_bounds"]
