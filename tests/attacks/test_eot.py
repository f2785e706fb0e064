"""BPDA, EOT and the judgement over draws, on defenses whose behaviour is known exactly.

Every defense here is a test-local ``Preprocessor`` with a closed form: a detached
quantiser (no gradient at all), a soft quantiser (non-identity BPDA stand-in), a random
per-pixel shift of +-delta in front of an oscillating classifier (the expected gradient is
exactly ``w``), a random per-image sign flip (the expected gradient is the two branches'
mix) and a coin that inverts the image (correct on half the draws).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks import pgd
from bastion.attacks.eot import (
    BPDA,
    DEFAULT_DRAWS,
    adaptive_attack_for,
    default_draws,
    defense_draws_from,
    expected_objective,
    judge_over_draws,
)
from bastion.attacks.evaluate import evaluate_attacks
from bastion.attacks.spec import DEFAULT_EOT_SAMPLES, AttackSpec
from bastion.attacks.threat import ThreatModel
from bastion.errors import InputError
from bastion.preprocess import Defended, Preprocessor
from bastion.records import EvalResult, load_record, save_record

D = 64  # pixels of a [1, 8, 8] image


# ------------------------------------------------------------------ test-local defenses

class Quantise(Preprocessor):
    """``round(x * levels) / levels``, detached: autograd sees no path through it."""

    differentiable = False

    def __init__(self, levels: int = 32) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.round(x.detach() * self.levels) / self.levels).clamp(0, 1)


class _SoftRound(nn.Module):
    """A smooth stand-in of rounding to ``levels`` levels (a non-identity BPDA ``g``)."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x * self.levels
        return (t - torch.sin(2 * math.pi * t) / (2 * math.pi)) / self.levels


class SoftQuantise(Quantise):
    def bpda_standin(self) -> nn.Module:
        return _SoftRound(self.levels)


class RandomShift(Preprocessor):
    """``x + delta * u`` with u uniform on {-1, +1}^d, drawn per pixel and per call."""

    randomized = True

    def __init__(self, delta: float) -> None:
        super().__init__()
        self.delta = delta
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.randint(0, 2, x.shape, generator=self.generator, device=x.device) * 2 - 1
        return x + self.delta * u.to(x.dtype)


class RandomFlip(Preprocessor):
    """``0.5 + s (x - 0.5)``, with ``s = +1`` w.p. ``p`` and ``-1`` else, per image."""

    randomized = True

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None
        self.last_sign: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.rand(x.shape[0], generator=self.generator, device=x.device)
        s = torch.where(u < self.p, 1.0, -1.0).to(x.dtype).view(-1, 1, 1, 1)
        self.last_sign = s.flatten()
        return 0.5 + s * (x - 0.5)


class RandomQuantiseFlip(Quantise):
    """Randomized *and* non-differentiable: a detached quantiser that inverts the image
    with probability ``p`` per image (BPDA inside EOT)."""

    randomized = True

    def __init__(self, levels: int = 32, p: float = 0.0) -> None:
        super().__init__(levels)
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = super().forward(x)
        u = torch.rand(x.shape[0], generator=self.generator, device=x.device)
        return torch.where((u < self.p).view(-1, 1, 1, 1), 1 - q, q)


