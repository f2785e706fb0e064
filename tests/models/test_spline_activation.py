"""LinearSpline: 1-Lipschitz for any parameters, seed formula, inits, end slopes, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.errors import InputError, InputTypeError
from bastion.models.lipschitz.spline import LinearSpline, clip_slopes


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spline(
    c: int = 3, k: int = 11, r: float = 2.0, init: str = "relu", dtype: torch.dtype = torch.float64
) -> LinearSpline:
    """A spline built in ``dtype`` (grid and initial values rounded once, in that dtype)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return LinearSpline(c, num_knots=k, knot_range=r, init=init)
    finally:
        torch.set_default_dtype(old)


def _seed_formula(m: LinearSpline, x: torch.Tensor) -> torch.Tensor:
    """``b1 + b2 x + sum_k a_k ReLU(x - tau_k)`` per channel, from ``coefficients()``."""
    b1, b2, a, tau = (t.detach() for t in m.coefficients())
    shape = (1, -1) + (1,) * (x.dim() - 2)
    out = b1.view(shape) + b2.view(shape) * x
    for k in range(tau.numel()):
        out = out + a[:, k].view(shape) * torch.relu(x - tau[k])
    return out


def _adversarial_values(m: LinearSpline) -> list[torch.Tensor]:
    c, n = m.values.shape
    j = torch.arange(n, dtype=torch.float64)
    return [
        1e3 * torch.randn(c, n, generator=_gen(0), dtype=torch.float64),
        1e6 * (-1.0) ** j.expand(c, n),  # zigzag: slopes of +-2e6 / T
        1e8 * j.expand(c, n) * torch.tensor([[1.0], [-1.0], [0.5]], dtype=torch.float64),
        torch.randn(c, n, generator=_gen(1), dtype=torch.float64).cumsum(1) * 50,
    ]


def _dense(m: LinearSpline, lo: float, hi: float, n: int) -> torch.Tensor:
    return torch.linspace(lo, hi, n, dtype=torch.float64).view(-1, 1).expand(-1, m.num_channels)


def test_one_lipschitz_for_adversarial_parameters() -> None:
    m = _spline(c=3, k=11, r=2.0)
    for values in _adversarial_values(m):
        with torch.no_grad():
            m.values.copy_(values)
        raw = (torch.diff(m.values, dim=1) / m.step).abs().amax()
        assert float(raw.detach()) > 5, "the constraint must be active for this check to bite"
        lip = m.lipschitz_constant().detach()
        assert lip.shape == (3,) and float(lip.max()) <= 1.0 + 1e-6
        with torch.no_grad():
            x = _dense(m, -6.0, 6.0, 48001)  # spacing 2.5e-4, through and beyond the knots
            f = m(x)
            tol = 16 * torch.finfo(torch.float64).eps * (1 + float(f.abs().max()))
            dx = x[1:] - x[:-1]
            assert bool(((f[1:] - f[:-1]).abs() <= dx + tol).all())
            # Random pairs, near and far.
            xa = 6 * torch.randn(4000, 3, generator=_gen(2), dtype=torch.float64)
            for xb in (xa + 1e-3 * torch.randn(4000, 3, generator=_gen(3), dtype=torch.float64),
                       6 * torch.randn(4000, 3, generator=_gen(4), dtype=torch.float64)):
                assert bool(((m(xa) - m(xb)).abs() <= (xa - xb).abs() + tol).all())
            # The reported constant is the actual one, measured by finite differences.
            fd = ((f[1:] - f[:-1]) / dx).abs().amax(dim=0)
            assert torch.allclose(fd, lip, rtol=0, atol=1e-6 + tol / float(dx.min()))


