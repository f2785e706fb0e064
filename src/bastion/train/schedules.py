"""Learning-rate schedules as ``LambdaLR`` over optimisation steps (resumable state)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Literal

import torch

from bastion.errors import InputError


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """Learning-rate schedule over optimisation steps.

    ``piecewise``: multiply by ``gamma`` at each milestone, given as fractions of training
    (Rice et al. decay at 50% and 75%). ``cosine``: cosine decay to 0. ``onecycle``:
    linear ramp up to ``lr`` over ``warmup`` of training, then linearly down to 0.
    """

    name: Literal["constant", "piecewise", "cosine", "onecycle"] = "piecewise"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup: float = 0.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler for ``cfg`` over ``total_steps`` steps (see ``ScheduleConfig``)."""
    total = max(1, total_steps)
    if any(not 0 < m < 1 for m in cfg.milestones):
        raise InputError(
            f"schedule milestones are fractions of training in (0, 1), got {cfg.milestones}"
        )
    marks = sorted(int(m * total) for m in cfg.milestones)

    def factor(step: int) -> float:
        frac = step / total
        if cfg.name == "constant":
            return 1.0
        if cfg.name == "piecewise":
            return cfg.gamma ** bisect.bisect_right(marks, step)
        if cfg.name == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        if cfg.name == "onecycle":
            w = max(cfg.warmup, 1e-8)
            return frac / w if frac < w else max(0.0, (1 - frac) / (1 - w))
        raise InputError(f"unknown schedule {cfg.name!r}")

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
