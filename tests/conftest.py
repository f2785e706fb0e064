"""Shared fixtures: a tiny model, a tiny batch in [0, 1], a seeded generator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

torch.set_num_threads(1)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 5)
    ).eval()


@pytest.fixture
def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 6, 6, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    return x, y
