"""TRADES loss: hand-computed values, the authors' formula, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.losses import trades_kl, trades_loss


def _logits(seed: int, n: int = 5, k: int = 4) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_matches_hand_computation() -> None:
    clean, adv = _logits(0), _logits(1)
    y = torch.tensor([0, 3, 1, 1, 2])
    p, q = _softmax(clean.numpy()), _softmax(adv.numpy())
    ce = -np.mean(np.log(p[np.arange(5), y.numpy()]))
    kl = np.mean(np.sum(p * np.log(p / q), axis=1))
    for beta in (0.0, 1.0, 6.0):
        got = float(trades_loss(clean, adv, y, beta))
        assert got == pytest.approx(ce + beta * kl, rel=1e-12, abs=1e-12)


def test_kl_equals_the_authors_formula() -> None:
    # trades.py: nn.KLDivLoss(size_average=False)(log_softmax(f(x')), softmax(f(x))) / N
    clean, adv = _logits(2, n=7), _logits(3, n=7)
    ref = nn.KLDivLoss(reduction="sum")(F.log_softmax(adv, 1), F.softmax(clean, 1)) / 7
    assert float(trades_kl(clean, adv)) == pytest.approx(float(ref), rel=1e-12)


def test_beta_zero_is_cross_entropy_and_kl_zero_at_equal_logits() -> None:
    clean, y = _logits(4), torch.tensor([0, 1, 2, 3, 0])
    assert torch.equal(trades_loss(clean, _logits(5), y, 0.0), F.cross_entropy(clean, y))
    assert float(trades_kl(clean, clean)) == pytest.approx(0.0, abs=1e-15)
    assert float(trades_kl(clean, _logits(6))) > 0


def test_batch_of_one() -> None:
    loss = trades_loss(_logits(7, n=1), _logits(8, n=1), torch.tensor([2]), 6.0)
    assert loss.shape == () and torch.isfinite(loss)


def test_gradcheck_through_both_logits() -> None:
    clean = _logits(9).requires_grad_(True)
    adv = _logits(10).requires_grad_(True)
    y = torch.tensor([0, 3, 1, 1, 2])
    assert torch.autograd.gradcheck(lambda a, b: trades_loss(a, b, y, 6.0), (clean, adv))


@pytest.mark.parametrize("beta", [-1.0, float("nan"), float("inf")])
def test_bad_beta(beta: float) -> None:
    with pytest.raises(ValueError, match="beta"):
        trades_loss(_logits(0), _logits(1), torch.zeros(5, dtype=torch.int64), beta)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        trades_kl(_logits(0, n=5), _logits(1, n=4))
