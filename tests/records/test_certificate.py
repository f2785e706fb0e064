"""Certificate: validation with clear messages, l0 and multi-modality radii, round trip, concat."""

from __future__ import annotations

import json

import pytest
import torch

from bastion.records import Certificate, load_record, save_record

F64 = torch.float64


def _cert(n: int = 3, **kw) -> Certificate:
    base = {
        "prediction": torch.arange(n),
        "radius": torch.linspace(0, 1, n, dtype=F64),
        "abstained": torch.zeros(n, dtype=torch.bool),
        "norm": "l2",
        "method": "smoothing-gaussian",
        "params": {"sigma": 0.25, "n": 1000, "alpha": 0.001},
    }
    return Certificate(**{**base, **kw})


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"prediction": [0, 1, 2]}, TypeError, r"prediction must be int64 of shape \[N\]"),
    ({"prediction": torch.tensor([0.0, 1.0, 2.0])}, TypeError, "prediction must be int64"),
    ({"radius": torch.tensor([0.0, 0.5, 1.0])}, TypeError,
     "radius must have dtype torch.float64, got torch.float32"),
    ({"radius": torch.zeros(2, dtype=F64)}, ValueError, r"radius must have shape \[3\]"),
    ({"radius": torch.tensor([0.0, -0.5, 1.0], dtype=F64)}, ValueError, "finite and >= 0"),
    ({"radius": torch.tensor([0.0, float("nan"), 1.0], dtype=F64)}, ValueError, "finite"),
    ({"radius": torch.tensor([0.0, float("inf"), 1.0], dtype=F64)}, ValueError, "finite"),
    ({"abstained": torch.zeros(3)}, TypeError, "abstained must have dtype torch.bool"),
    ({"abstained": torch.tensor([False, False, True])}, ValueError,
     "an abstaining example must have radius 0"),
    ({"norm": "l7"}, ValueError, "unknown norm 'l7'"),
    ({"method": ""}, ValueError, "non-empty name"),
    ({"labels": torch.tensor([0, 1])}, ValueError, r"labels must have shape \[3\]"),
    ({"labels": torch.tensor([0.0, 1.0, 2.0])}, TypeError, "labels must have dtype torch.int64"),
    ({"index": torch.tensor([0, 1, 2], dtype=torch.int32)}, TypeError, "index must have dtype"),
    ({"extra": {"nA": torch.zeros(2)}}, ValueError, r"extra\['nA'\] must be a tensor with 3 "
                                                    "rows"),
])
def test_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        _cert(**kwargs)


def test_l0_certificates_count_whole_elements():
    c = _cert(norm="l0", radius=torch.tensor([0.0, 3.0, 12.0], dtype=F64), method="ablation")
    assert c.radius.tolist() == [0.0, 3.0, 12.0]
    with pytest.raises(ValueError, match="whole number"):
        _cert(norm="l0", radius=torch.tensor([0.0, 2.5, 12.0], dtype=F64))


def _mm(**kw) -> Certificate:
    base = {
        "norm": "l0", "method": "mmcert",
        "radius": torch.tensor([3.0, 0.0, 5.0], dtype=F64),
        "abstained": torch.tensor([False, True, False]),
        "modality_radius": torch.tensor([[1.0, 2.0], [0.0, 0.0], [4.0, 1.0]], dtype=F64),
        "modalities": ("rgb", "depth"),
    }
    return _cert(**{**base, **kw})


