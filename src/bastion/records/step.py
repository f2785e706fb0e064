"""What a training method returns for one batch, and what the loop hands it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bastion.errors import InputError, InputTypeError

RESERVED_LOGS: tuple[str, ...] = ("clean_acc", "robust_acc")
"""Log names a method may not use: ``train_clean_acc``/``train_robust_acc`` in a history
are the accuracies ``fit``'s evaluation measures on fixed training points."""


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

    def __post_init__(self) -> None:
        if not isinstance(self.loss, torch.Tensor) or self.loss.dim() != 0:
            raise InputError("StepOutput.loss must be a scalar tensor")
        for k, v in self.logs.items():
            if not isinstance(k, str):
                raise InputTypeError(f"StepOutput.logs keys must be strings, got {k!r}")
            if k in RESERVED_LOGS:
                raise InputError(
                    f"StepOutput.logs key {k!r} is reserved: the loop records the accuracy "
                    f"it measures on fixed points as 'train_{k}'; name a batch accuracy "
                    "differently (e.g. 'nat_acc', 'adv_acc')"
                )
            scalar = (v.numel() == 1 if isinstance(v, torch.Tensor)
                      else isinstance(v, int | float) and not isinstance(v, bool))
            if not scalar:
                raise InputTypeError(f"StepOutput.logs[{k!r}] must be a scalar tensor or a float, "
                                f"got {v!r}")


@dataclass(frozen=True)
class StepContext:
    """Per-step information the training loop hands to a method (keyword ``ctx``).

    Methods that need nothing beyond ``(model, x, y)`` ignore it. It is the seam for
    methods that keep per-example state (CAT's epsilons need ``index`` and ``state``) or
    change over training (FAT's tau grows with ``epoch``).

    Args:
        epoch: 0-based epoch number.
        step: 0-based step within the epoch.
        index: int64 tensor [N], positions of the batch's examples in the training set.
        generator: the run's ``torch.Generator`` for every random draw a method makes
            (random starts, noise), on the batch's device; saved in checkpoints.
        epochs: total number of epochs of the run.
        state: the method's explicit state object (``method.init_state(...)``), or None for
            a stateless method; the loop saves and restores it with the checkpoint.
    """

    epoch: int = 0
    step: int = 0
    index: torch.Tensor | None = None
    generator: torch.Generator | None = None
    epochs: int = 1
    state: Any = None
