"""Small shared types and records used across bastion.

Everything here is a frozen dataclass or a ``Literal`` alias, so that the shape of the
project's data is visible in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

Norm = Literal["linf", "l2", "l1"]
"""A perturbation norm. Attacks support ``"linf"`` and ``"l2"``; certificates may carry ``"l1"``."""

NORMS: tuple[str, ...] = ("linf", "l2", "l1")


@dataclass(frozen=True)
class StepOutput:
    """What a training method returns for one batch.

    Args:
        loss: scalar tensor with a graph back to the model parameters; the loop calls
            ``backward`` on it, nothing else does.
        logs: detached scalar tensors (or floats) to average over the epoch, e.g.
            ``{"loss": ..., "acc": ...}``. Keep them as tensors: the loop syncs once per log
            interval, not once per step.
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)


@dataclass
class StepContext:
    """Per-step information the training loop hands to a method (keyword ``ctx``).

    Methods that need nothing beyond ``(model, x, y)`` ignore it. It is the seam for
    methods that keep per-example state (CAT's epsilons need ``index``) or change over
    training (FAT's tau grows with ``epoch``).

    Args:
        epoch: 0-based epoch number.
        step: 0-based step within the epoch.
        index: int64 tensor [N], positions of the batch's examples in the training set.
        generator: the run's ``torch.Generator`` for every random draw a method makes
            (random starts, noise), on the batch's device; saved in checkpoints.
        epochs: total number of epochs of the run.
    """

    epoch: int = 0
    step: int = 0
    index: torch.Tensor | None = None
    generator: torch.Generator | None = None
    epochs: int = 1
