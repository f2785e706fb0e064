"""CURE's penalty: closed forms, directions, double backprop and gradcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bastion.losses import curvature_direction, curvature_penalty, input_gradient


def _linear(d: int = 12, k: int = 4, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k)).double()


def _batch(n: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 2, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=g)
    return x, y


def _unit_z(x: torch.Tensor, seed: int = 2) -> torch.Tensor:
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    return z / z.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def test_linear_classifier_closed_form() -> None:
    # CE's input gradient for logits W x + b is W^T (softmax(W x + b) - e_y), so the penalty
    # is ||W^T (softmax(W (x + h z) + b) - softmax(W x + b))||^2 -- not zero.
    model, (x, y) = _linear(), _batch()
    z, h = _unit_z(x), 0.7
    lin = model[1]
    s0 = F.softmax(x.flatten(1) @ lin.weight.T + lin.bias, dim=1)
    s1 = F.softmax((x + h * z).flatten(1) @ lin.weight.T + lin.bias, dim=1)
    expected = ((s1 - s0) @ lin.weight).pow(2).sum(dim=1)
    got = curvature_penalty(model, x, y, h=h, z=z)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    assert (got > 0).all()


def test_zero_for_a_loss_affine_in_the_input() -> None:
    # The label's logit under a linear model is affine in x: its gradient is W[y] everywhere.
    model, (x, y) = _linear(), _batch()

    def label_logit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return logits.gather(1, y[:, None]).squeeze(1)

    for direction in ("gradient-sign", "gradient", "gaussian"):
        got = curvature_penalty(model, x, y, h=3.0, direction=direction, loss_fn=label_logit,
                                generator=torch.Generator().manual_seed(0))
        assert torch.equal(got, torch.zeros(5, dtype=torch.float64))


def test_quadratic_loss_closed_form() -> None:
    # l(x) = ||W x||^2 / 2 has Hessian W^T W, so the penalty is h^2 ||W^T W z||^2 exactly.
    model, (x, y) = _linear(), _batch()
    with torch.no_grad():
        model[1].bias.zero_()
    z, h = _unit_z(x, 5), 0.3
    w = model[1].weight

    def half_sq(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * logits.pow(2).sum(dim=1)

    expected = (h * z.flatten(1) @ (w.T @ w)).pow(2).sum(dim=1)
    got = curvature_penalty(model, x, y, h=h, z=z, loss_fn=half_sq)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)


def test_directions_are_unit_and_follow_their_definition() -> None:
    model, (x, y) = _linear(), _batch()
    g = input_gradient(model, x, y)
    assert (g != 0).all()
    d = x[0].numel()
    z = curvature_direction(g, "gradient-sign")
    torch.testing.assert_close(z, g.sign() / d**0.5)
    z = curvature_direction(g, "gradient")
    torch.testing.assert_close(z, g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    z1 = curvature_direction(g, "gaussian", torch.Generator().manual_seed(3))
    z2 = curvature_direction(g, "gaussian", torch.Generator().manual_seed(3))
    assert torch.equal(z1, z2)
    torch.testing.assert_close(z1.flatten(1).norm(dim=1), torch.ones(5, dtype=torch.float64))
    assert not z1.requires_grad


def test_default_direction_is_gradient_sign() -> None:
    model, (x, y) = _linear(), _batch()
    z = curvature_direction(input_gradient(model, x, y), "gradient-sign")
    torch.testing.assert_close(curvature_penalty(model, x, y, h=0.5),
                               curvature_penalty(model, x, y, h=0.5, z=z))


def test_zero_gradient_gives_zero_direction_and_penalty() -> None:
    model, (x, y) = _linear(), _batch()
    with torch.no_grad():
        model[1].weight.zero_()
    assert torch.equal(curvature_direction(input_gradient(model, x, y)), torch.zeros_like(x))
    assert torch.equal(curvature_penalty(model, x, y, h=1.0), torch.zeros(5, dtype=x.dtype))


def test_gaussian_draws_average_single_draws() -> None:
    model, (x, y) = _linear(), _batch()
    got = curvature_penalty(model, x, y, h=0.5, direction="gaussian", draws=3,
                            generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    singles = []
    for _ in range(3):
        z = torch.randn(x.shape, generator=g, dtype=x.dtype)
        z = z / z.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        singles.append(curvature_penalty(model, x, y, h=0.5, z=z))
    torch.testing.assert_close(got, torch.stack(singles).mean(0))


def _tanh_net() -> nn.Sequential:
    torch.manual_seed(4)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def test_penalty_alone_reaches_every_parameter() -> None:
    model = _tanh_net()
    x, _ = _batch()
    y = torch.tensor([0, 1, 2, 0, 1])
    curvature_penalty(model, x, y, h=0.5).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradcheck_wrt_parameters() -> None:
    model = _tanh_net()
    x, _ = _batch(n=3)
    y = torch.tensor([0, 2, 1])
    z = _unit_z(x, 8)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())

    def penalty(*ps: torch.Tensor) -> torch.Tensor:
        def fmodel(inp: torch.Tensor) -> torch.Tensor:
            return functional_call(model, dict(zip(names, ps, strict=True)), (inp,))
        return curvature_penalty(fmodel, x, y, h=0.5, z=z)

    assert torch.autograd.gradcheck(penalty, params)


def test_float32_batch_of_one() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    out = curvature_penalty(model, torch.rand(1, 1, 2, 2), torch.tensor([1]), h=1.5)
    assert out.shape == (1,) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_errors() -> None:
    model, (x, y) = _linear(), _batch()
    with pytest.raises(ValueError, match="h must"):
        curvature_penalty(model, x, y, h=0.0)
    with pytest.raises(ValueError, match="draws must"):
        curvature_penalty(model, x, y, h=1.0, direction="gaussian", draws=0)
    with pytest.raises(ValueError, match="draws > 1"):
        curvature_penalty(model, x, y, h=1.0, draws=2)
    with pytest.raises(ValueError, match="shape of x"):
        curvature_penalty(model, x, y, h=1.0, z=torch.zeros(1, 3, 2, 2, dtype=x.dtype))
    with pytest.raises(ValueError, match="valid choices"):
        curvature_direction(x, "hessian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one loss per example"):
        curvature_penalty(model, x, y, h=1.0, loss_fn=lambda lg, t: F.cross_entropy(lg, t))
