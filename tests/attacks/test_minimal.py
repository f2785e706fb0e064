"""Minimal-perturbation attacks: closed forms on affine models, boxes, flags and contracts,
and their per-example record (``evaluate_minimal``) with the two named averages."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from torch import nn

import bastion.attacks.evaluate
from bastion.attacks import MinimalResult, fmn, minimal_eps_by_bisection, perturbation_norm
from bastion.attacks.evaluate import evaluate_minimal
from bastion.metrics import (
    average_perturbation,
    average_perturbation_of_successes,
    robust_accuracy,
)
from bastion.models import build


def _linear_two_class() -> nn.Module:
    torch.manual_seed(0)
    return build("mlp", num_classes=2, in_channels=1, input_size=8, hidden=()).eval()


def _interior_batch(model: nn.Module, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Points in [0.3, 0.7] labelled with the model's prediction (all clean-correct)."""
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


def _closed_form(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """Distance to the boundary of a 2-class affine model: margin / ||w_y - w_j||_dual.

    Exact while the minimal perturbation stays inside the box; checked here: no pixel
    of a point in [0.3, 0.7] moves by 0.3 or more.
    """
    w = model[1].layers.out.weight.detach()
    with torch.no_grad():
        z = model(x)
    rows = torch.arange(len(y))
    gap = z[rows, y] - z[rows, 1 - y]
    v = w[0] - w[1]
    dual = v.abs().sum() if norm == "linf" else v.norm()
    d = gap / dual
    largest_move = d if norm == "linf" else d * v.abs().max() / v.norm()
    assert float(d.min()) > 0 and float(largest_move.max()) < 0.3
    return d


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fmn_matches_closed_form_on_affine_model(norm):
    model = _linear_two_class()
    x, y = _interior_batch(model)
    d = _closed_form(model, x, y, norm)
    # FMN needs a margin resolvable in float32: skip points within 1e-3 of the boundary.
    keep = d > 1e-3
    r = fmn(model, x[keep], y[keep], norm=norm, steps=100)
    assert r.success.all()
    torch.testing.assert_close(r.norm, d[keep], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(("norm", "eps_max"), [("linf", 0.3), ("l2", 3.0)])
def test_bisection_matches_closed_form_on_affine_model(norm, eps_max):
    model = _linear_two_class()
    x, y = _interior_batch(model)
    d = _closed_form(model, x, y, norm)
    g = torch.Generator().manual_seed(1)
    r = minimal_eps_by_bisection(model, x, y, norm=norm, eps_max=eps_max, steps=8,
                                 search_steps=14, random_init=False, generator=g)
    assert r.success.all()
    # bisection bracket eps_max / 2**14 plus PGD's own slack on an affine model (none in
    # L-inf: one signed step reaches the vertex; L2 steps along w reach the sphere).
    assert (r.norm >= d - 1e-5).all()
    torch.testing.assert_close(r.norm, d, rtol=0, atol=eps_max / 2**14 + 1e-5)


@pytest.mark.parametrize("attack", ["fmn", "bisection"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_results_in_box_misclassified_and_norm_consistent(attack, norm):
    torch.manual_seed(0)
    model = build("mlp", num_classes=5, in_channels=1, input_size=8, hidden=(16,)).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(12, 1, 8, 8, generator=g)
    y = torch.randint(0, 5, (12,), generator=g)
    if attack == "fmn":
        r = fmn(model, x, y, norm=norm, steps=30)
    else:
        r = minimal_eps_by_bisection(model, x, y, norm=norm, eps_max=0.5 if norm == "linf"
                                     else 4.0, steps=5, search_steps=6, generator=g)
    assert isinstance(r, MinimalResult)
    assert r.x_adv.shape == x.shape
    assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
    assert torch.isfinite(r.norm).all() and (r.norm >= 0).all()
    with torch.no_grad():
        pred = model(r.x_adv).argmax(1)
    assert (pred[r.success] != y[r.success]).all()
    torch.testing.assert_close(r.norm, torch.where(r.success, perturbation_norm(r.x_adv - x,
                               norm), torch.zeros(12)))
    assert torch.equal(r.x_adv[~r.success], x[~r.success])
    assert r.success.any()


def test_clean_misclassified_points_have_norm_zero():
    model = _linear_two_class()
    x, y = _interior_batch(model, 6)
    y_wrong = 1 - y
    for r in (fmn(model, x, y_wrong, steps=5),
              minimal_eps_by_bisection(model, x, y_wrong, eps_max=0.3, steps=3,
                                       search_steps=3)):
        assert r.success.all()
        assert (r.norm == 0).all()
        assert torch.equal(r.x_adv, x)
    # in the record they are not attacked: no flip, eq. (3) is 0, of-successes undefined
    for attack, kw in (("fmn", {}), ("bisection", {"eps_max": 0.3, "search_steps": 3})):
        res = evaluate_minimal(model, x, y_wrong, attack=attack, steps=5, **kw)
        o = res.only()
        assert torch.equal(o.adv_pred, res.clean_pred) and torch.equal(o.perturbation,
                                                                       torch.zeros(6))
        assert average_perturbation(res) == 0.0
        assert math.isnan(average_perturbation_of_successes(res))
        assert robust_accuracy(res) == 0.0


def test_unfoolable_model_reports_failure_without_inf_or_nan():
    model = _linear_two_class()
    with torch.no_grad():  # constant logits favouring class 0: nothing can fool it
        model[1].layers.out.weight.zero_()
        model[1].layers.out.bias.copy_(torch.tensor([3.0, 0.0]))
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.zeros(5, dtype=torch.int64)
    for r in (fmn(model, x, y, steps=10),
              minimal_eps_by_bisection(model, x, y, eps_max=1.0, steps=3, search_steps=3)):
        assert not r.success.any()
        assert torch.equal(r.x_adv, x)
        assert torch.equal(r.norm, torch.zeros(5))
    for attack, kw in (("fmn", {}), ("bisection", {"eps_max": 1.0, "search_steps": 3})):
        res = evaluate_minimal(model, x, y, attack=attack, steps=3, **kw)
        o = res.only()
        assert torch.equal(o.adv_pred, y) and torch.equal(o.perturbation, torch.zeros(5))
        assert average_perturbation(res) == 0.0
        assert math.isnan(average_perturbation_of_successes(res))
        assert robust_accuracy(res) == 1.0  # eps=None: inf, every point survives


def test_batch_of_one_and_mode_and_grads_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.5), nn.ReLU(),
                          nn.Linear(16, 3))
    model.train()
    model[2].eval()  # a sub-module frozen in eval must stay so
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([1])
    r = fmn(model, x, y, steps=10)
    assert r.x_adv.shape == x.shape and r.norm.shape == (1,)
    minimal_eps_by_bisection(model, x, y, eps_max=0.5, steps=3, search_steps=2)
    assert model.training and not model[2].training and model[1].training
    assert all(p.grad is None for p in model.parameters())


def test_bad_input_is_rejected_early():
    model = _linear_two_class()
    x, y = _interior_batch(model, 2)
    with pytest.raises(ValueError, match="valid choices"):
        fmn(model, x, y, norm="l0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        fmn(model, x, y, steps=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fmn(model, x * 3, y)
    with pytest.raises(ValueError, match="eps_max"):
        minimal_eps_by_bisection(model, x, y, eps_max=2.0)
    with pytest.raises(ValueError, match="eps_max"):
        minimal_eps_by_bisection(model, x, y, eps_max=0.0)
    with pytest.raises(TypeError, match="int64"):
        fmn(model, x, y.float())  # type: ignore[arg-type]


def _mixed_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """8 interior points of the affine model, points 1 and 4 relabelled (clean-wrong)."""
    model = _linear_two_class()
    x, y = _interior_batch(model, 8)
    d = _closed_form(model, x, y, "linf")
    y = y.clone()
    y[[1, 4]] = 1 - y[[1, 4]]
    return model, x, y, d


@pytest.mark.parametrize("attack", ["fmn", "bisection"])
def test_evaluate_minimal_record_matches_closed_form_and_both_averages(attack):
    model, x, y, d = _mixed_batch()
    kw = {"eps_max": 0.3, "search_steps": 14, "options": {"random_init": False}} \
        if attack == "bisection" else {}
    steps = 100 if attack == "fmn" else 8
    res = evaluate_minimal(model, x, y, attack=attack, steps=steps, batch_size=3, **kw)
    o = res.only(attack=attack)
    assert o.eps == math.inf and o.norm == "linf" and len(res) == 8
    assert o.params["attack"] == attack and o.params["steps"] == steps
    cc = res.clean_correct
    assert cc.tolist() == [True, False, True, True, False, True, True, True]
    # clean-misclassified points: not attacked
    assert torch.equal(o.adv_pred[~cc], res.clean_pred[~cc])
    assert torch.equal(o.perturbation[~cc], torch.zeros(2))
    # clean-correct points: all flipped at the distance to the boundary
    assert (o.adv_pred[cc] != y[cc]).all()
    tol = 1e-3 * float(d.max()) + 1e-5 if attack == "fmn" else 0.3 / 2**14 + 1e-5
    torch.testing.assert_close(o.perturbation[cc].double(), d[cc].double(), rtol=0, atol=tol)
    # eq. (3): sum of the found norms / all 8 points; of successes: / the 6 flipped
    total = float(o.perturbation[cc].double().sum())
    assert average_perturbation(res) == pytest.approx(total / 8)
    assert average_perturbation_of_successes(res) == pytest.approx(total / 6)
    # robust accuracy against the attack at a radius: clean-correct and distance > r
    r = float(d[cc].median())
    assert robust_accuracy(res, eps=r) == pytest.approx(
        float((cc & (o.perturbation.double() > r * (1 + 1e-5) + 1e-6)).sum()) / 8)


def test_evaluate_minimal_fmn_batches_and_mode():
    model, x, y, _ = _mixed_batch()
    model.train()
    a = evaluate_minimal(model, x, y, steps=30, batch_size=8)
    b = evaluate_minimal(model, x, y, steps=30, batch_size=3, index=torch.arange(10, 18))
    assert model.training
    assert torch.equal(a.only().adv_pred, b.only().adv_pred)
    torch.testing.assert_close(a.only().perturbation, b.only().perturbation)
    assert b.index.tolist() == list(range(10, 18))
    seen: list[int] = []
    evaluate_minimal(model, x, y, steps=2, batch_size=3, progress=seen.append)
    assert seen == [3, 3, 2]


def test_evaluate_minimal_rejects_bad_arguments():
    model = _linear_two_class()
    x, y = _interior_batch(model, 2)
    with pytest.raises(ValueError, match="needs eps_max"):
        evaluate_minimal(model, x, y, attack="bisection")
    with pytest.raises(ValueError, match="bisection"):
        evaluate_minimal(model, x, y, eps_max=0.3)
    with pytest.raises(ValueError, match="valid choices"):
        evaluate_minimal(model, x, y, attack="pgd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="valid choices"):
        evaluate_minimal(model, x, y, norm="l1")
    with pytest.raises(ValueError, match="options may not set"):
        evaluate_minimal(model, x, y, options={"steps": 3})
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_minimal(model, x, y, batch_size=0)
    with pytest.raises(TypeError, match="int64"):
        evaluate_minimal(model, x, y.float())  # type: ignore[arg-type]


def test_evaluate_docstring_example_runs():
    assert doctest.testmod(bastion.attacks.evaluate, raise_on_error=True).attempted > 0
