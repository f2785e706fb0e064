"""Chains and sound network bounds: the chain a forward runs, unknown layers refused, the
product bound above every gradient norm found, per-logit versus pairwise, Normalize."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.errors import InputError
from bastion.models import Normalize, build
from bastion.models.lipschitz import layer_chain, network_bound


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        x = x.flatten(1)
        return self.b(self.a(x) + x)


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(self.a(x.flatten(1)))


def test_chain_of_small_cnn_follows_its_forward() -> None:
    model = build("small-cnn", dataset="fashion-mnist")
    chain = layer_chain(model, torch.rand(1, 1, 28, 28))
    names = [c.name for c in chain]
    assert names[0] == "normalize" and names[-1] == "net.classifier.fc3"
    fc1 = next(c for c in chain if c.name.endswith("fc1"))
    assert fc1.input_shape == (64 * 4 * 4,)
    assert model.training  # the analysis left the mode alone


def test_non_chains_are_refused() -> None:
    with pytest.raises(InputError, match="not a chain"):
        layer_chain(_Residual(), torch.rand(1, 1, 2, 2))
    with pytest.raises(InputError, match="called twice"):
        layer_chain(_Twice(), torch.rand(1, 1, 2, 2))


def test_a_layer_of_unknown_constant_raises_instead_of_counting_as_one() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2 * 9, 3))
    with pytest.raises(InputError, match="AvgPool2d"):
        network_bound(model, torch.rand(1, 1, 8, 8))
    with pytest.raises(InputError, match="Linear layer"):
        network_bound(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU()),
                      torch.rand(1, 1, 2, 2))


def _max_gradient_norm(model, x, i, j) -> float:
    x = x.clone().requires_grad_(True)
    z = model(x)
    (g,) = torch.autograd.grad((z[:, i] - z[:, j]).sum(), x)
    return float(g.flatten(1).norm(dim=1).max())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairwise_bound_is_above_every_gradient_norm(seed) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(Normalize((0.3,), (0.4,)), nn.Conv2d(1, 6, 3, padding=1, stride=2),
                          nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 16), nn.ReLU(),
                          nn.Linear(16, 4)).double().eval()
    x = torch.rand(400, 1, 8, 8, dtype=torch.float64)
    bound = network_bound(model, x[:1])
    pair = bound.pairwise()
    per = bound.per_logit()
    for i in range(4):
        for j in range(4):
            if i == j:
                assert pair[i, j] == 0
                continue
            assert _max_gradient_norm(model, x, i, j) <= float(pair[i, j])
            assert float(pair[i, j]) <= float(per[i] + per[j]) + 1e-12
    # the Normalize layer's 1/std is a factor of the product
    assert bound.layers[0].constant == pytest.approx(1 / 0.4)
    assert bound.global_constant() >= float(pair.max()) / 2


def test_svd_and_gram_bounds_agree_on_small_layers() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 6 * 6, 5)).eval()
    x = torch.rand(1, 1, 6, 6)
    gram = network_bound(model, x, method="gram")
    svd = network_bound(model, x, method="svd")
    assert svd.prefix <= gram.prefix <= svd.prefix * 1.01


class _Scaled(nn.Module):
    """A functional scaling between two layers: not a layer, so not in any product."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)
        self.inplace = inplace

    def forward(self, x):
        h = self.a(x.flatten(1))
        h = h.mul_(100.0) if self.inplace else h * 100.0
        return self.b(h)


@pytest.mark.parametrize("inplace", [False, True])
def test_an_operation_between_layers_is_refused(inplace) -> None:
    with pytest.raises(InputError, match="not a chain"):
        layer_chain(_Scaled(inplace), torch.rand(1, 1, 2, 2))


def test_in_place_activations_are_fine() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    chain = layer_chain(model, torch.rand(1, 1, 2, 2))
    assert [type(c.module).__name__ for c in chain] == ["Flatten", "Linear", "ReLU", "Linear"]
