"""The one attack engine: balls, boxes, closed forms, flags and contracts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks import fgsm, perturbation_norm, pgd

NORMS_EPS = [("linf", 0.03), ("linf", 0.3), ("l2", 0.5), ("l2", 2.0)]


def _model_with_dropout_and_bn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(4 * 4 * 4, 5),
    )


@pytest.mark.parametrize(("norm", "eps"), NORMS_EPS)
@pytest.mark.parametrize("objective", ["ce", "margin", "dlr"])
def test_output_in_ball_and_box(tiny_model, tiny_batch, generator, norm, eps, objective):
    x, y = tiny_batch
    r = pgd(tiny_model, x, y, eps=eps, norm=norm, steps=7, objective=objective,
            restarts=2, keep_best=True, generator=generator)
    assert r.x_adv.shape == x.shape
    assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
    assert (perturbation_norm(r.x_adv - x, norm) <= eps + 1e-5).all()


def test_kl_objective_in_ball(tiny_model, tiny_batch, generator):
    x, y = tiny_batch
    p = torch.softmax(tiny_model(x), 1).detach()
    r = pgd(tiny_model, x, p, eps=0.1, objective="kl", steps=5, init_std=0.001,
            generator=generator)
    assert (r.x_adv - x).abs().max() <= 0.1 + 1e-6
    kl = torch.nn.functional.kl_div(torch.log_softmax(tiny_model(r.x_adv), 1), p,
                                    reduction="none").sum(1)
    assert (kl > 0).all()


def test_batch_of_one_and_per_example_eps(tiny_model, tiny_batch):
    x, y = tiny_batch
    r1 = pgd(tiny_model, x[:1], y[:1], eps=0.1, steps=3)
    assert r1.x_adv.shape == (1, 3, 6, 6)
    eps = torch.linspace(0, 0.2, len(x))
    r = pgd(tiny_model, x, y, eps=eps, steps=5)
    assert (perturbation_norm(r.x_adv - x, "linf") <= eps + 1e-6).all()
    assert torch.equal(r.x_adv[0], x[0])


def _linear_two_class(d: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(3)
    lin = nn.Linear(d, 2)
    return nn.Sequential(nn.Flatten(), lin).eval(), lin.weight.detach()


def test_linf_pgd_reaches_closed_form_worst_case():
    """For two classes, CE is monotone in the logit margin (w_y - w_j).x, so the worst case
    in the L-inf ball is the corner x - eps * sign(w_y - w_j) (box not active here)."""
    model, w = _linear_two_class(16)
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(6, 1, 4, 4, generator=g)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    eps = 0.1
    r = pgd(model, x, y, eps=eps, steps=20, generator=g)
    d = w[y] - w[1 - y]  # [N, 16]
    corner = x.flatten(1) - eps * d.sign()
    torch.testing.assert_close(r.x_adv.flatten(1), corner, atol=1e-6, rtol=0)
    best_margin = (d * corner).sum(1)
    got_margin = (d * r.x_adv.flatten(1)).sum(1)
    torch.testing.assert_close(got_margin, best_margin)


def test_l2_pgd_reaches_closed_form_worst_case():
    model, w = _linear_two_class(16)
    g = torch.Generator().manual_seed(0)
    x = 0.4 + 0.2 * torch.rand(4, 1, 4, 4, generator=g)
    y = torch.tensor([0, 1, 1, 0])
    eps = 0.2
    r = pgd(model, x, y, eps=eps, norm="l2", steps=50, step_size=0.05, generator=g)
    d = w[y] - w[1 - y]
    target = x.flatten(1) - eps * d / d.norm(dim=1, keepdim=True)
    torch.testing.assert_close(r.x_adv.flatten(1), target, atol=2e-3, rtol=0)


def test_fgsm_is_one_signed_step(tiny_model, tiny_batch):
    x, y = tiny_batch
    xr = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(tiny_model(xr), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xr)
    expected = (x + 0.05 * g.sign()).clamp(0, 1)
    torch.testing.assert_close(fgsm(tiny_model, x, y, eps=0.05).x_adv, expected)


def test_no_parameter_gradients_and_mode_restored(tiny_batch, generator):
    model = _model_with_dropout_and_bn()
    model.train()
    model[1].eval()  # a sub-module frozen in eval must stay so
    x, y = tiny_batch
    before = [p.detach().clone() for p in model.parameters()]
    stats = model[1].running_mean.clone()
    pgd(model, x, y, eps=0.1, steps=3, generator=generator)
    assert all(p.grad is None for p in model.parameters())
    assert model.training and not model[1].training and model[4].training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert torch.equal(stats, model[1].running_mean)


def test_early_stop_takes_fewer_steps(tiny_model, tiny_batch, generator):
    x, y = tiny_batch
    full = pgd(tiny_model, x, y, eps=0.3, steps=10, generator=generator)
    g2 = torch.Generator().manual_seed(0)
    early = pgd(tiny_model, x, y, eps=0.3, steps=10, early_stop=True, tau=0, generator=g2)
    g3 = torch.Generator().manual_seed(0)
    early2 = pgd(tiny_model, x, y, eps=0.3, steps=10, early_stop=True, tau=2, generator=g3)
    assert int(full.num_steps.sum()) == 10 * len(x)
    assert int(early.num_steps.sum()) < int(early2.num_steps.sum()) <= int(full.num_steps.sum())
    assert int(early.num_steps.sum()) < int(full.num_steps.sum())
    # every early-stopped example that stopped before K is misclassified at its output
    stopped = early.num_steps < 10
    assert (tiny_model(early.x_adv).argmax(1)[stopped] != y[stopped]).all()


def test_targeted_moves_towards_target(tiny_model, tiny_batch, generator):
    x, _ = tiny_batch
    t = torch.full((len(x),), 2)
    r = pgd(tiny_model, x, t, eps=0.5, steps=20, targeted=True, generator=generator)
    before = nn.functional.cross_entropy(tiny_model(x), t)
    after = nn.functional.cross_entropy(tiny_model(r.x_adv), t)
    assert after < before


def test_restarts_never_weaker(tiny_model, tiny_batch):
    x, y = tiny_batch
    one = pgd(tiny_model, x, y, eps=0.1, steps=5, generator=torch.Generator().manual_seed(0))
    three = pgd(tiny_model, x, y, eps=0.1, steps=5, restarts=3,
                generator=torch.Generator().manual_seed(0))
    assert int(three.success.sum()) >= int(one.success.sum())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"eps": 2.0}, "larger than"),
        ({"eps": float("nan")}, "finite"),
        ({"eps": 0.1, "norm": "l3"}, "valid choices: l2, linf"),
        ({"eps": 0.1, "objective": "hinge"}, "valid choices"),
        ({"eps": 0.1, "steps": 0}, "steps must be"),
    ],
)
def test_bad_arguments(tiny_model, tiny_batch, kwargs, match):
    x, y = tiny_batch
    with pytest.raises(ValueError, match=match):
        pgd(tiny_model, x, y, **kwargs)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.rand(3, 6, 6), "4 dimensions"),
        (torch.rand(2, 3, 6, 6) * 255, r"must lie in \[0, 1\]"),
        (torch.full((2, 3, 6, 6), float("nan")), "NaN"),
        (torch.randint(0, 2, (2, 3, 6, 6)), "floating-point"),
    ],
)
def test_bad_images(tiny_model, x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pgd(tiny_model, x, torch.zeros(len(x), dtype=torch.int64), eps=0.1)


def test_bad_target_shape(tiny_model, tiny_batch):
    x, _ = tiny_batch
    with pytest.raises(ValueError, match="int64 labels"):
        pgd(tiny_model, x, torch.zeros(3, dtype=torch.int64), eps=0.1)
