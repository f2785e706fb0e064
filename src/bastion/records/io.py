"""JSON round-trip and atomic writes shared by every record type.

A record is a frozen dataclass whose fields are tensors (per-example values), plain
scalars, strings or mappings and sequences of those. ``record_to_dict`` turns it into
JSON-safe data (tensors become ``{"__tensor__": dtype, "shape": [...], "data": [...]}``) and
``record_from_dict`` reverses it exactly: integer, bool and floating tensors keep their
dtype, shape and every bit of their values (float32 and float16 values are exactly
representable as Python floats, which ``json`` writes in their shortest round-trip form).
Tuples come back as lists (records that need tuples convert them in ``__post_init__``).
Non-finite floats are written as ``NaN``/``Infinity`` (Python's ``json`` reads them back; a
minimal-perturbation ``AttackOutcome`` has ``eps = inf``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from bastion.errors import InputError, InputTypeError, OutputError

T = TypeVar("T")

_DTYPES = {
    str(d): d
    for d in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
              torch.float64, torch.float32, torch.float16, torch.bfloat16)
}


def to_jsonable(value: Any) -> Any:
    """Recursively convert tensors, mappings, tuples and nested records to JSON-safe data.

    A nested record with a ``to_dict`` method is written with it. Raises ``TypeError`` for
    a tensor dtype the JSON form cannot round-trip exactly (complex, float8, ...).
    """
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if str(t.dtype) not in _DTYPES:
            raise InputTypeError(f"cannot write a {t.dtype} tensor as JSON; supported dtypes: "
                            f"{', '.join(_DTYPES)}")
        return {"__tensor__": str(t.dtype), "shape": list(t.shape), "data": t.flatten().tolist()}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        return to_dict() if to_dict is not None else record_to_dict(value)
    return value


def from_jsonable(value: Any) -> Any:
    """Inverse of ``to_jsonable`` for tensors, dicts and lists (nested records stay dicts)."""
    if isinstance(value, dict):
        if "__tensor__" in value:
            name = value["__tensor__"]
            if name not in _DTYPES:
                raise InputError(f"unknown tensor dtype {name!r} in a record")
            return torch.tensor(value["data"], dtype=_DTYPES[name]).reshape(value["shape"])
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def record_to_dict(record: Any) -> dict[str, Any]:
    """A dataclass record as a JSON-safe dict (with a ``"record"`` type tag)."""
    out = {f.name: to_jsonable(getattr(record, f.name)) for f in dataclasses.fields(record)}
    return {"record": type(record).__name__, **out}


def record_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild a record of type ``cls`` from ``record_to_dict``'s output.

    Raises ``ValueError`` if the data is tagged as another record type or has fields
    ``cls`` does not know.
    """
    if not isinstance(data, Mapping):
        raise InputTypeError(f"a {cls.__name__} record must be a JSON object, got "
                        f"{type(data).__name__}")
    tag = data.get("record")
    if tag is not None and tag != cls.__name__:
        raise InputError(f"expected a {cls.__name__} record, got {tag!r}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names - {"record"}
    if unknown:
        raise InputError(f"unknown fields for {cls.__name__}: {sorted(unknown)}")
    return cls(**{k: from_jsonable(v) for k, v in data.items() if k in names})


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    Writes a temporary file in the same folder, fsyncs it, then renames it over ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except PermissionError as err:
        raise OutputError.of(path, err) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (tensors converted by ``to_jsonable``)."""
    atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=2) + "\n").encode())


def save_record(path: str | os.PathLike, record: Any) -> None:
    """Atomically write a record (its ``to_dict()``, else ``record_to_dict``) as JSON.

    ``load_record(type(record), path)`` reads back an equal record.
    """
    if not dataclasses.is_dataclass(record) or isinstance(record, type):
        raise InputTypeError(f"save_record takes a record (a dataclass instance), got "
                        f"{type(record).__name__}")
    to_dict = getattr(record, "to_dict", None)
    data = to_dict() if to_dict is not None else record_to_dict(record)
    atomic_write_bytes(path, (json.dumps(data) + "\n").encode())


def load_record(cls: type[T], path: str | os.PathLike) -> T:
    """Read a record of type ``cls`` written by ``save_record`` (``cls.from_dict`` if any)."""
    with open(path) as fh:
        data = json.load(fh)
    from_dict = getattr(cls, "from_dict", None)
    return from_dict(data) if from_dict is not None else record_from_dict(cls, data)


class TensorRecord:
    """Mixin of the frozen dataclass records that hold per-example tensors.

    Gives them a JSON round-trip (``to_dict`` / ``from_dict``, through ``record_to_dict`` and
    ``record_from_dict``) and an ``==`` that compares the JSON form (tensor dtype, shape and
    values), since tensors have no boolean equality. Records use it with
    ``@dataclass(frozen=True, eq=False)``.
    """

    def __eq__(self, other: object) -> bool:
        """Same type and the same JSON form (tensors compared by dtype, shape and values)."""
        if type(other) is not type(self):
            return NotImplemented
        return self.to_dict() == other.to_dict()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  (mutable-looking: tensors are not hashable)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; ``from_dict`` inverts it exactly."""
        return record_to_dict(self)

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        """Rebuild the record from ``to_dict``'s output."""
        return record_from_dict(cls, data)