class Oscillating(nn.Module):
    """Two logits ``+-m(z)/2``, ``m(z) = w.(z - 0.5) + A sum_i sin(omega z_i)``.

    Behind ``RandomShift(pi / (2 omega))`` the oscillation averages out exactly:
    ``E_u[sin(omega (x + delta u))] = sin(omega x) cos(pi / 2) = 0``, so the expected
    margin is ``w.(x - 0.5)`` and the expected gradient is ``w``; one draw's gradient is
    ``w - u * A omega sin(omega x)``.
    """

    def __init__(self, w: torch.Tensor, amplitude: float, omega: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.amplitude, self.omega = amplitude, omega

    def margin(self, z: torch.Tensor) -> torch.Tensor:
        z = z.flatten(1)
        return (z - 0.5) @ self.w + self.amplitude * torch.sin(self.omega * z).sum(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        m = self.margin(z)
        return torch.stack([m / 2, -m / 2], dim=1)


def _linear(w: torch.Tensor) -> nn.Module:
    """Two logits ``+-w.(z - 0.5) / 2`` (class 0 where the margin is positive)."""
    return Oscillating(w, 0.0, 1.0)


def _signs(seed: int, d: int = D) -> torch.Tensor:
    return torch.randint(0, 2, (d,), generator=torch.Generator().manual_seed(seed)) * 2.0 - 1


def _points_with_margin(w: torch.Tensor, n: int, lo: float, hi: float,
                        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images in [0.3, 0.7]^d whose margin ``|w.(x - 0.5)|`` lies in ``[lo, hi]``,
    labelled by its sign (class 0 for a positive margin)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(n, D, generator=g)
    m = (x - 0.5) @ w
    target = lo + (hi - lo) * torch.rand(n, generator=g)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
    # move along w / ||w||^2 to the chosen margin, then stay in the box
    x = x + ((sign * target - m) / (w @ w)).unsqueeze(1) * w
    assert float(x.min()) > 0.15 and float(x.max()) < 0.85
    y = (((x - 0.5) @ w) < 0).long()
    return x.view(n, 1, 8, 8), y


# ------------------------------------------------------------------------------- BPDA

def test_bpda_forward_is_the_defended_models_and_backward_the_standins():
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 5))
    model = Defended(SoftQuantise(levels=8), classifier)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    bpda = BPDA(model)

    xa = x.clone().requires_grad_(True)
    logits = bpda(xa)
    assert torch.equal(logits.detach(), model(x)), "forward must be exactly f(pre(x))"
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xa)

    # reference: the classifier's gradient at z = pre(x), pulled back through g's Jacobian
    z = model.preprocessor(x).requires_grad_(True)
    (v,) = torch.autograd.grad(F.cross_entropy(classifier(z), y, reduction="sum"), z)
    xg = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(_SoftRound(8)(xg), xg, grad_outputs=v)
    assert torch.equal(grad, expected)
    assert grad.abs().sum() > 0
    # and it is not the gradient through g's own forward (classifier(g(x))): g(x) != pre(x)
    xg2 = x.clone().requires_grad_(True)
    (through_g,) = torch.autograd.grad(
        F.cross_entropy(classifier(_SoftRound(8)(xg2)), y, reduction="sum"), xg2)
    assert not torch.allclose(through_g, grad)


def test_bpda_with_the_identity_standin_passes_the_classifier_gradient_straight_through():
    w = _signs(0)
    model = Defended(Quantise(32), _linear(w))
    x = torch.rand(3, 1, 8, 8)
    xa = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(BPDA(model)(xa)[:, 0].sum(), xa)
    torch.testing.assert_close(g.flatten(1), (w / 2).expand(3, D), rtol=0, atol=0)


def test_bpda_needs_a_defended_model():
    with pytest.raises(InputError, match=r"pre-processed model \(bastion.preprocess.Defended\)"):
        BPDA(nn.Linear(3, 2))


# -------------------------------------------------------------------------------- EOT

def test_eot_gradient_converges_to_the_expectation_like_one_over_sqrt_k():
    """Behind RandomShift the expected gradient of the margin is exactly ``w``; the EOT
    error ``-mean(u) * A omega sin(omega x)`` has variance ``(A omega)^2 sin^2 / k`` per
    pixel, so its RMS over the images is ``A omega ||sin(omega x)|| / sqrt(k)``."""
    omega, amplitude = 100.0, 0.05
    w = _signs(1)
    pre = RandomShift(math.pi / (2 * omega))
    model = Defended(pre, Oscillating(w, amplitude, omega))
    n = 400
    x = 0.3 + 0.4 * torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    scale = amplitude * omega * torch.sin(omega * x.flatten(1)).norm(dim=1)  # [n]
    errors = {}
    for k in (1, 16, 256):
        with defense_draws_from(model, torch.Generator().manual_seed(k)):
            ev = expected_objective(model, x, lambda z: z[:, 0] - z[:, 1], samples=k)
        err = (ev.grad.flatten(1) - w).norm(dim=1)  # z0 - z1 is the margin m
        rms = float((err.square().mean() / scale.square().mean()).sqrt())
        errors[k] = rms
        assert rms == pytest.approx(1 / math.sqrt(k), rel=0.15), (k, rms)
    assert errors[1] > 3.5 * errors[16] > 3.5 ** 2 * errors[256]


