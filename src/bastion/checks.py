"""Gradient-masking and evaluation checks: signs that a robustness number cannot be trusted.

Each check looks for one symptom the literature lists of an evaluation fooled by gradient
masking or by a mistake in the pipeline, and returns a list of ``CheckFinding`` (empty when
it sees nothing). The checks follow

- Athalye, Carlini and Wagner, "Obfuscated Gradients Give a False Sense of Security"
  (ICML 2018, arXiv 1802.00420): randomized defenses (EOT needed), shattered gradients
  from non-differentiable preprocessing (BPDA needed), vanishing gradients;
- Carlini et al., "On Evaluating Adversarial Robustness" (2019, arXiv 1902.06705),
  section 5's checklist: accuracy must fall as epsilon grows and reach ~0 at a large
  epsilon, black-box attacks must not beat white-box ones, more iterations must not keep
  helping, outputs must be logits and not probabilities, clean accuracy must be right;
- Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of
  diverse parameter-free attacks" (ICML 2020, arXiv 2003.01690): Square (black-box)
  beating the white-box attacks and zero CE gradients as flags of gradient masking.

A certified accuracy above the empirical robust accuracy at the same radius is a
contradiction (an unsound certificate or a weak attack); it is checked too.

Model checks (``check_randomized``, ``check_gradients``, ``check_probabilities``) call the
model in eval mode and restore every sub-module's mode afterwards; they differentiate with
``torch.autograd.grad`` with respect to the input only, so no parameter gradient is left
behind. Record checks read ``EvalResult`` / ``Certificate`` records only. ``run_checks``
runs the applicable ones and emits each finding once as a ``GradientMaskingWarning``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion._torch import model_mode
from bastion._validate import check_labels
from bastion.errors import InputError, InputTypeError
from bastion.metrics import certified_accuracy
from bastion.preprocess import preprocessor_of
from bastion.records import AttackOutcome, Certificate, EvalResult

log = logging.getLogger(__name__)

_SLACK = 1e-9  # rates are ratios of counts; keep "exactly at the tolerance" silent

__all__ = [
    "CheckFinding",
    "GradientMaskingWarning",
    "check_black_box_beats_white_box",
    "check_certified_vs_empirical",
    "check_clean_accuracy",
    "check_convergence",
    "check_gradients",
    "check_large_eps",
    "check_monotone_in_eps",
    "check_probabilities",
    "check_randomized",
    "run_checks",
]


class GradientMaskingWarning(UserWarning):
    """A check found a sign of gradient masking or of a broken evaluation.

    ``run_checks`` emits one per finding; the finding itself is in ``.finding``.
    """

    finding: CheckFinding | None = None


def _json_safe(v: Any) -> Any:
    """``v`` as plain JSON: numbers, strings, bools, None, lists and str-keyed dicts;
    non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().tolist()
        return _json_safe(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    raise InputTypeError(f"check evidence must be JSON-safe, got {type(v).__name__}")


@dataclass(frozen=True)
class CheckFinding:
    """One symptom a check found.

    Args:
        name: the check's stable name (``"randomized-outputs"``, ``"zero-gradients"``, ...).
        message: one or two sentences for a person: what was seen and what to do.
        evidence: the numbers behind it, JSON-safe (converted on construction).
    """

    name: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError("CheckFinding.name must be a non-empty string")
        if not isinstance(self.evidence, Mapping):
            raise InputTypeError("CheckFinding.evidence must be a dict")
        object.__setattr__(self, "evidence", _json_safe(self.evidence))

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "message", "evidence"}``, JSON-safe."""
        return {"name": self.name, "message": self.message, "evidence": dict(self.evidence)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckFinding:
        return cls(name=data["name"], message=data["message"],
                   evidence=dict(data.get("evidence", {})))


# --------------------------------------------------------------------------- model checks

def _check_input(x: Any) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputTypeError("x must be a floating-point torch.Tensor batch")
    if x.dim() < 1 or x.shape[0] == 0:
        raise InputError(f"x must be a non-empty batch, got shape {tuple(x.shape)}")


def _logits_2d(out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"the model must return a [N, classes] tensor, got {got}")
    return out


def _fork_rng(x: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """Save and restore the random state of the CPU and of ``x``'s accelerator, if any."""
    if x.device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[x.device.index or 0], device_type=x.device.type)


