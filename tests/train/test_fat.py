"""Friendly adversarial training: early stop, dynamic tau, the minimal (FMN) and DDN
variants, contracts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks import fmn, perturbation_norm, pgd
from bastion.attacks.ddn import ddn_within
from bastion.attacks.threat import ThreatModel
from bastion.data import load_dataset
from bastion.models import build
from bastion.records import StepContext
from bastion.train import FAT, EvalPlan, build_method, fit, per_epoch_evaluation
from bastion.train.fat import PAPER_TAU_SCHEDULE


def _mlp(hidden: tuple[int, ...] = (32,), classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return build("mlp", num_classes=classes, in_channels=1, input_size=8, hidden=hidden)


def _batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("digits", "train")
    return data.images[:n], data.labels[:n]


def _ctx(epoch: int = 0, epochs: int = 1, seed: int = 0) -> StepContext:
    return StepContext(epoch=epoch, epochs=epochs, generator=torch.Generator().manual_seed(seed))


def _assert_step_leaves_model_and_input_as_they_were(out, model, x) -> None:
    """The logs are detached, the model's modes and gradients untouched by the step, and
    the loss's backward reaches every parameter but not the input."""
    assert all(not torch.is_tensor(v) or not v.requires_grad for v in out.logs.values())
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert x.grad is None


def test_early_stop_takes_fewer_steps_than_full_pgd_and_logs_them():
    # An untrained net misclassifies most digits from the start: PGD-K-0 stops them at once.
    model = _mlp()
    x, y = _batch()
    k = 10
    full = pgd(model, x, y, eps=0.1, steps=k, generator=torch.Generator().manual_seed(0))
    early = pgd(model, x, y, eps=0.1, steps=k, early_stop=True, tau=0,
                generator=torch.Generator().manual_seed(0))
    assert int(full.num_steps.sum()) == k * len(x)
    assert int(early.num_steps.sum()) < int(full.num_steps.sum()) / 2
    method = FAT(threat=ThreatModel(eps=0.1, steps=k), tau_schedule=None, tau=0)
    out = method(model, x, y, ctx=_ctx(seed=0))
    assert float(out.logs["num_steps"]) == pytest.approx(float(early.num_steps.double().mean()))
    assert out.logs["tau"] == 0.0
    # tau = K never stops early: the budget of PGD-AT
    full = FAT(threat=ThreatModel(eps=0.1, steps=k), tau_schedule=None, tau=k)
    out_k = full(model, x, y, ctx=_ctx(seed=0))
    assert float(out_k.logs["num_steps"]) == k


def test_larger_tau_means_more_steps():
    model = _mlp()
    x, y = _batch()
    threat = ThreatModel(eps=0.1, steps=8)
    steps = [float(FAT(threat=threat, tau_schedule=None, tau=t)(model, x, y, ctx=_ctx())
                   .logs["num_steps"]) for t in (0, 1, 3)]
    assert steps[0] < steps[1] < steps[2] <= 8


def test_paper_tau_schedule_values():
    m = FAT()
    assert m.tau_schedule == PAPER_TAU_SCHEDULE
    # the authors' adjust_tau(e) for 1-based e: 0 for e <= 50, 1 for e <= 90, 2 after
    for e1 in range(1, 121):
        want = 0 if e1 <= 50 else 1 if e1 <= 90 else 2
        assert m.tau_at(e1 - 1, 120) == want, e1
    assert [m.tau_at(e, 12) for e in range(12)] == [0] * 5 + [1] * 4 + [2] * 3
    assert FAT(tau_schedule=None, tau=3).tau_at(7, 12) == 3
    # the step uses ctx.epoch / ctx.epochs
    model = _mlp()
    x, y = _batch(8)
    assert m(model, x, y, ctx=_ctx(epoch=11, epochs=12)).logs["tau"] == 2.0
    assert m(model, x, y, ctx=_ctx(epoch=5, epochs=12)).logs["tau"] == 1.0


def test_tau_schedule_from_yaml_lists_and_validation():
    m = build_method("fat", tau_schedule=[[0.0, 0], [0.5, 2]])
    assert m.tau_schedule == ((0.0, 0), (0.5, 2))
    assert m.tau_at(5, 10) == 2 and m.tau_at(4, 10) == 0
    with pytest.raises(ValueError, match="start at fraction 0"):
        FAT(tau_schedule=((0.1, 0),))
    with pytest.raises(ValueError, match="increase"):
        FAT(tau_schedule=((0.0, 0), (0.5, 1), (0.5, 2)))
    with pytest.raises(ValueError, match="increase"):
        FAT(tau_schedule=((0.0, 0), (1.0, 1)))
    with pytest.raises(ValueError, match="ints >= 0"):
        FAT(tau_schedule=((0.0, -1),))
    with pytest.raises(ValueError, match="ignored"):
        FAT(tau=2)
    with pytest.raises(ValueError, match="valid choices"):
        FAT(attack="deepfool")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="valid choices"):
        FAT(threat=ThreatModel(norm="l1"))
    with pytest.raises(ValueError, match="eps"):
        FAT(threat=ThreatModel(eps=0.0))
    with pytest.raises(ValueError, match="steps"):
        FAT(threat=ThreatModel(steps=0))


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
@pytest.mark.parametrize("attack", ["pgd-k-tau", "minimal"])
def test_loss_finite_grads_reach_params_not_inputs_and_mode_restored(attack):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                          nn.Dropout(0.3), nn.Linear(32, 10))
    model.train()
    x, y = _batch(16)
    x = x.clone().requires_grad_(True)
    out = FAT(threat=ThreatModel(eps=0.1, steps=5), attack=attack)(model, x, y, ctx=_ctx())
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    _assert_step_leaves_model_and_input_as_they_were(out, model, x)


