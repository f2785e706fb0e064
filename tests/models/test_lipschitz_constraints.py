"""Spectral normalisation and Björck: the constrained operator norms, gradient-norm
preservation, persistent vectors, export, and the Lipschitz architectures."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from bastion.errors import InputError
from bastion.models import MODELS, build
from bastion.models.lipschitz import (
    GroupSort,
    bjorck,
    constrain,
    conv_operator_matrix,
    export_plain,
    network_bound,
    per_layer_target,
)


def _exact(module: nn.Module, size=None) -> float:
    w = module.weight.detach().double()
    if isinstance(module, nn.Conv2d):
        w = conv_operator_matrix(w, size, stride=module.stride, padding=module.padding)
    return float(torch.linalg.matrix_norm(w, ord=2))


def test_spectral_normalisation_reaches_the_target_on_the_conv_operator() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 5))
    constrain(net, "spectral", total=2.0, input_sizes={"0": (8, 8)})
    net.train()
    for _ in range(30):  # each training forward advances the persistent vectors
        net(torch.rand(2, 2, 8, 8))
    target = per_layer_target(2.0, 2)
    assert math.isclose(_exact(net[0], (8, 8)), target, rel_tol=1e-3)
    assert math.isclose(_exact(net[3]), target, rel_tol=1e-3)
    # eval mode freezes the vectors: two forwards give identical weights
    net.eval()
    assert torch.equal(net[0].weight, net[0].weight)
    v = net[0].parametrizations.weight[0].v.clone()
    net(torch.rand(2, 2, 8, 8))
    assert torch.equal(v, net[0].parametrizations.weight[0].v)


def test_spectral_normalisation_of_a_conv_needs_its_input_size() -> None:
    with pytest.raises(InputError, match="input size"):
        constrain(nn.Sequential(nn.Conv2d(1, 2, 3)), "spectral")
    with pytest.raises(InputError, match="unknown constraint"):
        constrain(nn.Sequential(nn.Linear(2, 2)), "frobenius")


def test_bjorck_orthonormalises_and_preserves_gradient_norms() -> None:
    torch.manual_seed(1)
    w = torch.randn(16, 16, dtype=torch.float64)
    q = bjorck(w / torch.linalg.matrix_norm(w, ord=2), iters=40)
    s = torch.linalg.svdvals(q)
    assert torch.allclose(s, torch.ones_like(s), atol=1e-6)
    # a network of square Björck layers and GroupSort has an orthogonal Jacobian a.e.:
    # every input gradient of u . f(x) has norm ||u||
    net = nn.Sequential(nn.Linear(16, 16), GroupSort(2), nn.Linear(16, 16), GroupSort(4),
                        nn.Linear(16, 16)).double()
    constrain(net, "bjorck", bjorck_iters=40)
    net.eval()
    x = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    u = torch.randn(8, 16, dtype=torch.float64)
    (g,) = torch.autograd.grad((net(x) * u).sum(), x)
    assert torch.allclose(g.norm(dim=1), u.norm(dim=1), rtol=1e-5)


def test_export_plain_bakes_the_weights_and_leaves_the_original_constrained() -> None:
    model = build("lipschitz-mlp", dataset="digits", input_size=8, hidden=(32, 32))
    model.train()
    model(torch.rand(4, 1, 8, 8))
    model.eval()
    x = torch.rand(10, 1, 8, 8)
    plain = export_plain(copy.deepcopy(model))
    assert torch.equal(plain(x), model(x))
    assert not any("parametrizations" in n for n, _ in plain.named_modules())
    assert any("parametrizations" in n for n, _ in model.named_modules())
    assert torch.equal(model(x), plain(x))
    with pytest.raises(InputError, match="eval mode"):
        export_plain(model.train())


@pytest.mark.parametrize("activation", ["maxmin", "groupsort", "fullsort", "relu", "lls"])
@pytest.mark.parametrize("constraint", ["none", "spectral", "bjorck"])
def test_lipschitz_cnn_builds_trains_and_is_bounded(activation, constraint) -> None:
    model = build("lipschitz-cnn", dataset="fashion-mnist", channels=(8, 8), hidden=(16,),
                  activation=activation, constraint=constraint)
    x = torch.rand(3, 1, 28, 28)
    model.train()
    loss = model(x).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    bound = network_bound(model, x[:1])
    assert bound.sound and bound.prefix > 0
    if constraint != "none":
        # every constrained layer is near 1 (the Gram bound is slightly above the norm)
        convs = [c.constant for c in bound.layers if c.kind in ("Conv2d", "Linear")]
        assert all(0.5 < c < 2.5 for c in convs), convs


def test_registry_has_the_lipschitz_architectures_and_checks_options() -> None:
    assert {"lipschitz-cnn", "lipschitz-mlp"} <= set(MODELS)
    with pytest.raises(InputError, match="unknown activation"):
        build("lipschitz-cnn", dataset="digits", input_size=8, activation="tanh2")
    with pytest.raises(InputError, match="odd"):
        build("lipschitz-mlp", dataset="digits", input_size=8, hidden=(7,))