def test_eot_averages_gradients_not_logits():
    """Behind a per-image sign flip (P(s = +1) = p) the expected CE gradient is
    ``p g(+1) + (1 - p) g(-1)``, computable exactly; EOT converges to it, and not to the
    gradient of the CE of the averaged logits."""
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():  # confident logits: the softmax is far from linear
        classifier[1].weight.mul_(4)
        classifier[3].weight.mul_(8)
    p = 0.7
    pre = RandomFlip(p)
    model = Defended(pre, classifier)
    x = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.arange(50) % 3

    def branch_grad(s: float) -> torch.Tensor:
        xa = x.clone().requires_grad_(True)
        loss = F.cross_entropy(classifier(0.5 + s * (xa - 0.5)), y, reduction="sum")
        return torch.autograd.grad(loss, xa)[0]

    g_plus, g_minus = branch_grad(1.0), branch_grad(-1.0)
    expected = p * g_plus + (1 - p) * g_minus
    xa = x.clone().requires_grad_(True)
    mean_logits = p * classifier(0.5 + (xa - 0.5)) + (1 - p) * classifier(0.5 - (xa - 0.5))
    (of_mean_logits,) = torch.autograd.grad(F.cross_entropy(mean_logits, y, reduction="sum"), xa)

    k = 256
    with defense_draws_from(model, torch.Generator().manual_seed(0)):
        ev = expected_objective(model, x, lambda z: F.cross_entropy(z, y, reduction="none"),
                                samples=k)
    # per image, the EOT gradient is (m g+ + (1 - m) g-) with m the fraction of +1 draws
    gap = (g_plus - g_minus).flatten(1).norm(dim=1)
    err = (ev.grad - expected).flatten(1).norm(dim=1)
    frac_dev = err / gap  # = |m - p|, with sd sqrt(p (1 - p) / k) = 0.029
    assert float(frac_dev.max()) < 5 * math.sqrt(p * (1 - p) / k)
    other = (ev.grad - of_mean_logits).flatten(1).norm(dim=1)
    assert float(other.mean()) > 5 * float(err.mean())
    assert ev.logits.shape == (k, 50, 3) and ev.loss.shape == (50,)


def test_one_sample_is_the_plain_gradient_bit_for_bit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(D, 4))
    x = torch.rand(5, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 0])
    xa = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(xa), y, reduction="none").sum(), xa)
    ev = expected_objective(net, x, lambda z: F.cross_entropy(z, y, reduction="none"))
    assert torch.equal(ev.grad, g)


def _shift_problem(n: int = 48):
    """Points breakable in the expected model (margin 0.6-0.85 of eps ||w||_1) behind
    RandomShift, where one draw's gradient is dominated by the oscillation (A omega = 6
    against |w_i| = 1)."""
    omega, amplitude, eps = 100.0, 0.06, 0.05
    w = _signs(4)
    x, y = _points_with_margin(w, n, 0.6 * eps * D, 0.85 * eps * D, seed=5)
    pre = RandomShift(math.pi / (2 * omega))
    return Defended(pre, Oscillating(w, amplitude, omega)), x, y, eps


