"""Training methods by name (used by configs and the CLI).

Methods that attack hold one ``threat`` (``attacks.threat.ThreatModel``). Options written
before it existed, with the attack settings as flat keys (``eps``, ``norm``, ``steps``,
``step_size``, ``random_init``, ``attack_train_mode``; CAT's ``eps_max``), are still
accepted: ``build_method`` folds them into ``threat`` with a ``DeprecationWarning``, so run
folders whose ``config.yaml`` has flat ``method_options`` load and resume.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

from bastion.attacks.threat import ThreatModel, field_default, resolve_threat
from bastion.errors import InputError, InputTypeError
from bastion.train.cat import CAT
from bastion.train.consistency import Consistency
from bastion.train.cure import CURE
from bastion.train.fat import FAT
from bastion.train.gaussian_noise import GaussianNoise, NoiseAugmentation
from bastion.train.gloro import GloRo
from bastion.train.hgd import HGD
from bastion.train.hkr import HingeKR
from bastion.train.macer import MACER
from bastion.train.pgd_at import PGDAT
from bastion.train.regenerate import RegeneratedAT
from bastion.train.standard import Standard
from bastion.train.subsampling import SubSampledTraining
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
    "hgd": HGD,
    "gloro": GloRo,
    "hkr": HingeKR,
    "subsample": SubSampledTraining,
}


# The flat option names of the attack settings before ``threat``, and their threat key.
LEGACY_THREAT_KEYS: dict[str, str] = {
    "eps": "eps", "norm": "norm", "steps": "steps", "step_size": "step_size",
    "random_init": "random_init", "attack_train_mode": "train_mode",
}
# CAT called its radius cap ``eps_max`` (now ``threat.eps``) and had no ``eps``.
_LEGACY_RENAMES: dict[str, dict[str, str]] = {
    "cat": {**{k: v for k, v in LEGACY_THREAT_KEYS.items() if k != "eps"}, "eps_max": "eps"},
}


def _has_threat(cls: type) -> bool:
    return any(f.name == "threat" for f in dataclasses.fields(cls))


def fold_legacy_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` of method ``name`` with flat attack keys moved into ``threat``.

    ``{"eps": 0.1, "steps": 7, "clean_weight": 0.3}`` becomes ``{"threat": {"eps": 0.1,
    "steps": 7}, "clean_weight": 0.3}`` (with a ``DeprecationWarning``); options without
    flat keys, and methods without a threat, are returned unchanged (as a new dict).

    Raises:
        ValueError: when a setting is given both flat and in ``threat``.
    """
    opts = dict(options)
    cls = METHODS.get(name)
    if cls is None or not _has_threat(cls):
        return opts
    renames = _LEGACY_RENAMES.get(name, LEGACY_THREAT_KEYS)
    flat = {renames[k]: opts.pop(k) for k in list(opts) if k in renames}
    if not flat:
        return opts
    old = sorted(k for k in options if k in renames)
    warnings.warn(
        f"method {name!r}: the options {old} are deprecated; give them as "
        f"threat: {{{', '.join(sorted(flat))}}} (e.g. method_options: {{threat: {{eps: 0.1, "
        "steps: 7}})",
        DeprecationWarning, stacklevel=3,
    )
    threat = opts.get("threat", {})
    if isinstance(threat, ThreatModel):
        raise InputError(
            f"method {name!r}: got a ThreatModel and the flat option(s) {old}; pass the "
            "attack settings once, in threat"
        )
    if not isinstance(threat, Mapping):
        raise InputTypeError(f"method {name!r}: threat must be a ThreatModel or a mapping, "
                        f"got {threat!r}")
    both = sorted(set(flat) & set(threat))
    if both:
        raise InputError(
            f"method {name!r}: {both} given both as flat options and in threat; keep only "
            "the threat entries"
        )
    opts["threat"] = {**threat, **flat}
    return opts


def canonical_method_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` in the form a run config stores: flat keys folded, ``threat`` complete.

    For a method with a threat the result always has ``threat`` as a full plain dict (the
    method's default threat updated by what ``options`` gives), so a config that spells
    out the default threat equals one that leaves it out, and a run folder saved with flat
    options equals the same run written in the nested form. Other methods' options (and
    unknown methods) are returned unchanged. Threat values are validated here.
    """
    opts = fold_legacy_options(name, options)
    cls = METHODS.get(name)
    if cls is None or not _has_threat(cls):
        return opts
    default = field_default(cls)
    threat = resolve_threat(opts.pop("threat", default), default=default)
    return {"threat": threat.to_dict(), **opts}


def build_method(name: str, **kwargs: Any) -> Any:
    """Instantiate the method ``name`` with keyword arguments, checking both early.

    Legacy flat attack options are folded into ``threat`` (``fold_legacy_options``, with a
    ``DeprecationWarning``).
    """
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; valid choices: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    kwargs = fold_legacy_options(name, kwargs)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(kwargs) - fields
    if unknown:
        raise InputError(
            f"unknown option(s) {sorted(unknown)} for method {name!r}; valid: {sorted(fields)}"
        )
    return cls(**kwargs)
