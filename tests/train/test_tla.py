"""TLA method: hand-computed loss, hard negatives, layer selection, single-class batches."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.threat import ThreatModel
from bastion.records import StepContext
from bastion.train import TLA, build_method
from bastion.train.tla import _embedding_module, _forward_with_embedding


def _ctx(seed: int = 0) -> StepContext:
    return StepContext(generator=torch.Generator().manual_seed(seed))


def _batch(n: int = 10, seed: int = 1, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, classes, (n,), generator=g)


def _net(dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()), ("fc", nn.Linear(16, 6)), ("act", nn.ReLU()),
        ("drop", nn.Dropout(dropout)), ("out", nn.Linear(6, 3)),
    ]))


def _d(u: np.ndarray, v: np.ndarray) -> float:
    return 1.0 - abs(float(u @ v)) / (np.linalg.norm(u) * np.linalg.norm(v))


def test_loss_equals_hand_computation() -> None:
    model = _net().double().eval()
    x, y = _batch()
    x = x.double()
    method = TLA(threat=ThreatModel(eps=0.2, steps=3), layer="act", margin=0.3, lambda_=2.0,
                 lambda_norm=0.01)
    out = method(model, x, y, ctx=_ctx(4))
    x_a = method.perturb(model, x, y, torch.Generator().manual_seed(4)).x_adv
    w1, b1 = model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy()
    w2, b2 = model.out.weight.detach().numpy(), model.out.bias.detach().numpy()
    e_a = np.maximum(x_a.flatten(1).numpy() @ w1.T + b1, 0)
    e_p = np.maximum(x.flatten(1).numpy() @ w1.T + b1, 0)
    logits = e_a @ w2.T + b2
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    yn = y.numpy()
    ce = -logp[np.arange(10), yn].mean()
    trip, norms = [], []
    for i in range(10):
        others = [j for j in range(10) if yn[j] != yn[i]]
        n = others[int(np.argmin([_d(e_a[i], e_p[j]) for j in others]))]  # brute force
        trip.append(max(_d(e_p[i], e_a[i]) - _d(e_p[n], e_a[i]) + 0.3, 0.0))
        norms.append((e_a[i] ** 2).sum() + (e_p[i] ** 2).sum() + (e_p[n] ** 2).sum())
    reg = np.mean(norms) / 6
    expected = ce + 2.0 * (np.mean(trip) + 0.01 * reg)
    assert np.mean(trip) > 0
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)
    assert float(out.logs["triplet"]) == pytest.approx(np.mean(trip), rel=1e-10)
    assert float(out.logs["norm"]) == pytest.approx(reg, rel=1e-10)


def test_default_layer_is_the_input_of_the_last_linear() -> None:
    model, (x, _) = _net().eval(), _batch()
    assert _embedding_module(model, None) == (model.out, True)
    _, e_default = _forward_with_embedding(model, x, None)
    _, e_drop = _forward_with_embedding(model, x, "drop")
    assert torch.equal(e_default, e_drop)
    assert not model.out._forward_pre_hooks and not model.drop._forward_hooks  # hooks removed


def test_wrong_layer_name_lists_the_modules() -> None:
    model, (x, y) = _net(), _batch()
    with pytest.raises(ValueError, match=r"no module named 'fc9'.*flatten, fc, act, drop, out"):
        TLA(threat=ThreatModel(steps=1), layer="fc9")(model, x, y)
    with pytest.raises(ValueError, match="no nn.Linear"):
        _embedding_module(nn.Sequential(nn.Flatten()), None)


def test_layer_run_twice_is_an_error() -> None:
    act = nn.ReLU()
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), act, nn.Linear(6, 6), act,
                          nn.Linear(6, 3))
    with pytest.raises(ValueError, match="ran 2 times"):
        _forward_with_embedding(model, torch.rand(2, 1, 4, 4), "2")


def test_single_class_batch_is_handled() -> None:
    model, (x, _) = _net(), _batch()
    y = torch.zeros(10, dtype=torch.int64)
    out = TLA(threat=ThreatModel(eps=0.1, steps=2))(model, x, y, ctx=_ctx())
    assert torch.isfinite(out.loss)
    assert float(out.logs["valid"]) == 0.0 and float(out.logs["triplet"]) == 0.0
    out.loss.backward()
    # a batch of one
    one = TLA(threat=ThreatModel(eps=0.1, steps=2))(model, x[:1], y[:1], ctx=_ctx())
    assert torch.isfinite(one.loss) and float(one.logs["valid"]) == 0.0


def test_gradients_modes_and_reproducibility() -> None:
    model = _net(dropout=0.3).train()
    model.fc.eval()  # a sub-module frozen in eval mode must stay so
    flags = [m.training for m in model.modules()]
    x, y = _batch()
    out = TLA(threat=ThreatModel(eps=0.1, steps=2), layer="act")(model, x, y, ctx=_ctx())
    assert [m.training for m in model.modules()] == flags
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.eval()
    a = TLA(threat=ThreatModel(eps=0.1, steps=2))(model, x, y, ctx=_ctx(7))
    b = TLA(threat=ThreatModel(eps=0.1, steps=2))(model, x, y, ctx=_ctx(7))
    assert torch.equal(a.loss, b.loss)
    assert not any(torch.as_tensor(v).requires_grad for v in a.logs.values())


def test_embedding_grad_reaches_the_negatives() -> None:
    # only the triplet term: the gradient of the chosen negatives' clean embedding is nonzero
    model, (x, y) = _net().double().eval(), _batch()
    x = x.double()
    method = TLA(threat=ThreatModel(eps=0.1, steps=1), layer="act", margin=0.5, lambda_=1.0,
                 lambda_norm=0.0)
    out = method(model, x, y, ctx=_ctx())
    ce = F.cross_entropy(model(method.perturb(model, x, y, _ctx().generator).x_adv), y)
    g_total = torch.autograd.grad(out.loss, model.fc.weight)[0]
    g_ce = torch.autograd.grad(ce, model.fc.weight)[0]
    assert (g_total - g_ce).abs().sum() > 0


def test_small_cnn_named_layer() -> None:
    from bastion.models import build

    model = build("small-cnn", num_classes=10, in_channels=1, input_size=16,
                  dataset="fashion-mnist", zero_init_last=False)
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    method = TLA(threat=ThreatModel(eps=0.1, steps=1), layer="net.classifier.relu2")
    out = method(model, x, y, ctx=_ctx())
    assert torch.isfinite(out.loss)
    assert _embedding_module(model, None)[0] is model.net.classifier.fc3


@pytest.mark.parametrize("kwargs, match", [
    ({"threat": {"eps": -0.1}}, "eps"), ({"threat": {"steps": 0}}, "steps"),
    ({"margin": -0.1}, "margin"), ({"lambda_": -1.0}, "lambda_"),
    ({"lambda_norm": float("nan")}, "lambda_norm"), ({"layer": ""}, "layer"),
    ({"threat": {"norm": "l1"}}, "valid choices"), ({"threat": {"step_size": -1.0}}, "step"),
    ({"threat": {"epsilon": 0.1}}, "unknown threat key"),
])
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TLA(**kwargs)


def test_registry() -> None:
    assert build_method("tla", margin=0.03) == TLA(margin=0.03)


def test_fit_one_epoch_on_digits() -> None:
    from bastion.data import load_dataset
    from bastion.train import fit

    data = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = build_method("tla", threat={"steps": 2})
    hist = fit(model, method, data, opt, epochs=1, batch_size=128, seed=0)
    rec = hist.epochs[-1]
    assert np.isfinite(rec["train_loss"]) and "train_triplet" in rec
