"""GroupSort / MaxMin / FullSort: naive reference, permutation Jacobians, 1-Lipschitz, GNP."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from bastion.errors import InputError, InputTypeError
from bastion.models.lipschitz.activations import (
    ACTIVATIONS,
    FullSort,
    GroupSort,
    MaxMin,
    group_sort,
)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _naive(x: torch.Tensor, group_size: int | None, dim: int = 1) -> torch.Tensor:
    """Python-loop reference: sort each group of consecutive entries along ``dim``."""
    xm = x.movedim(dim, -1)
    out = xm.clone()
    c = xm.shape[-1]
    g = c if group_size is None else group_size
    for idx in itertools.product(*(range(s) for s in xm.shape[:-1])):
        row = xm[idx].tolist()
        for start in range(0, c, g):
            out[idx][start:start + g] = torch.tensor(sorted(row[start:start + g]),
                                                     dtype=x.dtype)
    return out.movedim(-1, dim)


def _modules() -> list[tuple[nn.Module, int | None]]:
    return [(GroupSort(1), 1), (GroupSort(2), 2), (GroupSort(3), 3), (GroupSort(6), 6),
            (MaxMin(), 2), (FullSort(), None)]


@pytest.mark.parametrize("shape", [(5, 6), (3, 6, 2, 3)])
def test_equals_the_naive_reference(shape: tuple[int, ...]) -> None:
    x = _randn(*shape, seed=1)
    for module, g in _modules():
        assert torch.equal(module(x), _naive(x, g)), module


def test_other_dims_and_known_values() -> None:
    x = _randn(2, 3, 4, seed=2)
    assert torch.equal(GroupSort(2, dim=-1)(x), _naive(x, 2, dim=2))
    assert torch.equal(FullSort(dim=2)(x), _naive(x, None, dim=2))
    # MaxMin writes (min, max) of each consecutive pair in place, like deel-torchlip's
    # GroupSort2; FullSort sorts all channels at each spatial position.
    v = torch.tensor([[3.0, 1.0, -2.0, 5.0, 0.0, 0.0]])
    assert MaxMin()(v).tolist() == [[1.0, 3.0, -2.0, 5.0, 0.0, 0.0]]
    assert GroupSort(3)(v).tolist() == [[-2.0, 1.0, 3.0, 0.0, 0.0, 5.0]]
    img = torch.tensor([[[[1.0, 9.0]], [[0.0, 4.0]], [[2.0, -1.0]]]])  # [1, 3, 1, 2]
    assert FullSort()(img)[0, :, 0].tolist() == [[0.0, -1.0], [1.0, 4.0], [2.0, 9.0]]


def _is_permutation(j: torch.Tensor) -> bool:
    return bool(((j == 0) | (j == 1)).all() and (j.sum(0) == 1).all() and (j.sum(1) == 1).all())


@pytest.mark.parametrize("shape", [(1, 6), (2, 6, 2, 2)])
def test_jacobian_is_a_permutation_matrix(shape: tuple[int, ...]) -> None:
    x = _randn(*shape, seed=3)
    ties = x.clone()
    ties[:, 1] = ties[:, 0]  # equal values inside a group: still a permutation
    ties[:, 3:6] = 0.5
    n = x.numel()
    for module, _ in _modules():
        for point in (x, ties):
            j = jacobian(module, point).reshape(n, n)
            assert _is_permutation(j), (module, point)
    # The check has teeth: ReLU's Jacobian is not a permutation.
    assert not _is_permutation(jacobian(torch.relu, x).reshape(n, n))


def test_one_lipschitz_on_random_pairs() -> None:
    x = _randn(2000, 12, seed=4)
    near = x + 1e-3 * _randn(2000, 12, seed=5)
    far = _randn(2000, 12, seed=6) * 10
    for module, _ in _modules():
        ratios = {}
        for name, y in (("near", near), ("far", far)):
            ratios[name] = (module(x) - module(y)).norm(dim=1) / (x - y).norm(dim=1)
            assert float(ratios[name].max()) <= 1.0 + 1e-12, module
        # Sorting is an isometry on pairs that sort the same way (most near pairs), so the
        # bound is tight, and it contracts pairs whose orders differ.
        assert float(ratios["near"].max()) == pytest.approx(1.0, abs=1e-12)
        if not isinstance(module, GroupSort) or module.group_size > 1:
            assert float(ratios["far"].min()) < 0.99


def test_preserves_gradient_norms() -> None:
    for shape in [(64, 12), (8, 6, 3, 3)]:
        x = _randn(*shape, seed=7).requires_grad_()
        g = _randn(*shape, seed=8)
        for module, _ in _modules():
            (grad,) = torch.autograd.grad(module(x), x, g)
            assert torch.allclose(grad.flatten(1).norm(dim=1), g.flatten(1).norm(dim=1),
                                  rtol=1e-12, atol=0)
            # Norm preserved because the gradient is g with entries permuted.
            assert torch.equal(grad.flatten(1).sort(dim=1).values,
                               g.flatten(1).sort(dim=1).values)


def test_bad_arguments_raise() -> None:
    with pytest.raises(InputError, match="multiple of 4"):
        GroupSort(4)(torch.zeros(2, 6))
    with pytest.raises(InputError, match="multiple of 2"):
        MaxMin()(torch.zeros(2, 5, 3, 3))
    with pytest.raises(InputError, match="num_channels=6 is not a multiple of group_size=4"):
        GroupSort(4, num_channels=6)
    with pytest.raises(InputError, match="built for 8 channels but got 4"):
        GroupSort(2, num_channels=8)(torch.zeros(1, 4))
    with pytest.raises(InputError, match="group_size"):
        GroupSort(0)
    with pytest.raises(InputTypeError, match="group_size"):
        GroupSort(2.0)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="shape"):
        FullSort()(torch.zeros(5))
    with pytest.raises(InputError, match="dimension 3"):
        FullSort(dim=3)(torch.zeros(2, 4))
    with pytest.raises(InputTypeError, match="floating-point"):
        group_sort(torch.zeros(2, 4, dtype=torch.int64), 2)


def test_activation_registry() -> None:
    expected = {"groupsort": GroupSort, "maxmin": MaxMin, "fullsort": FullSort, "relu": nn.ReLU}
    assert expected == ACTIVATIONS
    x = _randn(3, 4, seed=9)
    for name, cls in ACTIVATIONS.items():
        assert cls()(x).shape == x.shape, name


def test_matches_deel_torchlip() -> None:
    tl = pytest.importorskip("deel.torchlip")
    for shape in [(7, 8), (3, 8, 4, 5)]:
        x = _randn(*shape, seed=10)
        assert torch.equal(MaxMin()(x), tl.GroupSort2()(x))
        assert torch.equal(GroupSort(4)(x), tl.GroupSort(4)(x))
        assert torch.equal(FullSort()(x), tl.FullSort()(x))
