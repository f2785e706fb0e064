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


# ------------------------------------------------- the standard configuration, pinned

OFFICIAL_STANDARD = [  # fra31/auto-attack, autoattack.py: __init__ + set_version("standard")
    {"attack": "apgd-ce", "steps": 100, "n_restarts": 1, "loss": "ce", "eot_iter": 1,
     "rho": 0.75},
    {"attack": "apgd-t", "steps": 100, "n_restarts": 1, "loss": "dlr-targeted",
     "n_target_classes": 9, "eot_iter": 1, "rho": 0.75},
    {"attack": "fab-t", "steps": 100, "n_restarts": 1, "targeted": True, "n_target_classes": 9,
     "alpha_max": 0.1, "eta": 1.05, "beta": 0.9},
    {"attack": "square", "n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "loss": "margin",
     "resc_schedule": False},
]


def test_standard_settings_are_the_official_ones():
    from bastion.attacks.autoattack import standard_settings

    assert standard_settings(10) == OFFICIAL_STANDARD
    # fewer classes: every other class is a target
    assert [s.get("n_target_classes") for s in standard_settings(5)] == [None, 4, 4, None]


def test_the_record_lists_every_component_setting():
    spec = AttackSpec(name="autoattack", threat=ThreatModel(eps=0.1))
    assert spec.to_dict()["components"] == OFFICIAL_STANDARD
    apgd = AttackSpec(name="apgd-ce", threat=ThreatModel(eps=0.1, steps=20)).to_dict()
    assert apgd["components"] == [{**OFFICIAL_STANDARD[0], "steps": 20}]


class _MeanModel(torch.nn.Module):
    """Class 0 when the mean pixel exceeds 0.5, else class 1 (4 classes)."""

    def forward(self, x):
        m = x.flatten(1).mean(1)
        z = torch.zeros_like(m)
        return torch.stack([20 * (m - 0.5), z, z - 1, z - 2], dim=1)


def test_components_get_the_settings_and_hand_points_over_in_order(monkeypatch):
    """Each torchattacks component is built with the official settings (torchattacks'
    own AutoAttack leaves APGD/FAB at 10 iterations), runs only on the points the earlier
    ones failed on, and a point's first adversarial example is kept."""
    import torchattacks

    calls: list[tuple[str, dict, int]] = []

    def fake(name, fool_first):
        class Fake:
            def __init__(self, model, **kwargs):
                self.kwargs = kwargs
                self.n_target_classes = kwargs.get("n_classes", 10) - 1

            def __call__(self, x, y):
                calls.append((name, {**self.kwargs, "n_target_classes": self.n_target_classes},
                              len(x)))
                out = x.clone()
                out[:fool_first] = (out[:fool_first] - 0.1).clamp(0, 1)  # mean drops below 0.5
                return out
        return Fake

    monkeypatch.setattr(torchattacks, "APGD", fake("apgd-ce", 2))
    monkeypatch.setattr(torchattacks, "APGDT", fake("apgd-t", 1))
    monkeypatch.setattr(torchattacks, "FAB", fake("fab-t", 0))
    monkeypatch.setattr(torchattacks, "Square", fake("square", 1))
    x = torch.full((6, 1, 4, 4), 0.55)
    y = torch.zeros(6, dtype=torch.int64)
    from bastion.attacks.autoattack import autoattack

    r = autoattack(_MeanModel(), x, y, eps=0.1, num_classes=4, seed=3)
    assert [(c[0], c[2]) for c in calls] == [("apgd-ce", 6), ("apgd-t", 4), ("fab-t", 3),
                                             ("square", 3)]
    kw = {c[0]: c[1] for c in calls}
    assert kw["apgd-ce"]["steps"] == 100 and kw["apgd-ce"]["n_restarts"] == 1
    assert kw["apgd-ce"]["loss"] == "ce" and kw["apgd-ce"]["rho"] == 0.75
    assert kw["apgd-t"]["steps"] == 100 and kw["apgd-t"]["n_target_classes"] == 3
    assert kw["fab-t"]["steps"] == 100 and kw["fab-t"]["multi_targeted"] is True
    assert (kw["fab-t"]["alpha_max"], kw["fab-t"]["eta"], kw["fab-t"]["beta"]) == (0.1, 1.05,
                                                                                  0.9)
    assert kw["square"]["n_queries"] == 5000 and kw["square"]["p_init"] == 0.8
    assert kw["square"]["resc_schedule"] is False
    assert all(c[1]["seed"] == 3 and c[1]["norm"] == "Linf" for c in calls)
    assert r.success.tolist() == [True, True, True, True, False, False]
    assert torch.allclose(r.x_adv[:4], torch.full((4, 1, 4, 4), 0.45))
    assert torch.equal(r.x_adv[4:], x[4:])
