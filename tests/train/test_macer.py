"""MACER: the loss by hand, where the hinge applies, gradients, modes and the method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torch import nn

from bastion.losses.macer import macer_loss, normal_icdf, soft_radius, soft_smoothed_probs
from bastion.records import StepContext
from bastion.train import build_method
from bastion.train.macer import MACER


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference(logits: np.ndarray, y: np.ndarray, sigma, lam, gamma, beta) -> dict[str, float]:
    """MACER's loss written out with numpy/scipy, point by point."""
    b = logits.shape[0]
    ce, rob = 0.0, 0.0
    for i in range(b):
        p = _softmax(logits[i]).mean(0)
        ce += -math.log(p[y[i]] + 1e-10)
        q = _softmax(beta * logits[i]).mean(0)
        order = np.argsort(-q)
        if order[0] != y[i]:
            continue  # hinge only on points the soft smoothed classifier gets right
        xi = sps.norm.ppf(q[order[0]]) - sps.norm.ppf(q[order[1]])
        if np.isfinite(xi) and xi <= gamma:
            rob += sigma / 2 * (gamma - xi)
    return {"ce": ce / b, "rob": rob / b, "loss": ce / b + lam * rob / b}


def test_loss_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, 3, generator=g, dtype=torch.float64) * 0.3
    logits[0, :, 1] += 0.4  # point 0: class 1, small margin -> hinge active
    logits[1, :, 2] += 3.0  # point 1: labelled 0 but predicted 2 -> no hinge
    y = torch.tensor([1, 0, 2, 0, 1])
    sigma, lam, gamma, beta = 0.25, 12.0, 8.0, 16.0
    terms = macer_loss(logits, y, sigma=sigma, lam=lam, gamma=gamma, beta=beta)
    ref = reference(logits.numpy(), y.numpy(), sigma, lam, gamma, beta)
    assert float(terms.classification) == pytest.approx(ref["ce"], rel=1e-10)
    assert float(terms.robustness) == pytest.approx(ref["rob"], rel=1e-10)
    assert float(terms.loss) == pytest.approx(ref["loss"], rel=1e-10)
    assert bool(terms.correct[0]) and not bool(terms.correct[1])
    assert bool(terms.active[0]) and not bool(terms.active[1])
    assert math.isnan(float(terms.radius[1]))
    soft = soft_smoothed_probs(logits, beta)
    assert float(terms.radius[0]) == pytest.approx(float(soft_radius(soft, y, sigma)[0]))


def test_hinge_only_on_correct_points_within_gamma() -> None:
    logits = torch.zeros(3, 2, 3, dtype=torch.float64)
    logits[0, :, 0] = 0.05  # correct (label 0), xi small: in the hinge
    logits[1, :, 2] = 0.05  # label 0 but class 2 wins: out
    logits[2, :, 0] = 5.0  # correct with a huge margin: xi > gamma (or inf), out
    logits.requires_grad_(True)
    y = torch.tensor([0, 0, 0])
    terms = macer_loss(logits, y, sigma=0.5, lam=1.0, gamma=1.0, beta=16.0)
    assert terms.active.tolist() == [True, False, False]
    (grad,) = torch.autograd.grad(terms.robustness, logits)
    assert grad[0].abs().sum() > 0
    assert torch.equal(grad[1:], torch.zeros_like(grad[1:]))
    # the hinge value: sigma/2 (gamma - xi) for point 0 only, averaged over the batch of 3
    q = soft_smoothed_probs(logits.detach(), 16.0)[0].sort(descending=True).values
    xi = sps.norm.ppf(float(q[0])) - sps.norm.ppf(float(q[1]))
    assert float(terms.robustness.detach()) == pytest.approx(0.25 * (1.0 - xi) / 3, rel=1e-9)


def test_soft_radius_gradcheck_and_icdf() -> None:
    assert float(normal_icdf(torch.tensor(0.975, dtype=torch.float64))) == pytest.approx(
        sps.norm.ppf(0.975), rel=1e-12
    )
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]], dtype=torch.float64,
                         requires_grad=True)
    y = torch.tensor([0, 1])
    assert torch.autograd.gradcheck(lambda p: soft_radius(p, y, 0.5), (probs,))
    logits = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z: macer_loss(z, torch.tensor([0, 1]), sigma=0.25, beta=2.0).loss, (logits,)
    )


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(8, 3))


def test_method_gradients_reach_every_parameter_and_modes_are_kept() -> None:
    model = tiny_model()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    method = MACER(sigma=0.25, num_noise=4, lam=12.0, gamma=8.0, beta=16.0)
    ctx = StepContext(generator=torch.Generator().manual_seed(2))
    for train in (True, False):
        model.train(train)
        out = method(model, x, y, ctx=ctx)
        assert model.training == train and all(m.training == train for m in model.modules())
        assert out.loss.dim() == 0 and torch.isfinite(out.loss)
        model.zero_grad()
        out.loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        assert set(out.logs) == {"acc", "ce", "radius_loss", "hinge_frac"}
        assert all(not torch.as_tensor(v).requires_grad for v in out.logs.values())


def test_noisy_copies_are_input_major_and_reproducible() -> None:
    seen: list[torch.Tensor] = []

    class Spy(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            seen.append(z.detach().clone())
            return z.flatten(1)[:, :3] * 10

    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2])
    method = MACER(sigma=0.1, num_noise=500)
    method(Spy(), x, y, ctx=StepContext(generator=torch.Generator().manual_seed(4)))
    method(Spy(), x, y, ctx=StepContext(generator=torch.Generator().manual_seed(4)))
    assert torch.equal(seen[0], seen[1])
    z = seen[0].view(3, 500, 1, 4, 4)
    assert torch.allclose(z.mean(1), x, atol=0.02)
    assert float((z - x.unsqueeze(1)).std()) == pytest.approx(0.1, rel=0.05)
    assert float(z.min()) < 0.0 or float(z.max()) > 1.0  # not clipped to [0, 1]


def test_a_few_steps_reduce_the_loss() -> None:
    model = tiny_model()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(32, 1, 4, 4, generator=g)
    y = (x.flatten(1)[:, :3].argmax(1)).long()
    method = MACER(sigma=0.12, num_noise=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx = StepContext(generator=torch.Generator().manual_seed(6))
    losses = []
    for _ in range(60):
        out = method(model, x, y, ctx=ctx)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_registry_and_bad_options() -> None:
    m = build_method("macer", sigma=0.5, num_noise=8)
    assert isinstance(m, MACER) and m.lam == 12.0 and m.gamma == 8.0 and m.beta == 16.0
    with pytest.raises(ValueError, match="unknown option"):
        build_method("macer", k=16)
    with pytest.raises(ValueError, match="sigma"):
        MACER(sigma=0.0)
    with pytest.raises(ValueError, match="num_noise"):
        MACER(num_noise=0)
    with pytest.raises(ValueError, match="lam"):
        MACER(lam=-1.0)
    with pytest.raises(ValueError, match=r"\[B, k, K\]"):
        macer_loss(torch.zeros(2, 3), torch.tensor([0, 1]), sigma=0.25)
