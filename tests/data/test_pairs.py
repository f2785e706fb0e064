"""Two-view Fashion-MNIST pairs (``data.pairs``)."""

from __future__ import annotations

import torch

from bastion.data import load_dataset
from bastion.data.pairs import paired, partner_indices


def test_partners_share_the_class_never_self_and_each_is_used_once():
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0, 2, 1, 0])
    p = partner_indices(labels)
    assert torch.equal(labels[p], labels)
    assert (p != torch.arange(len(labels))).all()
    assert sorted(p.tolist()) == list(range(len(labels)))  # a permutation
    assert torch.equal(p, partner_indices(labels))  # fixed


def test_paired_digits_layouts():
    base = load_dataset("digits", "test")
    two = paired(base)
    wide = paired(base, wide=True)
    assert two.images.shape == (len(base), 2, 8, 8)
    assert wide.images.shape == (len(base), 1, 8, 16)
    assert torch.equal(two.images[:, :1], base.images)
    assert torch.equal(wide.images[..., 8:], two.images[:, 1:])
    p = partner_indices(base.labels)
    assert torch.equal(two.images[:, 1:], base.images[p])


def test_registered_pairs_dataset_if_fashion_mnist_is_here():
    import pytest

    try:
        ds = load_dataset("fashion-mnist-pairs", "test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    assert ds.images.shape == (10_000, 2, 28, 28)
    assert ds.name == "fashion-mnist-pairs"
