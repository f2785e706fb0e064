"""The record of a training run: one frozen ``EpochRecord`` per finished epoch."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bastion.errors import InputError, InputTypeError

MEASURED_KEYS: tuple[str, ...] = (
    "test_clean_acc", "test_robust_acc", "train_clean_acc", "train_robust_acc",
)
"""Accuracies the loop measures on fixed points after an epoch (not batch averages)."""

_FIXED = ("epoch", "lr", "train_seconds", "seconds", "best_so_far")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputTypeError(f"{name} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class EpochRecord:
    """What one finished epoch of ``fit`` measured.

    Args:
        epoch: 1-based epoch number.
        lr: learning rate of the first parameter group at the end of the epoch.
        train: the method's logs averaged over the epoch's steps, keyed ``train_<name>``
            (``train_loss`` always), floats.
        measured: accuracies on fixed points (keys among ``MEASURED_KEYS``), in [0, 1].
        train_seconds: wall time of the training steps.
        seconds: wall time of the epoch including the measurement.
        best_so_far: the best score (robust, else clean test accuracy) up to this epoch;
            ``-inf`` before any finite score.
    """

    epoch: int
    lr: float
    train: Mapping[str, float] = field(default_factory=dict)
    measured: Mapping[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    seconds: float = 0.0
    best_so_far: float = float("-inf")

    def __post_init__(self) -> None:
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, int) or self.epoch < 1:
            raise InputError(f"epoch must be an int >= 1, got {self.epoch!r}")
        if not _number(self.lr, "lr") >= 0:
            raise InputError(f"lr must be >= 0, got {self.lr!r}")
        for name in ("train_seconds", "seconds"):
            if not _number(getattr(self, name), name) >= 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        best = _number(self.best_so_far, "best_so_far")
        if not (best == float("-inf") or 0.0 <= best <= 1.0):
            raise InputError(f"best_so_far is an accuracy in [0, 1] (or -inf before any "
                             f"score), got {self.best_so_far!r}")
        if not isinstance(self.train, Mapping) or not isinstance(self.measured, Mapping):
            raise InputTypeError("EpochRecord.train and EpochRecord.measured must be dicts")
        for k, v in self.train.items():
            if not isinstance(k, str) or not k.startswith("train_") or k in _FIXED:
                raise InputError(f"train log key {k!r} must start with 'train_' and not be "
                                 f"one of {_FIXED}")
            if k in MEASURED_KEYS:
                raise InputError(f"train log key {k!r} is the name of a measured accuracy "
                                 f"({', '.join(MEASURED_KEYS)}); methods may not log "
                                 "'clean_acc' or 'robust_acc' (records.step.RESERVED_LOGS)")
            _number(v, k)
        for k, v in self.measured.items():
            if k not in MEASURED_KEYS:
                raise InputError(f"unknown measured key {k!r}; valid: {', '.join(MEASURED_KEYS)}")
            if not 0.0 <= _number(v, k) <= 1.0:
                raise InputError(f"{k} is an accuracy in [0, 1], got {v!r}")
        object.__setattr__(self, "train", MappingProxyType(dict(self.train)))
        object.__setattr__(self, "measured", MappingProxyType(dict(self.measured)))

    def get(self, key: str, default: Any = None) -> Any:
        """The value of a flat key (as in ``history.jsonl``), or ``default``."""
        return self.to_dict().get(key, default)

    def __getitem__(self, key: str) -> Any:
        d = self.to_dict()
        if key not in d:
            raise KeyError(key)
        return d[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON line of ``history.jsonl`` (the same keys and order as ever)."""
        return {
            "epoch": self.epoch, **self.train, "lr": self.lr,
            "train_seconds": self.train_seconds, **self.measured,
            "seconds": self.seconds, "best_so_far": self.best_so_far,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochRecord:
        """Inverse of ``to_dict``; measured accuracies are recognised by name.

        The names are unambiguous because methods may not log ``clean_acc``/``robust_acc``
        (``records.step.RESERVED_LOGS``). Histories written before that rule, by TRADES or
        RegeneratedAT (which logged their batch clean accuracy as ``clean_acc``), hold a
        batch average under ``train_clean_acc``; it is read back as measured.
        """
        if not isinstance(data, Mapping):
            raise InputTypeError(f"an epoch record must be a JSON object, got {data!r}")
        rest = {k: v for k, v in data.items() if k not in _FIXED}
        measured = {k: v for k, v in rest.items() if k in MEASURED_KEYS}
        train = {k: v for k, v in rest.items() if k not in MEASURED_KEYS}
        if "epoch" not in data:
            raise InputError(f"an epoch record needs an 'epoch' key, got {sorted(data)}")
        return cls(
            epoch=data["epoch"], lr=data.get("lr", 0.0), train=train, measured=measured,
            train_seconds=data.get("train_seconds", 0.0), seconds=data.get("seconds", 0.0),
            best_so_far=data.get("best_so_far", float("-inf")),
        )


@dataclass(frozen=True)
class History:
    """The epochs of a run, in order (epoch numbers 1, 2, ... consecutive).

    Frozen: ``append`` returns a new ``History``. On disk it is ``history.jsonl``, one
    ``EpochRecord.to_dict()`` per line (``to_dict``/``save_record`` give one JSON object).
    ``best_so_far`` never decreases from one epoch to the next.
    """

    epochs: tuple[EpochRecord, ...] = ()

    def __post_init__(self) -> None:
        recs = tuple(e if isinstance(e, EpochRecord) else EpochRecord.from_dict(e)
                     for e in self.epochs)
        nums = [e.epoch for e in recs]
        if nums != list(range(1, len(nums) + 1)):
            raise InputError(f"epochs must be numbered 1, 2, ... consecutively, got {nums}")
        for a, b in zip(recs, recs[1:], strict=False):
            if b.best_so_far < a.best_so_far:
                raise InputError(f"best_so_far fell from {a.best_so_far} (epoch {a.epoch}) to "
                                 f"{b.best_so_far} (epoch {b.epoch}); it is a running maximum")
        object.__setattr__(self, "epochs", recs)

    @classmethod
    def of(cls, records: Iterable[Mapping[str, Any] | EpochRecord]) -> History:
        """A history from flat epoch dicts (as in ``history.jsonl``) or records."""
        return cls(tuple(records))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.epochs)

    def append(self, record: EpochRecord) -> History:
        """A new history with ``record`` added at the end."""
        last = self.epochs[-1].epoch if self.epochs else 0
        if record.epoch != last + 1:
            raise InputError(f"epoch {record.epoch} cannot follow epoch {last}; expected "
                             f"epoch {last + 1}")
        return History((*self.epochs, record))

    def column(self, key: str) -> list[Any]:
        """The value of flat key ``key`` for every epoch (None where absent)."""
        return [e.get(key) for e in self.epochs]

    def to_dicts(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.epochs]

    def to_jsonl(self) -> str:
        return "".join(json.dumps(e.to_dict()) + "\n" for e in self.epochs)

    @classmethod
    def from_jsonl(cls, text: str) -> History:
        """Inverse of ``to_jsonl``."""
        return cls.of(json.loads(line) for line in text.splitlines() if line.strip())

    def to_dict(self) -> dict[str, Any]:
        """One JSON object ``{"record": "History", "epochs": [flat epoch dicts]}``."""
        return {"record": type(self).__name__, "epochs": self.to_dicts()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        """Inverse of ``to_dict``."""
        tag = data.get("record")
        if tag is not None and tag != cls.__name__:
            raise InputError(f"expected a {cls.__name__} record, got {tag!r}")
        unknown = set(data) - {"record", "epochs"}
        if unknown:
            raise InputError(f"unknown fields for History: {sorted(unknown)}")
        return cls.of(data.get("epochs", []))

