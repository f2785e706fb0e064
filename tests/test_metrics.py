"""Metrics of the seed's equations (1)-(6), one definition each, on hand-computed records.

Perturbations are dyadic fractions (exact in float32), so most expected values are exact.
"""

from __future__ import annotations

import math

import pytest
import torch

from bastion.metrics import (
    accuracy,
    attack_success_rate,
    average_certified_radius,
    average_perturbation,
    average_perturbation_of_successes,
    certified_accuracy,
    certified_radius,
    robust_accuracy,
)
from bastion.records import AttackOutcome, Certificate, EvalResult

LABELS = torch.tensor([0, 1, 2, 3, 4, 5])
CLEAN = torch.tensor([0, 1, 2, 0, 4, 5])  # point 3 is misclassified when clean


def _outcome(attack: str, adv: list[int], pert: list[float], eps: float = 0.125,
             norm: str = "linf") -> AttackOutcome:
    return AttackOutcome(attack=attack, norm=norm, eps=eps,  # type: ignore[arg-type]
                         adv_pred=torch.tensor(adv), perturbation=torch.tensor(pert))


# Six points. 0: robust to both bounded attacks, FMN flips it at 0.375. 1: PGD flips it at
# 0.0625, FMN at 0.03125. 2: PGD, APGD and FMN flip it at 0.125. 3: misclassified when
# clean, not attacked. 4: unbroken by every attack. 5: only APGD (at 0.125) and FMN (0.25).
PGD = _outcome("pgd", [0, 2, 0, 0, 4, 5], [0.125, 0.0625, 0.125, 0.0, 0.09375, 0.125])
APGD = _outcome("apgd", [0, 1, 0, 0, 4, 0], [0.125, 0.125, 0.125, 0.0, 0.125, 0.125])
FMN = _outcome("fmn", [1, 2, 0, 0, 4, 1], [0.375, 0.03125, 0.125, 0.0, 0.0, 0.25], math.inf)


def _result(*outcomes: AttackOutcome) -> EvalResult:
    return EvalResult(index=torch.arange(6), labels=LABELS, clean_pred=CLEAN,
                      outcomes=outcomes or (PGD, APGD, FMN))


def test_accuracy():
    assert accuracy(CLEAN, LABELS) == 5 / 6
    with pytest.raises(ValueError, match="shape mismatch"):
        accuracy(CLEAN, LABELS[:3])


def test_attack_success_rate_and_robust_accuracy_of_one_attack():
    r = _result()
    # PGD: fooled = flipped {1, 2} + clean-wrong {3}
    assert attack_success_rate(r, attack="pgd") == 3 / 6
    assert attack_success_rate(r, "clean-correct", attack="pgd") == 2 / 5
    assert robust_accuracy(r, attack="pgd") == 3 / 6
    # APGD: flipped {2, 5}
    assert robust_accuracy(r, attack="apgd") == 3 / 6
    # a smaller radius counts only PGD's examples within it: point 1 at 0.0625
    assert robust_accuracy(r, attack="pgd", eps=0.0625) == 4 / 6
    # FMN alone: eps=None is inf for a minimal-only selection; only point 4 survives
    assert robust_accuracy(r, attack="fmn") == 1 / 6
    assert robust_accuracy(r, attack="fmn", eps=0.25) == 2 / 6  # points 0 and 4


def test_worst_case_over_attacks_by_hand():
    r = _result()
    # all linf outcomes at their one finite radius 0.125: broken {1 (PGD, FMN), 2 (all),
    # 5 (APGD)} and clean-wrong {3}; FMN's 0.375 and 0.25 lie outside the ball
    assert r.adv_correct().tolist() == [True, False, False, False, True, False]
    assert robust_accuracy(r) == 2 / 6
    assert attack_success_rate(r) == 4 / 6
    assert attack_success_rate(r, "clean-correct") == 3 / 5
    # the two bounded attacks without FMN give the same set here
    both = _result(PGD, APGD)
    assert robust_accuracy(both) == 2 / 6
    for res in (r, both):
        for eps in (0.0, 0.0625, 0.125, 0.5):
            ra = robust_accuracy(res, eps=eps)
            assert ra + attack_success_rate(res, eps=eps) == pytest.approx(1.0)
            assert ra <= accuracy(res.clean_pred, res.labels)


def test_robust_accuracy_curve_by_hand():
    r = _result()
    assert r.robust_accuracy_curve() == {0.0: 5 / 6, 0.125: 2 / 6}
    radii = [0.0, 0.03125, 0.0625, 0.125, 0.25, 0.375, math.inf]
    curve = r.robust_accuracy_curve(radii)
    # 0: clean accuracy; 0.03125: FMN breaks 1; 0.0625: PGD too; 0.125: + 2, 5;
    # 0.25: FMN on 5 (already broken); 0.375: FMN breaks 0; inf: only 4 is left
    assert list(curve.values()) == [5 / 6, 4 / 6, 4 / 6, 2 / 6, 2 / 6, 1 / 6, 1 / 6]
    assert list(curve) == radii
    values = list(curve.values())
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_average_perturbation_two_definitions_by_hand():
    r = _result()
    # eq. (3) over all 6 points: unbroken 0 and 4, clean-wrong 3 count 0
    assert average_perturbation(r, attack="pgd") == (0.0625 + 0.125) / 6
    assert average_perturbation(r, attack="apgd") == (0.125 + 0.125) / 6
    assert average_perturbation(r, attack="fmn") == (0.375 + 0.03125 + 0.125 + 0.25) / 6
    # of successes: over the flipped points only (2 for PGD, 4 for FMN)
    assert average_perturbation_of_successes(r, attack="pgd") == (0.0625 + 0.125) / 2
    assert average_perturbation_of_successes(r, attack="fmn") == 0.78125 / 4
    # neither is the removed MinimalResult.mean_norm (clean-wrong point 3 a success at 0)
    assert average_perturbation_of_successes(r, attack="fmn") != 0.78125 / 5
    # unbroken points do not enter the of-successes mean even with a perturbation > 0
    only4 = _result(_outcome("pgd", [0, 1, 2, 0, 4, 5], [0.0] * 4 + [0.125, 0.0]))
    assert average_perturbation(only4) == 0.0
    assert math.isnan(average_perturbation_of_successes(only4))


