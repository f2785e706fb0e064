"""JSON round-trip and atomic writes shared by every record type.

A record is a frozen dataclass whose fields are tensors (per-example values), plain
scalars, strings or dicts of those. ``record_to_dict`` turns it into JSON-safe data
(tensors become ``{"__tensor__": dtype, "data": [...]}``) and ``record_from_dict`` reverses
it exactly (int64, bool and float64 values survive; float32 values round-trip bit for bit
because Python floats are doubles).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")

_DTYPES = {str(d): d for d in (torch.int64, torch.int32, torch.bool, torch.float32, torch.float64)}


def to_jsonable(value: Any) -> Any:
    """Recursively convert tensors (and tuples) to JSON-safe structures."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        return {"__tensor__": str(t.dtype), "shape": list(t.shape), "data": t.flatten().tolist()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def from_jsonable(value: Any) -> Any:
    """Inverse of ``to_jsonable``."""
    if isinstance(value, dict):
        if "__tensor__" in value:
            dtype = _DTYPES[value["__tensor__"]]
            return torch.tensor(value["data"], dtype=dtype).reshape(value["shape"])
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def record_to_dict(record: Any) -> dict[str, Any]:
    """A dataclass record as a JSON-safe dict (with a ``"record"`` type tag)."""
    out = {f.name: to_jsonable(getattr(record, f.name)) for f in dataclasses.fields(record)}
    return {"record": type(record).__name__, **out}


def record_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a record of type ``cls`` from ``record_to_dict``'s output."""
    tag = data.get("record")
    if tag is not None and tag != cls.__name__:
        raise ValueError(f"expected a {cls.__name__} record, got {tag!r}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names - {"record"}
    if unknown:
        raise ValueError(f"unknown fields for {cls.__name__}: {sorted(unknown)}")
    return cls(**{k: from_jsonable(v) for k, v in data.items() if k in names})


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    Writes a temporary file in the same folder, fsyncs it, then renames it over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    """Atomically write a record as JSON."""
    data = record.to_dict() if hasattr(record, "to_dict") else record_to_dict(record)
    atomic_write_bytes(path, (json.dumps(data) + "\n").encode())


def load_record(cls: type[T], path: str | os.PathLike) -> T:
    """Read a record written by ``save_record``."""
    with open(path) as fh:
        data = json.load(fh)
    from_dict = getattr(cls, "from_dict", None)
    return from_dict(data) if from_dict is not None else record_from_dict(cls, data)
