"""Certification at a fixed radius by a sequential test that stops drawing noise early.

Cohen et al.'s CERTIFY (arXiv 1902.02918) spends ``n = 100,000`` noisy forward passes per
input to estimate a radius. When the question is only "is this input certified at radius
``r``?", the answer is the test ``H1: p_A >= p*`` with ``p* = noise.p_required(r)``
(``Phi(r / sigma)`` for Gaussian noise), and most inputs settle it after a few hundred draws:
either ``p_A`` is far above ``p*`` or far below it.

The test: a union bound over a fixed geometric grid of looks. ``n0`` draws choose ``c_A``
as in CERTIFY; then, for looks ``k = 1..K`` at fixed cumulative sample sizes
``n_1 < n_2 < ... < n_K = n_max`` (``n_k = ceil(n_first * growth^(k-1))``), the count
``n_A`` after ``n_k`` estimation draws gives the one-sided Clopper-Pearson lower bound at
level ``alpha_k``; the input is certified at the first look where that bound is ``>= p*``.
The levels are ``alpha_K = alpha / 2`` at the last look (so the final look is almost as
strong as fixed-n CERTIFY at ``n_max``) and ``alpha / (2 (K - 1))`` at each earlier one, so
``sum_k alpha_k = alpha``. Drawing stops with an abstention (futility) when the upper
Clopper-Pearson bound at level ``alpha_k`` falls below ``p*``, or when even all-successes
for the remaining draws could not reach ``p*`` at the last look.

Why it is valid (same guarantee as CERTIFY): imagine every input's full stream of
``n_max`` estimation draws drawn in advance. The look sizes are fixed before any data is
seen, so at each look ``n_A ~ Binomial(n_k, p_A)`` and the event
``E_k = {CP lower bound at level alpha_k exceeds p_A}`` has probability at most ``alpha_k``.
A false certificate (certified at ``r`` although ``p_A < p*``) requires some look's bound
to reach ``p* > p_A``, i.e. the union of the ``E_k``, whose probability is at most
``sum_k alpha_k = alpha``. Stopping early, for success or futility, only removes looks, so
it can only shrink that event; futility stops cost power, never validity. (An anytime-valid
betting confidence sequence, Waudby-Smith and Ramdas 2023, arXiv 2010.09686, would also do;
the union bound over a geometric grid is simpler, exact for binomial counts and loses little
because the grid has only about ``log2(n_max / n_first)`` looks.)

Guarantee, per input: with probability at least 1 - alpha, if the result is not abstained
then the smoothed classifier predicts ``prediction`` at every point within ``radius``.

``smoothing_certifiers.SequentialCertifier`` wraps the test as a dataset certifier for
``bastion.certify.pipeline`` (see ``bastion.certify.registry``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bastion._validate import check_radius
from bastion.certify.forward import Precision
from bastion.certify.smoothing import SmoothedClassifier, generators_for
from bastion.certify.stats import cp_lower, cp_upper
from bastion.errors import InputError
from bastion.records import Certificate


@dataclass(frozen=True)
class Look:
    """One look of the sequential test: where it happens and the error it may spend.

    Args:
        n: cumulative estimation draws per input at this look (``n_k``, >= 1; strictly
            increasing over a schedule, the last one is ``n_max``).
        alpha: the one-sided Clopper-Pearson level ``alpha_k`` of this look's bounds, in
            (0, 1); the levels of a schedule sum to the test's ``alpha``.
    """

    n: int
    alpha: float


def look_schedule(n_first: int, n_max: int, growth: float, alpha: float) -> list[Look]:
    """The looks ``[Look(n_k, alpha_k), ...]`` of the sequential test (see the module docstring).

    Example:
        >>> [look.n for look in look_schedule(100, 1000, 2.0, 0.001)]
        [100, 200, 400, 800, 1000]
    """
    if not isinstance(n_first, int) or not isinstance(n_max, int) or not 1 <= n_first <= n_max:
        raise InputError(f"need integers 1 <= n_first <= n_max, got {n_first}, {n_max}")
    if not growth > 1.0:
        raise InputError(f"growth must be > 1, got {growth}")
    sizes: list[int] = []
    k = 0
    while True:
        nk = min(n_max, math.ceil(n_first * growth**k))
        if not sizes or nk > sizes[-1]:
            sizes.append(nk)
        if nk >= n_max:
            break
        k += 1
    if len(sizes) == 1:
        return [Look(n=sizes[0], alpha=alpha)]
    early = alpha / (2 * (len(sizes) - 1))
    return [Look(n=nk, alpha=early) for nk in sizes[:-1]] + [Look(n=sizes[-1], alpha=alpha / 2)]


def certify_radius(
    smoothed: SmoothedClassifier,
    x: torch.Tensor,
    radius: float,
    *,
    n0: int = 100,
    n_max: int = 100_000,
    n_first: int = 100,
    growth: float = 2.0,
    alpha: float = 0.001,
    batch_size: int | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    precision: Precision = "fp32",
) -> Certificate:
    """Decide, for each input, whether the smoothed classifier is certified at ``radius``.

    See the module docstring for the test and why it keeps CERTIFY's alpha guarantee.

    Args:
        smoothed: the smoothed classifier (base model, noise, number of classes).
        x: inputs [B, C, H, W] in [0, 1].
        radius: the radius to certify, in the noise's norm and [0, 1] pixel units.
        n0: draws per input that choose ``c_A`` (not counted in the test).
        n_max: the most estimation draws per input (the last look).
        n_first: estimation draws at the first look.
        growth: ratio of successive look sizes (> 1).
        alpha: failure probability per input.
        batch_size: noisy images per forward pass (None: tuned).
        generator: one generator for the batch or one per input.
        precision: ``"fp32"`` or ``"bf16"`` (autocast where supported; recorded).

    Returns:
        ``Certificate`` with radius ``radius`` where certified and 0 (abstained) elsewhere;
        method ``"smoothing-<noise>-sequential"``; ``extra``: ``nA`` and ``n`` (int64 [B],
        counts and estimation draws when the input stopped), ``looks`` (int64 [B]) and
        ``p_lower`` (float64 [B], the bound at the stopping look, at its level).
    """
    check_radius(radius, "radius")
    if not isinstance(n0, int) or n0 < 1:
        raise InputError(f"n0 must be an int >= 1, got {n0!r}")
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}")
    looks = look_schedule(n_first, n_max, growth, alpha)
    noise = smoothed.noise_for(x)
    p_star = noise.p_required(float(radius))
    b = x.shape[0]
    gens = generators_for(x, generator)
    n_a = torch.zeros(b, dtype=torch.int64)
    used = torch.zeros(b, dtype=torch.int64)
    n_looks = torch.zeros(b, dtype=torch.int64)
    p_low = torch.zeros(b, dtype=torch.float64)
    certified = torch.zeros(b, dtype=torch.bool)
    active = torch.ones(b, dtype=torch.bool)
    last_n, last_alpha = looks[-1].n, looks[-1].alpha
    with smoothed.session(x, batch_size, precision) as s:
        top = s.counts(x, gens, n0).argmax(dim=1).cpu()
        prec = s.precision
        if p_star > float(cp_lower(last_n, last_n, last_alpha)):
            active[:] = False  # unreachable even with every draw a success
        prev = 0
        for k, look in enumerate(looks, start=1):
            nk, ak = look.n, look.alpha
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            counts = s.counts(x[idx.to(x.device)], [gens[i] for i in idx.tolist()], nk - prev)
            n_a[idx] += counts.cpu().gather(1, top[idx].view(-1, 1)).squeeze(1)
            used[idx] = nk
            n_looks[idx] = k
            lo = cp_lower(n_a[idx], nk, ak)
            hi = cp_upper(n_a[idx], nk, ak)
            best = cp_lower(n_a[idx] + (last_n - nk), last_n, last_alpha)
            p_low[idx] = lo
            done = lo >= p_star
            certified[idx[done]] = True
            stop = done | (hi < p_star) | (best < p_star)
            active[idx[stop]] = False
            prev = nk
    abstained = ~certified
    return Certificate(
        prediction=top.to(torch.int64),
        radius=torch.where(certified, torch.full((b,), float(radius), dtype=torch.float64), 0.0),
        abstained=abstained,
        norm=noise.norm,
        method=f"smoothing-{noise.name}-sequential",
        params={
            **noise.params(), "radius": float(radius), "n0": n0, "n_max": n_max,
            "n_first": n_first, "growth": float(growth), "alpha": alpha,
            "test": "clopper-pearson-union-bound", "precision": prec,
        },
        extra={"nA": n_a, "n": used, "looks": n_looks, "p_lower": p_low},
    )


__all__ = ["Look", "certify_radius", "look_schedule"]