def test_float32_zigzag_is_one_lipschitz() -> None:
    m = LinearSpline(2, num_knots=20, knot_range=1.0, init="identity")
    with torch.no_grad():
        m.values.copy_(1e4 * (-1.0) ** torch.arange(22.0).expand(2, 22))  # slopes ~ 2e5
        x = torch.linspace(-2, 2, 4001).view(-1, 1).expand(-1, 2)
        f = m(x)
    assert m.lipschitz_constant().max().item() <= 1.0
    # Clipped to a zigzag of slopes +-1: |df| <= dx up to float32 rounding of f.
    tol = 8 * torch.finfo(torch.float32).eps * (1 + float(f.abs().max()))
    assert tol < 1e-5
    assert bool(((f[1:] - f[:-1]).abs() <= (x[1:] - x[:-1]) + tol).all())
    fd = ((f[1:] - f[:-1]) / (x[1:] - x[:-1])).abs().amax(dim=0)
    assert torch.allclose(fd, torch.ones(2), atol=1e-2)


@pytest.mark.parametrize("shape", [(200, 3), (4, 3, 5, 6)])
def test_forward_equals_the_seed_formula(shape: tuple[int, ...]) -> None:
    m = _spline(c=3, k=9, r=1.5)
    with torch.no_grad():
        m.values.copy_(3 * torch.randn(3, 11, generator=_gen(5), dtype=torch.float64))
    x = 4 * torch.randn(*shape, generator=_gen(6), dtype=torch.float64)
    assert torch.allclose(m(x), _seed_formula(m, x), rtol=1e-12, atol=1e-12)
    b1, b2, a, tau = (t.detach() for t in m.coefficients())
    assert b1.shape == b2.shape == (3,) and a.shape == (3, 9) and tau.shape == (9,)
    assert torch.allclose(tau, torch.linspace(-1.5, 1.5, 9, dtype=torch.float64))
    slopes = torch.cat((b2[:, None], b2[:, None] + a.cumsum(1)), dim=1)
    assert float(slopes.abs().max()) <= 1.0 + 1e-12
    assert m.tv2().item() == pytest.approx(a.abs().sum().item(), rel=1e-12)


def test_feasible_parameters_are_plain_interpolation() -> None:
    # Slopes already in [-1, 1]: the constraint changes nothing, and the spline linearly
    # interpolates its grid values and extrapolates with the end slopes.
    m = _spline(c=2, k=7, r=3.0, init="identity")
    grid = m.grid.numpy()
    steps = torch.rand(2, 8, generator=_gen(7), dtype=torch.float64) * 1.8 - 0.9
    values = torch.cat((torch.randn(2, 1, generator=_gen(8), dtype=torch.float64),
                        steps * m.step), dim=1).cumsum(1)
    with torch.no_grad():
        m.values.copy_(values)
    x = np.linspace(-9, 9, 1001)
    out = m(torch.from_numpy(x).view(-1, 1).expand(-1, 2).contiguous()).detach().numpy()
    for ch in range(2):
        v = values[ch].numpy()
        ref = np.interp(x, grid, v)
        ref = np.where(x < grid[0], v[0] + (v[1] - v[0]) / m.step * (x - grid[0]), ref)
        ref = np.where(x > grid[-1], v[-1] + (v[-1] - v[-2]) / m.step * (x - grid[-1]), ref)
        np.testing.assert_allclose(out[:, ch], ref, rtol=1e-12, atol=1e-12)


def test_clipping_is_the_papers_slope_clipping() -> None:
    # Ducotterd et al.'s slope_clipping: clamp differences to [-T, T], re-integrate,
    # restore the mean of the values.
    m = _spline(c=3, k=11, r=2.0)
    with torch.no_grad():
        m.values.copy_(2 * torch.randn(3, 13, generator=_gen(9), dtype=torch.float64))
    cs = m.values.detach()
    new = torch.zeros_like(cs)
    new[:, 1:] = torch.cumsum(torch.clamp(cs[:, 1:] - cs[:, :-1], -m.step, m.step), dim=1)
    new = new + (cs - new).mean(dim=1, keepdim=True)
    vals, slopes = m.constrained()
    assert torch.allclose(vals, new, rtol=1e-12, atol=1e-12)
    assert torch.allclose(slopes, torch.diff(new, dim=1) / m.step, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 21, 101])
