"""Customized adversarial training: radius updates, bounds, label smoothing, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks import pgd
from bastion.data import load_dataset
from bastion.models import build
from bastion.records import StepContext
from bastion.train import CAT, EvalPlan, fit, per_epoch_evaluation
from bastion.train.cat import smoothed_labels
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


def _ctx(index: torch.Tensor, seed: int = 0) -> StepContext:
    return StepContext(index=index, generator=torch.Generator().manual_seed(seed))


def _x(n: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_radius_grows_by_eta_while_the_attack_fails_up_to_eps_max():
    method = CAT(eps_max=0.1, eta=0.03, c=3.0)
    method.setup(20, "cpu")
    model = _constant_model(favoured=0)
    idx = torch.tensor([2, 5, 7, 11])
    x, y = _x(4), torch.zeros(4, dtype=torch.int64)  # always classified correctly
    for visit, want in enumerate([0.03, 0.06, 0.09, 0.1, 0.1], start=1):
        out = method(model, x, y, ctx=_ctx(idx, visit))
        torch.testing.assert_close(method.epsilons[idx], torch.full((4,), want))
        assert float(out.logs["attack_success"]) == 0.0
    others = torch.ones(20, dtype=torch.bool)
    others[idx] = False
    assert (method.epsilons[others] == 0).all()
    assert (method.epsilons <= torch.tensor(0.1)).all()  # float32 eps_max


def test_radius_falls_when_the_attack_succeeds():
    method = CAT(eps_max=0.1, eta=0.03, eps_init=0.05, c=3.0)
    method.setup(8, "cpu")
    model = _constant_model(favoured=0)
    idx = torch.arange(8)
    y = torch.ones(8, dtype=torch.int64)  # always classified wrongly
    for visit, want in enumerate([0.02, 0.0, 0.0]):
        out = method(model, _x(8), y, ctx=_ctx(idx, visit))
        assert float(out.logs["attack_success"]) == 1.0
        torch.testing.assert_close(method.epsilons, torch.full((8,), want))


def test_radius_stays_when_the_attack_succeeds_without_decrease():
    method = CAT(eps_max=0.1, eta=0.03, eps_init=0.05, c=3.0, decrease=False)
    method.setup(8, "cpu")
    model = _constant_model(favoured=0)
    idx = torch.arange(8)
    y = torch.ones(8, dtype=torch.int64)  # always classified wrongly
    for visit in range(3):
        out = method(model, _x(8), y, ctx=_ctx(idx, visit))
        assert float(out.logs["attack_success"]) == 1.0
    torch.testing.assert_close(method.epsilons, torch.full((8,), 0.05))


def test_mixed_batch_updates_only_the_examples_that_resisted():
    method = CAT(eps_max=0.1, eta=0.02, c=2.0)
    method.setup(6, "cpu")
    model = _constant_model(favoured=1)
    y = torch.tensor([1, 0, 1, 2, 1, 0])
    method(model, _x(6), y, ctx=_ctx(torch.arange(6)))
    torch.testing.assert_close(method.epsilons, torch.tensor([0.02, 0, 0.02, 0, 0.02, 0]))


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
    method = CAT(eps_max=eps_max, eta=eta, c=0.0, smoothing="none", steps=4, decrease=False)
    method.setup(16, "cpu")
    for visit in range(15):  # the model is not trained here, only the radii move
        method(model, x, y, ctx=_ctx(torch.arange(16), visit))
    want = torch.clamp(torch.ceil(dist / eta - 1e-4) * eta - eta, max=eps_max)
    # eps_i is the last radius at which the attack failed: the largest k*eta below dist
    torch.testing.assert_close(method.epsilons, want.clamp(min=0), atol=1e-5, rtol=0)
    # the default up/down staircase oscillates within one eta below that radius
    stair = CAT(eps_max=eps_max, eta=eta, c=0.0, smoothing="none", steps=4)
    stair.setup(16, "cpu")
    for visit in range(15):
        stair(model, x, y, ctx=_ctx(torch.arange(16), visit))
    gap = want.clamp(min=0) - stair.epsilons
    assert (gap >= -1e-5).all() and (gap <= eta + 1e-5).all()


def test_loss_equals_hand_computed_label_smoothed_cross_entropy():
    torch.manual_seed(0)
    model = build("mlp", num_classes=4, in_channels=1, input_size=8, hidden=(16,)).eval()
    x = _x(10)
    y = torch.randint(0, 4, (10,), generator=torch.Generator().manual_seed(2))
    eps_max, eta, c, steps = 0.1, 0.04, 4.0, 3
    method = CAT(eps_max=eps_max, eta=eta, c=c, smoothing="uniform", steps=steps,
                 eps_init=0.08)
    method.setup(10, "cpu")
    out = method(model, x, y, ctx=_ctx(torch.arange(10)))
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
    torch.testing.assert_close(method.epsilons, new)
    assert 0 < int(r.success.sum()) < 10  # both branches of the rule are exercised


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
    method = CAT(eps_max=0.1, eta=0.03)
    method.setup(12, "cpu")
    model = _constant_model()
    method(model, _x(4), torch.zeros(4, dtype=torch.int64), ctx=_ctx(torch.tensor([1, 3, 5, 7])))
    skeleton, tensors = split_state(method.state_dict())
    other = CAT(eps_max=0.1, eta=0.03)
    other.setup(12, "cpu")
    other.load_state_dict(join_state(skeleton, tensors))
    assert torch.equal(other.epsilons, method.epsilons) and float(other.epsilons.sum()) > 0
    wrong = CAT()
    wrong.setup(13, "cpu")
    with pytest.raises(ValueError, match="12 radii"):
        wrong.load_state_dict(method.state_dict())


def test_radii_survive_a_checkpoint_through_fit(tmp_path):
    data = load_dataset("digits", "train").subset(128)
    torch.manual_seed(0)
    model = build("mlp", num_classes=10, in_channels=1, input_size=8, hidden=(16,))
    method = CAT(eps_max=0.1, eta=0.02, steps=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hist = fit(model, method, data, opt, epochs=2, batch_size=32, run_dir=tmp_path,
               evaluate=per_epoch_evaluation(EvalPlan(n_test=32), data))
    saved = load_train_state(checkpoint_dir(tmp_path, "last"))["method"]["eps"]
    assert torch.equal(saved, method.epsilons)
    assert (saved <= torch.tensor(0.1)).all() and float(saved.max()) > 0
    assert all(0 <= e["train_eps_mean"] <= 0.1 for e in hist.epochs)
    resumed = CAT(eps_max=0.1, eta=0.02, steps=2)
    fit(model, resumed, data, opt, epochs=2, batch_size=32, run_dir=tmp_path)  # nothing left
    assert torch.equal(resumed.epsilons, method.epsilons)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_contract_grads_mode_and_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Dropout(0.2), nn.Linear(16, 3)).train()
    method = CAT(eps_max=0.1, eta=0.05)
    method.setup(8, "cpu")
    x = _x(8).requires_grad_(True)
    out = method(model, x, torch.arange(8) % 3, ctx=_ctx(torch.arange(8)))
    assert torch.isfinite(out.loss) and out.loss.dim() == 0
    assert all(m.training for m in model.modules())
    assert all(not torch.is_tensor(v) or not v.requires_grad for v in out.logs.values())
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters()) and x.grad is None
    with pytest.raises(ValueError, match="ctx.index"):
        method(model, _x(8), torch.zeros(8, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="setup"):
        CAT()(model, _x(2), torch.zeros(2, dtype=torch.int64), ctx=_ctx(torch.arange(2)))
    with pytest.raises(ValueError, match="c \\* eps_max"):
        CAT(eps_max=0.1, c=10.0)
    with pytest.raises(ValueError, match="valid choices"):
        CAT(smoothing="gaussian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eta"):
        CAT(eta=0.0)
    with pytest.raises(ValueError, match="eps_init"):
        CAT(eps_max=0.1, eps_init=0.2)
