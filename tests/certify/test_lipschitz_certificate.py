"""The Lipschitz-margin certificate: exact on linear models, never contradicted by strong L2
attacks at 0.99 of the radius on trained networks, no ties, no normalisation-epsilon bug,
identical after export, and a valid pipeline certifier."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from bastion.attacks import pgd
from bastion.attacks.ddn import ddn
from bastion.certify.lipschitz import (
    LipschitzCertifier,
    certify_lipschitz,
    empirical_lipschitz,
    margin_radius,
)
from bastion.certify.pipeline import Certifier, certify_dataset
from bastion.data import load_dataset
from bastion.errors import InputError
from bastion.models import build
from bastion.models.lipschitz import export_plain, network_bound
from bastion.train import GloRo, fit


def _linear(w: torch.Tensor, b: torch.Tensor) -> nn.Sequential:
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return nn.Sequential(nn.Flatten(), lin).eval()


def test_radius_is_the_exact_distance_for_a_linear_classifier() -> None:
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(4, 12, generator=g), torch.randn(4, generator=g)
    model = _linear(w, b)
    x = torch.rand(30, 1, 3, 4, generator=g)
    cert = certify_lipschitz(model, x, method="svd")
    z = x.flatten(1).double() @ w.double().T + b.double()
    pred = z.argmax(1)
    # distance to the nearest pairwise boundary {f_y = f_j}: the exact L2 robust radius
    # of a linear multi-class model
    wd = w.double()
    dist = torch.stack([
        min((z[n, pred[n]] - z[n, j]) / (wd[pred[n]] - wd[j]).norm()
            for j in range(4) if j != pred[n]) for n in range(len(x))])
    assert torch.equal(cert.prediction, pred)
    assert (cert.radius <= dist).all()
    assert torch.allclose(cert.radius, dist, rtol=1e-8, atol=0)


def test_a_tie_for_the_top_logit_is_never_certified() -> None:
    # gloro issue #9: tied top logits certified as robust
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    model = _linear(w, torch.zeros(3))
    x = torch.tensor([[[[0.5, 0.2]]], [[[0.0, 0.7]]]])
    cert = certify_lipschitz(model, x)
    assert cert.abstained.all() and (cert.radius == 0).all()
    pred, radius, tie, _ = margin_radius(torch.tensor([[2.0, 2.0, 0.0]], dtype=torch.float64),
                                         torch.ones(3, 3, dtype=torch.float64), dim=4)
    assert bool(tie[0]) and float(radius[0]) == 0.0


def test_identical_rows_get_the_cube_diameter_not_infinity() -> None:
    logits = torch.tensor([[3.0, 1.0]], dtype=torch.float64)
    pair = torch.zeros(2, 2, dtype=torch.float64)
    _, radius, tie, _ = margin_radius(logits, pair, dim=16)
    assert not bool(tie[0]) and math.isclose(float(radius[0]), 4.0, rel_tol=1e-8)


def _relu_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32),
                         nn.ReLU(), nn.Linear(32, 5)).eval()


def test_tiny_weights_do_not_inflate_the_radius() -> None:
    # gloro issue #8: an epsilon in the norm estimate under-estimates layers with tiny
    # weights. Scaling the first layer's weight and every layer's bias by c > 0 scales
    # every logit by c and the first layer's norm by c (ReLU is positively homogeneous),
    # so the true certified radius is unchanged: a bound that under-estimates the tiny
    # layer would inflate it.
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    model = _relu_net()
    tiny = copy.deepcopy(model)
    with torch.no_grad():
        tiny[1].weight.mul_(1e-9)
        for layer in (tiny[1], tiny[3], tiny[5]):
            layer.bias.mul_(1e-9)
    a = certify_lipschitz(model, x)
    b = certify_lipschitz(tiny, x)
    assert torch.equal(a.prediction, b.prediction)
    assert torch.allclose(a.radius, b.radius, rtol=1e-6)
    bound = network_bound(tiny, x[:1])
    exact = float(torch.linalg.matrix_norm(tiny[1].weight.detach().double(), ord=2))
    assert bound.layers[1].constant >= exact


def test_per_logit_constants_give_smaller_radii_than_pairwise() -> None:
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    model = _relu_net(3)
    pair = certify_lipschitz(model, x)
    per = certify_lipschitz(model, x, per_logit=True)
    assert (per.radius <= pair.radius + 1e-12).all()
    assert (per.radius < pair.radius).any()


def test_unsound_method_warns_and_unknown_method_raises() -> None:
    model = _relu_net()
    with pytest.warns(UserWarning, match="not a guaranteed upper bound"):
        LipschitzCertifier(model=model, num_classes=5, method="power")
    with pytest.raises(InputError, match="unknown bound method"):
        LipschitzCertifier(model=model, num_classes=5, method="frobenius")


def test_certifier_protocol_and_pipeline_rows(tmp_path) -> None:
    model = _relu_net()
    x = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 5, (12,), generator=torch.Generator().manual_seed(5))
    c = LipschitzCertifier(model=model, num_classes=5, batch_size=5)
    assert isinstance(c, Certifier)
    out = tmp_path / "cert.jsonl"
    rows = certify_dataset(c, x, y, out_path=out)
    direct = c.certify(x)
    assert [r.radius for r in rows] == pytest.approx(direct.radius.tolist(), rel=0, abs=0)
    again = certify_dataset(c, x, y, out_path=out)  # resumes: nothing recomputed
    assert [r.radius for r in again] == [r.radius for r in rows]


# ------------------------------------------------------------- trained networks vs attacks


@pytest.fixture(scope="module")
def trained() -> dict[str, nn.Module]:
    """Two small networks trained on the digits for a few seconds: a GloRo lipschitz-cnn
    (MaxMin) and a plain ReLU small MLP (standard training)."""
    torch.manual_seed(0)
    data = load_dataset("digits", "train")
    models = {}
    for name, arch, method in [
        ("gloro", build("lipschitz-cnn", dataset="digits", input_size=8, channels=(16, 32),
                        hidden=(64,)), GloRo(eps=0.3, warmup_epochs=3)),
        ("lls", build("lipschitz-cnn", dataset="digits", input_size=8, channels=(16, 32),
                      hidden=(64,), activation="lls"), GloRo(eps=0.3, warmup_epochs=3)),
    ]:
        opt = torch.optim.Adam(arch.parameters(), lr=3e-3)
        fit(arch, method, data, opt, epochs=8, batch_size=64)
        models[name] = arch.eval()
    return models


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gloro", "lls"])
def test_no_attack_inside_the_certified_radius_of_trained_networks(trained, name) -> None:
    model = trained[name]
    test = load_dataset("digits", "test")
    x, y = test.images[:120], test.labels[:120]
    cert = certify_lipschitz(model, x, labels=y)
    ok = (~cert.abstained) & (cert.radius > 1e-4)
    assert int(ok.sum()) >= 30, "too few certified points for the check to mean anything"
    idx = ok.nonzero().flatten()
    eps = (0.99 * cert.radius[idx]).float()
    xa, pred = x[idx], cert.prediction[idx]
    r = pgd(model, xa, pred, eps=eps, norm="l2", steps=100, step_size=eps / 4,
            objective="margin", restarts=3, keep_best=True,
            generator=torch.Generator().manual_seed(7))
    delta = (r.x_adv - xa).flatten(1).norm(dim=1)
    assert (delta <= eps + 1e-5).all()
    with torch.no_grad():
        assert torch.equal(model(r.x_adv).argmax(1), pred), "PGD broke a certificate"
    # the minimal attack's perturbation is never below the certified radius
    m = ddn(model, xa, pred, steps=200, init_norm=float(eps.mean()))
    found = m.success
    assert (m.norm[found].double() >= cert.radius[idx][found] * 0.99).all()
    assert float(cert.radius[idx].mean()) > 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gloro", "lls"])
def test_certified_constants_lie_above_empirical_lower_bounds(trained, name) -> None:
    model = trained[name]
    x = load_dataset("digits", "test").images[:16]
    bound = network_bound(model, x[:1])
    pair = bound.pairwise()
    for i, j in [(0, 1), (3, 8), (4, 9)]:
        low = empirical_lipschitz(model, x, i, j, steps=60)
        assert low > 0
        assert float(pair[i, j]) >= low, f"K_{i}{j} = {float(pair[i, j])} below {low}"


@pytest.mark.slow
def test_export_keeps_the_certificate_identical(trained) -> None:
    model = build("lipschitz-cnn", dataset="digits", input_size=8, constraint="spectral")
    model.train()
    model(torch.rand(4, 1, 8, 8))  # advance the power vectors once
    model.eval()
    x = load_dataset("digits", "test").images[:40]
    before = certify_lipschitz(model, x)
    plain = export_plain(copy.deepcopy(model))
    after = certify_lipschitz(plain, x)
    assert torch.equal(before.prediction, after.prediction)
    assert torch.equal(before.radius, after.radius)
    assert not any("parametrizations" in n for n, _ in plain.named_modules())
    # the original keeps its constraint (a deepcopy shares the parametrized class)
    assert any("parametrizations" in n for n, _ in model.named_modules())
    model(x)


def test_topk_radii_are_where_the_topk_margins_change_sign() -> None:
    from bastion.certify.lipschitz import topk_radii
    from bastion.losses.gloro import topk_margins

    g = torch.Generator().manual_seed(9)
    logits = torch.randn(60, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 5, generator=g, dtype=torch.float64)
    pair = (w[:, None] - w[None]).norm(dim=2)
    radius, order = topk_radii(logits, pair, 3)
    _, order_m = topk_margins(logits, pair, 0.0, 3)
    assert torch.equal(order, order_m)
    for n in range(60):
        for kp in range(3):
            r = float(radius[n, kp])
            if r > 0:  # certified just inside the radius
                m_in, _ = topk_margins(logits[n:n + 1], pair, 0.999 * r, 3)
                assert float(m_in[0, kp]) > 0
            m_out, _ = topk_margins(logits[n:n + 1], pair, 1.001 * r + 1e-9, 3)
            assert float(m_out[0, kp]) <= 1e-9  # and not beyond it
    # top-1 radius equals the margin certificate's radius
    _, rad1, _, _ = margin_radius(logits, pair, dim=10**6)
    assert torch.allclose(radius[:, 0], rad1, rtol=1e-12)


def test_predict_or_bottom_matches_gloro_rule_with_sound_constants() -> None:
    from bastion.certify.lipschitz import predict_or_bottom, verified_robust_accuracy
    from bastion.losses.gloro import gloro_predict

    model = _relu_net(5)
    x = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(6))
    y = torch.randint(0, 5, (50,), generator=torch.Generator().manual_seed(7))
    bound = network_bound(model.double(), x[:1].double())
    with torch.no_grad():
        z = model(x.double())
    for eps in (0.0, 0.005, 0.02, 0.1):
        ours = predict_or_bottom(model, x.double(), eps)
        ref = gloro_predict(z, bound.pairwise(), eps)
        # the same decision up to the 1e-9 rounding margin (no point sits that close)
        assert torch.equal(ours, ref), eps
        vra = verified_robust_accuracy(model, x.double(), y, eps)
        assert vra == float((ref == y).double().mean())
    assert (predict_or_bottom(model, x.double(), 10.0) == 5).all()
