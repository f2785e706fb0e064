"""Small torch helpers shared by every layer (a leaf module: it imports nothing of bastion)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (attacks never sync grads)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def model_mode(model: nn.Module, train: bool | None) -> Iterator[None]:
    """Temporarily put ``model`` in train (True) or eval (False) mode; None keeps it.

    Restores each sub-module's own flag afterwards, so a model with some frozen-in-eval
    parts comes back exactly as it was.
    """
    flags = [(m, m.training) for m in model.modules()]
    if train is not None:
        model.train(train)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
