"""The record of a training run: one frozen ``EpochRecord`` per finished epoch."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

MEASURED_KEYS: tuple[str, ...] = (
    "test_clean_acc", "test_robust_acc", "train_clean_acc", "train_robust_acc",
)
"""Accuracies the loop measures on fixed points after an epoch (not batch averages)."""

_FIXED = ("epoch", "lr", "train_seconds", "seconds", "best_so_far")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
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
            raise ValueError(f"epoch must be an int >= 1, got {self.epoch!r}")
        if not _number(self.lr, "lr") >= 0:
            raise ValueError(f"lr must be >= 0, got {self.lr!r}")
        for name in ("train_seconds", "seconds"):
            if not _number(getattr(self, name), name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        _number(self.best_so_far, "best_so_far")
        for k, v in self.train.items():
            if not k.startswith("train_") or k in MEASURED_KEYS and k in self.measured:
                raise ValueError(f"train log key {k!r} must start with 'train_' and not "
                                 "shadow a measured accuracy")
            _number(v, k)
        for k, v in self.measured.items():
            if k not in MEASURED_KEYS:
                raise ValueError(f"unknown measured key {k!r}; valid: {', '.join(MEASURED_KEYS)}")
            if not 0.0 <= _number(v, k) <= 1.0:
                raise ValueError(f"{k} is an accuracy in [0, 1], got {v!r}")
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
        """Inverse of ``to_dict``; measured accuracies are recognised by name."""
        rest = {k: v for k, v in data.items() if k not in _FIXED}
        measured = {k: v for k, v in rest.items() if k in MEASURED_KEYS}
        train = {k: v for k, v in rest.items() if k not in MEASURED_KEYS}
        if "epoch" not in data:
            raise ValueError(f"an epoch record needs an 'epoch' key, got {sorted(data)}")
        return cls(
            epoch=data["epoch"], lr=data.get("lr", 0.0), train=train, measured=measured,
            train_seconds=data.get("train_seconds", 0.0), seconds=data.get("seconds", 0.0),
            best_so_far=data.get("best_so_far", float("-inf")),
        )


@dataclass(frozen=True)
class History:
    """The epochs of a run, in order (epoch numbers 1, 2, ... consecutive).

    Frozen: ``append`` returns a new ``History``. On disk it is ``history.jsonl``, one
    ``EpochRecord.to_dict()`` per line.
    """

    epochs: tuple[EpochRecord, ...] = ()

    def __post_init__(self) -> None:
        recs = tuple(e if isinstance(e, EpochRecord) else EpochRecord.from_dict(e)
                     for e in self.epochs)
        nums = [e.epoch for e in recs]
        if recs and nums != list(range(nums[0], nums[0] + len(nums))):
            raise ValueError(f"epochs must be consecutive, got {nums}")
        object.__setattr__(self, "epochs", recs)

    @classmethod
    def of(cls, records: Iterable[Mapping[str, Any] | EpochRecord]) -> History:
        """A history from flat epoch dicts (as in ``history.jsonl``) or records."""
        return cls(tuple(records))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.epochs)

    def append(self, record: EpochRecord) -> History:
        """A new history with ``record`` added at the end."""
        if self.epochs and record.epoch != self.epochs[-1].epoch + 1:
            raise ValueError(f"epoch {record.epoch} cannot follow epoch {self.epochs[-1].epoch}")
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
        return cls.of(json.loads(line) for line in text.splitlines() if line.strip())

