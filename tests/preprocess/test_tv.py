"""TV minimisation (Guo et al. 2018, arXiv 1711.00117): optimality against independent
reference solvers, the mask convention, the module contract and ART's objective.

References (written here, sharing no code with ``bastion.preprocess.tv``):

- ``_slsqp``: scipy SLSQP on an exact smooth reformulation for anisotropic TV,
  ``min ||m (z - x)||_2 + lam sum_e t_e`` subject to ``-t <= D z <= t`` (the objective is
  smooth wherever the kept residual is nonzero, which holds for the cases used).
- ``_pdhg``: a long run (20 000 iterations, float64) of the Chambolle-Pock primal-dual method
  in numpy, for both TV norms; bastion's solver is ADMM, a different method.

On 6 x 6 images the three agree to about 1e-9 relative; the tests ask 1e-6 of bastion in
float64 with a tight ``tol`` and ``tol`` itself (default 1e-3) in float32.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from bastion.errors import InputError, InputTypeError
from bastion.preprocess import Defended
from bastion.preprocess.tv import TVMinimization, tv_minimize, tv_objective

# ----------------------------------------------------------------- independent references


def _diff_matrix(h: int, w: int) -> np.ndarray:
    """Forward differences as a dense matrix: vertical (row-major) then horizontal."""
    idx = np.arange(h * w).reshape(h, w)
    rows = []
    for i in range(h - 1):
        for j in range(w):
            r = np.zeros(h * w)
            r[idx[i + 1, j]], r[idx[i, j]] = 1.0, -1.0
            rows.append(r)
    for i in range(h):
        for j in range(w - 1):
            r = np.zeros(h * w)
            r[idx[i, j + 1]], r[idx[i, j]] = 1.0, -1.0
            rows.append(r)
    return np.array(rows)


def _np_objective(z: np.ndarray, x: np.ndarray, m: np.ndarray, lam: float, p: int) -> np.ndarray:
    """Per-channel objective of ``[B, H, W]`` arrays, written from the definition."""
    data = np.sqrt(((m * (z - x)) ** 2).sum((1, 2)))
    dv, dh = np.diff(z, axis=1), np.diff(z, axis=2)
    if p == 1:
        tv = np.abs(dv).sum((1, 2)) + np.abs(dh).sum((1, 2))
    else:  # rows of vertical differences, columns of horizontal differences
        tv = np.sqrt((dv ** 2).sum(2)).sum(1) + np.sqrt((dh ** 2).sum(1)).sum(1)
    return data + lam * tv


def _slsqp(x: np.ndarray, m: np.ndarray, lam: float) -> float:
    """Anisotropic-TV optimum of one ``[H, W]`` channel by SLSQP (epigraph of |D z|)."""
    h, w = x.shape
    n = h * w
    d = _diff_matrix(h, w)
    e = d.shape[0]
    xf, mf = x.ravel(), m.ravel().astype(float)

    def f(y: np.ndarray) -> float:
        r = mf * (y[:n] - xf)
        return float(np.sqrt(r @ r) + lam * y[n:].sum())

    def jac(y: np.ndarray) -> np.ndarray:
        r = mf * (y[:n] - xf)
        return np.concatenate([mf * r / max(np.sqrt(r @ r), 1e-300), lam * np.ones(e)])

    a = np.vstack([np.hstack([-d, np.eye(e)]), np.hstack([d, np.eye(e)])])
    z0 = 0.5 * xf + 0.5 * (mf * xf).sum() / max(mf.sum(), 1.0)
    y0 = np.concatenate([z0, np.abs(d @ z0) + 1e-3])
    res = minimize(f, y0, jac=jac, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda y: a @ y, "jac": lambda y: a}],
                   bounds=[(None, None)] * n + [(0.0, None)] * e,
                   options={"ftol": 1e-15, "maxiter": 5000})
    z = res.x[:n].reshape(h, w)
    return float(_np_objective(z[None], x[None], m[None].astype(float), lam, 1)[0])


def _pdhg(x: np.ndarray, m: np.ndarray, lam: float, p: int, iters: int = 20_000) -> np.ndarray:
    """Chambolle-Pock (dual step first, fixed steps) on ``[B, H, W]``; per-channel optima."""
    m = m.astype(float)
    z, zb = x.copy(), x.copy()
    yv = np.zeros((x.shape[0], x.shape[1] - 1, x.shape[2]))
    yh = np.zeros((x.shape[0], x.shape[1], x.shape[2] - 1))
    tau = sig = 0.99 / np.sqrt(8.0)
    for _ in range(iters):
        yv += sig * np.diff(zb, axis=1)
        yh += sig * np.diff(zb, axis=2)
        if p == 1:
            np.clip(yv, -lam, lam, out=yv)
            np.clip(yh, -lam, lam, out=yh)
        else:
            yv *= np.minimum(1.0, lam / np.maximum(np.sqrt((yv ** 2).sum(2, keepdims=True)),
                                                   1e-300))
            yh *= np.minimum(1.0, lam / np.maximum(np.sqrt((yh ** 2).sum(1, keepdims=True)),
                                                   1e-300))
        kty = np.zeros_like(z)
        kty[:, :-1] -= yv
        kty[:, 1:] += yv
        kty[:, :, :-1] -= yh
        kty[:, :, 1:] += yh
        v = z - tau * kty
        r = m * (v - x)
        nr = np.sqrt((r ** 2).sum((1, 2), keepdims=True))
        z_new = v - r * np.minimum(1.0, tau / np.maximum(nr, 1e-300))
        zb = 2.0 * z_new - z
        z = z_new
    return _np_objective(z, x, m, lam, p)


def _problem(seed: int, b: int = 4, h: int = 6, w: int = 6,
             keep: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((b, h, w)), rng.random((b, h, w)) < keep


def _ours(x: np.ndarray, m: np.ndarray, lam: float, p: int, dtype: torch.dtype,
          **kw: float) -> tuple[np.ndarray, object]:
    xt = torch.tensor(x[:, None], dtype=dtype)
    mt = torch.tensor(m[:, None])
    z, info = tv_minimize(xt, mt, lam, tv_norm=p, **kw)
    return tv_objective(z.clamp(0, 1), xt, mt, lam, tv_norm=p).numpy(), info


# --------------------------------------------------------------------- optimality checks

@pytest.mark.parametrize("lam", [0.05, 0.2, 2.0])
def test_anisotropic_matches_slsqp_and_pdhg(lam: float) -> None:
    x, m = _problem(1, b=3)
    slsqp = np.array([_slsqp(x[i], m[i], lam) for i in range(len(x))])
    pdhg = _pdhg(x, m, lam, 1)
    np.testing.assert_allclose(slsqp, pdhg, rtol=1e-7)  # the references agree
    ours64, info = _ours(x, m, lam, 1, torch.float64, tol=1e-8, max_iter=20_000)
    assert info.not_converged == 0
    np.testing.assert_allclose(ours64, pdhg, rtol=1e-6)
    ours32, _ = _ours(x, m, lam, 1, torch.float32)  # defaults: tol = 1e-3
    rel = (ours32 - pdhg) / pdhg
    assert rel.max() <= 1e-3 and rel.min() >= -1e-5
    if lam == 2.0:  # large lam: the constant minimiser is certified without iterating
        assert info.flat == len(x)


@pytest.mark.parametrize("lam", [0.02, 0.1, 1.0])
def test_row_column_tv2_matches_pdhg(lam: float) -> None:
    x, m = _problem(2)
    ref = _pdhg(x, m, lam, 2)
    ours64, info = _ours(x, m, lam, 2, torch.float64, tol=1e-8, max_iter=20_000)
    assert info.not_converged == 0
    np.testing.assert_allclose(ours64, ref, rtol=1e-6)
    ours32, _ = _ours(x, m, lam, 2, torch.float32)
    rel = (ours32 - ref) / ref
    assert rel.max() <= 1e-3 and rel.min() >= -1e-5


def test_exact_fit_regime_matches_pdhg() -> None:
    """Small lam: the kept pixels are fitted exactly (data term at its kink)."""
    x, m = _problem(3, keep=0.3)
    ref = _pdhg(x, m, 0.01, 1)
    ours64, _ = _ours(x, m, 0.01, 1, torch.float64, tol=1e-8, max_iter=20_000)
    np.testing.assert_allclose(ours64, ref, rtol=1e-6)


def test_solution_is_a_local_minimum() -> None:
    """No small random (or single-pixel) perturbation of the solution lowers the objective."""
    x, m = _problem(4, b=2, h=8, w=8)
    xt, mt = torch.tensor(x[:, None]), torch.tensor(m[:, None])
    for p, lam in ((1, 0.05), (2, 0.1)):
        z, _ = tv_minimize(xt, mt, lam, tv_norm=p, tol=1e-9, max_iter=20_000)
        f0 = tv_objective(z, xt, mt, lam, tv_norm=p)
        g = torch.Generator().manual_seed(0)
        for scale in (1e-2, 1e-3, 1e-5):
            for _ in range(100):
                dz = scale * torch.randn(z.shape, generator=g, dtype=z.dtype)
                f = tv_objective(z + dz, xt, mt, lam, tv_norm=p)
                assert (f >= f0 * (1 - 1e-9)).all()
        for k in range(64):  # one pixel up and down
            for sgn in (1.0, -1.0):
                dz = torch.zeros_like(z)
                dz.view(2, -1)[:, k] = sgn * 1e-4
                assert (tv_objective(z + dz, xt, mt, lam, tv_norm=p) >= f0 * (1 - 1e-9)).all()


def test_channels_are_summed_and_solved_separately() -> None:
    x, m = _problem(5, b=4)
    lam = 0.1
    x2 = torch.tensor(x.reshape(2, 2, 6, 6))  # 2 images x 2 channels
    m2 = torch.tensor(m.reshape(2, 2, 6, 6))
    z2, _ = tv_minimize(x2, m2, lam, tol=1e-9, max_iter=20_000)
    per_image = tv_objective(z2, x2, m2, lam)
    per_channel = tv_objective(z2.reshape(4, 1, 6, 6), x2.reshape(4, 1, 6, 6),
                               m2.reshape(4, 1, 6, 6), lam)
    torch.testing.assert_close(per_image, per_channel.reshape(2, 2).sum(1))
    z1, _ = tv_minimize(x2.reshape(4, 1, 6, 6), m2.reshape(4, 1, 6, 6), lam, tol=1e-9,
                        max_iter=20_000)
    torch.testing.assert_close(z2.reshape(4, 1, 6, 6), z1, atol=1e-6, rtol=0)


def test_objective_is_the_definition() -> None:
    x, m = _problem(6, b=3)
    z = np.random.default_rng(7).random(x.shape)
    for p in (1, 2):
        ours = tv_objective(torch.tensor(z[:, None]), torch.tensor(x[:, None]),
                            torch.tensor(m[:, None]), 0.3, tv_norm=p).numpy()
        np.testing.assert_allclose(ours, _np_objective(z, x, m.astype(float), 0.3, p))


# -------------------------------------------------------------------------- mask convention

def test_all_kept_and_no_tv_returns_the_input() -> None:
    x = torch.rand(3, 2, 7, 5, generator=torch.Generator().manual_seed(0))
    tv = TVMinimization(keep_prob=1.0, lam=0.0)
    torch.testing.assert_close(tv(x), x, atol=0, rtol=0)


def test_small_lam_fits_exactly_the_kept_pixels() -> None:
    """The mask marks the kept pixels: those are reproduced, the dropped ones in-painted."""
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    tv = TVMinimization(keep_prob=0.5, lam=1e-3, tol=1e-8, max_iter=20_000)
    z = tv.solve(x, keep)
    torch.testing.assert_close(z[keep], x[keep], atol=1e-6, rtol=0)
    assert (z[~keep] - x[~keep]).abs().max() > 0.05  # the dropped ones are not kept


def test_no_kept_pixel_gives_a_flat_image() -> None:
    x = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(3))
    z = TVMinimization(keep_prob=0.0, lam=0.1)(x)
    torch.testing.assert_close(z, x.mean((2, 3), keepdim=True).expand_as(x))


def test_one_kept_pixel_gives_that_constant() -> None:
    x = torch.rand(1, 1, 10, 10, generator=torch.Generator().manual_seed(4))
    keep = torch.zeros_like(x, dtype=torch.bool)
    keep[0, 0, 3, 6] = True
    z = TVMinimization(lam=0.05).solve(x, keep)
    torch.testing.assert_close(z, torch.full_like(x, float(x[0, 0, 3, 6])))


def test_rare_keeping_is_piecewise_constant() -> None:
    """As keep_prob -> 0 the reconstruction becomes piecewise constant: most neighbours are
    equal and the total variation collapses (a few percent of the input's)."""
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    none = torch.zeros_like(x)
    tv_x = tv_objective(x, x, none, 1.0)
    edges = 2 * 16 * 15
    for keep_prob in (0.05, 0.02):
        tv = TVMinimization(keep_prob=keep_prob, lam=0.1)
        tv.generator = torch.Generator().manual_seed(6)
        z = tv(x)
        assert (tv_objective(z, x, none, 1.0) <= 0.1 * tv_x).all()
        jumps = (((z[:, :, 1:] - z[:, :, :-1]).abs() > 1e-3).sum((1, 2, 3))
                 + ((z[..., 1:] - z[..., :-1]).abs() > 1e-3).sum((1, 2, 3)))
        assert (jumps <= 0.1 * edges).all()


def test_mask_keeps_a_keep_prob_fraction() -> None:
    tv = TVMinimization(keep_prob=0.3)
    tv.generator = torch.Generator().manual_seed(0)
    mask = tv.draw_mask(torch.zeros(10, 3, 32, 32))
    assert mask.dtype == torch.bool and mask.shape == (10, 3, 32, 32)
    assert abs(mask.float().mean().item() - 0.3) < 0.01


# ------------------------------------------------------------------------ module contract

def test_declarations_and_config_round_trip() -> None:
    tv = TVMinimization(keep_prob=0.4, lam=0.2, tv_norm=2, max_iter=50, tol=1e-2)
    assert (tv.randomized, tv.differentiable, tv.costly) == (True, False, True)
    assert isinstance(tv.bpda_standin(), torch.nn.Identity)
    cfg = json.loads(json.dumps(tv.config()))
    assert cfg == {"keep_prob": 0.4, "lam": 0.2, "tv_norm": 2, "max_iter": 50, "tol": 0.01}
    assert TVMinimization(**cfg).config() == cfg
    assert "keep_prob=0.4" in repr(tv)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_shape_dtype_device_range(dtype: torch.dtype) -> None:
    x = torch.rand(3, 3, 12, 10, generator=torch.Generator().manual_seed(7)).to(dtype)
    tv = TVMinimization(keep_prob=0.5, lam=0.05)
    z = tv(x)
    assert z.shape == x.shape and z.dtype == dtype and z.device == x.device
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
    assert tv.last_info is not None and tv.last_info.channels == 9


def test_randomized_draws_and_seeded_reproducibility() -> None:
    x = torch.rand(2, 1, 10, 10, generator=torch.Generator().manual_seed(8))
    tv = TVMinimization(keep_prob=0.5, lam=0.05)
    assert not torch.equal(tv(x), tv(x))  # global generator: a fresh mask each call
    tv.generator = torch.Generator().manual_seed(123)
    a = tv(x)
    tv.generator = torch.Generator().manual_seed(123)
    torch.testing.assert_close(tv(x), a, atol=0, rtol=0)
    tv.generator = torch.Generator().manual_seed(124)
    assert not torch.equal(tv(x), a)


def test_no_gradient_and_defended_forward() -> None:
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(9), requires_grad=True)
    tv = TVMinimization(keep_prob=0.5, lam=0.05)
    z = tv(x)
    assert not z.requires_grad
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 4))
    assert Defended(tv, model)(x).shape == (2, 4)


