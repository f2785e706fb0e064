"""Randomized smoothing: PREDICT and CERTIFY against closed forms on linear classifiers."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from scipy import stats as sps
from torch import nn

import bastion.certify.forward as forward
from bastion.attacks.pgd import pgd
from bastion.certify.forward import ForwardPlan, tune
from bastion.certify.smoothing import SmoothedClassifier, generators_for
from bastion.certify.smoothing_certifiers import CohenCertifier, PredictCertifier
from bastion.certify.stats import binomial_pvalue, cp_lower
from bastion.models import build
from bastion.noise import Gaussian, Laplace, Uniform

SIDE = 4
D = SIDE * SIDE


def linear(v: torch.Tensor, c: float, classes: int = 2) -> nn.Module:
    """Logits (v.x + c, 0, -10, ...): class 0 iff v.x + c > 0 (extra classes never win)."""
    lin = nn.Linear(v.numel(), classes)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[0] = v.flatten()
        lin.bias[0] = c
        lin.bias[2:] = -10.0
    return nn.Sequential(nn.Flatten(), lin).eval()


def gens(k: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(k)]


@pytest.fixture(scope="module")
def plane() -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    """A linear two-class model and 12 inputs at known distances from its hyperplane."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(D, generator=g)
    v = v / v.norm() * 2.0  # ||v|| = 2
    x = 0.2 + 0.6 * torch.rand(12, 1, SIDE, SIDE, generator=g)
    m = x.flatten(1) @ v
    c = -float(m.median())
    margin = m + c
    dist = margin / v.norm()  # signed distance to the hyperplane (l2)
    return linear(v, c), x, dist, float(v.norm())


def test_gaussian_radius_never_exceeds_the_hyperplane_distance_and_approaches_it(plane) -> None:
    """For f linear, P(f(x + eta) = A) = Phi(margin / (sigma ||v||)): the smoothed classifier
    is the linear classifier itself and its exact l2 robustness radius is |margin| / ||v||."""
    model, x, dist, _ = plane
    smooth = SmoothedClassifier(model, Gaussian(sigma=0.25), 2, memory_format="contiguous")
    truth = dist.abs().double()
    true_class = (dist < 0).long()
    gaps = {}
    for n in (1_000, 100_000):
        cert = smooth.certify(x, n0=100, n=n, alpha=0.001, batch_size=4096, generator=gens(12))
        ok = ~cert.abstained
        assert (cert.prediction[ok] == true_class[ok]).all()
        assert (cert.radius <= truth + 1e-12).all()
        assert torch.equal(cert.radius[cert.abstained], torch.zeros(int(cert.abstained.sum()),
                                                                    dtype=torch.float64))
        gaps[n] = (truth - cert.radius)[truth > 0.02].mean()
        if n == 100_000:
            easy = (truth > 0.1) & (truth < 0.6)  # n0 = 100 picks c_A reliably
            assert (~cert.abstained[easy]).all()
            assert ((truth - cert.radius)[easy] < 0.03).all()
    assert gaps[100_000] < 0.5 * gaps[1_000]


