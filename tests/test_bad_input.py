"""Every public entry point rejects bad input early, with a message naming the problem."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.evaluate import evaluate_attack
from bastion.attacks.spec import AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.data import load_dataset
from bastion.models import build
from bastion.runs import load_model
from bastion.train import build_method


def test_unknown_names_list_valid_choices():
    with pytest.raises(ValueError, match="valid names: .*small-cnn"):
        build("vgg")
    with pytest.raises(ValueError, match="valid choices: .*pgd-at"):
        build_method("madry")
    with pytest.raises(ValueError, match="valid choices: .*autoattack.*fgsm.*pgd"):
        AttackSpec(name="cw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fashion-mnist"):
        load_dataset("imagenet", "train")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (torch.rand(4, 64), ValueError, "4 dimensions"),
        (torch.rand(4, 1, 8, 8).double() * 2, ValueError, r"\[0, 1\]"),
        (torch.full((4, 1, 8, 8), float("nan")), ValueError, "NaN"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), TypeError, "floating-point"),
    ],
)
def test_evaluate_rejects_bad_images(images, error, match):
    model = build("mlp", input_size=8, hidden=(4,))
    with pytest.raises(error, match=match):
        evaluate_attack(model, images, torch.zeros(4, dtype=torch.int64), AttackSpec())


def test_evaluate_rejects_bad_labels():
    model = build("mlp", input_size=8, hidden=(4,))
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="3 labels but the batch has 4"):
        evaluate_attack(model, x, torch.zeros(3, dtype=torch.int64), AttackSpec())
    with pytest.raises(TypeError, match="int64"):
        evaluate_attack(model, x, torch.zeros(4), AttackSpec())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threat": {"eps": -0.01}}, ">= 0"),
        ({"threat": {"eps": 25.5}}, "pixel units, not in 0-255"),
        ({"threat": {"eps": float("inf")}}, "finite"),
        ({"threat": {"norm": "l1"}}, "valid choices: l2, linf"),
        ({"threat": {"steps": 0}}, ">= 1"),
        ({"threat": {"epsilon": 0.1}}, "unknown threat key.*valid keys"),
        ({"restarts": 0}, "restarts must be an int >= 1"),
        ({"objective": "kl"}, "valid choices: ce, dlr, margin"),
    ],
)
def test_attack_spec_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttackSpec(**kwargs)
    if "threat" in kwargs:  # the same message from the threat model on its own
        with pytest.raises(ValueError, match=match):
            ThreatModel.from_dict(kwargs["threat"])


def test_attack_spec_takes_the_attack_settings_only_through_its_threat():
    with pytest.raises(TypeError, match="eps"):
        AttackSpec(eps=0.1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="mapping"):
        AttackSpec(threat=[0.1, "linf"])  # type: ignore[arg-type]


def test_missing_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path / "empty")
