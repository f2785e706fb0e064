"""The row of a resumable certification: one certified input, one JSON line.

The line format is that of Cohen et al.'s ``certify.py`` log (arXiv 1902.02918) with the
certifier's raw statistics kept for auditing, e.g. for randomized smoothing::

    {"index": 0, "label": 7, "prediction": 7, "radius": 0.81, "correct": true,
     "abstained": false, "counts": {"nA": 99873, "n": 100000}, "p_lower": 0.9995,
     "seconds": 12.3}

``index`` to ``abstained`` and ``seconds`` are common to every certifier; everything in
between is the certifier's ``details`` (counts and bounds for smoothing, margins and
Lipschitz constants for a deterministic certifier, per-modality radii for MMCert).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bastion.errors import InputError, InputTypeError

_CORE = ("index", "label", "prediction", "radius", "correct", "abstained", "seconds")


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"row field {name!r} must be an int, got {value!r}")
    return value


@dataclass(frozen=True)
class CertificationRow:
    """One certified input of a certification file.

    Args:
        index: dataset position of the input (>= 0).
        label: its true label.
        prediction: the certified class (meaningless where abstained).
        radius: certified radius (>= 0, finite; 0 where abstained), in the file's norm.
        abstained: the certifier declined to certify.
        seconds: wall time spent on this input (the one field that is not a function of
            the inputs and seeds).
        details: the certifier's JSON-safe per-input statistics (keys other than the core
            fields), written between ``abstained`` and ``seconds`` in their given order.
    """

    index: int
    label: int
    prediction: int
    radius: float
    abstained: bool
    seconds: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if _int(self.index, "index") < 0:
            raise InputError(f"row index must be >= 0, got {self.index}")
        _int(self.label, "label")
        _int(self.prediction, "prediction")
        if not isinstance(self.abstained, bool):
            raise InputTypeError(f"row field 'abstained' must be a bool, got {self.abstained!r}")
        r = self.radius
        if isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r) or r < 0:
            raise InputError(f"row radius must be a finite number >= 0, got {r!r}")
        if self.abstained and r != 0:
            raise InputError(f"input {self.index} abstained with radius {r}; it must be 0")
        s = self.seconds
        if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s < math.inf:
            raise InputError(f"row seconds must be a finite number >= 0, got {s!r}")
        if not isinstance(self.details, Mapping):
            raise InputTypeError(f"row details must be a dict, got {type(self.details).__name__}")
        bad_keys = [k for k in self.details if not isinstance(k, str)]
        if bad_keys:
            raise InputTypeError(f"row details keys must be strings, got {bad_keys}")
        clash = set(self.details) & {*_CORE, "record"}
        if clash:
            raise InputError(f"row details may not redefine core fields {sorted(clash)}")
        try:
            json.dumps(dict(self.details), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InputError(f"row details of input {self.index} are not JSON-safe: {e}") from None
        object.__setattr__(self, "radius", float(r))
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    @property
    def correct(self) -> bool:
        """Certified and right: not abstained and ``prediction == label``."""
        return (not self.abstained) and self.prediction == self.label

    def to_json(self) -> dict[str, Any]:
        """The row as the dict of its JSON line (fixed key order)."""
        return {
            "index": self.index, "label": self.label, "prediction": self.prediction,
            "radius": self.radius, "correct": self.correct, "abstained": self.abstained,
            **self.details, "seconds": self.seconds,
        }

    def dumps(self) -> str:
        """The JSON line (without the newline)."""
        return json.dumps(self.to_json(), separators=(", ", ": "), allow_nan=False)

    def to_dict(self) -> dict[str, Any]:
        """The row with a ``"record"`` tag (for ``records.save_record``)."""
        return {"record": type(self).__name__, **self.to_json()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CertificationRow:
        """Inverse of ``to_dict`` (``from_json`` with the tag checked and dropped)."""
        tag = data.get("record")
        if tag is not None and tag != cls.__name__:
            raise InputError(f"expected a {cls.__name__} record, got {tag!r}")
        return cls.from_json({k: v for k, v in data.items() if k != "record"})

    @classmethod
    def loads(cls, line: str) -> CertificationRow:
        """Parse one JSON line written by ``dumps``."""
        return cls.from_json(json.loads(line))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CertificationRow:
        """Parse a row dict; its ``correct`` field, if any, must agree with the others."""
        if not isinstance(data, Mapping):
            raise InputTypeError(f"a certification row must be a JSON object, got {data!r}")
        missing = [k for k in _CORE if k not in ("correct", "seconds") and k not in data]
        if missing:
            raise InputError(f"certification row lacks {missing}: {dict(data)}")
        row = cls(
            index=data["index"], label=data["label"], prediction=data["prediction"],
            radius=data["radius"], abstained=data["abstained"],
            seconds=data.get("seconds", 0.0),
            details={k: v for k, v in data.items() if k not in _CORE},
        )
        if "correct" in data and (not isinstance(data["correct"], bool)
                                  or data["correct"] != row.correct):
            raise InputError(f"row of input {row.index} says correct={data['correct']} but "
                             f"its prediction, label and abstention say {row.correct}")
        return row
