"""GloRo's bottom logit and relaxed top-k: hand-computed cases, a brute-force reference, and
soundness of the top-k certificate on a linear model with exact constants."""

from __future__ import annotations

import itertools

import pytest
import torch

from bastion.errors import InputError
from bastion.losses.gloro import (
    bottom_logit,
    gloro_logits,
    gloro_predict,
    topk_certified,
    topk_margins,
    topk_vra,
)


def test_bottom_logit_matches_a_hand_computed_case() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0]])
    k = torch.tensor([[0.0, 2.0, 1.0], [2.0, 0.0, 4.0], [1.0, 4.0, 0.0]])
    # predicted class 0: max(f_1 + eps K_01, f_2 + eps K_02) = max(1 + 0.5*2, 0 + 0.5*1) = 2
    assert bottom_logit(logits, k, 0.5).tolist() == [2.0]
    aug = gloro_logits(logits, k, 0.5)
    assert aug.tolist() == [[3.0, 1.0, 0.0, 2.0]]
    assert gloro_predict(logits, k, 0.5).tolist() == [0]       # 3 > 2: certified
    assert gloro_predict(logits, k, 1.5).tolist() == [3]       # 3 < 1 + 3: bottom


def test_the_seed_form_k_i_plus_k_y_is_looser_than_pairwise() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 7, generator=g, dtype=torch.float64)
    pair = (w[:, None] - w[None]).norm(dim=2)
    kj = w.norm(dim=1)
    loose = kj[:, None] + kj[None, :]
    loose.fill_diagonal_(0)
    assert (pair <= loose + 1e-12).all()
    logits = torch.randn(50, 5, generator=g, dtype=torch.float64)
    assert (bottom_logit(logits, pair, 0.3) <= bottom_logit(logits, loose, 0.3) + 1e-12).all()


def test_a_tie_is_predicted_bottom_even_at_eps_zero() -> None:
    logits = torch.tensor([[2.0, 2.0, 0.0]])
    assert gloro_predict(logits, torch.ones(3, 3), 0.0).tolist() == [3]
    size, _ = topk_certified(logits, torch.ones(3, 3), 0.0, 1)
    assert size.tolist() == [0]


def test_top2_certifies_where_top1_fails() -> None:
    logits = torch.tensor([[5.0, 4.9, 0.0]])
    k = torch.ones(3, 3) - torch.eye(3)
    m, order = topk_margins(logits, k, 1.0, 2)
    assert order.tolist() == [[0, 1]]
    assert m[0, 0] < 0            # top-1: 5 - (4.9 + 1) = -0.9
    assert m[0, 1] == pytest.approx(3.9)  # top-2: min(5, 4.9) - (0 + 1)
    size, _ = topk_certified(logits, k, 1.0, 2)
    assert size.tolist() == [2]
    assert topk_vra(logits, torch.tensor([1]), k, 1.0, 2).tolist() == [True]
    assert topk_vra(logits, torch.tensor([1]), k, 1.0, 1).tolist() == [False]
    assert topk_vra(logits, torch.tensor([2]), k, 1.0, 2).tolist() == [False]
    # the bottom logit of RTK is below max f exactly when some top-k' is certified
    assert bottom_logit(logits, k, 1.0, k=2).item() < 5.0
    assert bottom_logit(logits, k, 1.0, k=1).item() > 5.0


def _reference_margins(logits, pair, eps, k):
    """Loops over the definition: m_k' = min_{l in top-k'} (f_l - max_{i not in} f_i +
    eps K_li)."""
    out = torch.empty(logits.shape[0], k, dtype=logits.dtype)
    for n in range(logits.shape[0]):
        order = logits[n].argsort(descending=True).tolist()
        for kp in range(1, k + 1):
            members, rest = order[:kp], order[kp:]
            out[n, kp - 1] = min(float(logits[n, l]) - max(
                float(logits[n, i]) + eps * float(pair[l, i]) for i in rest) for l in members)
    return out


def test_topk_margins_equal_the_definition() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64)
    pair = (w[:, None] - w[None]).norm(dim=2)
    for k in (1, 2, 3, 5):
        m, _ = topk_margins(logits, pair, 0.2, k)
        assert torch.allclose(m, _reference_margins(logits, pair, 0.2, k), atol=1e-12)
    # k = 1: the RTK rule equals GloRo's top-1 rule
    m1, _ = topk_margins(logits, pair, 0.2, 1)
    direct = logits.max(1).values - bottom_logit(logits, pair, 0.2)
    assert torch.allclose(m1[:, 0], direct, atol=1e-12)


def test_a_certified_topk_set_survives_every_perturbation_of_a_linear_model() -> None:
    # f(x) = W x: K_ij = ||w_i - w_j|| is the exact constant of f_i - f_j
    g = torch.Generator().manual_seed(2)
    w = torch.randn(6, 5, generator=g, dtype=torch.float64)
    pair = (w[:, None] - w[None]).norm(dim=2)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    eps = 0.3
    size, order = topk_certified(x @ w.T, pair, eps, 3)
    assert (size > 0).sum() >= 10 and (size >= 2).any()
    for n in (size > 0).nonzero().flatten().tolist():
        kp = int(size[n])
        certified_set = set(order[n, :kp].tolist())
        # the worst case for f_l - f_i is the direction -(w_l - w_i); check every pair
        # direction and random directions on the sphere of radius eps
        dirs = [-(w[a] - w[b]) for a, b in itertools.permutations(range(6), 2)]
        dirs += list(torch.randn(200, 5, generator=g, dtype=torch.float64))
        for d in dirs:
            z = (x[n] + eps * d / d.norm()) @ w.T
            assert set(z.argsort(descending=True)[:kp].tolist()) == certified_set


def test_bad_arguments_raise() -> None:
    with pytest.raises(InputError, match="k must be"):
        topk_margins(torch.zeros(2, 3), torch.zeros(3, 3), 0.1, 3)
    with pytest.raises(InputError, match="pairwise"):
        bottom_logit(torch.zeros(2, 3), torch.zeros(2, 2), 0.1)
    with pytest.raises(InputError, match="eps"):
        bottom_logit(torch.zeros(2, 3), torch.zeros(3, 3), -1.0)


def test_gradient_reaches_the_logits_and_constants() -> None:
    logits = torch.randn(4, 5, requires_grad=True)
    pair = torch.rand(5, 5, requires_grad=True)
    for k in (1, 2):
        loss = torch.nn.functional.cross_entropy(gloro_logits(logits, pair, 0.5, k=k),
                                                 torch.tensor([0, 1, 2, 3]))
        gl, gp = torch.autograd.grad(loss, [logits, pair])
        assert gl.abs().sum() > 0 and gp.abs().sum() > 0
