"""The record of one empirical evaluation: per-example outcomes of one attack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bastion._records import record_from_dict, record_to_dict
from bastion.types import Norm


@dataclass(frozen=True)
class EvalResult:
    """Per-example outcome of attacking a model on a fixed set of test points.

    Conventions (they define every rate computed from it, see ``bastion.metrics``):
    a point the model already misclassifies is not attacked: its adversarial example is
    the clean input itself (perturbation 0, ``adv_pred == clean_pred``). So
    ``adv_correct`` implies ``clean_correct`` and robust accuracy never exceeds clean
    accuracy.

    Args:
        attack: attack name (e.g. ``"pgd"``).
        norm: the threat model's norm.
        eps: the radius, in [0, 1] pixel units.
        params: the attack's other settings (steps, step size, restarts, objective, seed).
        index: int64 [N], dataset positions of the evaluated points.
        labels: int64 [N].
        clean_pred: int64 [N], predictions on the clean inputs.
        adv_pred: int64 [N], predictions on the adversarial inputs.
        perturbation: float32 [N], ``||x' - x||`` in ``norm`` (0 where not attacked).
        seconds: wall time of the evaluation.
    """

    attack: str
    norm: Norm
    eps: float
    index: torch.Tensor
    labels: torch.Tensor
    clean_pred: torch.Tensor
    adv_pred: torch.Tensor
    perturbation: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def clean_correct(self) -> torch.Tensor:
        """bool [N]: the clean input is classified correctly."""
        return self.clean_pred == self.labels

    @property
    def adv_correct(self) -> torch.Tensor:
        """bool [N]: the adversarial input is still classified correctly."""
        return self.adv_pred == self.labels

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; ``EvalResult.from_dict`` inverts it exactly."""
        return record_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        return record_from_dict(cls, data)
