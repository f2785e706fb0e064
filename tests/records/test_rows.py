"""CertificationRow: radius/abstain/correct consistency, exact JSON lines, save/load."""

from __future__ import annotations

import json

import pytest

from bastion.records import CertificationRow, load_record, save_record

LINE = {"index": 0, "label": 7, "prediction": 7, "radius": 0.81, "correct": True,
        "abstained": False, "counts": {"nA": 99873, "n": 100000}, "p_lower": 0.9995,
        "seconds": 12.3}


def _row(**kw) -> CertificationRow:
    base = {"index": 3, "label": 1, "prediction": 1, "radius": 0.5, "abstained": False}
    return CertificationRow(**{**base, **kw})


def test_the_documented_line_round_trips_exactly():
    row = CertificationRow.from_json(LINE)
    assert row.correct and row.details == {"counts": {"nA": 99873, "n": 100000},
                                           "p_lower": 0.9995}
    assert row.to_json() == LINE and list(row.to_json()) == list(LINE)  # same key order
    line = row.dumps()
    assert json.loads(line) == LINE
    assert CertificationRow.loads(line) == row
    assert CertificationRow.loads(line).dumps() == line


def test_correct_is_derived_and_checked():
    assert _row().correct
    assert not _row(prediction=2).correct
    assert not _row(abstained=True, radius=0.0).correct
    assert not _row(abstained=True, radius=0, prediction=1).correct
    with pytest.raises(ValueError, match="says correct=True but .* say False"):
        CertificationRow.from_json({**LINE, "prediction": 3})
    with pytest.raises(ValueError, match="says correct=False"):
        CertificationRow.from_json({**LINE, "correct": False})
    with pytest.raises(ValueError, match="says correct=1"):
        CertificationRow.from_json({**LINE, "correct": 1})
    # an abstained row is never correct, whatever its prediction
    abst = {**LINE, "abstained": True, "radius": 0.0, "correct": False}
    assert not CertificationRow.from_json(abst).correct


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"abstained": True}, ValueError, "input 3 abstained with radius 0.5; it must be 0"),
    ({"radius": -0.1}, ValueError, "radius must be a finite number >= 0"),
    ({"radius": float("inf")}, ValueError, "radius must be a finite number >= 0"),
    ({"radius": float("nan")}, ValueError, "radius must be a finite number >= 0"),
    ({"radius": True}, ValueError, "radius must be a finite number >= 0"),
    ({"index": -1}, ValueError, "row index must be >= 0"),
    ({"index": 1.0}, TypeError, "'index' must be an int"),
    ({"label": True}, TypeError, "'label' must be an int"),
    ({"prediction": "7"}, TypeError, "'prediction' must be an int"),
    ({"abstained": 0}, TypeError, "'abstained' must be a bool"),
    ({"seconds": -1.0}, ValueError, "seconds must be a finite number >= 0"),
    ({"details": {"radius": 1.0}}, ValueError, r"may not redefine core fields \['radius'\]"),
    ({"details": {"p": float("nan")}}, ValueError, "not JSON-safe"),
    ({"details": {"p": object()}}, ValueError, "not JSON-safe"),
    ({"details": {1: 2}}, TypeError, "keys must be strings"),
])
def test_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        _row(**kwargs)


def test_from_json_needs_the_core_fields():
    with pytest.raises(ValueError, match=r"lacks \['radius'\]"):
        CertificationRow.from_json({k: v for k, v in LINE.items() if k != "radius"})
    # seconds and correct are optional
    row = CertificationRow.from_json({k: v for k, v in LINE.items()
                                      if k not in ("seconds", "correct")})
    assert row.seconds == 0.0 and row.correct


def test_details_are_frozen_and_radius_is_a_float():
    row = _row(radius=1, details={"nA": 5})
    assert isinstance(row.radius, float) and row.radius == 1.0
    with pytest.raises(TypeError):
        row.details["nA"] = 6  # type: ignore[index]


def test_save_and_load_record(tmp_path):
    row = CertificationRow.from_json(LINE)
    path = tmp_path / "row.json"
    save_record(path, row)
    assert json.loads(path.read_text())["record"] == "CertificationRow"
    back = load_record(CertificationRow, path)
    assert back == row and back.to_json() == LINE
    with pytest.raises(ValueError, match="expected a CertificationRow record"):
        CertificationRow.from_dict({**LINE, "record": "Certificate"})
