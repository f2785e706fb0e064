"""Regression tests of the Lipschitz certificate's soundness review: each case once gave a
radius larger than the true one (or crashed) and must now be refused or abstain."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.certify.lipschitz import LipschitzCertifier, certify_lipschitz
from bastion.errors import InputError
from bastion.models.lipschitz import FullSort, LinearSpline, network_bound


class _Scaled(nn.Linear):
    def forward(self, x):
        return 50 * super().forward(x)


def _plain():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_a_subclass_that_overrides_forward_is_refused():
    net = nn.Sequential(nn.Flatten(), _Scaled(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(InputError, match="no known Lipschitz constant"):
        certify_lipschitz(net, torch.rand(2, 1, 2, 2))


def test_forward_hooks_are_refused():
    net = _plain()
    net[1].register_forward_hook(lambda m, i, o: 50 * o)
    with pytest.raises(InputError, match="forward hooks"):
        certify_lipschitz(net, torch.rand(2, 1, 2, 2))


class _Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Flatten()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        h = self.f(x)
        return self.a(h) if h.sum() < 2 else self.b(h)


class _Kink(nn.Module):
    """A functional op that is the identity at the traced example but not elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Flatten()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)
        with torch.no_grad():
            self.a.weight.copy_(torch.eye(4))
            self.a.bias.zero_()

    def forward(self, x):
        h = self.a(self.f(x))
        return self.b(h + 1000 * torch.relu(h - 0.8))


def test_data_dependent_paths_are_refused_or_abstain():
    with pytest.raises(InputError, match="did not run"):
        certify_lipschitz(_Branch(), torch.full((2, 1, 2, 2), 0.45))
    x = torch.cat([torch.full((1, 1, 2, 2), 0.3), torch.full((1, 1, 2, 2), 0.9)])
    with pytest.warns(UserWarning, match="another path"):
        cert = certify_lipschitz(_Kink(), x)
    assert not bool(cert.abstained[0]) and bool(cert.abstained[1])
    assert float(cert.radius[1]) == 0.0


def test_layers_that_mix_the_batch_are_refused():
    with pytest.raises(InputError, match="batch"):
        FullSort(dim=0)(torch.rand(3, 4))
    bn = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False),
                       nn.Linear(4, 3))
    with pytest.raises(InputError):
        certify_lipschitz(bn, torch.rand(3, 1, 2, 2))


def test_linear_spline_is_continuous_at_its_stored_knots():
    s = LinearSpline(1).double()
    for knot in s.grid.tolist():
        for h in (1e-12, 1e-9):
            a = torch.tensor([[knot - h]], dtype=torch.float64)
            b = torch.tensor([[knot + h]], dtype=torch.float64)
            with torch.no_grad():
                assert abs(float(s(b) - s(a))) <= 2 * h * (1 + 1e-6) + 1e-15


def test_cancelling_large_values_do_not_certify_a_wrong_class():
    # biases of 1e10 that cancel: float64 rounding of the logits exceeds their margin
    big, d, g = 1e10, 2.0 ** -20, 5e-7
    net = nn.Sequential(nn.Flatten(), nn.Linear(1, 3), nn.Linear(3, 3), nn.Linear(3, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0], [1.0 + d], [g]]))
        net[1].bias.copy_(torch.tensor([big, big, 0.0]))
        net[2].weight.copy_(torch.eye(3))
        net[2].bias.copy_(torch.tensor([-big, -big, 0.0]))
        net[3].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]]))
        net[3].bias.zero_()
    xv = (0.75 + 2.0 ** -20 - 1e-9) / (1 + d)
    x = torch.tensor([[[[xv]]]], dtype=torch.float64)
    cert = certify_lipschitz(net, x, num_classes=2)
    w1 = net[1].weight.detach().double()[:, 0]
    exact = net[3].weight.detach().double() @ (w1 * xv)  # the biases cancel exactly
    exact_class = int(exact.argmax())
    assert bool(cert.abstained[0]) or int(cert.prediction[0]) == exact_class
    assert float(cert.extra["rounding_error"][0]) > 1e-7  # the rounding bound saw it


def test_the_cache_follows_the_weights_and_a_foreign_bound_is_refused():
    net = _plain().eval()
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    c = LipschitzCertifier(model=net, num_classes=3)
    first = c.certify(x)
    with torch.no_grad():
        net[3].weight.mul_(30)
        net[3].bias.normal_()
    second = c.certify(x)
    with torch.no_grad():
        assert torch.equal(second.prediction, net(x).argmax(1))
    assert not torch.equal(first.radius, second.radius)
    other = network_bound(_plain().eval(), x[:1])
    torch.manual_seed(5)
    foreign = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with pytest.raises(InputError, match="not this model"):
        LipschitzCertifier(model=foreign, num_classes=3, bound=other).certify(x)
