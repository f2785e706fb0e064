"""Contract of every registered certifier (``bastion.certify.registry.CERTIFIERS``).

Parametrised over the registry and over every noise of ``bastion.noise`` (each norm a
noise offers) at collection time. Each certifier is built with its ``small`` classmethod
(the registry's protocol for tests) and checked on a base classifier whose smoothed
classifier is known exactly: a two-class linear model ``f(x) = argmax(W x + b)``. For any
noise symmetric about 0, ``P(w . (x + eta) + b > 0) > 1/2`` iff ``w . x + b > 0``, so the
smoothed classifier ``g`` equals ``f`` (Cohen et al. 2019, arXiv 1902.02918, for the
Gaussian case), and the distance of ``x`` to ``g``'s decision boundary is exactly
``|w . x + b| / ||w||_q`` in the norm dual to ``q`` (l2: ``||w||_2``; l1: ``||w||_inf``;
linf: ``||w||_1``).

The contract (``records.Certificate``, ``certify.registry``, ``certify.pipeline.Certifier``):
the result is a ``Certificate`` of the right length in the noise's norm, radius exactly 0
where abstained; a non-abstained prediction is ``g(x)``; the radius never exceeds the exact
distance to the boundary; a strong attack on ``g`` (= ``f``) at 0.99 of the radius never
changes the prediction (l2: L2 PGD, linf: L-inf PGD; l1: bastion has no l1 attack, the
exact distance is the check); the certificate of an input does not depend on which inputs
are certified with it; the base model's modes and gradients are left alone.

A certifier of l0 budgets (``norm = "l0"``: MMCert's sub-sampling) draws no noise and has
its own problem: ``PixelVotes`` on 4x4 images with one pixel kept per sub-sample, whose
smoothed classifier is class 1 iff most pixels exceed 1/2 and whose exact l0 distance (the
fewest modified pixels that end that strict majority) is known (``_tiny.exact_l0_distance``);
the certified budget must lie below it.

The guarantee is probabilistic (each radius holds with probability >= 1 - alpha). The runs
are seeded, and ``alpha`` is lowered to ``ALPHA`` where the certifier has that field, so
that a legitimate change of the noise stream is unlikely to trip a tight comparison.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from typing import Any

import pytest
import torch

from bastion.attacks import pgd
from bastion.certify.pipeline import Certifier
from bastion.certify.registry import CERTIFIERS
from bastion.noise import NOISES, from_std
from bastion.records import Certificate
from bastion.types import CERT_NORMS
from tests.contracts._tiny import (
    PixelVotes,
    exact_distance,
    exact_l0_distance,
    grads_left,
    linear_binary,
    linear_margin,
    mode_flags,
    perturbation_norm,
    pixel_vote_fraction,
)

STD = 0.25  # per-coordinate noise standard deviation, pixel units
ALPHA = 1e-3
SHAPE = (1, 2, 2)  # d = 4: small enough that the uniform l-inf radius is not vacuous
POINTS = 16
MAX_DISTANCE = 0.3  # every point's nearest boundary point is inside [0, 1]^d
ATTACK_NORMS = ("l2", "linf")
# Extra settings of a certifier tested besides its ``small`` defaults.
VARIANTS: dict[str, list[dict[str, Any]]] = {"smoothing-cohen": [{"two_class": True}],
                                          "mmcert": [{"bound": "complement"}]}


def _noises() -> list[tuple[str, Any]]:
    """Every noise of ``bastion.noise`` at std ``STD``, once per norm it can certify."""
    out = []
    for name in NOISES:
        base = from_std(name, STD)
        fields = {f.name for f in dataclasses.fields(base)}
        if "norm" not in fields:
            out.append((f"{name}-{base.norm}", base))
            continue
        for norm in CERT_NORMS:
            with contextlib.suppress(ValueError):  # a norm this noise does not certify
                out.append((f"{name}-{norm}", dataclasses.replace(base, norm=norm)))
    return out


NOISE_CASES = _noises()
CERTIFIER_CASES = [
    pytest.param(name, opts, id=name + "".join(f"-{k}={v}" for k, v in opts.items()))
    for name in sorted(CERTIFIERS) for opts in [{}, *VARIANTS.get(name, [])]
]


def _noise_cases(name: str) -> list[tuple[str, Any]]:
    """The noises a certifier is checked with: all of them for a smoothing certifier; for
    one that draws no noise (``NOISE_FREE``, e.g. the Lipschitz margin), the first noise
    case of the norm it certifies (the noise only picks the problem's norm)."""
    cls = CERTIFIERS[name]
    if getattr(cls, "norm", None) == "l0":
        return [("subsample-l0", None)]
    if not getattr(cls, "NOISE_FREE", False):
        return NOISE_CASES
    return [next(c for c in NOISE_CASES if c[1].norm == cls.norm)]


CASES = [
    pytest.param(name, opts, case, id=f"{p.id}-{case[0]}")
    for p in CERTIFIER_CASES for name, opts in [p.values] for case in _noise_cases(name)
]


L0_SIDE = 4  # 16 pixels, one kept per sub-sample


def _l0_problem() -> tuple[PixelVotes, torch.Tensor]:
    """``PixelVotes`` and ``POINTS`` 4x4 images with 0 to 16 pixels above 1/2."""
    g = torch.Generator().manual_seed(12)
    n = L0_SIDE * L0_SIDE
    above = torch.linspace(0, n, POINTS).round().long()
    x = 0.5 * torch.rand(POINTS, n, generator=g)  # all below the threshold
    for i, c in enumerate(above.tolist()):
        pos = torch.randperm(n, generator=g)[:c]
        x[i, pos] = 0.55 + 0.4 * torch.rand(c, generator=g)
    return PixelVotes((L0_SIDE, L0_SIDE)), x.view(POINTS, 1, L0_SIDE, L0_SIDE)


def _problem(norm: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """A two-class linear model and ``POINTS`` interior inputs at distances up to
    ``MAX_DISTANCE`` from its boundary, on both sides of it.

    The direction ``w`` is where the certificates of that norm are tight, so that an
    inflated radius shows: any direction for l2 (Gaussian smoothing is rotation
    invariant), an axis for l1 (Laplace and uniform radii are exact in one dimension),
    all coordinates equally for linf (the uniform l-inf radius comes closest there).
    For l0: ``_l0_problem``.
    """
    if norm == "l0":
        return _l0_problem()
    d = math.prod(SHAPE)
    g = torch.Generator().manual_seed(11)
    if norm == "l2":
        w = torch.randn(d, generator=g)
    elif norm == "l1":
        w = torch.zeros(d)
        w[0] = 1.0
    else:
        w = torch.tensor([1.0, -1.0, 1.0, 1.0])
    w = w / w.norm(p={"l2": 2, "l1": float("inf"), "linf": 1}[norm])  # distance = |margin|
    centre = torch.full((d,), 0.5)
    b = float(-(w @ centre))
    model = linear_binary(w, b)
    # Points spread along w around the centre (plus noise across it), so that their
    # distances cover (0, MAX_DISTANCE] on both sides of the boundary.
    target = torch.linspace(-MAX_DISTANCE, MAX_DISTANCE, POINTS + 1)
    target = target[target.abs() > 1e-3][:POINTS]
    step = w / (w @ w)  # moving by t * step changes the margin by t
    jitter = 0.05 * (torch.rand(POINTS, d, generator=g) - 0.5)
    jitter = jitter - (jitter @ w)[:, None] * step[None, :]  # keep the margin
    x = centre + target[:, None] * step[None, :] + jitter
    assert float(x.min()) >= 0.05 and float(x.max()) <= 0.95
    x = x.view(POINTS, *SHAPE).float()
    assert (exact_distance(model, x, norm) <= MAX_DISTANCE + 1e-6).all()
    return model, x


def _build(name: str, opts: dict[str, Any], model, noise) -> Any:
    cls = CERTIFIERS[name]
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    settings = {**({"alpha": ALPHA} if "alpha" in fields else {}), **opts}
    if getattr(cls, "norm", None) == "l0":
        settings.setdefault("keep", (1,))
    return cls.small(model, 2, noise=noise, **settings)


def _norm(name: str, noise) -> str:
    return CERTIFIERS[name].norm if noise is None else noise.norm


def _generators(n: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(1000 + offset + i) for i in range(n)]


def _certify(name, opts, noise_case):
    label, noise = noise_case
    model, x = _problem(_norm(name, noise))
    certifier = _build(name, opts, model, noise)
    return model, x, certifier, certifier.certify(x, _generators(len(x)))


@pytest.mark.parametrize(("name", "opts", "noise_case"), CASES)
def test_certificate_record_and_protocol(name, opts, noise_case):
    _, noise = noise_case
    model, x = _problem(_norm(name, noise))
    model.train()  # the certifier must run it in eval mode and restore the flags
    flags = mode_flags(model)
    certifier = _build(name, opts, model, noise)
    assert isinstance(certifier, Certifier), f"{name} lacks part of the Certifier protocol"
    assert certifier.device == torch.device("cpu")
    assert isinstance(certifier.inputs_per_call, int) and certifier.inputs_per_call >= 1
    cert = certifier.certify(x, _generators(len(x)))
    assert mode_flags(model) == flags and grads_left(model) == []

    assert isinstance(cert, Certificate)
    assert len(cert) == len(x)
    assert cert.prediction.dtype == torch.int64 and cert.prediction.shape == (len(x),)
    assert ((cert.prediction >= 0) & (cert.prediction < 2)).all()
    assert cert.radius.dtype == torch.float64 and cert.abstained.dtype == torch.bool
    assert cert.norm == _norm(name, noise), f"{name}: certificate in {cert.norm}, noise {noise}"
    assert (cert.radius[cert.abstained] == 0).all(), "an abstention with a radius"
    assert (cert.radius >= 0).all() and torch.isfinite(cert.radius).all()
    assert isinstance(cert.method, str) and cert.method
    json.dumps(cert.params)
    run = {"seed": 0, "skip": 1, "num_images": len(x)}
    header = certifier.header(x[:1], run)
    json.dumps(header)
    assert all(header[k] == v for k, v in run.items()), "header must carry the run entries"
    for j in range(len(x)):
        json.dumps(certifier.details(cert, j))
    assert (~cert.abstained).any(), f"{name} certified nothing: the contract checks are vacuous"


@pytest.mark.parametrize(("name", "opts", "noise_case"), CASES)
def test_certificate_is_never_contradicted(name, opts, noise_case):
    model, x, _, cert = _certify(name, opts, noise_case)
    norm = cert.norm
    ok = ~cert.abstained
    if norm == "l0":
        g_x = (pixel_vote_fraction(model, x) > 0.5).long()
        assert torch.equal(cert.prediction[ok], g_x[ok]), (
            f"{name}: certified a class the smoothed classifier does not predict at x")
        dist = exact_l0_distance(model, x)
        over = ok & (cert.radius >= dist)
        assert not over.any(), (
            f"{name}: certified {cert.radius[over].tolist()} modified pixels where "
            f"{dist[over].tolist()} change the prediction")
        assert (cert.radius[ok] > 0).any(), f"{name}: no positive l0 radius; check is vacuous"
        return
    with torch.no_grad():
        f_x = (linear_margin(model, x) > 0).long()
    assert torch.equal(cert.prediction[ok], f_x[ok]), (
        f"{name}: certified a class the smoothed classifier does not predict at x"
    )
    dist = exact_distance(model, x, norm)
    over = ok & (cert.radius > dist + 1e-7)
    assert not over.any(), (
        f"{name}/{norm}: radius beyond the exact distance to the boundary at points "
        f"{over.nonzero().flatten().tolist()}: radius {cert.radius[over].tolist()} > "
        f"distance {dist[over].tolist()}"
    )
    attacked = ok & (cert.radius > 0)
    if norm not in ATTACK_NORMS or not attacked.any():
        return
    idx = attacked.nonzero().flatten()
    eps = (0.99 * cert.radius[idx]).float()
    r = pgd(model, x[idx], cert.prediction[idx], eps=eps, norm=norm, steps=100,
            step_size=eps / 4, objective="margin", restarts=3, keep_best=True,
            generator=torch.Generator().manual_seed(5))
    assert (perturbation_norm(r.x_adv - x[idx], norm) <= eps.double() + 1e-5).all()
    with torch.no_grad():
        pred = model(r.x_adv).argmax(1)
    flipped = pred != cert.prediction[idx]
    assert not flipped.any(), (
        f"{name}/{norm}: PGD at 0.99 of the certified radius changed the prediction at "
        f"points {idx[flipped].tolist()} (radius {cert.radius[idx][flipped].tolist()})"
    )


@pytest.mark.parametrize(("name", "opts"), CERTIFIER_CASES)
def test_certificate_does_not_depend_on_batching(name, opts):
    """Input ``j`` draws from ``generators[j]`` only (``pipeline.Certifier``)."""
    noise = _noise_cases(name)[0][1]
    model, x = _problem(_norm(name, noise))
    certifier = _build(name, opts, model, noise)
    gens = _generators(len(x))
    whole = certifier.certify(x, gens)
    k = 5
    parts = [certifier.certify(x[:k], _generators(k)),
             certifier.certify(x[k:], _generators(len(x) - k, offset=k))]
    for field in ("prediction", "radius", "abstained"):
        joined = torch.cat([getattr(p, field) for p in parts])
        assert torch.equal(getattr(whole, field), joined), f"{name}: {field} depends on batching"
