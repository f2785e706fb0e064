"""bastion: defences for image classifiers against adversarial examples.

Inputs are always NCHW float tensors in [0, 1]; normalisation is the model's first layer,
so every epsilon and certified radius is in pixel units.

Importing ``bastion`` loads nothing heavy: the run-folder functions below are imported on
first use (PEP 562), so ``import bastion.attacks`` does not pull in YAML, configs, training
or the benchmark.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "evaluate_run": "bastion.runs",
    "load_model": "bastion.runs",
    "train_from_config": "bastion.runs",
}

__all__ = ["__version__", "evaluate_run", "load_model", "train_from_config"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bastion' has no attribute {name!r}")
