"""Training methods by name (used by configs and the CLI)."""

from __future__ import annotations

import dataclasses
from typing import Any

from bastion.train.cat import CAT
from bastion.train.consistency import Consistency
from bastion.train.cure import CURE
from bastion.train.fat import FAT
from bastion.train.gaussian_noise import GaussianNoise, NoiseAugmentation
from bastion.train.macer import MACER
from bastion.train.pgd_at import PGDAT
from bastion.train.regenerate import RegeneratedAT
from bastion.train.standard import Standard
from bastion.train.tla import TLA
from bastion.train.trades import TRADES

METHODS: dict[str, type] = {
    "standard": Standard,
    "gaussian-noise": GaussianNoise,
    "noise-augment": NoiseAugmentation,
    "pgd-at": PGDAT,
    "trades": TRADES,
    "cure": CURE,
    "tla": TLA,
    "consistency": Consistency,
    "fat": FAT,
    "cat": CAT,
    "regenerate": RegeneratedAT,
    "macer": MACER,
}


def build_method(name: str, **kwargs: Any) -> Any:
    """Instantiate the method ``name`` with keyword arguments, checking both early."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid choices: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(kwargs) - fields
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for method {name!r}; valid: {sorted(fields)}"
        )
    return cls(**kwargs)
