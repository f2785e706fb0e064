"""Examples records: validation, the safetensors round trip and the attack that makes them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bastion.attacks.core import perturbation_norm
from bastion.attacks.spec import AttackSpec
from bastion.bench.examples import Examples, adversarial_examples, load_examples, save_examples
from bastion.data import load_dataset
from bastion.errors import CheckpointError, InputError, InputTypeError, MissingFileError


def _examples(k: int = 4, *, eps: float = 0.1, names: bool = True, seed: int = 0) -> Examples:
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(k, 1, 6, 5, generator=g)
    delta = (torch.rand(k, 1, 6, 5, generator=g) * 2 - 1) * eps
    adv = (clean + delta).clamp(0, 1)
    labels = torch.arange(k) % 3
    return Examples(clean=clean, adversarial=adv, labels=labels, clean_pred=labels.clone(),
                    adv_pred=(labels + 1) % 3, attack="pgd", norm="linf", eps=eps,
                    class_names=["cat", "dog", "<b>bird</b>"] if names else None)


@pytest.fixture(scope="module")
def digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor, list[str]]:
    """An MLP fitted to scikit-learn's 8x8 digits in a second (about 95% test accuracy)."""
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.images), train.labels).backward()
        opt.step()
    return model, test.images[:40], test.labels[:40], list(test.class_names)


def test_round_trip(tmp_path):
    for ex in (_examples(), _examples(3, names=False, seed=1),
               _examples(2, eps=math.inf, seed=2)):
        path = save_examples(tmp_path / "sub" / "ex.safetensors", ex)
        back = load_examples(path)
        for name in ("clean", "adversarial", "labels", "clean_pred", "adv_pred"):
            a, b = getattr(ex, name), getattr(back, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name
        assert (back.attack, back.norm, back.eps, back.class_names) == (
            ex.attack, ex.norm, ex.eps, ex.class_names)
        assert not list(path.parent.glob(".*.tmp"))  # atomic write left nothing behind


def test_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(MissingFileError):
        load_examples(tmp_path / "nope.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not a bastion examples file"):
        load_examples(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(CheckpointError):
        load_examples(junk)


def test_validation():
    ex = _examples()
    fields = dict(clean=ex.clean, adversarial=ex.adversarial, labels=ex.labels,
                  clean_pred=ex.clean_pred, adv_pred=ex.adv_pred, attack="pgd", norm="linf",
                  eps=0.1)
    bad_shapes = [
        {"adversarial": ex.adversarial[:3]},
        {"adversarial": ex.adversarial[:, :, :5]},
        {"clean": ex.clean[0], "adversarial": ex.adversarial[0]},
        {"labels": ex.labels[:3]},
        {"clean_pred": ex.clean_pred.view(2, 2)},
        {"adv_pred": torch.zeros(5, dtype=torch.int64)},
    ]
    for change in bad_shapes:
        with pytest.raises(InputError):
            Examples(**{**fields, **change})
    bad_values = [
        {"clean": ex.clean + 1.5},
        {"adversarial": ex.adversarial - 2},
        {"clean": ex.clean * float("nan")},
        {"norm": "l7"},
        {"eps": -0.1},
        {"eps": 0.01},  # the perturbation is up to 0.1
        {"labels": -ex.labels - 1},
        {"attack": ""},
    ]
    for change in bad_values:
        with pytest.raises(InputError):
            Examples(**{**fields, **change})
    with pytest.raises(InputError, match="class_names"):
        Examples(**fields, class_names=["a", "b"])
    with pytest.raises(InputTypeError):
        Examples(**{**fields, "labels": ex.labels.float()})
    with pytest.raises(InputTypeError):
        Examples(**{**fields, "clean": (ex.clean * 255).long()})
    # a double tensor on input is stored as float32
    assert Examples(**{**fields, "clean": ex.clean.double()}).clean.dtype == torch.float32


@pytest.mark.parametrize(("name", "threat"), [
    ("pgd", {"eps": 0.1, "norm": "linf", "steps": 10}),
    ("pgd", {"eps": 0.8, "norm": "l2", "steps": 10}),
    ("fgsm", {"eps": 0.1, "norm": "linf"}),
])
def test_adversarial_examples_stay_in_the_ball(digits_model, name, threat):
    model, x, y, names = digits_model
    spec = AttackSpec(name=name, threat=threat)
    model.train()
    ex = adversarial_examples(model, x, y, spec, k=12, seed=3, class_names=names)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert len(ex) == 12 and ex.clean.shape == (12, 1, 8, 8)
    assert (ex.attack, ex.norm, ex.eps) == (name, spec.norm, spec.eps)
    assert torch.equal(ex.clean, x[:12]) and torch.equal(ex.labels, y[:12])
    size = perturbation_norm((ex.adversarial - ex.clean).double(), spec.norm)
    assert float(size.max()) <= spec.eps * (1 + 1e-5) + 1e-6
    assert ex.adversarial.min() >= 0 and ex.adversarial.max() <= 1
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(ex.clean).argmax(1), ex.clean_pred)
        assert torch.equal(model(ex.adversarial).argmax(1), ex.adv_pred)
    # the attack works on this undefended model; misclassified points are not attacked
    correct = ex.clean_pred == ex.labels
    assert (ex.adv_pred[correct] != ex.labels[correct]).any()
    assert torch.equal(ex.adversarial[~correct], ex.clean[~correct])
    # the same seed gives the same examples
    again = adversarial_examples(model, x, y, spec, k=12, seed=3, class_names=names)
    assert torch.equal(again.adversarial, ex.adversarial)


def test_adversarial_examples_arguments(digits_model):
    model, x, y, _ = digits_model
    spec = AttackSpec(threat={"eps": 0.1, "steps": 2})
    assert len(adversarial_examples(model, x[:3], y[:3], spec, k=8)) == 3  # fewer than k
    with pytest.raises(InputError, match="k must"):
        adversarial_examples(model, x, y, spec, k=0)
    with pytest.raises(InputError, match="labels"):
        adversarial_examples(model, x, y[:5], spec)
    with pytest.raises(InputTypeError):
        adversarial_examples(model, x, y, {"name": "pgd"})  # type: ignore[arg-type]
