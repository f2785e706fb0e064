"""Standard (empirical risk minimisation) training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bastion.records import StepContext, StepOutput


def batch_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Detached fraction of correct predictions in a batch (a log value)."""
    return (logits.detach().argmax(1) == y).float().mean()


@dataclass(frozen=True, kw_only=True)
class Standard:
    """Cross-entropy on clean inputs: ``loss = CE(f(x), y)``."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        logits = model(x)
        return StepOutput(F.cross_entropy(logits, y), {"acc": batch_accuracy(logits, y)})
