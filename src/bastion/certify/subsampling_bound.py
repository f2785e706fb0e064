r"""The robustness condition of sub-sampling certification (MMCert; randomized ablation).

Wang, Fu, Zou and Jia 2024, "MMCert: Provable Defense against Adversarial Attacks to
Multi-modal Models", CVPR 2024, arXiv 2403.19080 (Theorem 1); for one modality, Levine and
Feizi 2020, "Robustness Certificates for Sparse Adversarial Attacks by Randomized
Ablation", arXiv 1911.09272.

Setting. An input ``M = (m_1, ..., m_T)`` has ``n_i`` elements in modality ``i``. A
sub-sample ``Z`` keeps ``k_i`` elements of each ``m_i`` uniformly without replacement,
independently across modalities: each of the ``|S| = prod_i C(n_i, k_i)`` sub-samples has
probability ``1 / |S|``. The smoothed classifier predicts ``argmax_c p_c`` with
``p_c = P(f(Z) = c)``. An attack ``M' in S(M, R)`` modifies, adds or deletes at most ``r_i``
elements of modality ``i`` (images: modification only), giving sizes ``n_i'``.

Derivation (what the code checks). Let ``u_i`` be the number of elements of ``m_i`` that
``M'`` keeps unchanged, and ``O`` the sub-samples made only of such elements: ``|O| =
prod_i C(u_i, k_i)``, and ``O`` is a set of sub-samples of ``M`` and of ``M'`` alike, with
probability ``1/|S|`` each under ``M`` and ``1/|S'|`` under ``M'`` (``|S'| = prod_i
C(n_i', k_i)``; the defense keeps ``k_i`` elements of whatever it receives, so ``k_i' =
k_i``). ``f`` agrees on ``O`` for both inputs. Of the ``p_A |S|`` sub-samples of ``M``
voting ``A``, at least ``p_A |S| - (|S| - |O|)`` lie in ``O``; class ``B`` gets at most
``p_B |S|`` sub-samples of ``O`` and every one of the ``|S'| - |O|`` others. Hence

    p_A' >= (p_A |S| - |S| + |O|) / |S'|,      p_B' <= (p_B |S| + |S'| - |O|) / |S'|,

and the prediction cannot change if the first exceeds the second for every ``B != A``:

    (p_A - p_B) > 1 + |S'| / |S| - 2 |O| / |S|.                                   (*)

Dividing by ``|S'|/|S|`` gives the seed's form, ``|S|/|S'| (p_A - 1 + |O|/|S|) >
|S|/|S'| p_B + 1 - |O|/|S'|``. The worst attack within ``R``: an operation on modality
``i`` either modifies an element (``u_i`` drops by 1, ``n_i'`` stays), adds one (``n_i'``
grows by 1, ``u_i`` stays) or deletes one (both drop by 1). A deletion is never worse for
the defense than a modification (same ``|O|``, smaller ``|S'|``) and using the whole budget
is never better for it, so with ``a_i`` additions and ``r_i - a_i`` modifications,
``n_i' = n_i + a_i`` and ``u_i = n_i - r_i + a_i``; the right side of (*) is maximised
over ``a_i in [0, r_i]`` (``operations="any"``; it is not always at an end: ``C(n + a, k)
- 2 C(n - r + a, k)`` is unimodal in ``a``). With modification only (``"modify"``, images),
``a = 0`` and (*) reads ``p_A - p_B > 2 (1 - prod_i C(n_i - r_i, k_i) / C(n_i, k_i))``;
with ``T = 1`` and ``p_B = 1 - p_A`` this is Levine and Feizi's ``p_A > 1/2 + Delta``,
``Delta = 1 - C(n - r, k) / C(n, k)``. Deletions need ``n_i - r_i >= k_i`` for the defense to
sub-sample at all; budgets beyond ``n_i - k_i`` are never certified (``|O| = 0``).

Discretisation. ``p_A`` and ``p_B`` are multiples of ``1/|S|``, so the bounds tighten to
``ceil(p_A_lower |S|) / |S|`` and ``floor(p_B_upper |S|) / |S|`` (``discretise``, exact
rational arithmetic). The seed prints ``p_A - delta_l`` with ``delta_l = p_A -
floor(p_A |S|)/|S|`` and ``p_B + delta_u`` with ``delta_u = ceil(p_B |S|)/|S| - p_B``:
rounding in the other direction, sound but never tighter (by at most ``1/|S|``, nothing
for image-sized ``|S|``); it also writes ``k_i'`` for the attacked input's sub-sample size,
which equals ``k_i`` here, and ``>=``, which a tie between ``A`` and ``B`` breaks against
the defense: (*) is strict. ``seed_condition`` evaluates the printed formula for
comparison.

Numerics. The coefficient ratios overflow floats for image-sized ``n_i`` (``C(784, 50)``
is about ``1e80``), so they are computed in log space: ``log_comb`` by log-gamma, and the
ratios the condition needs, ``C(m, k) / C(n, k)``, as sums of ``log1p`` terms
(``log_comb_ratio``; a difference of log-gammas would lose ``log(n!)`` ulps, 1e-12 at
``n = 784``). A condition holds only with slack above ``TOL = 1e-10``, so rounding can only
make the certificate smaller. The tests
compare with exact rational arithmetic on Python integers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
from scipy.special import gammaln

from bastion.errors import InputError

Operations = Literal["modify", "any"]
"""What the attacker may do to an element: ``"modify"`` (images) or ``"any"`` (modify, add
or delete, e.g. frames of audio or video)."""

OPERATIONS: tuple[str, ...] = ("modify", "any")

TOL = 1e-10
"""Slack the condition (*) must have to hold (covers the float64 error of the log terms)."""

MAX_GRID = 4_000_000
"""Most addition splits searched for one budget with ``operations="any"``."""


def log_comb(n: np.ndarray | int, k: np.ndarray | int) -> np.ndarray:
    """``log C(n, k)`` elementwise (float64), ``-inf`` where ``k < 0`` or ``k > n``."""
    n = np.asarray(n, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    n, k = np.broadcast_arrays(n, k)
    out = np.full(n.shape, -np.inf)
    ok = (k >= 0) & (k <= n)
    out[ok] = gammaln(n[ok] + 1) - gammaln(k[ok] + 1) - gammaln(n[ok] - k[ok] + 1)
    return out


def log_comb_ratio(m: np.ndarray | int, n: int, k: int) -> np.ndarray:
    """``log(C(m, k) / C(n, k))`` elementwise over ``m`` (float64), ``-inf`` where ``m < k``.

    Summed as ``sum_{j<k} log1p((m - n) / (n - j))``: accurate to about ``k`` ulps, where the
    difference of two log-gammas near ``log(n!)`` loses ``log(n!)`` ulps (1e-12 at n = 784).
    Needs ``1 <= k <= n``.
    """
    m = np.asarray(m, dtype=np.float64)
    j = np.arange(k, dtype=np.float64)
    out = np.full(m.shape, -np.inf)
    ok = m >= k
    d = (m[ok] - n)[..., None] / (n - j)
    out[ok] = np.log1p(d).sum(axis=-1)
    return out


@dataclass(frozen=True)
class Subsampling:
    """Elements per modality and elements kept per sub-sample.

    Args:
        sizes: ``(n_1, ..., n_T)``, elements of each modality (>= 1).
        keep: ``(k_1, ..., k_T)``, elements kept, ``1 <= k_i <= n_i``.
    """

    sizes: tuple[int, ...]
    keep: tuple[int, ...]

    def __post_init__(self) -> None:
        n, k = tuple(self.sizes), tuple(self.keep)
        if not n or len(n) != len(k) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in (*n, *k)):
            raise InputError(f"sizes and keep must be equally long lists of ints, got "
                             f"{self.sizes!r} and {self.keep!r}")
        if not all(1 <= ki <= ni for ni, ki in zip(n, k, strict=True)):
            raise InputError(f"every keep count must be in [1, n_i]: sizes {list(n)}, "
                             f"keep {list(k)}")
        object.__setattr__(self, "sizes", n)
        object.__setattr__(self, "keep", k)

    @property
    def num_modalities(self) -> int:
        return len(self.sizes)

    @property
    def total(self) -> int:
        """``|S| = prod_i C(n_i, k_i)``, exactly."""
        return math.prod(math.comb(n, k) for n, k in zip(self.sizes, self.keep, strict=True))

    def max_budget(self) -> tuple[int, ...]:
        """``n_i - k_i`` per modality: no larger budget is ever certified."""
        return tuple(n - k for n, k in zip(self.sizes, self.keep, strict=True))

    def check_budget(self, budget: Sequence[int]) -> tuple[int, ...]:
        r = tuple(budget)
        if len(r) != self.num_modalities or not all(
                isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 0
                for v in r):
            raise InputError(f"the budget must give {self.num_modalities} element count(s) "
                             f">= 0 (one per modality), got {budget!r}")
        return tuple(int(v) for v in r)


def _check_p(p_a: float, p_b: float) -> None:
    if not (0.0 <= p_a <= 1.0 and 0.0 <= p_b <= 1.0):
        raise InputError(f"probability bounds must lie in [0, 1], got p_A {p_a}, p_B {p_b}")


def _float_down(q: Fraction) -> float:
    f = float(q)
    return math.nextafter(f, -math.inf) if Fraction(f) > q else f


def _float_up(q: Fraction) -> float:
    f = float(q)
    return math.nextafter(f, math.inf) if Fraction(f) < q else f


def discretise(p_a: float, p_b: float, setup: Subsampling) -> tuple[float, float]:
    """Tighten the bounds to the multiples of ``1/|S|`` they must be (exact arithmetic).

    Returns ``(ceil(p_a |S|) / |S|, floor(p_b |S|) / |S|)`` as floats rounded towards the
    safe side (down for ``p_A``, up for ``p_B``).
    """
    _check_p(p_a, p_b)
    total = setup.total
    a = Fraction(math.ceil(Fraction(p_a) * total), total)
    b = Fraction(math.floor(Fraction(p_b) * total), total)
    return _float_down(a), _float_up(b)


def attack_term(setup: Subsampling, budget: Sequence[int],
                operations: Operations = "modify") -> float:
    """The right side of (*): ``max over attacks in R of 1 + |S'|/|S| - 2 |O|/|S|``.

    ``inf`` when ``|S'|/|S|`` overflows (no certificate then).
    """
    if operations not in OPERATIONS:
        raise InputError(f"unknown operations {operations!r}; valid: {', '.join(OPERATIONS)}")
    r = setup.check_budget(budget)
    n, k = setup.sizes, setup.keep
    if operations == "modify" or not any(r):
        log_omega = sum(float(log_comb_ratio(ni - ri, ni, ki))
                        for ni, ki, ri in zip(n, k, r, strict=True))
        return 1.0 + 1.0 - 2.0 * math.exp(log_omega)
    size = math.prod(v + 1 for v in r)
    if size > MAX_GRID:
        raise InputError(f"the budget {list(r)} has {size} addition splits to search (at "
                         f"most {MAX_GRID}); use operations='modify' or a smaller budget")
    log_rho = np.zeros(())
    log_omega = np.zeros(())
    for i, ri in enumerate(r):
        a = np.arange(ri + 1)
        rho_i = log_comb_ratio(n[i] + a, n[i], k[i])
        omega_i = log_comb_ratio(n[i] - ri + a, n[i], k[i])
        log_rho = np.add.outer(log_rho, rho_i)
        log_omega = np.add.outer(log_omega, omega_i)
    with np.errstate(over="ignore"):
        value = 1.0 + np.exp(log_rho) - 2.0 * np.exp(log_omega)
    return float(np.max(value))


def certified(p_a: float, p_b: float, setup: Subsampling, budget: Sequence[int],
              operations: Operations = "modify") -> bool:
    """Whether (*) holds: no attack within ``budget`` can change the prediction ``A``.

    Args:
        p_a: lower bound on ``p_A`` (already discretised, if wanted).
        p_b: upper bound on every ``p_B``, ``B != A``.
        setup: the sizes and keep counts.
        budget: ``(r_1, ..., r_T)``, elements the attacker may touch per modality.
        operations: ``"modify"`` or ``"any"`` (modify, add or delete).
    """
    _check_p(p_a, p_b)
    return (p_a - p_b) - attack_term(setup, budget, operations) > TOL


def largest_budget(p_a: float, p_b: float, setup: Subsampling, weights: Sequence[int],
                   operations: Operations = "modify") -> int:
    """The largest ``t`` with ``R = t * weights`` certified; -1 when not even ``R = 0`` is.

    The condition is monotone in ``R`` (a larger budget allows every smaller attack), so a
    binary search over ``t in [0, min_i (n_i - k_i) // w_i]`` finds it.

    Args:
        weights: the direction, whole numbers >= 0, not all 0: ``(1, 1)`` for the same
            budget in every modality, ``(1, 2)`` for ``r_2 = 2 r_1``, ``(1, 0)`` for the first
            modality alone.
    """
    w = setup.check_budget(weights)
    if not any(w):
        raise InputError(f"a direction needs a weight > 0, got {list(weights)}")
    if not certified(p_a, p_b, setup, (0,) * len(w), operations):
        return -1
    hi = min(m // wi for m, wi in zip(setup.max_budget(), w, strict=True) if wi > 0)
    lo = 0  # certified
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if certified(p_a, p_b, setup, tuple(mid * wi for wi in w), operations):
            lo = mid
        else:
            hi = mid - 1
    return lo


def seed_condition(p_a: float, p_b: float, setup: Subsampling, budget: Sequence[int]) -> bool:
    """The seed's printed condition for modification (``n_i' = n_i``, ``k_i' = k_i``), with
    its ``delta_l``, ``delta_u`` and ``>=``, in exact rational arithmetic (for comparison)."""
    _check_p(p_a, p_b)
    r = setup.check_budget(budget)
    total = setup.total
    common = math.prod(math.comb(n - ri, k)
                       for n, k, ri in zip(setup.sizes, setup.keep, r, strict=True))
    pa, pb = Fraction(p_a), Fraction(p_b)
    pa_used = Fraction(math.floor(pa * total), total)  # p_A - delta_l
    pb_used = Fraction(math.ceil(pb * total), total)  # p_B + delta_u
    lhs = pa_used - 1 + Fraction(common, total)
    rhs = pb_used + 1 - Fraction(common, total)
    return lhs >= rhs


def ablation_radius(p_a: float, size: int, keep: int) -> int:
    """Levine and Feizi's l0 radius: the largest ``r`` with ``p_a - Delta(r) > 1/2``.

    Randomized ablation (arXiv 1911.09272, Theorem 1), written from its definition:
    ``Delta(r) = 1 - C(size - r, keep) / C(size, keep)``; -1 when ``p_a <= 1/2``.

    Args:
        p_a: lower bound on the top class's probability under ablation.
        size: elements of the input (pixels).
        keep: elements kept per ablation.
    """
    _check_p(p_a, 0.0)
    if not 1 <= keep <= size:
        raise InputError(f"keep must be in [1, size], got keep {keep}, size {size}")

    def holds(r: int) -> bool:
        delta = 1.0 - math.exp(float(log_comb_ratio(size - r, size, keep)))
        return p_a - delta - 0.5 > TOL

    if not holds(0):
        return -1
    lo, hi = 0, size - keep
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if holds(mid) else (lo, mid - 1)
    return lo


__all__ = [
    "MAX_GRID",
    "OPERATIONS",
    "Operations",
    "Subsampling",
    "TOL",
    "ablation_radius",
    "attack_term",
    "certified",
    "discretise",
    "largest_budget",
    "log_comb",
    "log_comb_ratio",
    "seed_condition",
]
