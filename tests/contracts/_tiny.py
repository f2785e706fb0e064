"""Tiny shared fixtures of the contract tests: a mixed-mode model and a small dataset."""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bastion.models import Normalize

NUM_CLASSES = 4  # APGD-T and AutoAttack (targeted DLR) need at least 4
SHAPE = (1, 8, 8)


@dataclass
class TensorData:
    """The loop's ``TensorData`` protocol: ``images``, ``labels`` and ``len``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def tiny_data(n: int = 12, seed: int = 1) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, *SHAPE, generator=g)
    labels = torch.arange(n) % NUM_CLASSES  # every class in every batch of 4
    return TensorData(images, labels)


def mixed_mode_model(seed: int = 0) -> nn.Sequential:
    """A tiny CNN in train mode with two parts frozen in eval mode.

    ``bn_frozen`` (BatchNorm1d) and ``drop_frozen`` (Dropout) stay in eval mode, as a
    fine-tuned model's frozen layers do; ``bn`` (BatchNorm2d) trains. A method or attack
    that ends with ``model.train()`` or ``model.eval()`` instead of restoring each flag
    changes at least one of them. No module left in train mode draws random numbers, so
    a method that uses the global RNG is visible.
    """
    torch.manual_seed(seed)
    model = nn.Sequential(OrderedDict([
        ("normalize", Normalize((0.5,), (0.25,))),
        ("conv", nn.Conv2d(SHAPE[0], 4, 3, padding=1)),
        ("bn", nn.BatchNorm2d(4)),
        ("relu1", nn.ReLU()),
        ("pool", nn.AvgPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(4 * (SHAPE[1] // 2) * (SHAPE[2] // 2), 16)),
        ("bn_frozen", nn.BatchNorm1d(16)),
        ("relu2", nn.ReLU()),
        ("drop_frozen", nn.Dropout(0.5)),
        ("fc2", nn.Linear(16, NUM_CLASSES)),
    ]))
    model.train()
    model.bn_frozen.eval()
    model.drop_frozen.eval()
    return model


@functools.cache
def _fitted_state(seed: int) -> dict[str, torch.Tensor]:
    model = mixed_mode_model(seed)
    data = tiny_data()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(data.images), data.labels).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fitted_model(seed: int = 0) -> nn.Sequential:
    """``mixed_mode_model`` after a few dozen steps on ``tiny_data``: it classifies the
    training points correctly, with margins, as a model in mid-training does (an untrained
    one predicts one class everywhere, so per-example state such as CAT's radii would never
    move and attacks would have nothing to flip)."""
    model = mixed_mode_model(seed)
    model.load_state_dict(_fitted_state(seed))
    return model


def mode_flags(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def grads_left(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.grad is not None]


def same_structure(a: Any, b: Any) -> bool:
    """Deep equality of nested dicts / lists / tensors / scalars (tensors bit for bit)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_structure(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_structure(u, v) for u, v in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


DUAL = {"l2": 2.0, "l1": float("inf"), "linf": 1.0}
PNORM = {"l2": 2.0, "l1": 1.0, "linf": float("inf")}


def linear_binary(w: torch.Tensor, b: float) -> nn.Sequential:
    """Two-class linear model ``f(x) = argmax(W x + b)`` with ``w_1 - w_0 = w``.

    Its decision is known exactly: class 1 iff ``w . x + b > 0``, and the distance of ``x``
    to the decision boundary in the norm ``p`` is ``|w . x + b| / ||w||_q`` with ``q`` the
    dual exponent (``exact_distance``).
    """
    d = w.numel()
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([-w.flatten() / 2, w.flatten() / 2]))
        lin.bias.copy_(torch.tensor([-b / 2, b / 2]))
    return nn.Sequential(nn.Flatten(), lin).eval()


def linear_margin(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``w . x + b`` in float64, from the model's own float32 weights."""
    lin = model[1]
    w = (lin.weight[1] - lin.weight[0]).detach().double()
    b = (lin.bias[1] - lin.bias[0]).detach().double()
    return x.flatten(1).double() @ w + b


def exact_distance(model: nn.Sequential, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Distance [N] (float64) of each ``x`` to the decision boundary of ``linear_binary``."""
    lin = model[1]
    w = (lin.weight[1] - lin.weight[0]).detach().double()
    return linear_margin(model, x).abs() / w.norm(p=DUAL[norm])


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    return delta.flatten(1).double().norm(p=PNORM[norm], dim=1)


class PixelVotes(nn.Module):
    """A two-class base classifier of sub-sampled inputs whose smoothed classifier is known.

    Reads the ``models.ablation`` convention for one modality (``[N, C + 1, H, W]``: kept
    values, then the keep mask) and votes class 1 iff the mean of the kept pixels exceeds
    ``threshold`` (absent pixels count as 0, so with one pixel kept the vote is ``x_p >
    threshold`` for the kept ``p``). With ``keep = 1`` the sub-sampling probability of class
    1 is exactly the fraction ``c / n`` of the ``n`` pixels above ``threshold``; an attacker
    who modifies a pixel flips at most its own vote, so the smallest number of modified pixels
    that makes the smoothed classifier's top class lose its strict majority is ``|2c - n| / 2``
    rounded up (``exact_l0_distance``).
    """

    def __init__(self, hw: tuple[int, int], threshold: float = 0.5) -> None:
        super().__init__()
        from bastion.models.ablation import ModalityLayout

        self.modality_layout = ModalityLayout((1,))
        self.input_size = hw
        self.threshold = threshold
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, so the model has a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, mask = x[:, :1], x[:, 1:]
        mean = values.sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1)
        z = self.scale * (mean - self.threshold)
        return torch.stack([-z / 2, z / 2], dim=1)


def pixel_vote_fraction(model: PixelVotes, x: torch.Tensor) -> torch.Tensor:
    """float64 [N]: the exact probability of class 1 with one kept pixel."""
    return (x.flatten(1) > model.threshold).double().mean(dim=1)


def exact_l0_distance(model: PixelVotes, x: torch.Tensor) -> torch.Tensor:
    """float64 [N]: fewest modified pixels after which the smoothed classifier (one kept
    pixel) no longer has the same strict top class: ``ceil(|2c - n| / 2)``."""
    n = x[0].numel()
    c = (x.flatten(1) > model.threshold).double().sum(dim=1)
    return torch.ceil((2 * c - n).abs() / 2)


def tiny_subsampling_model(in_channels: int, hw: tuple[int, int], num_classes: int,
                           seed: int = 0) -> nn.Sequential:
    """A tiny CNN for sub-sampled inputs (``models.ablation``: kept values, then one
    keep-mask channel), behind a ``Normalize`` with one mask channel, declaring its
    one-modality ``modality_layout`` and ``input_size``; built with a fixed seed that leaves
    the global RNG alone. In train mode."""
    from bastion.models.ablation import ModalityLayout

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(
            Normalize((0.5,) * in_channels, (0.25,) * in_channels, mask_channels=1),
            nn.Conv2d(in_channels + 1, 4, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(4 * hw[0] * hw[1], num_classes))
    model.modality_layout = ModalityLayout((in_channels,))
    model.input_size = hw
    return model.train()
