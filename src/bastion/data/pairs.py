"""Two-view Fashion-MNIST: each example pairs two different images of the same class.

A multi-modal benchmark built from data available here, for MMCert (Wang et al. 2024,
arXiv 2403.19080), whose own benchmarks (KITTI road segmentation, RAVDESS emotion
recognition) cannot be downloaded. Example ``i`` of a split is image ``i`` of that
Fashion-MNIST split (the first view) with a partner of the same class from the same split
(the second view); the label is their class. Partners: within each class, the split's
images of that class are shuffled with a fixed seed and each is paired with the next one in
that order (cyclically), so every image is a first view once and a second view once, never
with itself, and train and test pairs never share an image.

The two views are like two sensors seeing the same kind of object: each alone classifies
the example, and an attacker may corrupt each. Two layouts of the same pairs:

- ``"fashion-mnist-pairs"``: ``[N, 2, 28, 28]``, view 1 in channel 0, view 2 in channel 1
  (two modalities of 784 elements for ``mm-small-cnn`` with ``channels: [1, 1]``);
- ``"fashion-mnist-pairs-wide"``: ``[N, 1, 28, 56]``, the views side by side: the
  concatenated input on which the paper runs randomized ablation as its baseline (one
  modality of 1568 elements).
"""

from __future__ import annotations

import torch

from bastion.data.dataset import ImageDataset

PAIR_SEED = 20240328
"""Seed of the within-class shuffles that choose the partners (fixed: part of the data)."""


def partner_indices(labels: torch.Tensor, seed: int = PAIR_SEED) -> torch.Tensor:
    """int64 [N]: the index of each example's partner (same class, never itself).

    Raises ``ValueError`` if a class has fewer than two examples.
    """
    g = torch.Generator().manual_seed(seed)
    partner = torch.empty_like(labels)
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        if len(idx) < 2:
            raise ValueError(f"class {c} has {len(idx)} example(s); pairing needs two")
        order = idx[torch.randperm(len(idx), generator=g)]
        partner[order] = order.roll(-1)
    return partner


def paired(base: ImageDataset, *, wide: bool = False) -> ImageDataset:
    """The two-view dataset of ``base`` (channels stacked, or side by side with ``wide``)."""
    second = base.images[partner_indices(base.labels)]
    images = torch.cat([base.images, second], dim=3 if wide else 1)
    return ImageDataset(images=images, labels=base.labels.clone(),
                        name=f"{base.name}-pairs{'-wide' if wide else ''}",
                        num_classes=base.num_classes, class_names=base.class_names)


__all__ = ["PAIR_SEED", "paired", "partner_indices"]
