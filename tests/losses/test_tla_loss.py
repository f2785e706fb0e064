"""TLA pieces: angular distance, hard-negative mining, triplet and norm terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.losses import (
    HardNegatives,
    angular_distance,
    embedding_norm_penalty,
    hardest_negatives,
    pairwise_angular_distance,
    triplet_loss,
)


def _emb(seed: int, n: int = 10, d: int = 6) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _d_np(u: np.ndarray, v: np.ndarray) -> float:
    return 1.0 - abs(float(u @ v)) / (np.linalg.norm(u) * np.linalg.norm(v))


def test_angular_distance_matches_formula() -> None:
    u, v = _emb(0), _emb(1)
    expected = [_d_np(a, b) for a, b in zip(u.numpy(), v.numpy(), strict=True)]
    torch.testing.assert_close(angular_distance(u, v), torch.tensor(expected, dtype=u.dtype))


def test_angular_distance_properties() -> None:
    u, v = _emb(2), _emb(3)
    d = angular_distance(u, v)
    assert ((d >= 0) & (d <= 1)).all()
    torch.testing.assert_close(d, angular_distance(v, u))
    torch.testing.assert_close(d, angular_distance(-3.0 * u, 0.5 * v))  # |cos|, scale-free
    torch.testing.assert_close(angular_distance(u, u), torch.zeros(10, dtype=u.dtype))
    orth = angular_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]))
    assert float(orth) == pytest.approx(1.0)
    assert float(angular_distance(torch.zeros(1, 2), torch.ones(1, 2))) == 1.0


def test_feature_maps_are_flattened() -> None:
    u, v = _emb(4, d=12), _emb(5, d=12)
    torch.testing.assert_close(angular_distance(u.view(10, 3, 2, 2), v.view(10, 3, 2, 2)),
                               angular_distance(u, v))


def test_pairwise_matches_loop() -> None:
    a, b = _emb(6, n=4), _emb(7, n=7)
    got = pairwise_angular_distance(a, b)
    for i in range(4):
        for j in range(7):
            assert float(got[i, j]) == pytest.approx(_d_np(a[i].numpy(), b[j].numpy()), abs=1e-12)


def test_hardest_negative_is_the_brute_force_one() -> None:
    for seed in range(5):
        a, c = _emb(10 + seed, n=12), _emb(20 + seed, n=9)
        g = torch.Generator().manual_seed(seed)
        ya, yc = torch.randint(0, 3, (12,), generator=g), torch.randint(0, 3, (9,), generator=g)
        neg = hardest_negatives(a, c, ya, yc)
        index, valid = neg.index, neg.valid
        for i in range(12):
            others = [j for j in range(9) if yc[j] != ya[i]]
            assert bool(valid[i]) == bool(others)
            if others:
                dists = [_d_np(a[i].numpy(), c[j].numpy()) for j in others]
                assert int(index[i]) == others[int(np.argmin(dists))]
                assert int(yc[index[i]]) != int(ya[i])


def test_single_class_has_no_negative() -> None:
    a = _emb(30, n=5)
    neg = hardest_negatives(a, a, torch.zeros(5, dtype=torch.int64),
                            torch.zeros(5, dtype=torch.int64))
    assert isinstance(neg, HardNegatives)
    assert not neg.valid.any() and neg.index.dtype == torch.int64 and neg.index.shape == (5,)


def test_triplet_loss_by_hand_and_mask() -> None:
    a, p, n = _emb(40, n=6), _emb(41, n=6), _emb(42, n=6)
    margin = 0.3
    per = [max(_d_np(pi, ai) - _d_np(ni, ai) + margin, 0.0)
           for ai, pi, ni in zip(a.numpy(), p.numpy(), n.numpy(), strict=True)]
    assert float(triplet_loss(a, p, n, margin)) == pytest.approx(np.mean(per), abs=1e-12)
    valid = torch.tensor([True, False, True, True, False, False])
    expected = np.mean([per[i] for i in (0, 2, 3)])
    assert float(triplet_loss(a, p, n, margin, valid)) == pytest.approx(expected, abs=1e-12)
    a.requires_grad_(True)
    none = triplet_loss(a, p, n, margin, torch.zeros(6, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad


def test_norm_penalty_matches_authors_code() -> None:
    # utils.triplet_loss: reduce_mean(a * a + p * p + n * n) over batch and features
    a, p, n = _emb(50), _emb(51), _emb(52)
    expected = float((a * a + p * p + n * n).mean())
    assert float(embedding_norm_penalty(a, p, n)) == pytest.approx(expected, rel=1e-12)
    valid = torch.tensor([True] * 5 + [False] * 5)
    expected = float(((a * a).sum() + (p * p).sum() + (n[:5] * n[:5]).sum()) / (10 * 6))
    assert float(embedding_norm_penalty(a, p, n, valid)) == pytest.approx(expected, rel=1e-12)


def test_gradcheck_triplet_loss() -> None:
    a, p, n = (_emb(s, n=4).requires_grad_(True) for s in (60, 61, 62))
    # a large margin keeps every hinge active (away from the kink)
    assert torch.autograd.gradcheck(lambda u, v, w: triplet_loss(u, v, w, 1.5), (a, p, n))


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        angular_distance(_emb(0, d=3), _emb(1, d=4))
    with pytest.raises(ValueError, match="feature size"):
        pairwise_angular_distance(_emb(0, d=3), _emb(1, d=4))
