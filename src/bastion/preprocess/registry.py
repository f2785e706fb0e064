"""Pre-processing defenses by name (used by run configs, suites and ``bastion eval --defense``).

``build_preprocessor(name, options, in_channels=C)`` builds one; options are the class's
JSON-serialisable keywords, checked by the class itself. A defense that needs to know the
number of image channels (the guided denoiser) gets ``in_channels`` from the data unless
the options set it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from bastion.errors import InputError, InputTypeError
from bastion.preprocess.base import Preprocessor
from bastion.preprocess.bit_depth import BitDepthReduction
from bastion.preprocess.hgd import GuidedDenoiser
from bastion.preprocess.jpeg import JPEGCompression
from bastion.preprocess.resize_pad import RandomResizePad
from bastion.preprocess.tv import TVMinimization

PREPROCESSORS: dict[str, type[Preprocessor]] = {
    "tv": TVMinimization,
    "resize-pad": RandomResizePad,
    "bit-depth": BitDepthReduction,
    "jpeg": JPEGCompression,
    "hgd": GuidedDenoiser,
}

TRAINED: frozenset[str] = frozenset({"hgd"})
"""Defenses with weights of their own, trained by a run (``bastion train configs/hgd.yaml``)."""


def _keywords(cls: type) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def resolved_options(name: str, options: Mapping[str, Any] | None = None, *,
                     in_channels: int | None = None) -> dict[str, Any]:
    """``options`` checked against the class's keywords, with ``in_channels`` filled in
    where the class takes it; raises ``InputError`` naming unknown names and the valid ones."""
    if not isinstance(name, str) or name not in PREPROCESSORS:
        raise InputError(f"unknown defense {name!r}; valid choices: "
                         f"{', '.join(sorted(PREPROCESSORS))}")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise InputTypeError(f"options of defense {name!r}: expected a mapping, got {options!r}")
    keys = _keywords(PREPROCESSORS[name])
    unknown = sorted(set(options) - set(keys))
    if unknown:
        raise InputError(f"defense {name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"valid options: {', '.join(keys) or '(none)'}")
    opts = dict(options)
    if in_channels is not None and "in_channels" in keys and "in_channels" not in opts:
        opts["in_channels"] = in_channels
    return opts


def build_preprocessor(name: str, options: Mapping[str, Any] | None = None, *,
                       in_channels: int | None = None) -> Preprocessor:
    """The defense ``name`` built with ``options`` (see ``resolved_options``)."""
    return PREPROCESSORS[name](**resolved_options(name, options, in_channels=in_channels))
