"""The torchattacks AutoAttack adapter keeps bastion's guarantees and is at least as strong
as PGD on a trained model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks.evaluate import evaluate_attack
from bastion.attacks.spec import AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.data import load_dataset
from bastion.train import Standard, fit

pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def trained():
    data = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fit(model, Standard(), data, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        epochs=3, batch_size=50)
    return model.eval()


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t"])
def test_apgd_in_ball_and_not_weaker_than_pgd(trained, name):
    test = load_dataset("digits", "test")
    x, y = test.images[:120], test.labels[:120]
    pgd = evaluate_attack(trained, x, y, AttackSpec(threat=ThreatModel(eps=0.08, steps=10)))
    spec = AttackSpec(name=name, threat=ThreatModel(eps=0.08, steps=20))
    apgd = evaluate_attack(trained, x, y, spec)
    assert float(apgd.only().perturbation.max()) <= 0.08 + 1e-6
    assert float(apgd.clean_correct.double().mean()) > 0.85
    assert int(apgd.adv_correct().sum()) <= int(pgd.adv_correct().sum()) + 2
    assert not trained.training and all(p.grad is None for p in trained.parameters())
