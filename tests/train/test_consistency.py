"""Consistency regularisation: augmentation, the loss by hand, gradients, modes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.threat import ThreatModel
from bastion.losses import js_divergence
from bastion.records import StepContext
from bastion.train import Consistency, build_method
from bastion.train.consistency import random_crop_flip


def _ctx(seed: int = 0) -> StepContext:
    return StepContext(generator=torch.Generator().manual_seed(seed))


def _batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _net(dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(12, 3))


def _candidates(img: torch.Tensor, pad: int) -> list[torch.Tensor]:
    padded = F.pad(img, (pad, pad, pad, pad))
    h, w = img.shape[-2:]
    out = []
    for dy, dx in itertools.product(range(2 * pad + 1), repeat=2):
        crop = padded[..., dy:dy + h, dx:dx + w]
        out += [crop, crop.flip(-1)]
    return out


def test_augmentation_is_a_padded_crop_possibly_flipped() -> None:
    x, _ = _batch(16)
    out = random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    for i in range(16):
        assert any(torch.equal(out[i], c) for c in _candidates(x[i], 2)), i
    assert not torch.equal(out, x)


def test_augmentation_reproducible_and_seed_dependent() -> None:
    x, _ = _batch(16)
    a = random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(3))
    b = random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(3))
    c = random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augmentation_variants() -> None:
    x, _ = _batch(16)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_crop_flip(x, pad=2, crop=False, flip=False, generator=g), x)
    flipped = random_crop_flip(x, pad=2, crop=False, generator=g)
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(-1)) for f, i in zip(flipped, x,
                                                                                 strict=True))
    assert torch.equal(random_crop_flip(x, pad=0, flip=False, generator=g), x)
    cl = x.repeat(1, 3, 1, 1).contiguous(memory_format=torch.channels_last)
    out = random_crop_flip(cl, pad=1, generator=torch.Generator().manual_seed(1))
    ref = random_crop_flip(cl.contiguous(), pad=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="pad"):
        random_crop_flip(x, pad=-1)


def test_loss_equals_hand_computation() -> None:
    model, (x, y) = _net().double().eval(), _batch()
    x = x.double()
    method = Consistency(threat=ThreatModel(eps=0.1, steps=3), lambda_=2.0, tau=0.5, pad=2)
    out = method(model, x, y, ctx=_ctx(6))
    g = torch.Generator().manual_seed(6)
    views = method.views(x, g)
    x_adv = method.perturb(model, views, y.repeat(2), g).x_adv
    assert (x_adv - views).abs().max() <= 0.1 + 1e-9
    with torch.no_grad():
        l1, l2 = model(x_adv[:8]), model(x_adv[8:])
        ce = (F.cross_entropy(l1, y) + F.cross_entropy(l2, y)) / 2
        expected = ce + 2.0 * js_divergence(l1, l2, tau=0.5)
    assert js_divergence(l1, l2) > 0
    assert out.loss.item() == pytest.approx(float(expected), rel=1e-10)


def test_lambda_zero_is_adversarial_training_on_both_views() -> None:
    model, (x, y) = _net().eval(), _batch()
    method = Consistency(threat=ThreatModel(eps=0.1, steps=2), lambda_=0.0, pad=1)
    out = method(model, x, y, ctx=_ctx())
    assert torch.equal(out.loss.detach(), out.logs["ce"])


def test_gradients_modes_and_reproducibility() -> None:
    model = _net(dropout=0.3).train()
    model[1].eval()
    flags = [m.training for m in model.modules()]
    x, y = _batch()
    out = Consistency(threat=ThreatModel(eps=0.1, steps=2), pad=1)(model, x, y, ctx=_ctx())
    assert [m.training for m in model.modules()] == flags
    assert torch.isfinite(out.loss) and out.loss.dim() == 0
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.eval()
    a = Consistency(threat=ThreatModel(eps=0.1, steps=2), pad=1)(model, x, y, ctx=_ctx(2))
    b = Consistency(threat=ThreatModel(eps=0.1, steps=2), pad=1)(model, x, y, ctx=_ctx(2))
    assert torch.equal(a.loss, b.loss)
    assert set(a.logs) == {"adv_acc", "ce", "js"}


def test_no_augmentation_and_batch_of_one() -> None:
    model, (x, y) = _net().eval(), _batch(1)
    out = Consistency(threat=ThreatModel(eps=0.1, steps=2), augment="none")(model, x, y)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("kwargs, match", [
    ({"threat": {"eps": -0.1}}, "eps"), ({"threat": {"steps": 0}}, "steps"),
    ({"lambda_": -1.0}, "lambda_"),
    ({"tau": 0.0}, "tau"), ({"augment": "rotate"}, "valid choices"), ({"pad": -1}, "pad"),
    ({"threat": {"norm": "l1"}}, "valid choices"),
])
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Consistency(**kwargs)


def test_registry() -> None:
    assert build_method("consistency", pad=2) == Consistency(pad=2)


def test_fit_one_epoch_on_digits() -> None:
    from bastion.data import load_dataset
    from bastion.train import fit

    data = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = build_method("consistency", threat={"steps": 2}, pad=1)
    hist = fit(model, method, data, opt, epochs=1, batch_size=128, seed=0)
    rec = hist.epochs[-1]
    assert np.isfinite(rec["train_loss"]) and "train_js" in rec