def check_randomized(model: nn.Module, x: torch.Tensor, *, rtol: float = 1e-5,
                     atol: float = 1e-6) -> list[CheckFinding]:
    """Two identical eval-mode calls that return different outputs: a randomized defense.

    A gradient-based attack on a randomized model follows one random draw's gradient, so
    its robust accuracy overstates the defense; attack the expectation over the
    randomness instead (EOT, Athalye, Carlini and Wagner 2018, arXiv 1802.00420, sec. 4.3;
    Carlini et al. 2019, arXiv 1902.06705). The caller's random stream is left untouched.
    """
    _check_input(x)
    with model_mode(model, False), torch.no_grad(), _fork_rng(x):
        a = _logits_2d(model(x)).detach().float()
        b = _logits_2d(model(x)).detach().float()
    if a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
        return []
    diff = (a - b).abs()
    rows = (~torch.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)).any(dim=1)
    return [CheckFinding(
        "randomized-outputs",
        "two identical eval-mode calls returned different outputs: the defense is "
        "randomized; attack it with EOT (expectation over transformation) and report the "
        "expected prediction",
        {"max_abs_diff": float(diff.max()), "fraction_rows_differing":
         float(rows.double().mean()), "points": int(x.shape[0])},
    )]


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                    vanishing: float = 1e-8, max_zero_fraction: float = 0.1
                    ) -> list[CheckFinding]:
    """Zero, NaN/inf or vanishing input gradients of the cross-entropy loss.

    Shattered gradients (a sign, rounding or quantisation step, ``torch.no_grad`` or a
    non-differentiable preprocessor inside ``forward``) give zero or useless gradients;
    saturated softmax gives vanishing ones. Either way a gradient attack fails for the
    wrong reason: use BPDA or a black-box attack (Athalye, Carlini and Wagner 2018,
    arXiv 1802.00420, sec. 4; Croce and Hein 2020, arXiv 2003.01690, sec. 3).

    Fires "zero-gradients" when more than ``max_zero_fraction`` of the points have an
    all-zero input gradient (or the output has no gradient path to the input at all),
    "nonfinite-gradients" on any NaN or inf, and "vanishing-gradients" when the median
    per-example L1 norm is below ``vanishing``.
    """
    _check_input(x)
    check_labels(y, x.shape[0])
    xx = x.detach().clone().requires_grad_(True)
    with model_mode(model, False), torch.enable_grad():
        out = _logits_2d(model(xx))
        if not out.requires_grad:
            return [CheckFinding(
                "zero-gradients",
                "the model's output has no gradient path to its input (torch.no_grad, "
                ".detach() or a non-differentiable step in forward): gradient attacks "
                "cannot work; use BPDA or a black-box attack",
                {"graph": False, "zero_fraction": 1.0, "points": int(x.shape[0])},
            )]
        loss = F.cross_entropy(out.float(), y.to(out.device), reduction="sum")
        (g,) = torch.autograd.grad(loss, xx, allow_unused=True)
    n = x.shape[0]
    if g is None:
        g = torch.zeros_like(xx)
    g = g.detach().reshape(n, -1).double()
    findings = []
    finite = torch.isfinite(g).all(dim=1)
    if not finite.all():
        findings.append(CheckFinding(
            "nonfinite-gradients",
            "input gradients of the cross-entropy loss contain NaN or inf: attacks that "
            "follow them are meaningless; fix the numerics or use a black-box attack",
            {"nonfinite_fraction": float((~finite).double().mean()), "points": n},
        ))
    zero = (g == 0).all(dim=1)
    zf = float(zero.double().mean())
    if zf > max_zero_fraction + _SLACK:
        findings.append(CheckFinding(
            "zero-gradients",
            f"{zf:.0%} of the points have an all-zero input gradient (shattered gradients: "
            "a non-differentiable step, or a saturated softmax): gradient attacks stall; "
            "use BPDA, a margin loss (DLR) or a black-box attack",
            {"graph": True, "zero_fraction": zf, "points": n},
        ))
    l1 = g[finite].abs().sum(dim=1)
    if l1.numel() and zf <= max_zero_fraction + _SLACK:
        med = float(l1.median())
        if med < vanishing:
            findings.append(CheckFinding(
                "vanishing-gradients",
                f"the median per-example L1 norm of the input gradient is {med:.3g} "
                f"(below {vanishing:g}): gradients vanish and gradient attacks stall; use "
                "a margin loss (DLR), BPDA or a black-box attack",
                {"median_l1": med, "threshold": vanishing, "points": n},
            ))
    return findings


