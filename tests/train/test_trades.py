"""TRADES method: equals CE at beta 0, hand-computed loss, attack, gradients, modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bastion.attacks.threat import ThreatModel
from bastion.losses import trades_kl
from bastion.records import StepContext
from bastion.train import TRADES, Standard, build_method


def _ctx(seed: int = 0) -> StepContext:
    return StepContext(generator=torch.Generator().manual_seed(seed))


def _batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(12, 3))


class _ModeRecorder(nn.Module):
    """Identity that records the train flag of every forward call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(self.training)
        return x


def test_beta_zero_equals_standard_cross_entropy() -> None:
    model, (x, y) = _mlp().eval(), _batch()
    out = TRADES(threat=ThreatModel(eps=0.1, steps=3), beta=0.0)(model, x, y, ctx=_ctx())
    assert torch.equal(out.loss, Standard()(model, x, y).loss)


def test_loss_equals_hand_computation_on_a_linear_model() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    x, y = _batch()
    x = x.double()
    method = TRADES(threat=ThreatModel(eps=0.2, steps=4), beta=6.0)
    x_adv = method.perturb(model, x, torch.Generator().manual_seed(9)).x_adv
    out = method(model, x, y, ctx=_ctx(9))  # same seed -> same x'
    w, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p = softmax(x.flatten(1).numpy() @ w.T + b)
    q = softmax(x_adv.flatten(1).numpy() @ w.T + b)
    ce = -np.log(p[np.arange(8), y.numpy()]).mean()
    kl = (p * np.log(p / q)).sum(1).mean()
    assert kl > 0
    assert out.loss.item() == pytest.approx(ce + 6.0 * kl, rel=1e-10)
    assert float(out.logs["kl"]) == pytest.approx(kl, rel=1e-10)


def test_adversarial_point_in_ball_and_box_and_raises_the_kl() -> None:
    model, (x, _) = _mlp().eval(), _batch(16)
    method = TRADES(threat=ThreatModel(eps=0.1, steps=10))
    x_adv = method.perturb(model, x, torch.Generator().manual_seed(2)).x_adv
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    start = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    start = start.clamp(0, 1)
    with torch.no_grad():
        clean = model(x)
        assert trades_kl(clean, model(x_adv)) > 10 * trades_kl(clean, model(start))


def test_attack_in_eval_mode_loss_in_train_mode_and_modes_restored() -> None:
    rec = _ModeRecorder()
    model = nn.Sequential(rec, _mlp()).train()
    model[1][3].eval()  # a sub-module frozen in eval mode must stay so
    flags = [m.training for m in model.modules()]
    x, y = _batch()
    out = TRADES(threat=ThreatModel(eps=0.1, steps=3))(model, x, y, ctx=_ctx())
    # 1 clean eval forward for the target + 3 attack steps + 1 final check, then 2 train
    assert rec.calls == [False] * 5 + [True, True]
    assert [m.training for m in model.modules()] == flags
    assert torch.isfinite(out.loss) and out.loss.dim() == 0


def test_gradients_reach_every_parameter() -> None:
    model, (x, y) = _mlp(), _batch()
    TRADES(threat=ThreatModel(eps=0.1, steps=2))(model, x, y, ctx=_ctx()).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_reproducible_with_the_generator_and_logs_detached() -> None:
    model, (x, y) = _mlp().eval(), _batch()
    a = TRADES(threat=ThreatModel(eps=0.1, steps=2))(model, x, y, ctx=_ctx(5))
    b = TRADES(threat=ThreatModel(eps=0.1, steps=2))(model, x, y, ctx=_ctx(5))
    assert torch.equal(a.loss, b.loss)
    assert set(a.logs) == {"nat_acc", "adv_acc", "ce", "kl"}
    assert not any(torch.as_tensor(v).requires_grad for v in a.logs.values())


def test_l2_and_no_ctx() -> None:
    model, (x, y) = _mlp().eval(), _batch(1)
    out = TRADES(threat=ThreatModel(eps=0.5, norm="l2", steps=2))(model, x, y)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("kwargs, match", [
    ({"beta": -1.0}, "beta"), ({"beta": float("nan")}, "beta"), ({"threat": {"eps": -0.1}}, "eps"),
    ({"threat": {"eps": 2.0}}, "eps"), ({"threat": {"steps": 0}}, "steps"),
    ({"threat": {"step_size": 0.0}}, "step_size"), ({"init_std": -1.0}, "init_std"),
    ({"threat": {"norm": "l1"}}, "valid choices"),
])
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TRADES(**kwargs)


def test_registry() -> None:
    assert build_method("trades", beta=1.0) == TRADES(beta=1.0)
    with pytest.raises(ValueError, match="unknown option"):
        build_method("trades", lam=1.0)


def test_fit_one_epoch_on_digits() -> None:
    from bastion.data import load_dataset
    from bastion.train import fit

    data = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = build_method("trades", threat={"steps": 2})
    hist = fit(model, method, data, opt, epochs=1, batch_size=128, seed=0)
    rec = hist.epochs[-1]
    assert np.isfinite(rec["train_loss"]) and "train_kl" in rec
