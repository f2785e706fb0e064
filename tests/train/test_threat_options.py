"""One threat model for every attacking method: the move kept training bit-identical.

Each case runs one training step of a method built three ways, on the same model, batch,
generator and state:

* the old flat options (``eps=..., steps=..., attack_train_mode=...``; CAT's ``eps_max``),
  which ``build_method`` still accepts with a ``DeprecationWarning``;
* the new form with a ``ThreatModel`` object (complete: CAT's ``random_init=False`` spelled
  out);
* the YAML form, ``threat`` as a mapping that names only the keys it changes.

All three give the same loss and the same parameter gradients exactly, and these match
the numbers recorded by the code *before* the refactor (commit 6c18813, where the
options were flat dataclass fields; CAT and RegeneratedAT driven with their old
``setup``/``on_epoch_start`` hooks): the loss, ``sum(|grad|)`` and a fingerprint ``sum(grad
* linspace(-1, 1))`` over all parameters. The recorded numbers are compared at 1e-5
relative (CPU float32 kernels may differ in the last bits across machines); on the
machine that recorded them they were reproduced bit for bit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from bastion.attacks.threat import ThreatModel
from bastion.records import StepContext
from bastion.train import METHODS, build_method
from bastion.train.registry import LEGACY_THREAT_KEYS

T = ThreatModel

# (method, old flat options, new options with a ThreatModel, recorded loss, recorded
# sum |grad|, recorded fingerprint)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], float, float, float]] = [
    ("pgd-at", {}, {"threat": T(eps=0.1, steps=10)},
     1.4507737159729004, 39.60197141313256, -0.7324410457152675),
    ("pgd-at", {"eps": 0.5, "norm": "l2", "steps": 3, "random_init": False, "clean_weight": 0.3},
     {"threat": T(eps=0.5, norm="l2", steps=3, random_init=False), "clean_weight": 0.3},
     1.3262019157409668, 45.43605075086225, -2.361746519594945),
    ("pgd-at", {"step_size": 0.03, "attack_train_mode": True},
     {"threat": T(step_size=0.03, train_mode=True)},
     1.6677621603012085, 38.63022341539977, 1.684510122834496),
    ("trades", {}, {"threat": T(eps=0.1, steps=10)},
     1.2634410858154297, 56.71001661552873, -0.06677194563516836),
    ("trades", {"eps": 0.05, "steps": 3, "step_size": 0.02, "attack_train_mode": True},
     {"threat": T(eps=0.05, steps=3, step_size=0.02, train_mode=True)},
     1.2925469875335693, 72.1365637266972, -2.449194875288294),
    ("trades", {"norm": "l2", "eps": 0.5, "steps": 2, "beta": 1.0},
     {"threat": T(norm="l2", eps=0.5, steps=2), "beta": 1.0},
     1.1300195455551147, 43.74948425083858, -1.2130025583432722),
    ("tla", {}, {"threat": T()},
     1.4508782625198364, 39.60169222970626, -0.7322374386805386),
    ("tla", {"norm": "l2", "eps": 0.3, "steps": 3, "random_init": False},
     {"threat": T(norm="l2", eps=0.3, steps=3, random_init=False)},
     1.3351258039474487, 51.26170601360195, -2.4284400040078076),
    ("consistency", {}, {"threat": T()},
     1.4260945320129395, 35.88797787448584, -1.8766725121676147),
    ("consistency", {"steps": 2, "step_size": 0.05, "random_init": False,
                     "attack_train_mode": True, "pad": 2},
     {"threat": T(steps=2, step_size=0.05, random_init=False, train_mode=True), "pad": 2},
     1.6496615409851074, 29.357973170786863, 2.2670497778602066),
    ("fat", {}, {"threat": T()},
     1.1394867897033691, 33.05931580018077, 0.14489380840270003),
    ("fat", {"tau_schedule": None, "tau": 1, "steps": 5, "step_size": 0.02, "init_std": 0.01},
     {"threat": T(steps=5, step_size=0.02), "tau_schedule": None, "tau": 1, "init_std": 0.01},
     1.2928751707077026, 49.326636359036456, -2.601749177138866),
    ("fat", {"attack": "minimal", "norm": "l2", "eps": 0.5, "steps": 5},
     {"threat": T(norm="l2", eps=0.5, steps=5), "attack": "minimal"},
     1.1443434953689575, 45.186478863134425, -1.1165707778462581),
    ("cat", {}, {"threat": T(eps=0.1, steps=10, random_init=False)},
     1.197653889656067, 48.62708914260293, -1.506027534779036),
    ("cat", {"eps_max": 0.15, "steps": 3, "random_init": True, "attack_train_mode": True,
             "smoothing": "uniform", "eps_init": 0.05},
     {"threat": T(eps=0.15, steps=3, random_init=True, train_mode=True),
      "smoothing": "uniform", "eps_init": 0.05},
     1.4584431648254395, 33.95101845072395, -0.12612613466137304),
    ("cat", {"eps_max": 0.5, "norm": "l2", "c": 1.0, "steps": 2, "step_size_ratio": 1.5,
             "eps_init": 0.2},
     {"threat": T(eps=0.5, norm="l2", steps=2, random_init=False), "c": 1.0,
      "step_size_ratio": 1.5, "eps_init": 0.2},
     1.2658298015594482, 41.54119197541877, -1.3350119856286917),
    ("regenerate", {}, {"threat": T()},
     1.2556146383285522, 39.14862252955845, -1.330181019383748),
    ("regenerate", {"eps": 0.2, "steps": 2, "step_size": 0.05, "random_init": False,
                    "subset_fraction": 0.25},
     {"threat": T(eps=0.2, steps=2, step_size=0.05, random_init=False),
      "subset_fraction": 0.25},
     1.2243748903274536, 39.47205030380155, -1.274371773566126),
    ("regenerate", {"eps": 0.5, "norm": "l2", "steps": 3, "keep_clean": False},
     {"threat": T(eps=0.5, norm="l2", steps=3), "keep_clean": False},
     1.2238245010375977, 44.455627207156795, -1.3272842895549823),
]


def _yaml_form(name: str, flat: dict[str, Any]) -> dict[str, Any]:
    """The migrated recipe: the flat attack keys under ``threat`` (a partial mapping)."""
    renames = dict(LEGACY_THREAT_KEYS)
    if name == "cat":  # CAT's cap eps_max is its threat's eps; it had no eps option
        del renames["eps"]
        renames["eps_max"] = "eps"
    threat = {renames[k]: v for k, v in flat.items() if k in renames}
    rest = {k: v for k, v in flat.items() if k not in renames}
    return {"threat": threat, **rest}


@dataclass
class _Data:
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def _data() -> _Data:
    g = torch.Generator().manual_seed(1)
    images = 0.05 + 0.9 * torch.rand(24, 1, 8, 8, generator=g)
    return _Data(images, torch.randint(0, 3, (24,), generator=g))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Dropout(0.1), nn.Linear(16, 3)).train()


def _one_step(method: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and flattened parameter gradients of one step, as ``fit`` would drive it."""
    data, net = _data(), _model()
    g = torch.Generator().manual_seed(0)
    state = method.init_state(len(data), torch.device("cpu")) if hasattr(
        method, "init_state") else None
    if hasattr(method, "on_epoch_start"):
        method.on_epoch_start(0, net, data, g, state)
    idx = torch.arange(3, 11)
    ctx = StepContext(epoch=1, step=0, index=idx, generator=g, epochs=4, state=state)
    torch.manual_seed(5)  # the dropout masks of the loss' forward passes
    out = method(net, data.images[idx], data.labels[idx], ctx=ctx)
    out.loss.backward()
    return out.loss.detach(), torch.cat([p.grad.flatten() for p in net.parameters()])