def test_inits_reproduce_relu_identity_absolute(k: int) -> None:
    x = torch.cat((torch.linspace(-40, 40, 8001), torch.tensor([-1e6, -3.0, 0.0, 3.0, 1e6])))
    for dtype, rel in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        xs = x.to(dtype).view(-1, 1).expand(-1, 2)
        for init, fn in (("relu", torch.relu), ("identity", lambda t: t),
                         ("absolute", torch.abs)):
            m = _spline(c=2, k=k, r=3.0, init=init, dtype=dtype)
            assert m.values.dtype == dtype
            got, want = m(xs), fn(xs)
            assert bool(((got - want).abs() <= rel * (1 + want.abs())).all()), (init, dtype)
    m = _spline(c=4, k=k)
    assert m.tv2().item() == pytest.approx(4.0)  # one unit kink per channel
    assert _spline(c=4, k=k, init="absolute").tv2().item() == pytest.approx(8.0)
    assert _spline(c=4, k=k, init="identity").tv2().item() == pytest.approx(0.0, abs=1e-12)
    assert _spline(c=4, k=k, init="identity").lipschitz_constant().min().item() == 1.0


def test_linear_outside_the_knot_range_with_the_end_slopes() -> None:
    m = _spline(c=3, k=9, r=1.0)
    with torch.no_grad():
        m.values.copy_(torch.randn(3, 11, generator=_gen(10), dtype=torch.float64))
    b1, b2, a, tau = (t.detach() for t in m.coefficients())
    left, right = b2, b2 + a.sum(1)
    for lo, hi, slope, anchor in ((-1e4, -1.0, left, -1.0), (1.0, 1e4, right, 1.0)):
        x = torch.linspace(lo, hi, 997, dtype=torch.float64).view(-1, 1).expand(-1, 3)
        f_anchor = m(torch.full((1, 3), anchor, dtype=torch.float64))
        want = f_anchor + slope * (x - anchor)
        assert torch.allclose(m(x), want, rtol=1e-12, atol=1e-9)
    assert not torch.allclose(left, right)  # the two ends differ, so the check is specific


def test_channels_are_independent_and_shapes_match() -> None:
    m = _spline(c=3, k=7, r=2.0)
    with torch.no_grad():
        m.values.copy_(torch.randn(3, 9, generator=_gen(11), dtype=torch.float64))
    x4 = torch.randn(2, 3, 4, 5, generator=_gen(12), dtype=torch.float64)
    y4 = m(x4)
    assert y4.shape == x4.shape
    y2 = m(x4.permute(0, 2, 3, 1).reshape(-1, 3))
    assert torch.equal(y4.permute(0, 2, 3, 1).reshape(-1, 3), y2)
    same = torch.full((1, 3), 0.7, dtype=torch.float64)
    out = m(same)[0].detach()
    assert len({round(float(v), 9) for v in out}) == 3  # one function per channel