def check_declarations(model: nn.Module, findings: Sequence[CheckFinding]
                       ) -> list[CheckFinding]:
    """A pre-processing defense whose behaviour contradicts what it declares.

    The evaluation picks EOT for a defense declared ``randomized`` and BPDA for one declared
    not ``differentiable`` (``attacks.eot.adaptive_attack_for``); a defense that is random
    but says it is not, or blocks gradients but says it does not, would be evaluated with
    the plain attack it fools. Fires "undeclared-randomness" when ``check_randomized``
    found random outputs behind a defense declared deterministic, and
    "undeclared-gradient-masking" when ``check_gradients`` found zero gradients behind a
    defense declared differentiable. ``findings`` are the model checks' findings on
    ``model``; a model that is not a ``Defended`` gets none.
    """
    pre = preprocessor_of(model)
    if pre is None:
        return []
    names = {f.name for f in findings}
    out = []
    cls = type(pre).__name__
    if "randomized-outputs" in names and not pre.randomized:
        out.append(CheckFinding(
            "undeclared-randomness",
            f"{cls} declares randomized = False but two identical calls differ: the "
            "benchmark would not attack it with EOT; fix the declaration",
            {"defense": cls}))
    if "zero-gradients" in names and pre.differentiable:
        out.append(CheckFinding(
            "undeclared-gradient-masking",
            f"{cls} declares differentiable = True but the input gradients are zero: the "
            "benchmark would not attack it with BPDA; fix the declaration",
            {"defense": cls}))
    return out


def check_probabilities(model: nn.Module, x: torch.Tensor, *, atol: float = 1e-4
                        ) -> list[CheckFinding]:
    """Outputs that look like probabilities (in [0, 1], rows summing to 1) not logits.

    Cross-entropy on softmax outputs applies softmax twice, which flattens the loss and
    masks its gradients (Carlini et al. 2019, arXiv 1902.06705, sec. 5; Carlini and Wagner
    2017's note on attacking logits). Remove the final softmax from the model.
    """
    _check_input(x)
    with model_mode(model, False), torch.no_grad():
        out = _logits_2d(model(x)).detach().double()
    if not torch.isfinite(out).all():
        return []
    in_range = bool(((out >= 0) & (out <= 1)).all())
    dev = float((out.sum(dim=1) - 1).abs().max())
    if not (in_range and dev <= atol):
        return []
    return [CheckFinding(
        "probability-outputs",
        "the model's outputs lie in [0, 1] and sum to 1 per row: it returns probabilities, "
        "not logits; cross-entropy then double-applies softmax and masks gradients",
        {"max_row_sum_deviation": dev, "min": float(out.min()), "max": float(out.max()),
         "points": int(x.shape[0])},
    )]


# -------------------------------------------------------------------------- record checks

def _check_result(result: Any) -> None:
    if not isinstance(result, EvalResult):
        raise InputTypeError(f"result must be an EvalResult, got {type(result).__name__}")
    if len(result) == 0:
        raise InputError("the record holds no points")