def test_minimal_attack_trains_on_fmn_example_capped_at_eps():
    model = _mlp(hidden=(), classes=10).eval()
    x, _ = _batch(16)
    with torch.no_grad():
        y = model(x).argmax(1)  # all clean-correct, so every minimal norm is > 0
    eps = 0.05
    out = FAT(threat=ThreatModel(eps=eps, steps=20), attack="minimal")(model, x, y, ctx=_ctx())
    assert "tau" not in out.logs and float(out.logs["num_steps"]) == 20
    r = fmn(model, x, y, steps=20)
    expected = torch.where(r.success, r.norm.clamp(max=eps), torch.zeros(16)).mean()
    assert float(out.logs["adv_norm"]) == pytest.approx(float(expected), abs=1e-6)
    assert float(out.logs["adv_norm"]) <= eps + 1e-6
    # below the cap the training point is FMN's minimal example itself: it barely fools
    small = r.success & (r.norm < eps) & (r.norm > 0)
    assert small.any()


def test_fat_trains_through_fit_and_logs_steps():
    data = load_dataset("digits", "train").subset(256)
    test = load_dataset("digits", "test")
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hist = fit(model, FAT(threat=ThreatModel(eps=0.1, steps=4)), data, opt, epochs=3,
               batch_size=64,
               evaluate=per_epoch_evaluation(EvalPlan(n_test=100), test), seed=0)
    assert [e["train_tau"] for e in hist.epochs] == [0.0, 0.0, 1.0]
    assert all(0 < e["train_num_steps"] <= 4 for e in hist.epochs)
    assert all(e["train_adv_norm"] <= 0.1 + 1e-6 for e in hist.epochs)
    x, y = data.images[:64], data.labels[:64]
    r = pgd(model, x, y, eps=0.1, steps=4, early_stop=True, tau=1)
    assert (perturbation_norm(r.x_adv - x, "linf") <= 0.1 + 1e-6).all()


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_ddn_option_loss_finite_grads_and_examples_within_eps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                          nn.Dropout(0.3), nn.Linear(32, 10))
    model.train()
    x, y = _batch(16)
    x = x.clone().requires_grad_(True)
    eps = 0.5
    method = FAT(threat=ThreatModel(eps=eps, norm="l2", steps=10), attack="ddn")
    out = method(model, x, y, ctx=_ctx())
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert "tau" not in out.logs and float(out.logs["num_steps"]) == 10
    assert 0 < float(out.logs["adv_norm"]) <= eps + 1e-5
    _assert_step_leaves_model_and_input_as_they_were(out, model, x)


def test_ddn_option_trains_on_ddn_minimal_examples_capped_at_eps():
    model = _mlp(hidden=(), classes=10).eval()
    x, _ = _batch(16)
    with torch.no_grad():
        y = model(x).argmax(1)  # all clean-correct
    eps = 0.3
    threat = ThreatModel(eps=eps, norm="l2", steps=20)
    out = FAT(threat=threat, attack="ddn")(model, x, y, ctx=_ctx(seed=3))
    x_adv, fooled = ddn_within(model, x, y, eps=eps, steps=20,
                               generator=torch.Generator().manual_seed(3))
    size = perturbation_norm(x_adv - x, "l2")
    assert float(out.logs["adv_norm"]) == pytest.approx(float(size.mean()), abs=1e-6)
    assert (size <= eps + 1e-5).all() and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    with torch.no_grad():
        wrong = model(x_adv).argmax(1) != y
        assert float(out.logs["adv_acc"]) == pytest.approx(1 - float(wrong.double().mean()))
    # below the cap: DDN's minimal example, which barely fools; else on the eps-sphere
    assert (wrong & (size < eps - 1e-3)).any() and fooled.any()
    assert (size[~wrong] > eps - 1e-4).all()


def test_ddn_option_needs_an_l2_threat_and_builds_from_config():
    with pytest.raises(ValueError, match="valid norms for 'ddn': l2"):
        FAT(attack="ddn")  # the default threat is linf
    m = build_method("fat", attack="ddn", threat={"eps": 0.5, "norm": "l2", "steps": 5})
    assert m.attack == "ddn" and m.threat.norm == "l2"