def test_eot_pgd_beats_plain_pgd_where_one_draw_is_noise():
    model, x, y, eps = _shift_problem()
    threat = ThreatModel(eps=eps, steps=20)
    plain = AttackSpec(name="pgd", threat=threat, draws=4)
    eot = AttackSpec(name="eot-pgd", threat=threat, eot_samples=64, draws=4)
    r = evaluate_attacks(model, x, y, [plain, eot], batch_size=48, seed=0)
    assert float(r.clean_correct.double().mean()) == 1.0
    acc_plain = float(r.adv_correct(attack="pgd").double().mean())
    acc_eot = float(r.adv_correct(attack="eot-pgd").double().mean())
    assert acc_plain > 0.7, acc_plain
    assert acc_eot < 0.1, acc_eot
    assert r.only(attack="eot-pgd").params["eot_samples"] == 64
    assert r.only(attack="eot-pgd").params["bpda"] is False  # differentiable defense


def test_engine_guarantees_hold_with_eot():
    model, x, y, eps = _shift_problem(8)
    for norm, e in (("linf", eps), ("l2", 0.3)):
        r = pgd(model, x, y, eps=e, norm=norm, steps=5, eot_samples=4, keep_best=True,
                restarts=2, generator=torch.Generator().manual_seed(0))
        assert float(r.x_adv.min()) >= 0 and float(r.x_adv.max()) <= 1
        size = (r.x_adv - x).flatten(1).norm(p=math.inf if norm == "linf" else 2, dim=1)
        assert (size <= e + 1e-6).all()
        assert all(p.grad is None for p in model.parameters())


def test_the_engine_generator_drives_the_defense_draws():
    model, x, y, eps = _shift_problem(8)
    runs = [pgd(model, x, y, eps=eps, steps=3, eot_samples=3,
                generator=torch.Generator().manual_seed(s)).x_adv for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert model.preprocessor.generator is None, "the defense's generator was not restored"


# ------------------------------------------------------------------------ BPDA-PGD

def test_quantiser_stops_plain_pgd_and_bpda_pgd_breaks_it():
    eps = 0.1
    w = _signs(6)
    x, y = _points_with_margin(w, 64, 0.3 * eps * D, 0.8 * eps * D, seed=7)
    model = Defended(Quantise(32), _linear(w))
    threat = ThreatModel(eps=eps, steps=10)
    r = evaluate_attacks(model, x, y, [AttackSpec(name="pgd", threat=threat),
                                       AttackSpec(name="bpda-pgd", threat=threat)],
                         batch_size=64)
    clean = float(r.clean_correct.double().mean())
    assert clean == 1.0
    assert float(r.adv_correct(attack="pgd").double().mean()) >= clean - 0.05
    assert float(r.adv_correct(attack="bpda-pgd").double().mean()) == 0.0
    assert r.only(attack="bpda-pgd").params["bpda"] is True
    assert r.only(attack="pgd").params["bpda"] is False


def test_bpda_and_eot_compose_on_a_randomized_non_differentiable_defense():
    """A quantiser that inverts the image w.p. 0.2: one draw's BPDA gradient points the
    wrong way a fifth of the time; EOT-PGD (BPDA inside) breaks every point."""
    eps = 0.1
    w = _signs(8)
    x, y = _points_with_margin(w, 32, 0.3 * eps * D, 0.6 * eps * D, seed=9)
    model = Defended(RandomQuantiseFlip(32, p=0.2), _linear(w))
    spec = AttackSpec(name="eot-pgd", threat=ThreatModel(eps=eps, steps=10), eot_samples=8)
    r = spec.run(model, x, y, generator=torch.Generator().manual_seed(0))
    assert spec.uses_bpda(model)
    with torch.no_grad():
        inner = model.model(Quantise(32)(r.x_adv)).argmax(1)  # the un-inverted draw
    assert (inner != y).float().mean() >= 0.95


def test_spec_names_the_attack_when_the_model_is_not_defended():
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    for name in ("bpda-pgd", "eot-pgd"):
        spec = AttackSpec(name=name, threat=ThreatModel(eps=0.1, steps=2))  # fine at spec time
        with pytest.raises(InputError, match=rf"'{name}' needs a pre-processed model "
                                             r"\(bastion.preprocess.Defended"):
            spec.run(_linear(_signs(0)), x, y)


# --------------------------------------------------------------------- draws judging

class Coin(Preprocessor):
    """The image itself or its inverse ``1 - x``, each with probability 1/2 per image:
    behind ``_linear`` every draw is right or wrong with probability 1/2."""

    randomized = True

    def __init__(self) -> None:
        super().__init__()
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(x.shape[0], generator=self.generator, device=x.device) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), 1 - x, x)


