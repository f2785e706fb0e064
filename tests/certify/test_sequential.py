"""Sequential fixed-radius certification: same decisions as fixed-n CERTIFY, fewer draws."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.certify.sequential import Look, certify_radius, look_schedule
from bastion.certify.smoothing import SmoothedClassifier
from bastion.certify.smoothing_certifiers import SequentialCertifier
from bastion.noise import Gaussian, Uniform


def threshold_model(theta: float) -> nn.Module:
    """One-pixel inputs: class 0 iff x > theta (logits (x - theta, 0))."""
    lin = nn.Linear(1, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0], [0.0]]))
        lin.bias.copy_(torch.tensor([-theta, 0.0]))
    return nn.Sequential(nn.Flatten(), lin).eval()


def gens(k: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 100_000 + i) for i in range(k)]


def test_look_schedule_spends_exactly_alpha() -> None:
    looks = look_schedule(100, 100_000, 2.0, 0.001)
    sizes = [look.n for look in looks]
    assert sizes[0] == 100 and sizes[-1] == 100_000
    assert all(b > a for a, b in zip(sizes, sizes[1:], strict=False))
    assert sum(look.alpha for look in looks) == pytest.approx(0.001)
    assert looks[-1].alpha == pytest.approx(0.0005)
    assert look_schedule(50, 50, 2.0, 0.01) == [Look(n=50, alpha=0.01)]
    with pytest.raises(ValueError):
        look_schedule(200, 100, 2.0, 0.01)
    with pytest.raises(ValueError):
        look_schedule(10, 100, 1.0, 0.01)


def test_same_decisions_as_fixed_n_with_far_fewer_draws() -> None:
    sigma, r, theta = 0.25, 0.25, 0.1
    d = torch.linspace(-0.3, 0.8, 45)  # signed distance of each input to the threshold
    x = (theta + d).clamp(0, 1).view(-1, 1, 1, 1)
    d = x.flatten() - theta
    smooth = SmoothedClassifier(threshold_model(theta), Gaussian(sigma=sigma), 2, "contiguous")
    fixed = smooth.certify(x, n0=100, n=100_000, alpha=0.001, batch_size=8192, generator=gens(45))
    seq = certify_radius(smooth, x, r, n0=100, n_max=100_000, alpha=0.001, batch_size=8192,
                         generator=gens(45, seed=1))
    fixed_yes = ~fixed.abstained & (fixed.radius >= r)
    seq_yes = ~seq.abstained
    clear = (d.abs() - r).abs() > 0.03  # not within 0.03 of the decision boundary
    assert torch.equal(fixed_yes[clear], seq_yes[clear])
    assert (fixed_yes == seq_yes).float().mean() >= 0.95
    # certified inputs carry radius r and the predicted class of the threshold
    assert (seq.radius[seq_yes] == r).all() and (seq.radius[~seq_yes] == 0).all()
    assert (seq.prediction[seq_yes] == (d[seq_yes] < 0).long()).all()
    draws_fixed = 45 * (100 + 100_000)
    draws_seq = int(seq.extra["n"].sum()) + 45 * 100
    assert draws_seq * 5 <= draws_fixed
    assert seq.method == "smoothing-gaussian-sequential"
    assert seq.params["test"] == "clopper-pearson-union-bound" and seq.params["radius"] == r
    assert (seq.extra["looks"] >= 1).all()


def test_false_certification_rate_is_below_alpha() -> None:
    """p_A just below p* = Phi(r / sigma) for 1500 independent inputs: the sequential test
    (alpha = 0.2, so errors would be visible) certifies far fewer than 20% of them."""
    sigma, r, theta, alpha = 0.25, 0.1, 0.2, 0.2
    d = r - 0.002  # p_A = Phi(0.392) < p* = Phi(0.4)
    x = torch.full((1500, 1, 1, 1), theta + d)
    smooth = SmoothedClassifier(threshold_model(theta), Gaussian(sigma=sigma), 2, "contiguous")
    seq = certify_radius(smooth, x, r, n0=20, n_max=800, n_first=25, alpha=alpha,
                         batch_size=8192, generator=gens(1500, seed=2))
    rate = float((~seq.abstained).float().mean())
    assert rate <= alpha


def test_unreachable_radius_abstains_without_drawing() -> None:
    x = torch.full((3, 1, 1, 1), 0.9)
    smooth = SmoothedClassifier(threshold_model(0.1), Uniform(lam=0.3), 2, "contiguous")
    seq = certify_radius(smooth, x, 0.5, n0=10, n_max=1000, alpha=0.01, batch_size=64,
                         generator=gens(3))  # uniform l1 radii never exceed lam
    assert seq.abstained.all() and (seq.extra["n"] == 0).all()
    assert seq.norm == "l1"


def test_bad_radius() -> None:
    smooth = SmoothedClassifier(threshold_model(0.1), Gaussian(), 2, "contiguous")
    with pytest.raises(ValueError, match="radius"):
        certify_radius(smooth, torch.zeros(1, 1, 1, 1), -0.1, batch_size=8)


def test_sequential_certifier_wraps_the_test() -> None:
    x = torch.linspace(0.0, 1.0, 9).view(-1, 1, 1, 1)
    smooth = SmoothedClassifier(threshold_model(0.4), Gaussian(sigma=0.25), 2, "contiguous")
    seq = SequentialCertifier(smoothed=smooth, radius=0.2, n0=20, n_max=2000, n_first=50,
                              alpha=0.01, batch_size=512)
    cert = seq.certify(x, gens(9))
    ref = certify_radius(smooth, x, 0.2, n0=20, n_max=2000, n_first=50, alpha=0.01,
                         batch_size=512, generator=gens(9))
    assert torch.equal(cert.radius, ref.radius) and torch.equal(cert.extra["n"], ref.extra["n"])
    d = seq.details(cert, 0)
    assert list(d) == ["counts", "p_lower"] and list(d["counts"]) == ["nA", "n", "looks"]
    head = seq.header(x[:1], {"seed": 0, "skip": 1, "num_images": 9})
    assert head["mode"] == "sequential" and head["n"] == 2000 and head["radius"] == 0.2
    assert list(head)[-4:] == ["mode", "radius", "n_first", "growth"]
    with pytest.raises(ValueError, match="radius"):
        SequentialCertifier(smoothed=smooth, radius=-1.0)
    with pytest.raises(ValueError, match="n_first"):
        SequentialCertifier(smoothed=smooth, radius=0.1, n_first=500, n_max=100)
    assert SequentialCertifier.small(threshold_model(0.4), 2).radius == 0.1