def test_abstains_exactly_when_the_lower_bound_is_below_one_half(plane) -> None:
    model, x, dist, norm_v = plane
    # push several inputs close to the hyperplane, so that some abstain
    v_dir = model[1].weight[0].detach().view(1, 1, SIDE, SIDE) / norm_v
    near = (x - (dist.view(-1, 1, 1, 1) - 0.002 * torch.sign(dist).view(-1, 1, 1, 1)) * v_dir)
    batch = torch.cat([x, near.clamp(0, 1)])
    smooth = SmoothedClassifier(model, Gaussian(sigma=0.25), 2, memory_format="contiguous")
    cert = smooth.certify(batch, n0=50, n=500, alpha=0.01, batch_size=512, generator=gens(24))
    p_lower = cp_lower(cert.extra["nA"], 500, 0.01)
    assert torch.allclose(cert.extra["p_lower"], p_lower)
    assert torch.equal(cert.abstained, p_lower < 0.5)
    assert cert.abstained.any() and (~cert.abstained).any()
    expect = torch.where(p_lower < 0.5, 0.0, 0.25 * torch.special.ndtri(p_lower))
    assert torch.allclose(cert.radius, expect)
    assert cert.method == "smoothing-gaussian" and cert.norm == "l2"
    assert cert.params == {"noise": "gaussian", "sigma": 0.25, "n0": 50, "n": 500,
                           "alpha": 0.01, "two_class": False, "precision": "fp32"}
    assert cert.extra["nA"].dtype == torch.int64 and torch.equal(cert.extra["n"],
                                                                  torch.full((24,), 500))
    round_trip = type(cert).from_dict(cert.to_dict())
    assert torch.equal(round_trip.radius, cert.radius)


