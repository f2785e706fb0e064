"""records.io: exact tensor round trips through JSON, tags, atomic writes, save/load."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from bastion.records import (
    AttackOutcome,
    EvalResult,
    atomic_write_bytes,
    atomic_write_json,
    load_record,
    record_from_dict,
    record_to_dict,
    save_record,
)
from bastion.records.io import from_jsonable, to_jsonable


def _through_json(value):
    return from_jsonable(json.loads(json.dumps(to_jsonable(value))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_floating_tensors_round_trip_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(3, 4, 5, generator=g, dtype=torch.float64) * 1e3).to(dtype)
    t[0, 0, 0] = 1 / 3
    t[0, 0, 1] = float("inf")
    back = _through_json(t)
    assert back.dtype == dtype and back.shape == t.shape
    assert torch.equal(back.view(-1).double(), t.view(-1).double())


@pytest.mark.parametrize("t", [
    torch.tensor([-(2**63), 2**63 - 1, 0]),
    torch.tensor([True, False]),
    torch.arange(6, dtype=torch.int32).reshape(2, 3),
    torch.tensor([255, 0], dtype=torch.uint8),
    torch.tensor(3.5),
    torch.zeros(0, 3),
    torch.tensor(float("nan")),
])
def test_other_tensors_round_trip(t):
    back = _through_json(t)
    assert back.dtype == t.dtype and back.shape == t.shape
    assert torch.equal(back, t) or (torch.isnan(t).all() and torch.isnan(back).all())


def test_nested_containers_and_unsupported_dtypes():
    value = {"a": (1, 2.5, "x"), "b": {"c": torch.tensor([1, 2])}, "d": None}
    back = _through_json(value)
    assert back["a"] == [1, 2.5, "x"] and back["d"] is None  # tuples come back as lists
    assert torch.equal(back["b"]["c"], torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="cannot write a torch.complex64 tensor"):
        to_jsonable(torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="unknown tensor dtype 'torch.quint8'"):
        from_jsonable({"__tensor__": "torch.quint8", "shape": [1], "data": [0]})


@dataclasses.dataclass(frozen=True)
class _Plain:
    x: torch.Tensor
    name: str = "p"
    extra: dict = dataclasses.field(default_factory=dict)


def test_record_to_dict_and_back_with_tags():
    p = _Plain(x=torch.tensor([0.1, 0.2]), extra={"k": torch.tensor([1])})
    d = record_to_dict(p)
    assert d["record"] == "_Plain" and d["name"] == "p"
    back = record_from_dict(_Plain, json.loads(json.dumps(d)))
    assert torch.equal(back.x, p.x) and torch.equal(back.extra["k"], p.extra["k"])
    with pytest.raises(ValueError, match="expected a _Plain record, got 'Other'"):
        record_from_dict(_Plain, {**d, "record": "Other"})
    with pytest.raises(ValueError, match=r"unknown fields for _Plain: \['y'\]"):
        record_from_dict(_Plain, {**d, "y": 1})
    with pytest.raises(TypeError, match="must be a JSON object"):
        record_from_dict(_Plain, [1, 2])  # type: ignore[arg-type]
    # a nested record is written with its own to_dict
    o = AttackOutcome(attack="fmn", norm="l2", eps=math.inf, adv_pred=torch.tensor([1]),
                      perturbation=torch.tensor([0.5]))
    assert to_jsonable({"outcome": o})["outcome"] == o.to_dict()


def test_save_record_and_load_record(tmp_path):
    r = EvalResult(index=torch.tensor([4, 5]), labels=torch.tensor([0, 1]),
                   clean_pred=torch.tensor([0, 1]),
                   outcomes=(AttackOutcome(attack="fmn", norm="linf", eps=math.inf,
                                           adv_pred=torch.tensor([1, 1]),
                                           perturbation=torch.tensor([0.125, 0.0])),))
    path = tmp_path / "deep" / "folder" / "r.json"
    save_record(path, r)
    assert load_record(EvalResult, path).to_dict() == r.to_dict()
    p = _Plain(x=torch.tensor([1.5]))
    save_record(tmp_path / "p.json", p)
    assert torch.equal(load_record(_Plain, tmp_path / "p.json").x, p.x)
    with pytest.raises(ValueError, match="expected a _Plain record, got 'EvalResult'"):
        load_record(_Plain, path)
    with pytest.raises(TypeError, match="save_record takes a record"):
        save_record(tmp_path / "x.json", {"a": 1})
    assert sorted(q.name for q in tmp_path.rglob("*") if q.is_file()) == ["p.json", "r.json"]


def test_atomic_writes_replace_and_leave_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "f.json"
    atomic_write_json(path, {"t": torch.tensor([1, 2]), "v": 0.5})
    assert json.loads(path.read_text())["v"] == 0.5
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert [q.name for q in path.parent.iterdir()] == ["f.json"]

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr("bastion.records.io.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"newer")
    assert path.read_bytes() == b"new"  # the old file survives a failed write
    assert [q.name for q in path.parent.iterdir()] == ["f.json"]  # no temporary left
