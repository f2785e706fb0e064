"""Clopper-Pearson bounds, the binomial test and the two-class bounds against scipy/statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps
from statsmodels.stats.proportion import proportion_confint

from bastion.certify.stats import binomial_pvalue, cp_lower, cp_upper, two_class_bounds

CASES = [(0, 1), (1, 1), (0, 100), (3, 100), (50, 100), (97, 100), (100, 100),
         (99_873, 100_000), (100_000, 100_000), (7, 13)]


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05])
def test_cp_matches_statsmodels_beta_at_two_alpha(alpha: float) -> None:
    for k, n in CASES:
        lo_ref, hi_ref = proportion_confint(k, n, alpha=2 * alpha, method="beta")
        assert cp_lower(k, n, alpha) == pytest.approx(lo_ref, abs=1e-12)
        assert cp_upper(k, n, alpha) == pytest.approx(hi_ref, abs=1e-12)


def test_cp_vectorised_over_tensors_and_arrays() -> None:
    k = torch.tensor([0, 5, 10, 10])
    n = torch.tensor([10, 10, 10, 20])
    lo, hi = cp_lower(k, n, 0.01), cp_upper(k, n, 0.01)
    assert lo.dtype == torch.float64 and lo.shape == (4,) and hi.shape == (4,)
    for j in range(4):
        assert float(lo[j]) == pytest.approx(cp_lower(int(k[j]), int(n[j]), 0.01))
    assert float(lo[0]) == 0.0 and float(hi[2]) == 1.0
    assert (lo <= k / n).all() and (hi >= k / n).all()
    arr = cp_lower(np.array([[1, 2], [3, 4]]), 10, 0.05)
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 2)
    # broadcast an int n against a 2-D tensor of counts
    two_d = cp_upper(torch.tensor([[0, 3], [4, 9]]), 9, 0.05)
    assert two_d.shape == (2, 2) and float(two_d[1, 1]) == 1.0


def test_cp_lower_closed_forms() -> None:
    # all successes: the lower bound solves p^n = alpha
    assert cp_lower(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100), rel=1e-12)
    # no successes: the upper bound solves (1 - p)^n = alpha
    assert cp_upper(0, 50, 0.01) == pytest.approx(1 - 0.01 ** (1 / 50), rel=1e-12)


def test_cp_coverage_monte_carlo() -> None:
    """The one-sided lower bound is below p in at least 1 - alpha of repeated experiments."""
    rng = np.random.default_rng(0)
    p, n, alpha = 0.83, 60, 0.1
    k = rng.binomial(n, p, size=20_000)
    cover = (cp_lower(k, n, alpha) <= p).mean()
    assert cover >= 1 - alpha - 0.01
    cover_u = (cp_upper(k, n, alpha) >= p).mean()
    assert cover_u >= 1 - alpha - 0.01


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_binomial_pvalue_matches_binomtest(p: float) -> None:
    for k, n in CASES + [(6, 12), (0, 7), (12, 20)]:
        assert binomial_pvalue(k, n, p) == pytest.approx(
            sps.binomtest(k, n, p).pvalue, rel=1e-9, abs=1e-300
        )
    ks = torch.tensor([3, 10, 20])
    ns = torch.tensor([20, 20, 20])
    pv = binomial_pvalue(ks, ns, p)
    assert pv.dtype == torch.float64
    ref = [sps.binomtest(int(a), int(b), p).pvalue for a, b in zip(ks, ns, strict=True)]
    assert torch.allclose(pv, torch.tensor(ref, dtype=torch.float64), rtol=1e-9)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="alpha"):
        cp_lower(1, 2, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        cp_upper(1, 2, 1.5)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        cp_lower(5, 3, 0.1)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        cp_lower(-1, 3, 0.1)
    with pytest.raises(ValueError, match="p must"):
        binomial_pvalue(1, 2, 1.0)
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        two_class_bounds(torch.tensor([1, 2]), torch.tensor([0]), 0.1)


def test_two_class_bounds_bonferroni() -> None:
    counts = torch.tensor([[900, 80, 20, 0], [10, 500, 490, 0], [0, 0, 0, 1000]])
    top = torch.tensor([0, 1, 3])
    alpha = 0.01
    bounds = two_class_bounds(counts, top, alpha)
    p_a, p_b = bounds.p_lower, bounds.p_upper_b
    n = 1000
    k_classes = 4
    for i in range(3):
        a = int(top[i])
        assert float(p_a[i]) == pytest.approx(cp_lower(int(counts[i, a]), n, alpha / 2))
        others = [cp_upper(int(counts[i, c]), n, alpha / (2 * (k_classes - 1)))
                  for c in range(k_classes) if c != a]
        expect = min(max(others), 1 - float(p_a[i]))
        assert float(p_b[i]) == pytest.approx(expect)
    # the runner-up bound covers the largest other count, and is capped by 1 - p_A lower
    assert float(p_b[0]) >= 80 / 1000
    assert (p_b <= 1 - p_a + 1e-15).all()
