"""Hinge-KR loss: hand-computed values, the alpha ends, zero hinge, gradient signs, errors,
and agreement with deel-torchlip 1.0.5 where it is installed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bastion.errors import InputError, InputTypeError
from bastion.losses.hinge_kr import hinge_kr_loss, hinge_term, kr_term, multiclass_hinge

# N = 4 examples, K = 3 classes; class counts n = (1, 2, 1).
LOGITS = torch.tensor(
    [[2.0, -1.0, 0.0], [0.5, 0.2, -2.0], [1.0, 0.0, 3.0], [-1.0, 2.0, 0.5]], dtype=torch.float64
)
LABELS = torch.tensor([0, 1, 2, 1])
# KR per class: mean f_k over class k minus mean f_k over the rest.
#   k=0: 2 - (0.5 + 1 - 1)/3 = 11/6;  k=1: (0.2 + 2)/2 - (-1 + 0)/2 = 1.6;
#   k=2: 3 - (0 - 2 + 0.5)/3 = 3.5.   KR = (11/6 + 1.6 + 3.5)/3 = 104/45.
KR = 104 / 45
# Hinge, margin 1 (m/2 = 0.5), (1/3)[2 relu(0.5 - f_y) + sum_{j != y} relu(0.5 + f_j)]:
#   ex 0: (0 + 0 + 0.5)/3;  ex 1: (2 * 0.3 + 1 + 0)/3;  ex 2: (0 + 1.5 + 0.5)/3;
#   ex 3: (0 + 0 + 1)/3.
HINGE = [0.5 / 3, 1.6 / 3, 2.0 / 3, 1.0 / 3]


def test_kr_and_hinge_terms_match_hand_computation() -> None:
    assert float(kr_term(LOGITS, LABELS)) == pytest.approx(KR, rel=1e-12)
    assert float(kr_term(LOGITS, LABELS, reduction="sum")) == pytest.approx(4 * KR, rel=1e-12)
    per = kr_term(LOGITS, LABELS, reduction="none")
    # Example 0 (class 0): weights N/n_0 = 4 on f_0, -N/(N - n_k) = -2, -4/3 on f_1, f_2.
    assert float(per[0]) == pytest.approx((4 * 2 + (-2) * (-1) + (-4 / 3) * 0) / 3, rel=1e-12)
    assert float(per.mean()) == pytest.approx(KR, rel=1e-12)
    got = hinge_term(LOGITS, LABELS, 1.0, reduction="none")
    assert got.tolist() == pytest.approx(HINGE, rel=1e-12)
    assert float(hinge_term(LOGITS, LABELS, 1.0)) == pytest.approx(sum(HINGE) / 4, rel=1e-12)
    assert float(hinge_term(LOGITS, LABELS, 1.0, reduction="sum")) == pytest.approx(1.7)


def test_hinge_kr_loss_values_and_alpha_ends() -> None:
    h = sum(HINGE) / 4
    for alpha in (0.0, 0.3, 0.9, 1.0):
        got = float(hinge_kr_loss(LOGITS, LABELS, alpha=alpha, margin=1.0))
        assert got == pytest.approx(alpha * h - (1 - alpha) * KR, rel=1e-12), alpha
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 1, 3])
    assert torch.equal(hinge_kr_loss(x, y, alpha=0.0, margin=0.7), -kr_term(x, y))
    assert torch.equal(hinge_kr_loss(x, y, alpha=1.0, margin=0.7), hinge_term(x, y, 0.7))
    per = hinge_kr_loss(x, y, alpha=0.25, margin=0.7, reduction="none")
    want = 0.25 * hinge_term(x, y, 0.7, reduction="none") - 0.75 * kr_term(x, y, reduction="none")
    assert torch.allclose(per, want, rtol=1e-14, atol=1e-14)
    assert float(hinge_kr_loss(x, y, alpha=0.25, margin=0.7, reduction="sum")) == pytest.approx(
        float(per.sum()), rel=1e-12)


def test_absent_class_counts_as_an_empty_mean() -> None:
    # Class 2 absent: its KR term is 0 - mean_i f_2(x_i).
    x = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -0.5]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    want = ((1.0 - 0.0) + (2.0 - (-1.0)) + (0.0 - 0.0)) / 3
    assert float(kr_term(x, y)) == pytest.approx(want, rel=1e-12)


def test_multiclass_hinge_values() -> None:
    # Gaps f_y - max_{j != y} f_j: 2, -0.3, 2, 1.5.
    assert float(multiclass_hinge(LOGITS, LABELS, 1.0)) == pytest.approx(1.3 / 4, rel=1e-12)
    got = multiclass_hinge(LOGITS, LABELS, 2.0, reduction="none")
    assert got.tolist() == pytest.approx([0.0, 2.3, 0.0, 0.5], rel=1e-12)


def test_hinge_is_zero_beyond_the_margin_and_positive_inside() -> None:
    m = 0.8
    y = torch.tensor([0, 2, 1])
    sign = torch.where(F.one_hot(y, 4).bool(), 1.0, -1.0).to(torch.float64)
    outside = sign * (m / 2 + 0.01)
    assert float(hinge_term(outside, y, m)) == 0.0
    leaf = outside.clone().requires_grad_()
    (g,) = torch.autograd.grad(hinge_term(leaf, y, m), leaf)
    assert bool((g == 0).all())
    assert float(hinge_term(sign * (m / 2 - 0.01), y, m)) > 0
    gap = torch.tensor([[1.0, 1.0 - m - 0.01, -5.0], [0.0, 3.0, 3.0 + m + 0.01]],
                       dtype=torch.float64)
    gy = torch.tensor([0, 2])
    assert float(multiclass_hinge(gap, gy, m)) == 0.0
    assert float(multiclass_hinge(gap, gy, m + 0.02)) > 0
    # Here HKR = -(1 - alpha) KR, since its hinge vanishes.
    assert float(hinge_kr_loss(outside, y, alpha=0.4, margin=m)) == pytest.approx(
        -0.6 * float(kr_term(outside, y)), rel=1e-12)


def test_gradient_signs_push_the_true_logit_up_and_others_down() -> None:
    y = torch.tensor([0, 1, 2, 2, 1])
    onehot = F.one_hot(y, 3).bool()
    zeros = torch.zeros(5, 3, dtype=torch.float64, requires_grad=True)  # all hinges active
    for alpha in (0.0, 0.5, 1.0):
        (g,) = torch.autograd.grad(hinge_kr_loss(zeros, y, alpha=alpha, margin=1.0), zeros)
        assert bool((g[onehot] < 0).all()) and bool((g[~onehot] > 0).all()), alpha
    # Exact hinge gradient at 0: -(K - 1)/(K N) on the true logit, +1/(K N) on the others.
    (g,) = torch.autograd.grad(hinge_term(zeros, y, 1.0), zeros)
    assert torch.allclose(g[onehot], torch.full((5,), -2 / 15, dtype=torch.float64))
    assert torch.allclose(g[~onehot], torch.full((10,), 1 / 15, dtype=torch.float64))
    # The margin hinge moves only the true logit and the runner-up.
    x = torch.tensor([[0.2, 0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(multiclass_hinge(x, torch.tensor([0]), 1.0), x)
    assert g.tolist() == [[-1.0, 1.0, 0.0]]
    # A gradient step lowers the loss.
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x.requires_grad_()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = hinge_kr_loss(x, y, alpha=0.6, margin=1.0)
    (g,) = torch.autograd.grad(loss, x)
    assert float(hinge_kr_loss(x.detach() - 1e-3 * g, y, alpha=0.6, margin=1.0)) < loss.item()


def test_bad_arguments_raise() -> None:
    x, y = LOGITS, LABELS
    for alpha in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(InputError, match="alpha"):
            hinge_kr_loss(x, y, alpha=alpha, margin=1.0)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="alpha / \\(1 \\+ alpha\\)"):
        hinge_kr_loss(x, y, alpha=10.0, margin=1.0)
    for margin in (0.0, -1.0, float("inf"), float("nan")):
        for fn in (lambda m: hinge_kr_loss(x, y, alpha=0.5, margin=m),
                   lambda m: hinge_kr_loss(x, y, alpha=1.0, margin=m),
                   lambda m: hinge_kr_loss(x, y, alpha=0.0, margin=m),
                   lambda m: multiclass_hinge(x, y, m), lambda m: hinge_term(x, y, m)):
            with pytest.raises(InputError, match="margin"):
                fn(margin)
    with pytest.raises(InputError, match="valid choices: mean, none, sum"):
        kr_term(x, y, reduction="avg")
    with pytest.raises(InputError, match=r"\[N, K\]"):
        kr_term(x[:, 0], y)
    with pytest.raises(InputError, match="K >= 2"):
        hinge_term(x[:, :1], y, 1.0)
    with pytest.raises(InputTypeError, match="int64"):
        kr_term(x, y.double())
    with pytest.raises(InputError, match="labels"):
        kr_term(x, y[:3])
    for bad in (torch.tensor([0, 1, 3, 1]), torch.tensor([0, -1, 2, 1])):
        with pytest.raises(InputError, match=r"labels must lie in \[0, 2\]"):
            multiclass_hinge(x, bad, 1.0)
    with pytest.raises(InputTypeError, match="floating-point"):
        kr_term(x.long(), y)


def test_matches_deel_torchlip() -> None:
    tl = pytest.importorskip("deel.torchlip")
    g = torch.Generator().manual_seed(2)
    cases = [
        (torch.randn(32, 10, generator=g, dtype=torch.float64) * 2,
         torch.randint(0, 10, (32,), generator=g)),
        # Class 3 absent and class 1 heavy.
        (torch.randn(7, 4, generator=g, dtype=torch.float64), torch.tensor([1, 1, 1, 0, 2, 1, 0])),
    ]
    for x, y in cases:
        target = F.one_hot(y, x.shape[1]).to(x.dtype)
        for red in ("mean", "sum", "none"):
            for alpha in (0.0, 0.3, 0.97, 1.0):
                for margin in (1.0, 0.2):
                    ref = tl.HKRMulticlassLoss(alpha, min_margin=margin, reduction=red)
                    ours = hinge_kr_loss(x, y, alpha=alpha, margin=margin, reduction=red)
                    assert torch.allclose(ours, ref(x, target), rtol=1e-12, atol=1e-12)
            assert torch.allclose(kr_term(x, y, reduction=red),
                                  tl.KRMulticlassLoss(reduction=red)(x, target),
                                  rtol=1e-12, atol=1e-12)
            assert torch.allclose(hinge_term(x, y, 0.5, reduction=red),
                                  tl.HingeMulticlassLoss(0.5, reduction=red)(x, target),
                                  rtol=1e-12, atol=1e-12)
            assert torch.allclose(multiclass_hinge(x, y, 0.5, reduction=red),
                                  tl.CategoricalHingeLoss(0.5, reduction=red)(x, target),
                                  rtol=1e-12, atol=1e-12)
        # Same gradients.
        xa = x.clone().requires_grad_()
        xb = x.clone().requires_grad_()
        (ga,) = torch.autograd.grad(hinge_kr_loss(xa, y, alpha=0.3, margin=1.0), xa)
        (gb,) = torch.autograd.grad(tl.HKRMulticlassLoss(0.3)(xb, target), xb)
        assert torch.allclose(ga, gb, rtol=1e-12, atol=1e-14)