def test_max_iter_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(10))
    tv = TVMinimization(keep_prob=0.5, lam=0.05, max_iter=3)
    with caplog.at_level(logging.WARNING, logger="bastion.preprocess.tv"):
        tv(x)
    assert tv.last_info is not None and tv.last_info.not_converged > 0
    assert "max_iter=3" in caplog.text


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"keep_prob": -0.1}, InputError, ("keep_prob", "-0.1", "[0, 1]")),
    ({"keep_prob": 1.5}, InputError, ("keep_prob", "1.5", "[0, 1]")),
    ({"keep_prob": float("nan")}, InputError, ("keep_prob", "nan")),
    ({"keep_prob": "0.3"}, InputTypeError, ("keep_prob",)),
    ({"keep_prob": True}, InputTypeError, ("keep_prob",)),
    ({"lam": -1.0}, InputError, ("lam", "-1.0", ">= 0")),
    ({"lam": float("inf")}, InputError, ("lam", "inf")),
    ({"tv_norm": 3}, InputError, ("tv_norm", "3", "1", "2")),
    ({"max_iter": 0}, InputError, ("max_iter", "0", ">= 1")),
    ({"max_iter": 2.5}, InputTypeError, ("max_iter", "2.5")),
    ({"tol": 0.0}, InputError, ("tol", "0.0", "> 0")),
    ({"tol": 1.0}, InputError, ("tol", "1.0", "(0, 1)")),
])
def test_bad_arguments(kwargs: dict, error: type, words: tuple[str, ...]) -> None:
    with pytest.raises(error) as err:
        TVMinimization(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_bad_inputs() -> None:
    tv = TVMinimization()
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        tv(torch.full((1, 1, 4, 4), 2.0))
    with pytest.raises(InputError, match="4 dimensions"):
        tv(torch.rand(4, 4))
    with pytest.raises(InputError, match="mask must have the shape"):
        tv.solve(torch.rand(1, 1, 4, 4), torch.ones(1, 1, 4, 5, dtype=torch.bool))
    with pytest.raises(InputError, match="z must have the shape"):
        tv_objective(torch.rand(1, 1, 4, 3), torch.rand(1, 1, 4, 4),
                     torch.ones(1, 1, 4, 4), 0.1)


# ------------------------------------------------------------------------------------ ART

def test_art_objective_mask_and_solution() -> None:
    """ART's TotalVarMin: its loss is our per-channel objective, its mask marks the kept
    pixels, and on the same mask our minimum is no higher than what ART reaches."""
    vm = pytest.importorskip("art.defences.preprocessor.variance_minimization")
    x, m = _problem(11, b=3, h=8, w=8)
    z = np.random.default_rng(12).random(x.shape)
    for p in (1, 2):
        art_loss = [vm.TotalVarMin._loss_func(z[i].ravel(), x[i], m[i].astype(int), p, 0.3)
                    for i in range(3)]
        ours = tv_objective(torch.tensor(z[:, None]), torch.tensor(x[:, None]),
                            torch.tensor(m[:, None]), 0.3, tv_norm=p).numpy()
        np.testing.assert_allclose(ours, art_loss, rtol=1e-12)
    for p in (1, 2):
        art = vm.TotalVarMin(prob=0.5, norm=p, lamb=0.1, max_iter=200)
        z_art = np.stack([art._minimize(x[i][:, :, None], m[i][:, :, None].astype(int))[:, :, 0]
                          for i in range(3)])
        f_art = _np_objective(np.clip(z_art, 0, 1), x, m.astype(float), 0.1, p)
        f_ours, _ = _ours(x, m, 0.1, p, torch.float32)
        assert (f_ours <= f_art * (1 + 1e-6)).all()
