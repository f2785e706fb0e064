"""EvalResult / AttackOutcome: validation, worst case over attacks, curves, round trips."""

from __future__ import annotations

import doctest
import json
import math

import pytest
import torch

import bastion.records.evaluation
from bastion.records import AttackOutcome, EvalResult, load_record, save_record


def _t(v):
    return v if isinstance(v, torch.Tensor | list) else torch.tensor(v)


def _out(attack: str = "pgd", adv=(0, 0, 1), pert=(0.1, 0.1, 0.0), eps: float = 0.1,
         norm: str = "linf", **kw) -> AttackOutcome:
    """Default: 3 points, point 1 flipped, point 2 (wrong when clean) left alone."""
    return AttackOutcome(attack=attack, norm=norm, eps=eps,  # type: ignore[arg-type]
                         adv_pred=_t(adv), perturbation=_t(pert), **kw)


def _res(*outcomes: AttackOutcome, clean=(0, 1, 1), labels=(0, 1, 2)) -> EvalResult:
    return EvalResult(index=torch.arange(len(labels)), labels=torch.tensor(labels),
                      clean_pred=torch.tensor(clean), outcomes=outcomes)


def test_docstring_example_runs():
    assert doctest.testmod(bastion.records.evaluation, raise_on_error=True).attempted > 0


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"adv": [0, 1, 0]}, TypeError, "adv_pred must be a torch.Tensor"),
    ({"adv": torch.tensor([0.0, 1.0, 0.0])}, TypeError, "adv_pred must have dtype torch.int64"),
    ({"adv": torch.zeros(3, 1, dtype=torch.int64)}, ValueError, r"1-D of shape \[N\]"),
    ({"pert": torch.tensor([0.1, 0.1, 0.0], dtype=torch.float64)}, TypeError,
     "perturbation must have dtype torch.float32"),
    ({"pert": (0.1, 0.1)}, ValueError, "perturbation has 2 entries for 3 points"),
    ({"pert": (0.1, -0.01, 0.0)}, ValueError, "finite and >= 0"),
    ({"pert": (0.1, float("nan"), 0.0)}, ValueError, "finite and >= 0"),
    ({"pert": (0.1, 0.2, 0.0)}, ValueError, "a perturbation of 0.2 exceeds eps 0.1"),
    ({"eps": -0.1}, ValueError, "eps must be >= 0"),
    ({"eps": float("nan")}, ValueError, "eps must be >= 0"),
    ({"eps": "0.1"}, TypeError, "eps must be a number"),
    ({"norm": "l7"}, ValueError, "unknown norm 'l7'"),
    ({"attack": ""}, ValueError, "non-empty name"),
    ({"seconds": -1.0}, ValueError, "seconds must be a finite number >= 0"),
    ({"params": [1, 2]}, TypeError, "params must be a dict"),
])
def test_attack_outcome_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        _out(**kwargs)


def test_perturbation_at_eps_up_to_float32_rounding_is_accepted():
    # float32(0.1) = 0.100000001490116 > 0.1: the projection's rounding is tolerated
    o = _out(pert=(0.1, 0.1, 0.1))
    assert o.eps == 0.1 and isinstance(o.eps, float) and not o.minimal
    assert _out(eps=math.inf, pert=(5.0, 0.0, 0.0)).minimal
    with pytest.raises(ValueError, match="exceeds eps 0"):
        _out(eps=0, pert=(0.001, 0.0, 0.0))