def test_gradients_flow_and_match_finite_differences() -> None:
    m = _spline(c=2, k=5, r=1.0)
    # Slopes well inside (-0.8, 0.8) or clipped far out (> 2): no kink of the clipping.
    steps = torch.tensor([[0.5, -0.6, 3.0, 0.2, -0.7, 0.1], [-0.4, 0.3, 0.6, -3.5, 0.1, 0.0]],
                         dtype=torch.float64)
    values = torch.cat((torch.zeros(2, 1, dtype=torch.float64), steps * m.step), 1).cumsum(1)
    x = torch.linspace(-2.5, 2.5, 41, dtype=torch.float64).view(-1, 1).expand(-1, 2)
    x = x + 0.013  # away from the grid points
    w = torch.randn(41, 2, generator=_gen(13), dtype=torch.float64)

    def loss(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            m.values.copy_(v)
        return (m(x) * w).sum() + 0.1 * m.tv2()

    v = values.clone()
    with torch.no_grad():
        m.values.copy_(v)
    m.zero_grad()
    ((m(x) * w).sum() + 0.1 * m.tv2()).backward()
    grad = m.values.grad.clone()
    assert bool(torch.isfinite(grad).all()) and bool((grad != 0).all())
    eps = 1e-6
    fd = torch.zeros_like(v)
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            dv = torch.zeros_like(v)
            dv[i, j] = eps
            fd[i, j] = (loss(v + dv) - loss(v - dv)) / (2 * eps)
    assert torch.allclose(grad, fd, rtol=1e-6, atol=1e-8)
    # Gradient also reaches the input, with the local slope.
    xin = x.clone().requires_grad_()
    with torch.no_grad():
        m.values.copy_(v)
    (g,) = torch.autograd.grad(m(xin).sum(), xin)
    assert float(g.abs().max()) <= 1.0 and float(g.abs().max()) > 0.5


def _grad_gap_to_plain_interpolation(values: torch.Tensor) -> float:
    """Max difference between the gradients (w.r.t. ``values``) of a loss through the
    spline and through plain linear interpolation of the same, unconstrained, values."""
    m = _spline(c=2, k=5, r=2.0)  # grid step 1
    with torch.no_grad():
        m.values.copy_(values)
    x = torch.linspace(-3.7, 3.7, 60, dtype=torch.float64).view(-1, 1).expand(-1, 2)
    w = torch.randn(60, 2, generator=_gen(14), dtype=torch.float64)
    (g_spline,) = torch.autograd.grad((m(x) * w).sum(), m.values)
    v = values.clone().requires_grad_()
    idx = torch.floor(x - m.grid[0]).clamp(0, 5).long()
    rows = torch.arange(2).expand(60, 2)
    interp = v[rows, idx] + (v[rows, idx + 1] - v[rows, idx]) * (x - m.grid[idx])
    (g_plain,) = torch.autograd.grad((interp * w).sum(), v)
    return float((g_spline - g_plain).abs().max())


def test_constraint_is_transparent_to_gradients_on_feasible_splines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A ReLU-initialised spline has slopes exactly 0 and 1 -- on the bound. Its gradients must
    # be those of the unconstrained spline, or training cannot lower the unit slopes;
    # torch.clamp, which has zero gradient on the bound, fails this.
    relu = torch.relu(torch.arange(7.0, dtype=torch.float64) - 3).expand(2, 7).clone()
    rng = torch.rand(2, 6, generator=_gen(15), dtype=torch.float64) * 2 - 1
    feasible = torch.cat((torch.zeros(2, 1, dtype=torch.float64), rng), 1).cumsum(1)
    for values in (relu, feasible, -relu):
        assert _grad_gap_to_plain_interpolation(values) < 1e-12
    import bastion.models.lipschitz.spline as spline

    monkeypatch.setattr(spline, "clip_slopes", lambda s: s.clamp(-1.0, 1.0))
    assert _grad_gap_to_plain_interpolation(relu) > 0.1


def test_clip_slopes_value_and_gradient() -> None:
    s = torch.tensor([-3.0, -1.0, -0.5, 0.0, 1.0, 1.00001, 2.0], requires_grad=True)
    out = clip_slopes(s)
    assert out.tolist() == pytest.approx([-1.0, -1.0, -0.5, 0.0, 1.0, 1.0, 1.0])
    (g,) = torch.autograd.grad(out.sum(), s)
    assert g.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_nan_input_gives_nan_not_an_index_error() -> None:
    m = LinearSpline(2, num_knots=5)
    out = m(torch.tensor([[float("nan"), 0.5]])).detach()
    assert bool(torch.isnan(out[0, 0])) and float(out[0, 1]) == pytest.approx(0.5)


def test_bad_arguments_raise() -> None:
    with pytest.raises(InputError, match="num_channels"):
        LinearSpline(0)
    with pytest.raises(InputTypeError, match="num_channels"):
        LinearSpline("3")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="num_knots"):
        LinearSpline(3, num_knots=0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="knot_range"):
            LinearSpline(3, knot_range=bad)
    with pytest.raises(InputError, match="absolute, identity, relu"):
        LinearSpline(3, init="tanh")
    with pytest.raises(InputError, match="num_knots must be odd"):
        LinearSpline(3, num_knots=10, init="relu")
    LinearSpline(3, num_knots=10, init="identity")  # no knot at 0 needed
    m = LinearSpline(3)
    with pytest.raises(InputError, match=r"\[N, 3\]"):
        m(torch.zeros(2, 4))
    with pytest.raises(InputError, match=r"\[N, 3\]"):
        m(torch.zeros(3))
    with pytest.raises(InputTypeError, match="floating-point"):
        m(torch.zeros(2, 3, dtype=torch.int64))
