"""bastion.checks: each check fires on its planted case and is silent on a plain model and
consistent records; model checks leave the model's mode and gradients as they were."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from bastion.checks import (
    CheckFinding,
    GradientMaskingWarning,
    check_black_box_beats_white_box,
    check_certified_vs_empirical,
    check_clean_accuracy,
    check_convergence,
    check_gradients,
    check_large_eps,
    check_monotone_in_eps,
    check_probabilities,
    check_randomized,
    run_checks,
)
from bastion.errors import InputError
from bastion.records import AttackOutcome, Certificate, EvalResult

N = 100


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


class _Sign(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x - 0.5)


class _NoGrad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 4, (8,), generator=g)


def _names(found: list[CheckFinding]) -> list[str]:
    return [f.name for f in found]


def _assert_untouched(model: nn.Module, training: bool) -> None:
    assert model.training is training
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------ model checks

def test_model_checks_are_silent_on_a_plain_mlp(batch) -> None:
    x, y = batch
    model = _mlp().train()
    assert check_randomized(model, x) == []
    assert check_gradients(model, x, y) == []
    assert check_probabilities(model, x) == []
    _assert_untouched(model, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_checks(model, x, y) == []


def test_dropout_kept_on_in_eval_is_randomized(batch) -> None:
    x, _ = batch

    class AlwaysDropout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.dropout(self.net(x), 0.5, training=True)

    model = AlwaysDropout().eval()
    state = torch.get_rng_state()
    found = check_randomized(model, x)
    assert _names(found) == ["randomized-outputs"]
    assert found[0].evidence["max_abs_diff"] > 0
    assert torch.equal(torch.get_rng_state(), state)
    _assert_untouched(model, False)
    # ordinary dropout in eval mode is deterministic: silent
    assert check_randomized(nn.Sequential(_mlp(), nn.Dropout(0.5)).train(), x) == []


@pytest.mark.parametrize("kind", ["sign", "no_grad"])
def test_zero_gradients_from_a_sign_step_or_no_grad(batch, kind) -> None:
    x, y = batch
    model = nn.Sequential(_Sign(), _mlp()) if kind == "sign" else _NoGrad()
    model.train()
    found = check_gradients(model, x, y)
    assert _names(found) == ["zero-gradients"]
    assert found[0].evidence["zero_fraction"] == 1.0
    _assert_untouched(model, True)


def test_round_step_gives_zero_gradients(batch) -> None:
    x, y = batch

    class Round(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.round(x * 4) / 4

    assert _names(check_gradients(nn.Sequential(Round(), _mlp()), x, y)) == ["zero-gradients"]


def test_nonfinite_and_vanishing_gradients(batch) -> None:
    x, y = batch

    class Sqrt(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sqrt(x - x.detach())  # value 0, gradient inf

    assert "nonfinite-gradients" in _names(check_gradients(nn.Sequential(Sqrt(), _mlp()), x, y))

    class Tiny(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 1e-12 + (x - x * 1e-12).detach()

    found = check_gradients(nn.Sequential(Tiny(), _mlp()), x, y)
    assert _names(found) == ["vanishing-gradients"]


def test_softmax_output_looks_like_probabilities(batch) -> None:
    x, _ = batch
    model = nn.Sequential(_mlp(), nn.Softmax(dim=1))
    found = check_probabilities(model, x)
    assert _names(found) == ["probability-outputs"]
    assert check_probabilities(nn.Sequential(_mlp(), nn.LogSoftmax(dim=1)), x) == []


# ----------------------------------------------------------------------------- record checks

def _out(attack: str, eps: float, broken: int, labels: torch.Tensor, clean: torch.Tensor,
         norm: str = "linf", start: int = 0, **params) -> AttackOutcome:
    """An outcome breaking the clean-correct points start .. start+broken-1 (wrapping)."""
    adv = clean.clone()
    correct = (clean == labels).nonzero().flatten().tolist()
    hit = [correct[(start + i) % len(correct)] for i in range(broken)]
    adv[hit] = (labels[hit] + 1) % 4
    pert = torch.zeros(len(labels))
    pert[hit] = float(eps)
    return AttackOutcome(attack=attack, norm=norm, eps=eps, adv_pred=adv, perturbation=pert,
                         params=params)


def _record(correct: int = 90, outcomes=()) -> EvalResult:
    labels = torch.arange(N) % 4
    clean = labels.clone()
    clean[correct:] = (labels[correct:] + 1) % 4
    outs = tuple(o(labels, clean) for o in outcomes)
    return EvalResult(index=torch.arange(N), labels=labels, clean_pred=clean, outcomes=outs)


def _o(attack: str, eps: float, broken: int, **kw):
    return lambda labels, clean: _out(attack, eps, broken, labels, clean, **kw)


@pytest.fixture
def consistent() -> EvalResult:
    """PGD and Square at three radii; Square never beats PGD; 0.5 breaks every point."""
    return _record(90, [
        _o("pgd", 0.1, 30), _o("pgd", 0.2, 60), _o("pgd", 0.5, 90),
        _o("square", 0.1, 20), _o("square", 0.2, 50),
        _o("pgd-200", 0.1, 30, steps=200),
    ])


def test_record_checks_are_silent_on_a_consistent_record(consistent) -> None:
    assert check_clean_accuracy(consistent, 10, expected=0.88) == []
    assert check_monotone_in_eps(consistent) == []
    assert check_large_eps(consistent, "linf", 0.5) == []
    assert check_black_box_beats_white_box(consistent) == []
    assert check_convergence(consistent, "pgd", "pgd-200", 0.1) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_checks(result=consistent, num_classes=10, eps_large=0.5,
                          large_norm="linf", weaker="pgd", stronger="pgd-200",
                          convergence_eps=0.1) == []


def test_near_chance_and_mismatched_clean_accuracy() -> None:
    r = _record(20)
    found = check_clean_accuracy(r, 10)
    assert _names(found) == ["clean-accuracy-near-chance"]
    assert found[0].evidence["clean_accuracy"] == pytest.approx(0.2)
    assert _names(check_clean_accuracy(_record(90), 10, expected=0.97)) == [
        "clean-accuracy-mismatch"]
    with pytest.raises(InputError):
        check_clean_accuracy(r, 1)


def test_robust_accuracy_rising_with_eps() -> None:
    r = _record(90, [_o("pgd", 0.1, 60), _o("pgd", 0.2, 30), _o("pgd", 0.3, 70)])
    found = check_monotone_in_eps(r, norm="linf")
    assert _names(found) == ["non-monotone-in-eps"]
    assert found[0].evidence["rise"] == pytest.approx(0.3)
    # one point's worth of noise is tolerated
    assert check_monotone_in_eps(_record(90, [_o("pgd", 0.1, 31), _o("pgd", 0.2, 30)])) == []


def test_large_eps_not_near_zero() -> None:
    r = _record(90, [_o("pgd", 0.1, 30), _o("pgd", 0.5, 40)])
    found = check_large_eps(r, "linf", 0.5)
    assert _names(found) == ["large-eps-not-broken"]
    assert found[0].evidence["robust_accuracy"] == pytest.approx(0.5)
    with pytest.raises(InputError, match="large radius"):
        check_large_eps(r, "linf", 0.8)


def test_black_box_breaking_more_than_white_box() -> None:
    # square breaks points 30..49 of the clean-correct ones that pgd (0..29) left robust
    r = _record(90, [_o("pgd", 0.1, 30), _o("square", 0.1, 20, start=30)])
    found = check_black_box_beats_white_box(r, black_box=("square",), eps=0.1)
    assert _names(found) == ["black-box-beats-white-box"]
    assert found[0].evidence["extra_broken"] == 20
    # one extra point of 100 is within the 1% tolerance
    r1 = _record(90, [_o("pgd", 0.1, 30), _o("square", 0.1, 1, start=30)])
    assert check_black_box_beats_white_box(r1) == []


def test_weak_attack_that_did_not_converge() -> None:
    r = _record(90, [_o("pgd", 0.1, 30, steps=10), _o("pgd-200", 0.1, 45, steps=200)])
    found = check_convergence(r, "pgd", "pgd-200", 0.1)
    assert _names(found) == ["attack-not-converged"]
    assert found[0].evidence["weaker_robust_accuracy"] == pytest.approx(0.6)
    by_steps = check_convergence(r, lambda o: o.params["steps"] == 10,
                                 lambda o: o.params["steps"] == 200, 0.1)
    assert _names(by_steps) == ["attack-not-converged"]
    with pytest.raises(InputError):
        check_convergence(r, "fgsm", "pgd", 0.1)


def _cert(r: EvalResult, certified: int, radius: float) -> Certificate:
    correct = r.clean_correct.nonzero().flatten()[:certified]
    rad = torch.zeros(N, dtype=torch.float64)
    rad[correct] = radius
    return Certificate(prediction=r.clean_pred.clone(), radius=rad,
                       abstained=torch.zeros(N, dtype=torch.bool), norm="linf",
                       method="planted", labels=r.labels, index=r.index)


def test_certificate_above_empirical_accuracy() -> None:
    r = _record(90, [_o("pgd", 0.1, 30)])  # empirical robust accuracy 0.6 at 0.1
    found = check_certified_vs_empirical(_cert(r, 80, 0.2), r, [0.1])
    assert _names(found) == ["certified-above-empirical"]
    assert found[0].evidence["certified_accuracy"] == pytest.approx(0.8)
    assert found[0].evidence["contradicting_points"] == 30
    assert check_certified_vs_empirical(_cert(r, 50, 0.2), r, [0.0, 0.1]) == []
    # a radius no outcome reaches is skipped
    assert check_certified_vs_empirical(_cert(r, 80, 0.5), r, [0.3]) == []


# ----------------------------------------------------------------------------- run_checks

def test_run_checks_warns_once_per_finding(batch) -> None:
    x, y = batch
    model = nn.Sequential(_Sign(), _mlp(), nn.Softmax(dim=1))
    r = _record(20, [_o("pgd", 0.1, 10), _o("square", 0.1, 5, start=10)])
    with pytest.warns(GradientMaskingWarning) as rec:
        found = run_checks(model, x, y, result=r, num_classes=10)
    names = _names(found)
    assert names == ["probability-outputs", "zero-gradients", "clean-accuracy-near-chance",
                     "black-box-beats-white-box"]
    masking = [w for w in rec if issubclass(w.category, GradientMaskingWarning)]
    assert len(masking) == len(found)
    assert [w.message.finding for w in masking] == found
    assert all(w.message.args[0].startswith(f.name) for w, f in zip(masking, found, strict=True))
    assert run_checks(model, x, y, warn=False) == found[:2]


def test_findings_are_json_safe() -> None:
    f = CheckFinding("x", "m", {"a": torch.tensor([1.0, 2.0]), "b": float("inf"), "c": (1, 2)})
    d = json.loads(json.dumps(f.to_dict(), allow_nan=False))
    assert d["evidence"] == {"a": [1.0, 2.0], "b": "inf", "c": [1, 2]}
    assert CheckFinding.from_dict(d) == f
    with pytest.raises(TypeError):
        CheckFinding("x", "m", {"a": object()})