def test_a_point_right_on_half_the_draws_is_robust_only_if_every_draw_is_right():
    w = _signs(10)
    x, y = _points_with_margin(w, 400, 1.0, 2.0, seed=11)
    model = Defended(Coin(), _linear(w))
    weak = ThreatModel(eps=1e-4, steps=1)  # cannot move any margin: only the coin decides
    d = 6
    r = evaluate_attacks(model, x, y, [AttackSpec(threat=weak),
                                       AttackSpec(threat=weak, draws=d)], batch_size=100)
    one, judged = r.outcomes
    clean_ok = r.clean_correct
    assert 0.4 < float(clean_ok.double().mean()) < 0.6  # the clean pass is a coin too
    # one pass: right on about half of the clean-right points
    acc_one = float((one.adv_pred == r.labels)[clean_ok].double().mean())
    assert 0.4 < acc_one < 0.6
    # d passes: right on all of them for about 2^-d of the clean-right points
    robust = judged.adv_pred == r.labels
    assert float(robust[clean_ok].double().mean()) < 4 * 2.0 ** -d
    assert torch.equal(robust, judged.correct_draws == d)
    counts = judged.correct_draws[clean_ok].double()
    assert counts.mean() == pytest.approx(d / 2, abs=0.3)  # Binomial(d, 1/2)
    assert counts.var() == pytest.approx(d / 4, rel=0.3)
    assert one.correct_draws is None and one.draws == 1 and judged.draws == d
    # the clean points' passes: the clean pass first, then d - 1 more
    assert r.clean_draws == d
    cc = r.clean_correct_draws
    assert (cc[clean_ok] >= 1).all() and (cc[~clean_ok] <= d - 1).all()
    assert float(cc.double().mean()) == pytest.approx(d / 2, abs=0.3)
    only_judged = EvalResult(index=r.index, labels=r.labels, clean_pred=r.clean_pred,
                             outcomes=(judged,))
    s = only_judged.draw_spread()
    assert s["draws"] == d and s["all"] <= s["mean"] <= s["any"]
    assert s["all"] == float(only_judged.adv_correct().double().mean())
    # one pass is right on half the draws: mean accuracy ~ clean fraction / 2, and the
    # spread of one pass's accuracy is ~ sqrt(n_ok / 4) / n
    n_ok = int(clean_ok.sum())
    assert s["mean"] == pytest.approx(n_ok / len(r) / 2, abs=0.05)
    assert s["std"] == pytest.approx(math.sqrt(n_ok / 4) / len(r), rel=0.25)


def test_draws_do_not_change_a_deterministic_evaluation():
    eps = 0.05
    w = _signs(12)
    x, y = _points_with_margin(w, 32, 0.5 * eps * D, 1.5 * eps * D, seed=13)
    model = _linear(w)
    threat = ThreatModel(eps=eps, steps=10)
    r1 = evaluate_attacks(model, x, y, [AttackSpec(threat=threat)], batch_size=16)
    r5 = evaluate_attacks(model, x, y, [AttackSpec(threat=threat, draws=5)], batch_size=16)
    o1, o5 = r1.only(), r5.only()
    assert torch.equal(o1.adv_pred, o5.adv_pred)
    assert torch.equal(o5.correct_draws, torch.where(o5.adv_pred == y, 5, 0))
    assert torch.equal(r5.clean_correct_draws, torch.where(r5.clean_correct, 5, 0))
    assert "draws" in o1.params and o5.params["draws"] == 5