def test_constant_model_certifies_the_largest_radius_n_allows() -> None:
    model = linear(torch.zeros(D), 5.0, classes=3)  # always class 0
    smooth = SmoothedClassifier(model, Gaussian(sigma=0.5), 3, memory_format="contiguous")
    x = torch.rand(3, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    cert = smooth.certify(x, n0=10, n=1000, alpha=0.001, batch_size=256, generator=gens(3))
    assert torch.equal(cert.extra["nA"], torch.full((3,), 1000))
    assert torch.equal(cert.prediction, torch.zeros(3, dtype=torch.int64))
    expect = 0.5 * sps.norm.ppf(0.001 ** (1 / 1000))
    assert torch.allclose(cert.radius, torch.full((3,), expect, dtype=torch.float64))


def test_predict_uses_the_binomial_test(plane) -> None:
    model, x, dist, _ = plane
    smooth = SmoothedClassifier(model, Gaussian(sigma=0.25), 2, memory_format="contiguous")
    out = smooth.predict(x, n=400, alpha=0.001, batch_size=400, generator=gens(12, seed=5))
    pv = binomial_pvalue(out.extra["nA"], out.extra["nA"] + out.extra["nB"])
    assert torch.allclose(out.extra["pvalue"], pv)
    assert torch.equal(out.abstained, pv > 0.001)
    assert (out.radius == 0).all() and out.method == "smoothing-gaussian-predict"
    true_class = (dist < 0).long()
    assert (out.prediction[~out.abstained] == true_class[~out.abstained]).all()
    assert (~out.abstained[dist.abs() > 0.3]).all()


def test_pgd_l2_inside_the_certified_radius_cannot_flip_the_smoothed_decision(plane) -> None:
    """PGD/L2 on the base classifier at 0.99 x the certified radius: the linear smoothed
    classifier's decision at the attacked point (closed form: the margin's sign) is unchanged,
    while the attack does move the margin by almost eps ||v||."""
    model, x, dist, norm_v = plane
    smooth = SmoothedClassifier(model, Gaussian(sigma=0.25), 2, memory_format="contiguous")
    cert = smooth.certify(x, n0=100, n=20_000, alpha=0.001, batch_size=4096, generator=gens(12))
    ok = ~cert.abstained & (cert.radius > 0)
    xs, preds = x[ok], cert.prediction[ok]
    eps = (0.99 * cert.radius[ok]).float()
    adv = pgd(model, xs, preds, eps=eps, norm="l2", steps=50, random_init=False).x_adv
    w, b = model[1].weight.detach(), model[1].bias.detach()

    def margin(z: torch.Tensor) -> torch.Tensor:
        return z.flatten(1) @ (w[0] - w[1]) + (b[0] - b[1])

    before, after = margin(xs), margin(adv)
    assert (torch.sign(after) == torch.sign(before)).all()
    moved = (before - after).abs()
    assert (moved >= 0.95 * eps * norm_v).all()  # the attack is strong: it used the budget


class _SoftSmoothed(nn.Module):
    """Monte Carlo surrogate of the smoothed classifier for attacks: log of the mean softmax
    of the base model over fixed noise draws."""

    def __init__(self, base: nn.Module, sigma: float, draws: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.base = base
        g = torch.Generator().manual_seed(11)
        self.register_buffer("eta", sigma * torch.randn((draws, *shape), generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k = x.shape[0], self.eta.shape[0]
        noisy = (x.unsqueeze(1) + self.eta.unsqueeze(0)).flatten(0, 1)
        probs = self.base(noisy).softmax(-1).view(b, k, -1).mean(1)
        return probs.clamp_min(1e-12).log()


def test_monte_carlo_attack_on_the_smoothed_classifier_finds_no_flip_inside_the_radius() -> None:
    torch.manual_seed(0)
    base = build("mlp", num_classes=4, in_channels=1, input_size=SIDE, hidden=(32,)).eval()
    x = torch.rand(10, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    smooth = SmoothedClassifier(base, Gaussian(sigma=0.25), 4, memory_format="contiguous")
    cert = smooth.certify(x, n0=100, n=5_000, alpha=0.001, batch_size=4096, generator=gens(10))
    ok = ~cert.abstained & (cert.radius > 0.05)
    assert ok.sum() >= 3
    surrogate = _SoftSmoothed(base, 0.25, 64, (1, SIDE, SIDE))
    eps = (0.5 * cert.radius[ok]).float()
    adv = pgd(surrogate, x[ok], cert.prediction[ok], eps=eps, norm="l2", steps=20).x_adv
    assert ((adv - x[ok]).flatten(1).norm(dim=1) <= eps + 1e-5).all()
    again = smooth.predict(adv, n=2_000, alpha=0.001, batch_size=4096,
                           generator=gens(int(ok.sum()), seed=3))
    flipped = ~again.abstained & (again.prediction != cert.prediction[ok])
    assert not flipped.any()


def test_two_class_bounds_and_radius() -> None:
    g = torch.Generator().manual_seed(4)
    v = torch.randn(D, generator=g)
    x = torch.rand(8, 1, SIDE, SIDE, generator=g)
    c = -float((x.flatten(1) @ v).median())
    two = SmoothedClassifier(linear(v, c, 2), Gaussian(sigma=0.25), 2, "contiguous")
    one_cls = two.certify(x, n0=50, n=2000, alpha=0.0005, batch_size=1024, generator=gens(8))
    two_cls = two.certify(x, n0=50, n=2000, alpha=0.001, batch_size=1024, generator=gens(8),
                          two_class=True)
    # with K = 2 the runner-up bound is 1 - p_A lower: the same radius as one-class at alpha/2
    assert torch.allclose(two_cls.radius, one_cls.radius, atol=1e-9)
    assert torch.equal(two_cls.abstained, one_cls.abstained)
    assert two_cls.params["two_class"] and "nB" in two_cls.extra
    # with a third, never-predicted class the runner-up bound is small and the radius larger
    three = SmoothedClassifier(linear(v, c, 3), Gaussian(sigma=0.25), 3, "contiguous")
    c3 = three.certify(x, n0=50, n=2000, alpha=0.001, batch_size=1024, generator=gens(8),
                       two_class=True)
    assert (c3.radius >= one_cls.radius - 1e-9).all()
    assert torch.equal(c3.abstained, c3.extra["p_lower"] < c3.extra["p_upper_b"])


def test_uniform_l1_radius_against_monte_carlo_at_the_ball_vertices() -> None:
    """Uniform noise, linear classifier. (a) v along one pixel: the smoothed classifier is
    known in closed form (p_A = 1/2 + margin / (2 lam)) and the exact l1 radius is the margin;
    (b) a generic v: at every vertex +-R e_j of the certified l1 ball (the worst points for a
    linear classifier), a brute-force Monte Carlo estimate of p_A stays above 1/2."""
    lam = 0.5
    g = torch.Generator().manual_seed(7)
    x = 0.3 + 0.4 * torch.rand(6, 1, SIDE, SIDE, generator=g)
    # (a) closed form
    e0 = torch.zeros(D)
    e0[0] = 1.0
    margin = x.flatten(1)[:, 0] - 0.3
    smooth = SmoothedClassifier(linear(e0, -0.3), Uniform(lam=lam), 2, "contiguous")
    cert = smooth.certify(x, n0=100, n=50_000, alpha=0.001, batch_size=4096, generator=gens(6))
    assert cert.norm == "l1" and cert.method == "smoothing-uniform"
    ok = ~cert.abstained
    assert (cert.radius[ok] <= margin.abs().double()[ok] + 1e-12).all()
    assert ((margin.abs().double() - cert.radius)[margin.abs() > 0.05] < 0.02).all()
    # (b) generic direction, Monte Carlo at the vertices
    v = torch.randn(D, generator=g)
    v[3] = 4.0  # one dominant pixel makes the certificate nearly tight
    c = -float((x.flatten(1) @ v).median()) + 0.5
    smooth = SmoothedClassifier(linear(v, c), Uniform(lam=lam), 2, "contiguous")
    cert = smooth.certify(x, n0=100, n=50_000, alpha=0.001, batch_size=4096, generator=gens(6))
    u = Uniform(lam=lam).sample((400_000, D), torch.Generator().manual_seed(99), "cpu",
                                torch.float64)
    s = u @ v.double()
    checked = 0
    for i in range(6):
        if cert.abstained[i]:
            continue
        r = float(cert.radius[i])
        m = float(x[i].flatten().double() @ v.double() + c)
        sign = 1.0 if int(cert.prediction[i]) == 0 else -1.0
        for j in range(D):
            for step in (r, -r):
                m_vertex = m + step * float(v[j])
                p_a = float(((sign * (m_vertex + s)) > 0).double().mean())
                assert p_a > 0.5, (i, j, step, p_a)
        checked += 1
    assert checked >= 3
    # the l-inf variant: the dimension comes from the input, radii are the l1 ones shrunk
    linf = SmoothedClassifier(linear(v, c), Uniform(lam=lam, norm="linf"), 2, "contiguous")
    cert_inf = linf.certify(x, n0=100, n=50_000, alpha=0.001, batch_size=4096, generator=gens(6))
    assert cert_inf.norm == "linf" and cert_inf.params["dim"] == D
    assert torch.equal(cert_inf.abstained, cert.abstained)
    assert (cert_inf.radius <= cert.radius).all()
    assert (cert_inf.radius[~cert.abstained] >= cert.radius[~cert.abstained] / D).all()


def test_laplace_l1_radius_is_tight_for_a_single_pixel_classifier() -> None:
    lam = 0.2
    x = 0.3 + 0.4 * torch.rand(6, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(8))
    e0 = torch.zeros(D)
    e0[0] = 1.0
    margin = (x.flatten(1)[:, 0] - 0.5).double()
    smooth = SmoothedClassifier(linear(e0, -0.5), Laplace(lam=lam), 2, "contiguous")
    cert = smooth.certify(x, n0=100, n=50_000, alpha=0.001, batch_size=4096, generator=gens(6))
    assert cert.norm == "l1" and cert.params["lam"] == lam
    ok = ~cert.abstained
    assert (cert.radius[ok] <= margin.abs()[ok] + 1e-12).all()
    clear = margin.abs() > 0.05
    assert (~cert.abstained[clear]).all()
    assert ((margin.abs() - cert.radius)[clear] < 0.03).all()


def test_noise_is_independent_of_batching_and_chunk_size(plane) -> None:
    model, x, _, _ = plane
    smooth = SmoothedClassifier(model, Gaussian(sigma=0.5), 2, "contiguous")
    together = smooth.certify(x[:5], n0=30, n=700, alpha=0.01, batch_size=97, generator=gens(5))
    alone = [smooth.certify(x[i : i + 1], n0=30, n=700, alpha=0.01, batch_size=256,
                            generator=[gens(5)[i]]) for i in range(5)]
    assert torch.equal(together.extra["nA"], torch.cat([a.extra["nA"] for a in alone]))
    assert torch.equal(together.radius, torch.cat([a.radius for a in alone]))
    # one generator for the batch: reproducible, and the same as its derived per-input seeds
    g1 = smooth.certify(x[:5], n0=30, n=700, alpha=0.01, batch_size=64,
                        generator=torch.Generator().manual_seed(3))
    g2 = smooth.certify(x[:5], n0=30, n=700, alpha=0.01, batch_size=200,
                        generator=generators_for(x[:5], torch.Generator().manual_seed(3)))
    assert torch.equal(g1.extra["nA"], g2.extra["nA"])


def test_mode_layout_and_gradients_are_left_alone() -> None:
    torch.manual_seed(0)
    model = build("small-cnn", num_classes=3, in_channels=1, input_size=16,
                  zero_init_last=False).train()
    strides = [p.stride() for p in model.parameters()]
    x = torch.rand(2, 1, 16, 16)
    smooth = SmoothedClassifier(model, Gaussian(sigma=0.25), 3, memory_format="channels_last")
    with torch.enable_grad():
        cert = smooth.certify(x, n0=4, n=20, alpha=0.1, batch_size=16, generator=gens(2))
    assert model.training and all(m.training for m in model.modules())
    assert [p.stride() for p in model.parameters()] == strides
    assert all(p.grad is None for p in model.parameters())
    assert len(cert) == 2
    # the result does not depend on the layout beyond float rounding
    flat = SmoothedClassifier(model, Gaussian(sigma=0.25), 3, memory_format="contiguous")
    again = flat.certify(x, n0=4, n=20, alpha=0.1, batch_size=16, generator=gens(2))
    assert (again.extra["nA"] - cert.extra["nA"]).abs().max() <= 1


def test_tune_measures_once_and_caches(monkeypatch) -> None:
    torch.manual_seed(0)
    model = build("small-cnn", num_classes=3, in_channels=1, input_size=16, zero_init_last=False)
    x = torch.rand(1, 1, 16, 16)
    plan = tune(model, x, batch_sizes=(8, 16), min_seconds=0.0)
    assert plan.memory_format in ("contiguous", "channels_last") and plan.batch_size in (8, 16)
    calls = []
    monkeypatch.setattr(forward, "_time_forward", lambda *a, **k: calls.append(1) or 1.0)
    assert tune(model, x, batch_sizes=(8, 16), min_seconds=0.0) == plan
    assert calls == []  # cached
    tune(model, x, batch_sizes=(8, 16), min_seconds=0.0, refresh=True)
    assert len(calls) == 4
    # a model without convolutions only tries the contiguous layout
    mlp = build("mlp", num_classes=3, in_channels=1, input_size=4, hidden=())
    assert tune(mlp, torch.rand(1, 1, 4, 4), batch_sizes=(8, 16)).memory_format == "contiguous"
    # one candidate of each: nothing measured
    assert tune(mlp, torch.rand(1, 1, 4, 4), batch_sizes=(32,)) == ForwardPlan(
        memory_format="contiguous", batch_size=32)
    with pytest.raises(ValueError, match="batch_size"):
        ForwardPlan(memory_format="contiguous", batch_size=0)


def test_bf16_precision_is_recorded_or_falls_back(plane, monkeypatch) -> None:
    model, x, _, _ = plane
    smooth = SmoothedClassifier(model, Gaussian(sigma=0.25), 2, "contiguous")
    ref = smooth.certify(x, n0=20, n=300, alpha=0.01, batch_size=256, generator=gens(12))
    if forward.bf16_supported(x.device):
        low = smooth.certify(x, n0=20, n=300, alpha=0.01, batch_size=256, generator=gens(12),
                             precision="bf16")
        assert low.params["precision"] == "bf16"
        assert (low.prediction == ref.prediction).float().mean() >= 0.9
    monkeypatch.setattr(forward, "bf16_supported", lambda device: False)
    with pytest.warns(UserWarning, match="bf16"):
        fb = smooth.certify(x, n0=20, n=300, alpha=0.01, batch_size=256, generator=gens(12),
                            precision="bf16")
    assert fb.params["precision"] == "fp32"
    assert torch.equal(fb.extra["nA"], ref.extra["nA"])


def test_bad_inputs_raise(plane) -> None:
    model, x, _, _ = plane
    smooth = SmoothedClassifier(model, Gaussian(sigma=0.25), 2, "contiguous")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        smooth.certify(x * 3, n0=1, n=10, batch_size=8)
    with pytest.raises(ValueError, match="n0"):
        smooth.certify(x, n0=0, n=10, batch_size=8)
    with pytest.raises(ValueError, match="alpha"):
        smooth.certify(x, n0=1, n=10, alpha=1.0, batch_size=8)
    with pytest.raises(ValueError, match="num_classes=3"):
        SmoothedClassifier(model, Gaussian(), 3, "contiguous").certify(x, n0=1, n=4, batch_size=8)
    with pytest.raises(ValueError, match="num_classes"):
        SmoothedClassifier(model, Gaussian(), 1)
    with pytest.raises(ValueError, match="valid choices"):
        SmoothedClassifier(model, Gaussian(), 2, "nhwc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="valid choices"):
        smooth.certify(x, n0=1, n=4, batch_size=8, precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="generators"):
        smooth.certify(x, n0=1, n=4, batch_size=8, generator=gens(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isfinite(float(smooth.certify(x[:1], n0=1, n=4, batch_size=8).radius[0]))


def test_certifier_classes_wrap_certify_and_predict(plane) -> None:
    model, x, _, _ = plane
    smooth = SmoothedClassifier(model, Gaussian(sigma=0.25), 2, "contiguous")
    two = CohenCertifier(smoothed=smooth, n0=20, n=300, alpha=0.01, two_class=True,
                         batch_size=256)
    cert = two.certify(x, gens(12))
    ref = smooth.certify(x, n0=20, n=300, alpha=0.01, batch_size=256, generator=gens(12),
                         two_class=True)
    assert torch.equal(cert.radius, ref.radius) and torch.equal(cert.extra["nA"], ref.extra["nA"])
    d = two.details(cert, 0)
    assert list(d) == ["counts", "p_lower", "p_upper_b"]
    assert list(d["counts"]) == ["nA", "n", "nB"] and d["counts"]["n"] == 300
    head = two.header(x[:1], {"seed": 1, "skip": 2, "num_images": 12})
    assert list(head) == ["noise", "sigma", "norm", "num_classes", "n0", "n", "alpha", "seed",
                          "skip", "num_images", "precision", "mode", "two_class"]
    assert two.inputs_per_call == 12 and two.device == torch.device("cpu")
    pred = PredictCertifier(smoothed=smooth, n=400, alpha=0.001, batch_size=400)
    out = pred.certify(x, gens(12, seed=5))
    again = smooth.predict(x, n=400, alpha=0.001, batch_size=400, generator=gens(12, seed=5))
    assert torch.equal(out.prediction, again.prediction) and (out.radius == 0).all()
    assert pred.details(out, 0)["counts"]["n"] == 400
    with pytest.raises(ValueError, match="n0"):
        CohenCertifier(smoothed=smooth, n0=0)
    with pytest.raises(ValueError, match="batch_size"):
        PredictCertifier(smoothed=smooth, batch_size=0)
    small = CohenCertifier.small(model, 2, n=200)
    assert small.n == 200 and small.n0 == 32 and small.smoothed.memory_format == "contiguous"