def _fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        0 <= value <= 1
    ):
        raise InputError(f"{name} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def _robust(result: EvalResult, outs: Sequence[AttackOutcome]) -> torch.Tensor:
    """bool [N]: correct when clean and not broken by any of ``outs`` (each in full)."""
    broken = torch.zeros(len(result), dtype=torch.bool)
    for o in outs:
        broken |= o.adv_pred != result.labels
    return result.clean_correct & ~broken


def _norms(result: EvalResult, norm: str | None) -> list[str]:
    have = sorted({o.norm for o in result.outcomes})
    if norm is None:
        return have
    if norm not in have:
        raise InputError(f"no outcome of norm {norm!r}; the record has norms {have}")
    return [norm]


def check_clean_accuracy(result: EvalResult, num_classes: int, expected: float | None = None,
                         *, chance_margin: float = 1.5, tolerance: float = 0.05
                         ) -> list[CheckFinding]:
    """Clean accuracy near chance, or far from the value the run itself recorded.

    Near chance (within ``chance_margin / num_classes`` of ``1 / num_classes``) usually
    means a pipeline bug -- normalisation applied twice, inputs in 0-255 instead of [0, 1],
    the wrong checkpoint -- which makes every robust number meaningless. ``expected``
    (a fraction, e.g. the run's own recorded test accuracy) fires when the record differs
    from it by more than ``tolerance`` (5 points). Carlini et al. 2019 (arXiv 1902.06705),
    sec. 5: "report clean accuracy".
    """
    _check_result(result)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise InputError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    acc = float(result.clean_correct.double().mean())
    chance = 1.0 / num_classes
    findings = []
    if abs(acc - chance) <= chance_margin / num_classes + _SLACK:
        findings.append(CheckFinding(
            "clean-accuracy-near-chance",
            f"clean accuracy {acc:.1%} is near chance ({chance:.1%} for {num_classes} "
            "classes): check the input range ([0, 1]), double normalisation and the "
            "checkpoint before reading any robust accuracy",
            {"clean_accuracy": acc, "chance": chance, "num_classes": num_classes,
             "points": len(result)},
        ))
    if expected is not None:
        exp = _fraction(expected, "expected")
        if abs(acc - exp) > tolerance + _SLACK:
            findings.append(CheckFinding(
                "clean-accuracy-mismatch",
                f"clean accuracy {acc:.1%} differs from the expected {exp:.1%} by more than "
                f"{tolerance * 100:g} points: the evaluation does not see the model the "
                "run trained (input range, normalisation, checkpoint or data split)",
                {"clean_accuracy": acc, "expected": exp, "tolerance": tolerance,
                 "points": len(result)},
            ))
    return findings


def check_monotone_in_eps(result: EvalResult, norm: str | None = None, *,
                          attack: str | None = None, tolerance: float | None = None
                          ) -> list[CheckFinding]:
    """Robust accuracy that rises as epsilon grows.

    Each attack's own accuracy at each finite radius (only its outcomes at that radius,
    not the record's cumulative worst case, which is non-increasing by construction) must
    not rise with epsilon: a larger ball contains the smaller one, so an attack that does
    better at a small radius than at a larger one is failing (Carlini et al. 2019, arXiv
    1902.06705, sec. 5.3). Checked per attack name and, when there are several, for the
    worst case over attacks at each radius. ``tolerance`` defaults to one point's worth
    (1/N); ``norm=None`` checks every norm of the record.
    """
    _check_result(result)
    tol = 1.0 / len(result) if tolerance is None else float(tolerance)
    findings = []
    for nm in _norms(result, norm):
        outs = [o for o in result.select(norm=nm, attack=attack) if math.isfinite(o.eps)]
        names = sorted({o.attack for o in outs})
        groups: list[tuple[str, list[AttackOutcome]]] = [
            (a, [o for o in outs if o.attack == a]) for a in names
        ]
        if len(names) > 1:
            groups.append(("worst case over attacks", outs))
        for label, group in groups:
            radii = sorted({o.eps for o in group})
            if len(radii) < 2:
                continue
            curve = {r: float(_robust(result, [o for o in group if o.eps == r])
                              .double().mean()) for r in radii}
            worst_rise, at = 0.0, None
            low = curve[radii[0]]
            low_at = radii[0]
            for r in radii[1:]:
                rise = curve[r] - low
                if rise > worst_rise:
                    worst_rise, at = rise, (low_at, r)
                if curve[r] < low:
                    low, low_at = curve[r], r
            if at is not None and worst_rise > tol + _SLACK:
                findings.append(CheckFinding(
                    "non-monotone-in-eps",
                    f"{label} ({nm}): robust accuracy rises from {curve[at[0]]:.1%} at eps "
                    f"{at[0]:g} to {curve[at[1]]:.1%} at eps {at[1]:g}; a larger radius "
                    "must not help the model, so the attack is not converging (gradient "
                    "masking or too few steps)",
                    {"attack": label, "norm": nm, "curve": [[r, curve[r]] for r in radii],
                     "rise": worst_rise, "tolerance": tol},
                ))
    return findings


def check_large_eps(result: EvalResult, norm: str, eps_large: float, *,
                    threshold: float = 0.05) -> list[CheckFinding]:
    """Robust accuracy at a large epsilon (e.g. 0.5 L-inf) that is not near 0.

    At a radius large enough to turn any image into any other, an unbounded attack must
    reach ~0% accuracy; more than ``threshold`` (5%) means the attack is blocked by
    masked gradients (Carlini et al. 2019, arXiv 1902.06705, sec. 5.3; Athalye, Carlini
    and Wagner 2018, arXiv 1802.00420). The record must hold an outcome of ``norm`` at a
    radius of at least ``eps_large`` (or a minimal-perturbation one).
    """
    _check_result(result)
    _norms(result, norm)
    if isinstance(eps_large, bool) or not isinstance(eps_large, int | float) or not (
        0 < eps_large < math.inf
    ):
        raise InputError(f"eps_large must be a finite number > 0, got {eps_large!r}")
    reach = [o for o in result.select(norm=norm) if o.eps >= eps_large]
    if not reach:
        have = sorted({o.eps for o in result.select(norm=norm)})
        raise InputError(f"no {norm} outcome at a radius >= {eps_large:g} (the record has "
                         f"{have}); run an attack at the large radius first")
    ra = float(result.adv_correct(float(eps_large), norm=norm).double().mean())
    if ra <= threshold + _SLACK:
        return []
    return [CheckFinding(
        "large-eps-not-broken",
        f"robust accuracy at the large radius {eps_large:g} ({norm}) is {ra:.1%}, not near "
        "0: the attack is blocked (gradient masking) rather than the model robust",
        {"norm": norm, "eps": float(eps_large), "robust_accuracy": ra,
         "threshold": threshold, "attacks": sorted({o.attack for o in reach})},
    )]


def check_black_box_beats_white_box(
    result: EvalResult, black_box: Sequence[str] = ("square",), eps: float | None = None,
    *, norm: str | None = None, tolerance: float = 0.01,
) -> list[CheckFinding]:
    """A black-box or transfer attack breaking points every white-box attack left robust.

    A query-based or transfer attack knows less than a gradient attack; when it succeeds
    where all white-box attacks at the same radius failed, on more than ``tolerance`` of
    the points (1%), the white-box gradients are masked (Carlini et al. 2019, arXiv
    1902.06705, sec. 5.2; Croce and Hein 2020, arXiv 2003.01690, sec. 5 on Square).
    Outcomes whose ``attack`` is in ``black_box`` are black-box, every other one
    white-box; compared at ``eps`` (exact) or at every finite radius.
    """
    _check_result(result)
    if isinstance(black_box, str):
        black_box = (black_box,)
    bb_names = set(black_box)
    n = len(result)
    findings = []
    for nm in _norms(result, norm):
        outs = result.select(norm=nm)
        radii = sorted({o.eps for o in outs if math.isfinite(o.eps)}) if eps is None else [
            float(eps)]
        for r in radii:
            at = [o for o in outs if o.eps == r]
            white = [o for o in at if o.attack not in bb_names]
            black = [o for o in at if o.attack in bb_names]
            if not white or not black:
                continue
            robust_white = _robust(result, white)
            for o in black:
                extra = robust_white & (o.adv_pred != result.labels)
                frac = float(extra.double().mean())
                if frac > tolerance + _SLACK:
                    findings.append(CheckFinding(
                        "black-box-beats-white-box",
                        f"{o.attack} ({nm}, eps {r:g}) breaks {frac:.1%} of the points that "
                        f"every white-box attack ({', '.join(sorted({w.attack for w in white}))})"
                        " left robust: the white-box gradients are masked",
                        {"black_box": o.attack, "white_box": sorted({w.attack for w in white}),
                         "norm": nm, "eps": r, "extra_broken": int(extra.sum()),
                         "fraction": frac, "points": n, "tolerance": tolerance},
                    ))
    return findings


Selector = str | Sequence[str] | Callable[[AttackOutcome], bool]


def _pick(result: EvalResult, sel: Selector, eps: float, norm: str | None,
          what: str) -> list[AttackOutcome]:
    if callable(sel):
        pred = sel
    else:
        names = {sel} if isinstance(sel, str) else set(sel)

        def pred(o: AttackOutcome) -> bool:
            return o.attack in names
    found = [o for o in result.select(norm=norm, eps=eps) if pred(o)]
    if not found:
        have = [(o.attack, o.norm, o.eps) for o in result.outcomes]
        raise InputError(f"no {what} outcome at eps {eps:g}; the record has {have}")
    if len({o.norm for o in found}) > 1:
        raise InputError(f"{what} outcomes of several norms: pass norm")
    return found


def _describe(sel: Selector, outs: Sequence[AttackOutcome]) -> str:
    if callable(sel):
        return ", ".join(sorted({o.attack for o in outs}))
    return sel if isinstance(sel, str) else ", ".join(sel)


def check_convergence(result: EvalResult, weaker: Selector, stronger: Selector, eps: float,
                      *, norm: str | None = None, tolerance: float = 0.01
                      ) -> list[CheckFinding]:
    """More steps or restarts still lowering robust accuracy: the weaker attack did not
    converge.

    ``weaker`` and ``stronger`` pick outcomes at radius ``eps`` by attack name, a sequence
    of names, or a predicate on ``AttackOutcome`` (e.g. ``lambda o: o.params["steps"] ==
    200``). Fires when the stronger selection's robust accuracy is lower by more than
    ``tolerance`` (1 point): the reported number from the weaker attack overstates
    robustness, and the stronger one may not have converged either (Carlini et al. 2019,
    arXiv 1902.06705, sec. 5.1; Croce and Hein 2020, arXiv 2003.01690, sec. 2).
    """
    _check_result(result)
    w = _pick(result, weaker, float(eps), norm, "weaker")
    s = _pick(result, stronger, float(eps), norm, "stronger")
    ra_w = float(_robust(result, w).double().mean())
    ra_s = float(_robust(result, s).double().mean())
    if ra_w - ra_s <= tolerance + _SLACK:
        return []
    wn, sn = _describe(weaker, w), _describe(stronger, s)
    return [CheckFinding(
        "attack-not-converged",
        f"the stronger attack ({sn}) lowers robust accuracy at eps {float(eps):g} from "
        f"{ra_w:.1%} ({wn}) to {ra_s:.1%}: the weaker attack did not converge; report the "
        "stronger one and check that more steps/restarts stop helping",
        {"weaker": wn, "stronger": sn, "norm": w[0].norm, "eps": float(eps),
         "weaker_robust_accuracy": ra_w, "stronger_robust_accuracy": ra_s,
         "tolerance": tolerance},
    )]


def check_certified_vs_empirical(cert: Certificate, result: EvalResult,
                                 radii: Sequence[float], *, labels: torch.Tensor | None = None,
                                 tolerance: float = 0.0) -> list[CheckFinding]:
    """Certified accuracy at a radius above the empirical robust accuracy there.

    A certificate promises the prediction cannot change within its radius, so no attack
    can break more points than the certificate leaves uncertified: certified accuracy
    above empirical robust accuracy (same points, radius and norm) by more than
    ``tolerance`` means an unsound certificate or a bug in the attack's record -- either
    must be reported. The evidence counts the points certified correct at the radius yet
    broken by an attack within it. ``labels`` defaults to the certificate's, else the
    record's. Radii no outcome of the norm reaches are skipped (logged). Certified and
    empirical numbers are of the classifier each record is about; compare records of the
    same classifier (Carlini et al. 2019, arXiv 1902.06705, sec. 4.3).
    """
    _check_result(result)
    if not isinstance(cert, Certificate):
        raise InputTypeError(f"cert must be a Certificate, got {type(cert).__name__}")
    if len(cert) != len(result):
        raise InputError(f"the certificate has {len(cert)} points and the record {len(result)}")
    if cert.index is not None and not torch.equal(cert.index, result.index):
        raise InputError("the certificate and the record are about different points (index)")
    if cert.norm not in {o.norm for o in result.outcomes}:
        raise InputError(f"the record has no outcome of the certificate's norm {cert.norm!r}")
    if labels is None:
        labels = cert.labels if cert.labels is not None else result.labels
    rs = [float(r) for r in radii]
    cacc = certified_accuracy(cert, labels, rs).tolist()
    reach = max(o.eps for o in result.select(norm=cert.norm))
    findings = []
    ok = (~cert.abstained) & (cert.prediction == labels)
    for r, ca in zip(rs, cacc, strict=True):
        if r > reach:
            log.info("check_certified_vs_empirical: no %s outcome reaches radius %g; skipped",
                     cert.norm, r)
            continue
        adv = result.adv_correct(r, norm=cert.norm)
        emp = float(adv.double().mean())
        if ca > emp + tolerance + _SLACK:
            contra = ok & (cert.radius >= r) & ~adv & result.clean_correct
            findings.append(CheckFinding(
                "certified-above-empirical",
                f"certified accuracy {ca:.1%} at radius {r:g} ({cert.norm}) exceeds the "
                f"empirical robust accuracy {emp:.1%}: the certificate ({cert.method}) is "
                "unsound or the records disagree; report it as a bug",
                {"norm": cert.norm, "radius": r, "certified_accuracy": ca,
                 "empirical_robust_accuracy": emp, "method": cert.method,
                 "contradicting_points": int(contra.sum()), "tolerance": tolerance},
            ))
    return findings


# ------------------------------------------------------------------------------ run_checks

def run_checks(
    model: nn.Module | None = None, x: torch.Tensor | None = None,
    y: torch.Tensor | None = None, *, result: EvalResult | None = None,
    num_classes: int | None = None, expected_clean: float | None = None,
    eps_large: float | None = None, large_norm: str | None = None,
    black_box: Sequence[str] = ("square",), weaker: Selector | None = None,
    stronger: Selector | None = None, convergence_eps: float | None = None,
    cert: Certificate | None = None, radii: Sequence[float] | None = None,
    warn: bool = True,
) -> list[CheckFinding]:
    """Run every check the arguments allow; emit each distinct finding once as a
    ``GradientMaskingWarning`` (unless ``warn=False``) and return them all.

    Model checks need ``model`` and ``x`` (``check_gradients`` also ``y``); record checks
    need ``result``, and ``num_classes`` (clean accuracy), ``eps_large`` with
    ``large_norm`` (large radius), ``weaker``/``stronger``/``convergence_eps``
    (convergence), ``cert`` with ``radii`` (certified vs empirical). The black-box and
    monotonicity checks always run on a record. The checks follow Athalye, Carlini and
    Wagner 2018 (arXiv 1802.00420), Carlini et al. 2019 (arXiv 1902.06705) and Croce and
    Hein 2020 (arXiv 2003.01690).
    """
    found: list[CheckFinding] = []
    if model is not None and x is not None:
        model_found = check_randomized(model, x) + check_probabilities(model, x)
        if y is not None:
            model_found += check_gradients(model, x, y)
        found += model_found + check_declarations(model, model_found)
    if result is not None:
        if num_classes is not None:
            found += check_clean_accuracy(result, num_classes, expected_clean)
        if result.outcomes:
            found += check_monotone_in_eps(result)
            found += check_black_box_beats_white_box(result, black_box)
        if eps_large is not None:
            if large_norm is None:
                raise InputError("eps_large needs large_norm")
            found += check_large_eps(result, large_norm, eps_large)
        if weaker is not None and stronger is not None and convergence_eps is not None:
            found += check_convergence(result, weaker, stronger, convergence_eps)
        if cert is not None and radii is not None:
            found += check_certified_vs_empirical(cert, result, radii)
    unique: list[CheckFinding] = []
    seen: set[tuple[str, str]] = set()
    for f in found:
        if (f.name, f.message) not in seen:
            seen.add((f.name, f.message))
            unique.append(f)
    if warn:
        for f in unique:
            w = GradientMaskingWarning(f"{f.name}: {f.message}")
            w.finding = f
            warnings.warn(w, stacklevel=2)
    return unique
