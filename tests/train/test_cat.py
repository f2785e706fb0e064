"""Customized adversarial training: radius updates, bounds, label smoothing, checkpoints."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from bastion.attacks import pgd
from bastion.attacks.threat import ThreatModel
from bastion.data import load_dataset
from bastion.models import build
from bastion.records import StepContext
from bastion.train import CAT, EvalPlan, build_method, fit, per_epoch_evaluation
from bastion.train.cat import CATState, smoothed_labels
from bastion.train.checkpoint import checkpoint_dir, load_train_state
from bastion.train.state_io import join_state, split_state


def _constant_model(favoured: int = 0, classes: int = 3) -> nn.Module:
    """Logits independent of the input: no attack can change its (fixed) prediction."""
    torch.manual_seed(0)
    model = build("mlp", num_classes=classes, in_channels=1, input_size=8, hidden=())
    with torch.no_grad():
        model[1].layers.out.weight.zero_()
        model[1].layers.out.bias.zero_()
        model[1].layers.out.bias[favoured] = 3.0
    return model


def _cat(eps_max: float = 0.1, steps: int = 10, **options: Any) -> CAT:
    """CAT with radius cap ``eps_max`` (its ``threat.eps``) and its default no random start."""
    return CAT(threat=ThreatModel(eps=eps_max, steps=steps, random_init=False), **options)


def _ctx(index: torch.Tensor, state: CATState | None, seed: int = 0) -> StepContext:
    return StepContext(index=index, generator=torch.Generator().manual_seed(seed), state=state)


def _x(n: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_radius_grows_by_eta_while_the_attack_fails_up_to_eps_max():
    method = _cat(eps_max=0.1, eta=0.03, c=3.0)
    state = method.init_state(20, "cpu")
    model = _constant_model(favoured=0)
    idx = torch.tensor([2, 5, 7, 11])
    x, y = _x(4), torch.zeros(4, dtype=torch.int64)  # always classified correctly
    for visit, want in enumerate([0.03, 0.06, 0.09, 0.1, 0.1], start=1):
        out = method(model, x, y, ctx=_ctx(idx, state, visit))
        torch.testing.assert_close(state.eps[idx], torch.full((4,), want))
        assert float(out.logs["attack_success"]) == 0.0
    others = torch.ones(20, dtype=torch.bool)
    others[idx] = False
    assert (state.eps[others] == 0).all()
    assert (state.eps <= torch.tensor(0.1)).all()  # float32 eps_max


def test_radius_falls_when_the_attack_succeeds():
    method = _cat(eps_max=0.1, eta=0.03, eps_init=0.05, c=3.0)
    state = method.init_state(8, "cpu")
    model = _constant_model(favoured=0)
    idx = torch.arange(8)
    y = torch.ones(8, dtype=torch.int64)  # always classified wrongly
    for visit, want in enumerate([0.02, 0.0, 0.0]):
        out = method(model, _x(8), y, ctx=_ctx(idx, state, visit))
        assert float(out.logs["attack_success"]) == 1.0
        torch.testing.assert_close(state.eps, torch.full((8,), want))


def test_radius_stays_when_the_attack_succeeds_without_decrease():
    method = _cat(eps_max=0.1, eta=0.03, eps_init=0.05, c=3.0, decrease=False)
    state = method.init_state(8, "cpu")
    model = _constant_model(favoured=0)
    idx = torch.arange(8)
    y = torch.ones(8, dtype=torch.int64)  # always classified wrongly
    for visit in range(3):
        out = method(model, _x(8), y, ctx=_ctx(idx, state, visit))
        assert float(out.logs["attack_success"]) == 1.0
    torch.testing.assert_close(state.eps, torch.full((8,), 0.05))


def test_mixed_batch_updates_only_the_examples_that_resisted():
    method = _cat(eps_max=0.1, eta=0.02, c=2.0)
    state = method.init_state(6, "cpu")
    model = _constant_model(favoured=1)
    y = torch.tensor([1, 0, 1, 2, 1, 0])
    method(model, _x(6), y, ctx=_ctx(torch.arange(6), state))
    torch.testing.assert_close(state.eps, torch.tensor([0.02, 0, 0.02, 0, 0.02, 0]))
    assert state.num_classes == 3  # measured once, kept in the state


def test_radius_tracks_the_distance_to_the_boundary_on_an_affine_model():
    """On a 2-class affine model PGD is exact, so eps_i settles at the first multiple of eta
    past the point's distance to the boundary (or at eps_max), the paper's argmin."""
    torch.manual_seed(0)
    model = build("mlp", num_classes=2, in_channels=1, input_size=8, hidden=()).eval()
    x = 0.3 + 0.4 * torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = model(x)
        y = z.argmax(1)
        w = model[1].layers.out.weight
        rows = torch.arange(16)
        dist = (z[rows, y] - z[rows, 1 - y]) / (w[0] - w[1]).abs().sum()
    eta, eps_max = 0.01, 0.1
    method = _cat(eps_max=eps_max, steps=4, eta=eta, c=0.0, smoothing="none", decrease=False)
    state = method.init_state(16, "cpu")
    for visit in range(15):  # the model is not trained here, only the radii move
        method(model, x, y, ctx=_ctx(torch.arange(16), state, visit))
    want = torch.clamp(torch.ceil(dist / eta - 1e-4) * eta - eta, max=eps_max)
    # eps_i is the last radius at which the attack failed: the largest k*eta below dist
    torch.testing.assert_close(state.eps, want.clamp(min=0), atol=1e-5, rtol=0)
    # the default up/down staircase oscillates within one eta below that radius
    stair = _cat(eps_max=eps_max, steps=4, eta=eta, c=0.0, smoothing="none")
    stair_state = stair.init_state(16, "cpu")
    for visit in range(15):
        stair(model, x, y, ctx=_ctx(torch.arange(16), stair_state, visit))
    gap = want.clamp(min=0) - stair_state.eps
    assert (gap >= -1e-5).all() and (gap <= eta + 1e-5).all()


def test_loss_equals_hand_computed_label_smoothed_cross_entropy():
    torch.manual_seed(0)
    model = build("mlp", num_classes=4, in_channels=1, input_size=8, hidden=(16,)).eval()
    x = _x(10)
    y = torch.randint(0, 4, (10,), generator=torch.Generator().manual_seed(2))
    eps_max, eta, c, steps = 0.1, 0.04, 4.0, 3
    method = _cat(eps_max=eps_max, steps=steps, eta=eta, c=c, smoothing="uniform",
                  eps_init=0.08)
    state = method.init_state(10, "cpu")
    out = method(model, x, y, ctx=_ctx(torch.arange(10), state))
    # by hand: trial radius, soft-label PGD from x, rule, smoothed CE with the new radius
    old = torch.full((10,), 0.08)
    trial = torch.clamp(old + eta, max=eps_max)
    onehot = torch.eye(4)[y]
    soft_old = (1 - c * old[:, None]) * onehot + c * old[:, None] / 4
    r = pgd(model, x, soft_old, eps=trial, objective="kl", steps=steps,
            step_size=2.5 * trial / steps, random_init=False)
    new = torch.where(r.success, (old - eta).clamp(min=0), trial)
    soft_new = (1 - c * new[:, None]) * onehot + c * new[:, None] / 4
    want = -(soft_new * torch.log_softmax(model(r.x_adv), 1)).sum(1).mean()
    torch.testing.assert_close(out.loss, want)
    torch.testing.assert_close(state.eps, new)
    assert 0 < int(r.success.sum()) < 10  # both branches of the rule are exercised


def test_threat_takes_the_place_of_eps_max_norm_steps_and_random_init():
    method = CAT()
    assert method.eps_max == method.threat.eps == 0.1
    assert method.threat == ThreatModel(eps=0.1, steps=10, random_init=False)
    # a mapping (YAML) overrides only the keys it names: CAT's random_init=False stays
    assert CAT(threat={"steps": 7}).threat == ThreatModel(eps=0.1, steps=7, random_init=False)
    # flat options of configs written before the threat still build, with a warning
    with pytest.warns(DeprecationWarning, match="eps_max"):
        legacy = build_method("cat", eps_max=0.05, steps=3, attack_train_mode=True)
    assert legacy == CAT(threat=ThreatModel(eps=0.05, steps=3, random_init=False,
                                            train_mode=True))
    # a fixed threat.step_size replaces the per-example step_size_ratio * e_i / steps
    torch.manual_seed(0)
    model = build("mlp", num_classes=4, in_channels=1, input_size=8, hidden=(16,)).eval()
    x, y = _x(6), torch.arange(6) % 4
    fixed = CAT(threat=ThreatModel(eps=0.1, steps=3, step_size=0.01, random_init=False),
                c=0.0, smoothing="none", eps_init=0.05)
    state = fixed.init_state(6, "cpu")
    fixed(model, x, y, ctx=_ctx(torch.arange(6), state))
    r = pgd(model, x, y, eps=torch.full((6,), 0.05 + fixed.eta), steps=3, step_size=0.01,
            random_init=False)
    torch.testing.assert_close(state.eps, torch.where(r.success, 0.05 - fixed.eta,
                                                      0.05 + fixed.eta).clamp(0, 0.1))


def test_smoothed_labels():
    y = torch.tensor([0, 2, 1])
    eps = torch.tensor([0.0, 0.05, 0.1])
    g = torch.Generator().manual_seed(0)
    d = smoothed_labels(y, eps, num_classes=5, c=5.0, generator=g)
    torch.testing.assert_close(d.sum(1), torch.ones(3))
    assert (d >= 0).all() and torch.equal(d.argmax(1), y)
    torch.testing.assert_close(d[0], torch.eye(5)[0])
    assert float(d[2, 1]) >= 0.5  # weight 1 - c * eps on the label, plus its noise share
    d2 = smoothed_labels(y, eps, num_classes=5, c=5.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(d, d2)  # Dirichlet draws come from the generator
    u = smoothed_labels(y, eps, num_classes=5, c=5.0, kind="uniform")
    torch.testing.assert_close(u[2], torch.tensor([0.1, 0.6, 0.1, 0.1, 0.1]))


def test_state_dict_round_trip_and_checks():
    method = _cat(eps_max=0.1, eta=0.03)
    state = method.init_state(12, "cpu")
    model = _constant_model()
    method(model, _x(4), torch.zeros(4, dtype=torch.int64),
           ctx=_ctx(torch.tensor([1, 3, 5, 7]), state))
    split = split_state(state.state_dict())
    other = _cat(eps_max=0.1, eta=0.03).init_state(12, "cpu")
    other.load_state_dict(join_state(split.skeleton, split.tensors))
    assert torch.equal(other.eps, state.eps) and float(other.eps.sum()) > 0
    assert other.num_classes == state.num_classes == 3
    # a checkpoint written before num_classes was saved loads too (K is measured again)
    legacy = _cat().init_state(12, "cpu")
    legacy.load_state_dict({"eps": state.eps.clone()})
    assert torch.equal(legacy.eps, state.eps) and legacy.num_classes is None
    wrong = CAT().init_state(13, "cpu")
    with pytest.raises(ValueError, match="12 radii"):
        wrong.load_state_dict(state.state_dict())


@dataclasses.dataclass(frozen=True)
class _KeepsState:
    """Delegates to ``method`` and remembers the state object ``fit`` made for it."""

    method: CAT
    states: list[CATState] = dataclasses.field(default_factory=list)

    def init_state(self, n: int, device: Any) -> CATState:
        self.states.append(self.method.init_state(n, device))
        return self.states[-1]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 ctx: StepContext | None = None) -> Any:
        return self.method(model, x, y, ctx=ctx)


def test_radii_survive_a_checkpoint_through_fit(tmp_path):
    data = load_dataset("digits", "train").subset(128)
    torch.manual_seed(0)
    model = build("mlp", num_classes=10, in_channels=1, input_size=8, hidden=(16,))
    method = _KeepsState(_cat(eps_max=0.1, steps=2, eta=0.02))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hist = fit(model, method, data, opt, epochs=2, batch_size=32, run_dir=tmp_path,
               evaluate=per_epoch_evaluation(EvalPlan(n_test=32), data))
    (state,) = method.states
    saved = load_train_state(checkpoint_dir(tmp_path, "last"))["method"]["eps"]
    assert torch.equal(saved, state.eps)
    assert (saved <= torch.tensor(0.1)).all() and float(saved.max()) > 0
    assert all(0 <= e["train_eps_mean"] <= 0.1 for e in hist.epochs)
    resumed = _KeepsState(_cat(eps_max=0.1, steps=2, eta=0.02))
    fit(model, resumed, data, opt, epochs=2, batch_size=32, run_dir=tmp_path)  # nothing left
    assert torch.equal(resumed.states[0].eps, state.eps)
    assert resumed.states[0].num_classes == 10


def test_resume_through_fit_continues_exactly(tmp_path):
    """1 epoch, stop, resume to 2 == 2 epochs in one go: same radii, same weights."""
    data = load_dataset("digits", "train").subset(96)

    def run(out, epochs_then):
        torch.manual_seed(0)
        model = build("mlp", num_classes=10, in_channels=1, input_size=8, hidden=(16,))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        method = _KeepsState(_cat(eps_max=0.1, steps=2, eta=0.02))
        for epochs in epochs_then:
            fit(model, method, data, opt, epochs=epochs, batch_size=32, run_dir=out)
        return model, method.states[-1]

    full_model, full_state = run(tmp_path / "full", [2])
    part_model, part_state = run(tmp_path / "part", [1, 2])
    assert torch.equal(full_state.eps, part_state.eps) and float(full_state.eps.max()) > 0
    for p, q in zip(full_model.parameters(), part_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_replace_keeps_the_state_carried_by_the_loop(tmp_path):
    """The method holds no state, so ``dataclasses.replace`` mid-run loses nothing."""
    method = _cat(eps_max=0.1, eta=0.03)
    state = method.init_state(8, "cpu")
    model = _constant_model(favoured=0)
    idx, y = torch.arange(8), torch.zeros(8, dtype=torch.int64)  # the attack always fails
    method(model, _x(8), y, ctx=_ctx(idx, state))
    torch.testing.assert_close(state.eps, torch.full((8,), 0.03))
    faster = dataclasses.replace(method, eta=0.05)
    assert faster.threat == method.threat and vars(method) == vars(_cat(eps_max=0.1, eta=0.03))
    faster(model, _x(8), y, ctx=_ctx(idx, state, 1))
    torch.testing.assert_close(state.eps, torch.full((8,), 0.08))  # continued, not reset
    # through fit: resume a run with a replaced method; the saved radii are picked up
    data = load_dataset("digits", "train").subset(64)
    torch.manual_seed(0)
    net = build("mlp", num_classes=10, in_channels=1, input_size=8, hidden=(16,))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    first = _KeepsState(_cat(eps_max=0.1, steps=2, eta=0.02))
    fit(net, first, data, opt, epochs=1, batch_size=32, run_dir=tmp_path)
    after_one = first.states[0].eps.clone()
    second = _KeepsState(dataclasses.replace(first.method, eta=0.01))
    fit(net, second, data, opt, epochs=2, batch_size=32, run_dir=tmp_path)
    now = second.states[0].eps
    moved = (now - after_one).abs()
    # every radius moved by the new eta from where epoch 1 left it (or stayed at 0) ...
    assert bool((((moved - 0.01).abs() < 1e-6) | ((moved == 0) & (now == 0))).all())
    # ... and radii above one epoch's worth show the run continued instead of restarting
    assert float(after_one.max()) == pytest.approx(0.02) and float(now.max()) > 0.02 + 1e-6


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_contract_grads_mode_and_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Dropout(0.2), nn.Linear(16, 3)).train()
    method = _cat(eps_max=0.1, eta=0.05)
    state = method.init_state(8, "cpu")
    x = _x(8).requires_grad_(True)
    out = method(model, x, torch.arange(8) % 3, ctx=_ctx(torch.arange(8), state))
    assert torch.isfinite(out.loss) and out.loss.dim() == 0
    assert all(m.training for m in model.modules())
    assert all(not torch.is_tensor(v) or not v.requires_grad for v in out.logs.values())
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters()) and x.grad is None
    with pytest.raises(ValueError, match="ctx.index"):
        method(model, _x(8), torch.zeros(8, dtype=torch.int64))
    with pytest.raises(ValueError, match="init_state"):
        CAT()(model, _x(2), torch.zeros(2, dtype=torch.int64), ctx=_ctx(torch.arange(2), None))
    with pytest.raises(ValueError, match="c \\* eps_max"):
        _cat(eps_max=0.1, c=10.0)
    with pytest.raises(ValueError, match="valid choices"):
        CAT(smoothing="gaussian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eta"):
        CAT(eta=0.0)
    with pytest.raises(ValueError, match="eps_init"):
        _cat(eps_max=0.1, eps_init=0.2)
    with pytest.raises(ValueError, match="eps_max"):
        CAT(threat={"eps": 0.0})
    with pytest.raises(ValueError, match="dataset_size"):
        CAT().init_state(0)