def test_judge_over_draws_reports_the_first_wrong_pass():
    class Cycle(nn.Module):  # predicts 0, 1, 0, 1, ... on successive calls
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return F.one_hot(torch.full((len(x),), (self.calls + 1) % 2), 2).float()

    pred, correct = judge_over_draws(Cycle(), torch.zeros(3, 1, 2, 2), torch.zeros(3).long(), 4)
    assert pred.tolist() == [1, 1, 1] and correct.tolist() == [2, 2, 2]
    pred, correct = judge_over_draws(Cycle(), torch.zeros(2, 1, 2, 2), torch.zeros(2).long(), 1)
    assert pred.tolist() == [0, 0] and correct.tolist() == [1, 1]


def test_draw_counts_round_trip_and_old_records_load(tmp_path):
    w = _signs(14)
    x, y = _points_with_margin(w, 20, 0.5, 1.5, seed=15)
    model = Defended(Coin(), _linear(w))
    r = evaluate_attacks(model, x, y, [AttackSpec(threat=ThreatModel(eps=0.01, steps=2),
                                                  draws=3)], batch_size=8)
    save_record(tmp_path / "r.json", r)
    back = load_record(EvalResult, tmp_path / "r.json")
    assert back == r and torch.equal(back.only().correct_draws, r.only().correct_draws)
    assert back.clean_draws == 3 and torch.equal(back.clean_correct_draws,
                                                 r.clean_correct_draws)
    # a record written before the draw fields existed loads with one pass and no counts
    old = r.to_dict()
    del old["clean_draws"], old["clean_correct_draws"]
    for o in old["outcomes"]:
        del o["draws"], o["correct_draws"]
    legacy = EvalResult.from_dict(old)
    assert legacy.only().draws == 1 and legacy.only().correct_draws is None
    assert legacy.clean_draws == 1 and legacy.clean_correct_draws is None
    assert legacy.draw_spread()["std"] == 0.0
    # and a one-pass record is written without them, as before
    assert legacy.to_dict() == old
    # concat joins the counts
    both = EvalResult.concat([r, r])
    assert torch.equal(both.only().correct_draws, r.only().correct_draws.repeat(2))
    with pytest.raises(InputError, match="clean_draws"):
        EvalResult.concat([r, legacy])


# ------------------------------------------------------------------ choosing attacks

@pytest.mark.parametrize(("pre", "pgd_name", "aa_name", "draws"), [
    (None, "pgd", "autoattack", 1),
    (SoftQuantise(), "bpda-pgd", "autoattack", 1),
    (RandomShift(0.01), "eot-pgd", "autoattack-rand", DEFAULT_DRAWS),
    (RandomQuantiseFlip(), "eot-pgd", "autoattack-rand", DEFAULT_DRAWS),
])
def test_adaptive_attack_follows_the_declarations(pre, pgd_name, aa_name, draws):
    classifier = _linear(_signs(0))
    model = classifier if pre is None else Defended(pre, classifier)
    assert adaptive_attack_for(model) == pgd_name
    assert adaptive_attack_for(model, base="autoattack") == aa_name
    assert default_draws(model) == draws
    spec = AttackSpec(name=pgd_name, threat=ThreatModel(eps=0.1))
    assert spec.uses_bpda(model) == (pre is not None and not pre.differentiable)
    with pytest.raises(InputError, match="valid choices: autoattack, pgd"):
        adaptive_attack_for(model, base="fab")


