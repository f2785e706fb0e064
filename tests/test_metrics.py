"""Metrics of the seed's equations (1)-(6) on hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from bastion.metrics import (
    accuracy,
    attack_success_rate,
    average_certified_radius,
    average_perturbation,
    certified_accuracy,
    certified_radius,
    robust_accuracy,
)
from bastion.records import Certificate, EvalResult


def _result() -> EvalResult:
    # 5 points: correct&robust, correct&flipped(0.05), correct&flipped(0.1), wrong, correct&robust
    return EvalResult(
        attack="pgd", norm="linf", eps=0.1,
        index=torch.arange(5),
        labels=torch.tensor([0, 1, 2, 3, 4]),
        clean_pred=torch.tensor([0, 1, 2, 0, 4]),
        adv_pred=torch.tensor([0, 2, 0, 0, 4]),
        perturbation=torch.tensor([0.1, 0.05, 0.1, 0.0, 0.08]),
    )


def test_attack_metrics_by_hand():
    r = _result()
    assert attack_success_rate(r) == pytest.approx(3 / 5)
    assert attack_success_rate(r, over="clean-correct") == pytest.approx(2 / 4)
    assert robust_accuracy(r) == pytest.approx(2 / 5)
    assert average_perturbation(r) == pytest.approx((0.05 + 0.1) / 2)
    assert average_perturbation(r, over="all") == pytest.approx((0.05 + 0.1 + 0.0) / 5)
    assert accuracy(r.clean_pred, r.labels) == pytest.approx(4 / 5)


def test_average_perturbation_nan_without_success_and_bad_over():
    r = _result()
    r2 = EvalResult(**{**r.__dict__, "adv_pred": r.clean_pred})
    assert math.isnan(average_perturbation(r2))
    with pytest.raises(ValueError, match="valid"):
        average_perturbation(r, over="some")  # type: ignore[arg-type]


def _cert() -> Certificate:
    return Certificate(
        prediction=torch.tensor([0, 1, 5, 3, 4]),
        radius=torch.tensor([0.5, 0.2, 0.9, 0.0, 0.0], dtype=torch.float64),
        abstained=torch.tensor([False, False, False, False, True]),
        norm="l2", method="test",
    )


def test_certified_metrics_by_hand():
    c, y = _cert(), torch.tensor([0, 1, 2, 3, 4])
    # point 2 is certified but wrong; point 4 abstains
    torch.testing.assert_close(certified_radius(c, y),
                               torch.tensor([0.5, 0.2, 0.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        certified_accuracy(c, y, [0.0, 0.2, 0.25, 0.5, 0.6]),
        torch.tensor([3 / 5, 2 / 5, 1 / 5, 1 / 5, 0.0], dtype=torch.float64),
    )
    assert average_certified_radius(c, y) == pytest.approx(0.7 / 5)


def test_certificate_validation_and_round_trip():
    c = _cert()
    back = Certificate.from_dict(c.to_dict())
    for f in ("prediction", "radius", "abstained"):
        assert torch.equal(getattr(back, f), getattr(c, f))
        assert getattr(back, f).dtype == getattr(c, f).dtype
    with pytest.raises(ValueError, match="abstaining example must have radius 0"):
        Certificate(prediction=torch.tensor([0]), radius=torch.tensor([0.3]),
                    abstained=torch.tensor([True]), norm="l2", method="x")
    with pytest.raises(ValueError, match="unknown norm"):
        Certificate(prediction=torch.tensor([0]), radius=torch.tensor([0.3]),
                    abstained=torch.tensor([False]), norm="l7", method="x")  # type: ignore
    with pytest.raises(ValueError, match="labels"):
        certified_accuracy(c, torch.tensor([0, 1]), [0.0])


def test_eval_result_round_trip():
    r = _result()
    back = EvalResult.from_dict(r.to_dict())
    assert back.attack == r.attack and back.eps == r.eps
    assert torch.equal(back.perturbation, r.perturbation)
    assert torch.equal(back.adv_pred, r.adv_pred)
