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


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32 if it is a lower-precision float (bf16 / fp16 model outputs under
    autocast), else ``t`` itself (fp32 and fp64 stay as they are).

    Methods whose loss is not built from ops that autocast runs in fp32 (cross-entropy,
    KL divergence) pass the model's outputs through this, so the loss is fp32 under
    ``fit(precision="bf16")``.
    """
    if t.is_floating_point() and t.element_size() < 4:
        return t.float()
    return t


@dataclass(frozen=True, kw_only=True)
class Standard:
    """Cross-entropy on clean inputs: ``loss = CE(f(x), y)``."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        logits = model(x)
        return StepOutput(F.cross_entropy(logits, y), {"acc": batch_accuracy(logits, y)})