def test_average_perturbation_needs_one_outcome():
    r = _result()
    with pytest.raises(ValueError, match="3 outcomes match"):
        average_perturbation(r)
    with pytest.raises(ValueError, match="0 outcomes match"):
        average_perturbation_of_successes(r, attack="cw")
    l2 = _outcome("pgd", [0, 1, 0, 0, 4, 5], [0.5, 0.5, 0.25, 0.0, 0.5, 0.5], 0.5, "l2")
    two = _result(PGD, l2)
    with pytest.raises(ValueError, match="2 outcomes match"):
        average_perturbation(two, attack="pgd")
    assert average_perturbation(two, attack="pgd", norm="l2") == 0.25 / 6
    assert average_perturbation(two, attack="pgd", eps=0.125) == 0.1875 / 6
    with pytest.raises(ValueError, match="several norms"):
        robust_accuracy(two)
    assert robust_accuracy(two, norm="l2") == 4 / 6


def test_rates_reject_bad_arguments():
    r = _result()
    with pytest.raises(ValueError, match="valid"):
        attack_success_rate(r, over="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass eps"):
        robust_accuracy(_result(PGD, _outcome("pgd", [0, 1, 0, 0, 4, 5], [0.25] * 3 + [0.0]
                                              + [0.25] * 2, 0.25)))
    with pytest.raises(ValueError, match=">= 0"):
        robust_accuracy(r, eps=-0.1)
    all_wrong = EvalResult(index=torch.arange(2), labels=torch.tensor([0, 1]),
                           clean_pred=torch.tensor([1, 0]),
                           outcomes=(_outcome("pgd", [1, 0], [0.0, 0.0]),))
    with pytest.raises(ValueError, match="no point is classified correctly"):
        attack_success_rate(all_wrong, "clean-correct")
    assert attack_success_rate(all_wrong) == 1.0


def _cert(**kw) -> Certificate:
    # 0, 1: certified correct (0.5, 0.25); 2: certified wrong; 3: correct at radius 0;
    # 4: abstained; 5: certified wrong with the largest radius
    return Certificate(
        prediction=torch.tensor([0, 1, 5, 3, 4, 2]),
        radius=torch.tensor([0.5, 0.25, 0.75, 0.0, 0.0, 1.0], dtype=torch.float64),
        abstained=torch.tensor([False, False, False, False, True, False]),
        norm="l2", method="test", **kw,
    )


def test_certified_metrics_by_hand():
    c = _cert()
    expected_cr = torch.tensor([0.5, 0.25, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert torch.equal(certified_radius(c, LABELS), expected_cr)
    acc = certified_accuracy(c, LABELS, [0.0, 0.25, 0.3, 0.5, 0.6])
    assert acc.dtype == torch.float64
    assert acc.tolist() == [3 / 6, 2 / 6, 1 / 6, 1 / 6, 0.0]
    assert average_certified_radius(c, LABELS) == 0.75 / 6


def test_certified_metrics_use_the_certificates_labels():
    c = _cert(labels=LABELS)
    assert torch.equal(certified_radius(c), certified_radius(c, LABELS))
    assert certified_accuracy(c, None, [0.0]).tolist() == [3 / 6]
    assert average_certified_radius(c) == 0.75 / 6
    # explicit labels win: with point 5 labelled 2 it becomes certified correct at 1.0
    other = torch.tensor([0, 1, 2, 3, 4, 2])
    assert average_certified_radius(c, other) == 1.75 / 6
    with pytest.raises(ValueError, match="carries no labels"):
        average_certified_radius(_cert())


def test_certified_metrics_reject_bad_arguments():
    c = _cert()
    with pytest.raises(ValueError, match="2 labels for a certificate of 6"):
        certified_accuracy(c, torch.tensor([0, 1]), [0.0])
    with pytest.raises(TypeError, match="int64"):
        certified_radius(c, LABELS.float())
    with pytest.raises(ValueError, match="radii must be >= 0"):
        certified_accuracy(c, LABELS, [-0.5])


def test_l0_certified_accuracy_counts_elements():
    c = Certificate(prediction=torch.tensor([0, 1, 1]),
                    radius=torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64),
                    abstained=torch.tensor([False, False, False]), norm="l0", method="ablation",
                    labels=torch.tensor([0, 1, 0]))
    assert certified_accuracy(c, None, [0, 1, 2, 3, 4]).tolist() == [2 / 3, 2 / 3, 1 / 3,
                                                                      1 / 3, 0.0]
    assert average_certified_radius(c) == 4 / 3
