"""CURE method: loss = CE + lambda * penalty, eval-mode penalty, gradients, options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bastion.losses import curvature_penalty
from bastion.records import StepContext
from bastion.train import CURE, Standard, build_method


def _ctx(seed: int = 0, epoch: int = 0) -> StepContext:
    return StepContext(epoch=epoch, generator=torch.Generator().manual_seed(seed))


def _batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _net(dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Dropout(dropout),
                         nn.Linear(12, 3))


def test_loss_is_ce_plus_lambda_times_penalty() -> None:
    model, (x, y) = _net().eval(), _batch()
    out = CURE(lambda_=4.0, h=0.5)(model, x, y, ctx=_ctx())
    reg = curvature_penalty(model, x, y, h=0.5).mean()
    ce = Standard()(model, x, y).loss
    torch.testing.assert_close(out.logs["reg"], reg.detach())
    torch.testing.assert_close(out.loss.detach(), (ce + 4.0 * reg).detach())
    assert reg.item() > 0


def test_lambda_zero_equals_standard_cross_entropy() -> None:
    model, (x, y) = _net().eval(), _batch()
    assert torch.equal(CURE(lambda_=0.0)(model, x, y).loss, Standard()(model, x, y).loss)


def test_penalty_in_eval_mode_and_modes_restored() -> None:
    model, (x, y) = _net(dropout=0.5).train(), _batch()
    flags = [m.training for m in model.modules()]
    out = CURE(h=0.5)(model, x, y, ctx=_ctx())
    assert [m.training for m in model.modules()] == flags
    expected = curvature_penalty(model.eval(), x, y, h=0.5).mean()
    torch.testing.assert_close(out.logs["reg"], expected.detach())


def test_penalty_gradient_reaches_every_parameter() -> None:
    model, (x, y) = _net(), _batch()
    out = CURE(lambda_=1.0, h=0.5)(model, x, y, ctx=_ctx())
    ce_grads = torch.autograd.grad(Standard()(model, x, y).loss, list(model.parameters()))
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    for g_total, g_ce in zip(grads, ce_grads, strict=True):
        assert (g_total - g_ce).abs().sum() > 0  # the penalty's own share is nonzero


def test_gaussian_direction_uses_the_generator() -> None:
    model, (x, y) = _net().eval(), _batch()
    method = CURE(direction="gaussian", draws=2, h=0.5)
    a = method(model, x, y, ctx=_ctx(3)).logs["reg"]
    b = method(model, x, y, ctx=_ctx(3)).logs["reg"]
    c = method(model, x, y, ctx=_ctx(4)).logs["reg"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_h_warmup_ramps_linearly() -> None:
    method = CURE(h=1.5, h_warmup_epochs=3)
    assert [method.step_h(e) for e in range(5)] == pytest.approx([0.5, 1.0, 1.5, 1.5, 1.5])
    assert CURE(h=1.5).step_h(0) == 1.5
    model, (x, y) = _net().eval(), _batch()
    assert method(model, x, y, ctx=_ctx(epoch=0)).logs["h"] == pytest.approx(0.5)


def test_small_cnn_smoke() -> None:
    from bastion.models import build

    model = build("small-cnn", num_classes=10, in_channels=1, input_size=16,
                  dataset="fashion-mnist", zero_init_last=False).train()
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    out = CURE()(model, x, y, ctx=_ctx())
    out.loss.backward()
    assert torch.isfinite(out.loss) and float(out.logs["reg"]) > 0
    assert model.training and model.net.classifier.drop.training


@pytest.mark.parametrize("kwargs, match", [
    ({"lambda_": -1.0}, "lambda_"), ({"h": 0.0}, "h must"), ({"h": float("inf")}, "h must"),
    ({"direction": "hessian"}, "valid choices"), ({"draws": 0}, "draws"),
    ({"draws": 2}, "gaussian"), ({"h_warmup_epochs": -1}, "h_warmup_epochs"),
])
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CURE(**kwargs)


def test_registry() -> None:
    assert build_method("cure", h=1.0) == CURE(h=1.0)


def test_fit_one_epoch_on_digits() -> None:
    from bastion.data import load_dataset
    from bastion.train import fit

    data = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = build_method("cure")
    hist = fit(model, method, data, opt, epochs=1, batch_size=128, seed=0)
    rec = hist.epochs[-1]
    assert np.isfinite(rec["train_loss"]) and "train_reg" in rec