def test_modality_radius_shape_and_values():
    c = _mm()
    assert c.modalities == ("rgb", "depth") and c.modality_radius.shape == (3, 2)
    assert _mm(modalities=["rgb", "depth"]).modalities == ("rgb", "depth")
    with pytest.raises(ValueError, match=r"modality_radius must have shape \[3, 2\]"):
        _mm(modality_radius=torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"modality_radius must have shape \[3, 2\]"):
        _mm(modality_radius=torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match=r"modality_radius must have shape \[3, 2\]"):
        _mm(modality_radius=torch.zeros(2, 2, dtype=F64))
    with pytest.raises(TypeError, match="modality_radius must have dtype torch.float64"):
        _mm(modality_radius=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="an abstaining example must have modality_radius 0"):
        _mm(modality_radius=torch.ones(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="modality_radius must be finite and >= 0"):
        _mm(modality_radius=torch.tensor([[1.0, -2.0], [0.0, 0.0], [4.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match="whole number"):
        _mm(modality_radius=torch.tensor([[1.5, 2.0], [0.0, 0.0], [4.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match="modalities given without modality_radius"):
        _mm(modality_radius=None)
    with pytest.raises(ValueError, match="without modalities"):
        _mm(modalities=())
    with pytest.raises(ValueError, match="distinct names"):
        _mm(modalities=("rgb", "rgb"))
    with pytest.raises(TypeError, match="not a str"):
        _mm(modalities="rgb")


def test_exact_round_trip(tmp_path):
    c = _mm(labels=torch.tensor([0, 1, 1]), index=torch.tensor([10, 20, 30]),
            radius=torch.tensor([3.0, 0.0, 5.0], dtype=F64),
            extra={"nA": torch.tensor([99, 3, 87]), "p_lower": torch.tensor([0.1, 1 / 3, 0.7],
                                                                            dtype=F64)})
    path = tmp_path / "cert.json"
    save_record(path, c)
    for back in (Certificate.from_dict(json.loads(json.dumps(c.to_dict()))),
                 load_record(Certificate, path)):
        for f in ("prediction", "radius", "abstained", "labels", "index", "modality_radius"):
            assert torch.equal(getattr(back, f), getattr(c, f))
            assert getattr(back, f).dtype == getattr(c, f).dtype
        assert back.extra.keys() == c.extra.keys()
        for k in c.extra:
            assert torch.equal(back.extra[k], c.extra[k])
            assert back.extra[k].dtype == c.extra[k].dtype
        assert (back.norm, back.method, back.params, back.modalities) == (
            c.norm, c.method, c.params, c.modalities)
        assert back.to_dict() == c.to_dict()
        assert back == c
    assert c != _mm() and c != c.to_dict()
    with pytest.raises(ValueError, match="unknown fields"):
        Certificate.from_dict({**c.to_dict(), "sigma": 0.5})


def test_concat_joins_consecutive_chunks():
    a = _cert(2, labels=torch.tensor([0, 1]), index=torch.tensor([0, 1]),
              extra={"nA": torch.tensor([5, 6])})
    b = _cert(1, labels=torch.tensor([4]), index=torch.tensor([2]),
              extra={"nA": torch.tensor([7])})
    c = Certificate.concat([a, b])
    assert len(c) == 3
    assert c.prediction.tolist() == [0, 1, 0]
    assert c.radius.tolist() == [0.0, 1.0, 0.0]
    assert c.labels.tolist() == [0, 1, 4] and c.index.tolist() == [0, 1, 2]
    assert c.extra["nA"].tolist() == [5, 6, 7]
    assert (c.norm, c.method, c.params) == (a.norm, a.method, a.params)
    mm = Certificate.concat([_mm(), _mm()])
    assert mm.modality_radius.shape == (6, 2) and mm.modalities == ("rgb", "depth")
    assert Certificate.concat([a]).to_dict() == a.to_dict()


@pytest.mark.parametrize(("other", "match"), [
    ({"params": {"sigma": 0.5}}, "same certifier"),
    ({"norm": "linf"}, "same certifier"),
    ({"labels": None}, "some certificates have labels"),
    ({"extra": {}}, "extra keys"),
])
def test_concat_refuses_mismatched_chunks(other, match):
    a = _cert(2, labels=torch.tensor([0, 1]), extra={"nA": torch.tensor([5, 6])})
    b = _cert(2, **{"labels": torch.tensor([0, 1]), "extra": {"nA": torch.tensor([5, 6])},
                    **other})
    with pytest.raises(ValueError, match=match):
        Certificate.concat([a, b])
    with pytest.raises(ValueError, match="nothing to concatenate"):
        Certificate.concat([])