def test_spec_fields_are_validated_and_recorded():
    assert AttackSpec(name="eot-pgd").eot_samples == DEFAULT_EOT_SAMPLES
    d = AttackSpec(name="eot-pgd", eot_samples=5, draws=3).to_dict()
    assert d["eot_samples"] == 5 and d["draws"] == 3
    assert "eot_samples" not in AttackSpec(name="pgd").to_dict()
    with pytest.raises(InputError, match="eot_samples applies to 'eot-pgd' only"):
        AttackSpec(name="pgd", eot_samples=4)
    with pytest.raises(InputError, match="eot_samples must be an int >= 1"):
        AttackSpec(name="eot-pgd", eot_samples=0)
    with pytest.raises(InputError, match="draws must be an int >= 1"):
        AttackSpec(draws=0)
    with pytest.raises(InputError, match="autoattack-rand needs at least 3 classes"):
        AttackSpec(name="autoattack-rand", num_classes=2)
    comps = AttackSpec(name="autoattack-rand").to_dict()["components"]
    assert [(c["attack"], c["loss"], c["eot_iter"], c["steps"]) for c in comps] == [
        ("apgd-ce", "ce", 20, 100), ("apgd-dlr", "dlr", 20, 100)]


# ---------------------------------------------------------------------- autoattack-rand

def test_autoattack_rand_runs_on_a_tiny_randomized_defended_model():
    pytest.importorskip("torchattacks")
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(D, 3))
    model = Defended(RandomQuantiseFlip(16, p=0.1), classifier)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = classifier(x).argmax(1)
    spec = AttackSpec(name="autoattack-rand", threat=ThreatModel(eps=0.1), num_classes=3,
                      draws=3)
    r = evaluate_attacks(model, x, y, [spec], batch_size=3)
    o = r.only()
    assert float(o.perturbation.max()) <= 0.1 + 1e-6
    assert o.params["bpda"] is True and o.draws == 3
    assert o.params["components"][0]["eot_iter"] == 20
    assert all(p.grad is None for p in model.parameters())


# -------------------------------------------------------------- the record's new fields

def _outcome(**kw):
    from bastion.records import AttackOutcome

    base = {"attack": "eot-pgd", "norm": "linf", "eps": 0.1,
            "adv_pred": torch.tensor([0, 0, 1]), "perturbation": torch.tensor([0.1, 0.1, 0.0])}
    return AttackOutcome(**{**base, **kw})


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"draws": 0}, "draws must be an int >= 1"),
    ({"draws": 3}, "draws=3 needs correct_draws"),
    ({"draws": 3, "correct_draws": torch.tensor([3, 4, 0])}, r"in \[0, 3\]"),
    ({"draws": 3, "correct_draws": torch.tensor([3.0, 1.0, 0.0])}, "dtype torch.int64"),
    ({"draws": 3, "correct_draws": torch.tensor([3, 1])}, "2 entries for 3 points"),
])
def test_outcome_draw_fields_are_validated(kwargs, match):
    with pytest.raises((InputError, TypeError), match=match):
        _outcome(**kwargs)


def test_record_checks_that_robust_means_every_draw_right():
    labels, clean = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1])

    def record(counts, **kw):
        return EvalResult(index=torch.arange(3), labels=labels, clean_pred=clean,
                          outcomes=(_outcome(draws=3, correct_draws=torch.tensor(counts)),),
                          **kw)

    ok = record([3, 1, 0])  # point 0 robust (3/3), point 1 broken, point 2 wrong when clean
    assert ok.draw_spread() == pytest.approx(
        {"draws": 3, "mean": 4 / 9, "std": math.sqrt((0 + 2 / 9) * 3 / 2) / 3,
         "all": 1 / 3, "any": 2 / 3})
    for bad in ([2, 1, 0], [3, 3, 0], [3, 1, 1]):
        with pytest.raises(InputError, match="correct passes"):
            record(bad)
    with pytest.raises(InputError, match="clean_draws=2 needs clean_correct_draws"):
        record([3, 1, 0], clean_draws=2)
    with pytest.raises(InputError, match="a right first pass counts at least 1"):
        record([3, 1, 0], clean_draws=2, clean_correct_draws=torch.tensor([0, 2, 0]))
    with pytest.raises(InputError, match="at most 1"):
        record([3, 1, 0], clean_draws=2, clean_correct_draws=torch.tensor([1, 2, 2]))
    assert record([3, 1, 0], clean_draws=2,
                  clean_correct_draws=torch.tensor([2, 1, 1])).clean_draws == 2