@pytest.mark.parametrize(("name", "flat", "new", "loss", "grad_abs", "fingerprint"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_flat_options_and_threat_give_identical_steps(name, flat, new, loss, grad_abs,
                                                      fingerprint):
    if flat:
        with pytest.warns(DeprecationWarning, match="threat"):
            old_style = build_method(name, **flat)
    else:
        old_style = build_method(name)
    threat_style = METHODS[name](**new)
    yaml_style = build_method(name, **_yaml_form(name, flat))
    assert old_style == threat_style == yaml_style
    loss_a, grad_a = _one_step(old_style)
    loss_b, grad_b = _one_step(threat_style)
    loss_c, grad_c = _one_step(yaml_style)
    assert torch.equal(loss_a, loss_b) and torch.equal(loss_a, loss_c)
    assert torch.equal(grad_a, grad_b) and torch.equal(grad_a, grad_c)
    weights = torch.linspace(-1, 1, grad_a.numel(), dtype=torch.float64)
    assert float(loss_a) == pytest.approx(loss, rel=1e-5)
    assert float(grad_a.double().abs().sum()) == pytest.approx(grad_abs, rel=1e-5)
    assert float((grad_a.double() * weights).sum()) == pytest.approx(fingerprint, rel=1e-4,
                                                                      abs=1e-5)


def test_every_attacking_method_has_one_threat_field():
    import dataclasses

    for name in ("pgd-at", "trades", "tla", "consistency", "fat", "cat", "regenerate"):
        fields = {f.name for f in dataclasses.fields(METHODS[name])}
        assert "threat" in fields, name
        assert not fields & {"eps", "norm", "steps", "step_size", "random_init",
                             "attack_train_mode", "eps_max"}, name
        assert isinstance(build_method(name).threat, ThreatModel)


def test_legacy_folding_errors_and_warnings():
    with pytest.raises(ValueError, match="both"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        build_method("pgd-at", eps=0.1, threat={"eps": 0.2})
    with pytest.raises(ValueError, match="once"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        build_method("pgd-at", steps=3, threat=ThreatModel())
    with pytest.raises(ValueError, match="unknown option"):
        build_method("standard", eps=0.1)  # a method without a threat keeps its check
    with pytest.raises(ValueError, match="unknown threat key"):
        build_method("pgd-at", threat={"epsilon": 0.1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the nested form warns about nothing
        build_method("trades", threat={"eps": 0.1, "steps": 7}, beta=1.0)
