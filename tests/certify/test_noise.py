"""Noise distributions: sampling and the radius formulas, checked where they are exact."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats as sps

from bastion.noise import Gaussian, Laplace, Uniform, from_std


@pytest.mark.parametrize(
    "noise", [Gaussian(sigma=0.3), Laplace(lam=0.2), Uniform(lam=0.5)], ids=lambda n: n.name
)
def test_sample_shape_dtype_reproducible_and_moments(noise) -> None:
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = noise.sample((50_000, 1, 2, 2), g1, "cpu", torch.float32)
    b = noise.sample((50_000, 1, 2, 2), g2, "cpu", torch.float32)
    assert a.shape == (50_000, 1, 2, 2) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert abs(float(a.mean())) < 0.01
    assert float(a.std()) == pytest.approx(noise.std, rel=0.02)
    assert noise.sample((3,), None, "cpu", torch.float64).dtype == torch.float64


def test_sample_supports() -> None:
    g = torch.Generator().manual_seed(0)
    u = Uniform(lam=0.4).sample((100_000,), g)
    assert float(u.min()) >= -0.4 and float(u.max()) <= 0.4
    assert float(u.abs().mean()) == pytest.approx(0.2, rel=0.02)
    lap = Laplace(lam=0.3).sample((100_000,), g)
    assert float(lap.abs().mean()) == pytest.approx(0.3, rel=0.02)  # E|eta| = lam
    assert sps.kstest(lap.double().numpy(), sps.laplace(scale=0.3).cdf).pvalue > 1e-3


# A one-dimensional threshold classifier f(x) = 1[x > 0] at x = d > 0 is smoothed in closed
# form: p_A = P(d + eta > 0) = F(d) with F the noise's CDF, and the smoothed classifier keeps
# predicting 1 exactly while the point stays right of 0, so the best radius in any norm is d.
# Each one-class formula must return exactly d from the exact p_A.
@pytest.mark.parametrize("d", [0.01, 0.1, 0.3])
def test_one_class_radius_is_exact_for_a_threshold(d: float) -> None:
    sigma, lam = 0.25, 0.4
    p_gauss = sps.norm.cdf(d / sigma)
    assert float(Gaussian(sigma=sigma).radius(p_gauss)) == pytest.approx(d, rel=1e-9)
    p_lap = 1 - 0.5 * math.exp(-d / lam)
    assert float(Laplace(lam=lam).radius(p_lap)) == pytest.approx(d, rel=1e-9)
    p_uni = 0.5 + d / (2 * lam)
    assert float(Uniform(lam=lam).radius(p_uni)) == pytest.approx(d, rel=1e-9)
    # in one dimension l-inf and l1 coincide
    assert float(Uniform(lam=lam, norm="linf", dim=1).radius(p_uni)) == pytest.approx(d)


@pytest.mark.parametrize(
    "noise",
    [Gaussian(sigma=0.5), Laplace(lam=0.3), Uniform(lam=0.6), Uniform(lam=0.6, norm="linf", dim=7)],
    ids=["gaussian", "laplace", "uniform-l1", "uniform-linf"],
)
def test_two_class_reduces_to_one_class_and_p_required_inverts(noise) -> None:
    p = torch.tensor([0.5, 0.51, 0.7, 0.9, 0.999], dtype=torch.float64)
    one = noise.radius(p)
    two = noise.radius(p, 1 - p)
    assert torch.allclose(one, two, rtol=1e-9, atol=1e-12)
    assert float(one[0]) == 0.0
    assert (one[1:] > 0).all() and (one[1:].diff() > 0).all()
    for r in (0.01, 0.05, 0.1):
        assert float(noise.radius(noise.p_required(r))) == pytest.approx(r, rel=1e-7)
    if isinstance(noise, Uniform):
        assert noise.p_required(10.0) > 1  # bounded noise: a radius no p_A can certify


def test_no_certificate_below_one_half_or_below_runner_up() -> None:
    for noise in (Gaussian(sigma=0.5), Laplace(lam=0.3), Uniform(lam=0.6)):
        r = noise.radius(torch.tensor([0.0, 0.2, 0.4999]))
        assert torch.equal(r, torch.zeros(3, dtype=torch.float64))
        assert float(noise.radius(0.4, 0.45)) == 0.0
        assert float(noise.radius(1.0, 0.0)) >= 0.0  # saturates, never NaN


def test_two_class_values_by_hand() -> None:
    g = Gaussian(sigma=0.5)
    pa, pb = 0.8, 0.05
    expect = 0.25 * (sps.norm.ppf(pa) - sps.norm.ppf(pb))
    assert float(g.radius(pa, pb)) == pytest.approx(expect, rel=1e-9)
    assert float(g.radius(pa, pb)) > float(g.radius(pa))  # a small runner-up helps
    lap = Laplace(lam=0.3)
    dp = 0.15 * math.log(pa / pb)
    teng = -0.3 * math.log(1 - pa + pb)
    assert float(lap.radius(pa, pb)) == pytest.approx(max(dp, teng), rel=1e-9)
    assert float(lap.radius(0.5, 0.001)) == pytest.approx(0.15 * math.log(500), rel=1e-9)
    assert float(Uniform(lam=0.6).radius(pa, pb)) == pytest.approx(0.6 * (pa - pb))


def test_uniform_linf_matches_total_variation() -> None:
    """At the l-inf radius r, the cube shifted by r in every coordinate overlaps the original
    in (1 - r / 2 lam)^d of its volume: the total variation equals p_A - 1/2 exactly."""
    lam, d = 0.5, 16
    noise = Uniform(lam=lam, norm="linf", dim=d)
    for p in (0.6, 0.8, 0.99):
        r = float(noise.radius(p))
        assert 1 - (1 - r / (2 * lam)) ** d == pytest.approx(p - 0.5, rel=1e-9)


def test_from_std_and_params() -> None:
    assert from_std("gaussian", 0.25) == Gaussian(sigma=0.25)
    assert from_std("laplace", 0.25).std == pytest.approx(0.25)
    assert from_std("uniform", 0.25).std == pytest.approx(0.25)
    assert from_std("uniform", 0.25, norm="linf", dim=4).norm == "linf"
    assert Gaussian(sigma=0.25).params() == {"noise": "gaussian", "sigma": 0.25}
    assert Laplace(lam=0.1).norm == "l1" and Uniform().norm == "l1"
    assert Gaussian().norm == "l2"


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="sigma"):
        Gaussian(sigma=0.0)
    with pytest.raises(ValueError, match="lam"):
        Laplace(lam=-1.0)
    with pytest.raises(ValueError, match="valid choices"):
        Uniform(norm="l2")
    with pytest.raises(ValueError, match="dim"):
        Uniform(norm="linf").radius(0.9)
    with pytest.raises(ValueError, match="valid choices"):
        from_std("cauchy", 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Gaussian().radius(1.5)
