"""SmoothAdv PGD on the smoothed classifier: within its ball, stronger than nothing, and
never contradicting a certificate at 0.99 of the certified radius."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.certify.smoothed_attack import ABSTAIN, attack_smoothed
from bastion.certify.smoothing import SmoothedClassifier
from bastion.checks import check_certified_vs_empirical
from bastion.errors import InputError
from bastion.noise import Gaussian, Laplace


def linear_model(d: int = 16) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(d, 3))
    return m.eval()


def test_attack_stays_in_ball_and_certificates_hold():
    torch.manual_seed(1)
    model = linear_model()
    smooth = SmoothedClassifier(model, Gaussian(sigma=0.25), 3)
    x = torch.rand(24, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    gens = [torch.Generator().manual_seed(i) for i in range(len(x))]
    cert = smooth.certify(x, n0=50, n=2000, alpha=0.001, batch_size=500, generator=gens)
    r_small = 0.05
    res = attack_smoothed(smooth, x, y, [r_small, 1.0], steps=10, samples=8, n=2000,
                          alpha=0.001, batch_size=12)
    for o in res.outcomes:
        assert float(o.perturbation.max()) <= o.eps * (1 + 1e-5)
    # a large radius breaks the smoothed classifier on most points
    assert float(res.adv_correct(1.0).double().mean()) < 0.5
    # each certified point attacked at 0.99 of its own radius keeps its class
    ok = (~cert.abstained) & (cert.prediction == y) & (cert.radius > 0.02)
    assert ok.sum() >= 5
    for i in ok.nonzero().flatten().tolist():
        r = 0.99 * float(cert.radius[i])
        one = attack_smoothed(smooth, x[i:i + 1], y[i:i + 1], [r], steps=20, samples=16,
                              n=2000, alpha=0.001)
        assert bool(one.adv_correct(r)[0]), (i, r)
    # and the check stays silent comparing the certificate with the record
    from bastion.records import Certificate

    c = Certificate(prediction=cert.prediction, radius=cert.radius, abstained=cert.abstained,
                    norm="l2", method=cert.method, labels=y, index=torch.arange(len(y)))
    assert check_certified_vs_empirical(c, res, [r_small], tolerance=0.05) == []


def test_abstention_is_wrong_when_clean():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():  # x = 0.5 lies on the boundary: the votes split 50/50
        model[1].weight.zero_()
        model[1].weight[1] = 1.0
        model[1].bias.copy_(torch.tensor([0.0, -2.0]))
    smooth = SmoothedClassifier(model, Gaussian(sigma=0.25), 2)
    x = torch.full((4, 1, 2, 2), 0.5)
    res = attack_smoothed(smooth, x, torch.zeros(4, dtype=torch.int64), [0.1], steps=2,
                          samples=2, n=100)
    assert (res.clean_pred == ABSTAIN).all()
    assert not res.adv_correct(0.1).any()


def test_only_l2():
    smooth = SmoothedClassifier(linear_model(4), Laplace(lam=0.25), 3)
    with pytest.raises(InputError, match="L2"):
        attack_smoothed(smooth, torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64), [0.1])