def test_eval_result_validation():
    with pytest.raises(TypeError, match="labels must have dtype torch.int64"):
        EvalResult(index=torch.arange(3), labels=torch.tensor([0.0, 1.0, 2.0]),
                   clean_pred=torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="index has 2 entries for 3 points"):
        EvalResult(index=torch.arange(2), labels=torch.tensor([0, 1, 2]),
                   clean_pred=torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="clean_pred has 4 entries for 3 points"):
        EvalResult(index=torch.arange(3), labels=torch.tensor([0, 1, 2]),
                   clean_pred=torch.tensor([0, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"pgd \(linf, eps 0.1\) covers 2 points, not 3"):
        _res(_out(adv=(0, 1), pert=(0.1, 0.1)))
    with pytest.raises(TypeError, match="sequence of AttackOutcome"):
        EvalResult(index=torch.arange(3), labels=torch.tensor([0, 1, 2]),
                   clean_pred=torch.tensor([0, 1, 1]), outcomes=_out())  # type: ignore[arg-type]


def test_adversarial_correct_where_clean_is_wrong_is_refused():
    # point 2 is wrong when clean (pred 1, label 2) but "correct" after the attack
    with pytest.raises(ValueError, match="point 12 is correct after the attack but wrong "
                                         "when clean"):
        EvalResult(index=torch.tensor([10, 11, 12]), labels=torch.tensor([0, 1, 2]),
                   clean_pred=torch.tensor([0, 1, 1]),
                   outcomes=(_out(adv=(0, 1, 2)),))


@pytest.mark.parametrize(("adv", "pert"), [
    ((0, 0, 0), (0.1, 0.1, 0.0)),   # point 2 moved to another wrong class
    ((0, 0, 1), (0.1, 0.1, 0.05)),  # point 2 keeps its prediction but was perturbed
])
def test_a_clean_misclassified_point_must_not_be_attacked(adv, pert):
    # point 2: clean pred 1, label 2; its adversarial point must be the clean input
    with pytest.raises(ValueError, match="point 2 is misclassified when clean but was "
                                         "attacked"):
        _res(_out(adv=adv, pert=pert))
    assert _res(_out()).adv_correct().tolist() == [True, False, False]


def test_worst_case_over_two_attacks_by_hand():
    labels = (0, 1, 2, 3, 4)
    clean = (0, 1, 2, 3, 0)  # point 4 wrong when clean
    a = _out("pgd", adv=(1, 1, 2, 0, 0), pert=(0.1, 0.1, 0.1, 0.05, 0.0))  # breaks 0, 3
    b = _out("apgd", adv=(0, 0, 2, 0, 0), pert=(0.1, 0.1, 0.1, 0.1, 0.0))  # breaks 1, 3
    r = _res(a, b, clean=clean, labels=labels)
    assert r.adv_correct(attack="pgd").tolist() == [False, True, True, False, False]
    assert r.adv_correct(attack="apgd").tolist() == [True, False, True, False, False]
    # worst case: broken by either; only point 2 survives both
    assert r.adv_correct().tolist() == [False, False, True, False, False]
    assert r.adv_correct(0.1, norm="linf").tolist() == [False, False, True, False, False]
    # within 0.05 only PGD's example at point 3 counts
    assert r.adv_correct(0.05).tolist() == [True, True, True, False, False]
    assert r.adv_correct(0.0).tolist() == [True, True, True, True, False]
    assert r.clean_correct.tolist() == [True, True, True, True, False]
    # an outcome of another norm never enters the linf worst case
    l2 = _out("pgd", adv=(0, 1, 0, 3, 0), pert=(0.5, 0.5, 0.5, 0.5, 0.0), eps=0.5, norm="l2")
    r2 = r.with_outcome(l2)
    assert len(r2.outcomes) == 3 and len(r.outcomes) == 2
    assert r2.adv_correct(norm="linf").tolist() == r.adv_correct().tolist()
    assert r2.adv_correct(norm="l2").tolist() == [True, True, False, True, False]
    with pytest.raises(ValueError, match="several norms"):
        r2.adv_correct()
    with pytest.raises(ValueError, match="no outcome for attack='cw'"):
        r2.adv_correct(attack="cw")


def test_select_and_only():
    a = _out("pgd", adv=(0, 1, 1))
    b = _out("pgd", eps=0.2, pert=(0.2, 0.2, 0.0))
    r = _res(a, b)
    assert r.select(attack="pgd") == (a, b)
    assert r.only(eps=0.2) is b
    with pytest.raises(ValueError, match="2 outcomes match attack='pgd'"):
        r.only(attack="pgd")
    with pytest.raises(ValueError, match="pass eps"):
        r.adv_correct()
    assert r.adv_correct(0.1).tolist() == [True, True, False]
    assert r.adv_correct(0.2).tolist() == [True, False, False]


def test_robust_accuracy_curve_is_monotone_and_equals_hand_counts():
    g = torch.Generator().manual_seed(0)
    n = 200
    labels = torch.randint(0, 3, (n,), generator=g)
    clean = torch.where(torch.rand(n, generator=g) < 0.8, labels, (labels + 1) % 3)
    ok = clean == labels
    outs = []
    for name, eps in (("pgd", 0.1), ("pgd", 0.2), ("apgd", 0.2), ("fmn", math.inf)):
        top = 0.4 if math.isinf(eps) else eps
        pert = torch.where(ok, torch.rand(n, generator=g) * top, 0.0).float()
        flip = ok & (torch.rand(n, generator=g) < 0.5)
        adv = torch.where(flip, (labels + 2) % 3, clean)
        outs.append(AttackOutcome(attack=name, norm="linf", eps=eps, adv_pred=adv,
                                  perturbation=pert))
    r = EvalResult(index=torch.arange(n), labels=labels, clean_pred=clean, outcomes=tuple(outs))
    radii = [0.0, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, math.inf]
    curve = r.robust_accuracy_curve(radii)
    for eps, value in curve.items():
        count = 0
        for i in range(n):
            broken = any(int(o.adv_pred[i]) != int(labels[i])
                         and float(o.perturbation[i]) <= eps * (1 + 1e-5) + 1e-6
                         for o in outs)
            count += bool(ok[i]) and not broken
        assert value == count / n
    values = list(curve.values())
    assert values[0] == float(ok.double().mean())
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert values[0] > values[-1]
    assert list(r.robust_accuracy_curve(attack="pgd")) == [0.0, 0.1, 0.2]
    assert r.robust_accuracy_curve(radii, attack="apgd")[0.1] == pytest.approx(
        float(r.adv_correct(0.1, attack="apgd").double().mean()))
    with pytest.raises(ValueError, match="radius must be >= 0"):
        r.robust_accuracy_curve([-0.1])


def test_exact_round_trip(tmp_path):
    pert = torch.tensor([0.1, 1 / 3, 0.0], dtype=torch.float32)  # not exact in decimal
    a = _out("pgd", pert=pert, eps=0.5,
             params={"steps": 20, "step_size": 0.025, "objective": "ce"}, seconds=1.5)
    b = _out("fmn", adv=(2, 0, 1), pert=(0.3, 0.7, 0.0), eps=math.inf)
    assert len(a) == 3
    r = EvalResult(index=torch.tensor([7, 8, 9]), labels=torch.tensor([0, 1, 2]),
                   clean_pred=torch.tensor([0, 1, 1]), outcomes=(a, b),
                   params={"checkpoint": "runs/x/best", "n": 3})
    text = json.dumps(r.to_dict())
    for back in (EvalResult.from_dict(json.loads(text)), _saved(tmp_path, r)):
        for f in ("index", "labels", "clean_pred"):
            assert torch.equal(getattr(back, f), getattr(r, f))
            assert getattr(back, f).dtype == torch.int64
        assert back.params == r.params
        for o, p in zip(back.outcomes, r.outcomes, strict=True):
            assert (o.attack, o.norm, o.eps, o.params, o.seconds) == (
                p.attack, p.norm, p.eps, p.params, p.seconds)
            assert torch.equal(o.adv_pred, p.adv_pred)
            assert o.perturbation.dtype == torch.float32
            assert torch.equal(o.perturbation, p.perturbation)  # bit for bit
        assert back.to_dict() == r.to_dict()
        assert back == r
    assert AttackOutcome.from_dict(b.to_dict()).eps == math.inf
    assert AttackOutcome.from_dict(b.to_dict()) == b != a
    assert r != r.with_outcome(a) and r != r.to_dict()
    with pytest.raises(ValueError, match="expected a EvalResult record, got 'AttackOutcome'"):
        EvalResult.from_dict(a.to_dict())
    with pytest.raises(ValueError, match="unknown fields"):
        EvalResult.from_dict({**r.to_dict(), "attack": "pgd"})


def _saved(tmp_path, r: EvalResult) -> EvalResult:
    path = tmp_path / "eval" / "r.json"
    save_record(path, r)
    assert json.loads(path.read_text())["record"] == "EvalResult"
    return load_record(EvalResult, path)


# ------------------------------------------------------------------ concat

def _split(r: EvalResult, at: int) -> tuple[EvalResult, EvalResult]:
    """``r``'s first ``at`` points and the rest, with the seconds split 1:3."""
    def part(sl: slice, share: float) -> EvalResult:
        outs = tuple(AttackOutcome(attack=o.attack, norm=o.norm, eps=o.eps,
                                   adv_pred=o.adv_pred[sl], perturbation=o.perturbation[sl],
                                   params=o.params, seconds=o.seconds * share)
                     for o in r.outcomes)
        return EvalResult(index=r.index[sl], labels=r.labels[sl], clean_pred=r.clean_pred[sl],
                          outcomes=outs, params=r.params)
    return part(slice(0, at), 0.25), part(slice(at, None), 0.75)


def _two_attacks() -> EvalResult:
    a = _out(params={"steps": 10, "seed": 0}, seconds=2.0)
    b = _out(attack="fmn", eps=math.inf, pert=(0.3, 0.2, 0.0), seconds=4.0)
    return EvalResult(index=torch.tensor([7, 3, 5]), labels=torch.tensor([0, 1, 2]),
                      clean_pred=torch.tensor([0, 1, 1]), outcomes=(a, b), params={"n": 3})


@pytest.mark.parametrize("at", [1, 2])
def test_concat_of_the_pieces_is_the_whole(at):
    r = _two_attacks()
    joined = EvalResult.concat(_split(r, at))
    assert joined == r  # tensors, params and the summed seconds
    assert joined.index.tolist() == [7, 3, 5]
    assert [o.seconds for o in joined.outcomes] == [2.0, 4.0]
    assert EvalResult.concat([r]) == r
    # the order of the parts is the order of the points
    first, rest = _split(r, at)
    swapped = EvalResult.concat([rest, first])
    assert swapped.index.tolist() == [*rest.index.tolist(), *first.index.tolist()]
    assert swapped.only(attack="fmn").perturbation.tolist() == [
        *rest.only(attack="fmn").perturbation.tolist(),
        *first.only(attack="fmn").perturbation.tolist()]


def test_concat_of_records_without_outcomes():
    r = _res()
    joined = EvalResult.concat([r, r])
    assert joined.outcomes == () and joined.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_concat_refuses_parts_that_do_not_match():
    r = _two_attacks()
    first, rest = _split(r, 1)
    with pytest.raises(ValueError, match="at least one EvalResult"):
        EvalResult.concat([])
    with pytest.raises(TypeError, match="sequence of EvalResult"):
        EvalResult.concat(r)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="joins EvalResult objects"):
        EvalResult.concat([first, first.outcomes[0]])  # type: ignore[list-item]
    reordered = EvalResult(index=rest.index, labels=rest.labels, clean_pred=rest.clean_pred,
                           outcomes=rest.outcomes[::-1], params=rest.params)
    with pytest.raises(ValueError, match="same attacks in the same order"):
        EvalResult.concat([first, reordered])
    fewer = EvalResult(index=rest.index, labels=rest.labels, clean_pred=rest.clean_pred,
                       outcomes=rest.outcomes[:1], params=rest.params)
    with pytest.raises(ValueError, match="same attacks in the same order"):
        EvalResult.concat([first, fewer])
    o = rest.outcomes[0]
    other_seed = AttackOutcome(attack=o.attack, norm=o.norm, eps=o.eps, adv_pred=o.adv_pred,
                               perturbation=o.perturbation, params={**o.params, "seed": 1})
    with pytest.raises(ValueError, match="same attacks in the same order"):
        EvalResult.concat([first, EvalResult(
            index=rest.index, labels=rest.labels, clean_pred=rest.clean_pred,
            outcomes=(other_seed, rest.outcomes[1]), params=rest.params)])
    with pytest.raises(ValueError, match="has params"):
        EvalResult.concat([first, EvalResult(
            index=rest.index, labels=rest.labels, clean_pred=rest.clean_pred,
            outcomes=rest.outcomes, params={"n": 4})])
