"""Learnable 1-Lipschitz linear-spline activations (one spline per channel).

Ducotterd, Goujon, Bohra, Perdios, Neumayer and Unser 2024, "Improving Lipschitz-Constrained
Neural Networks by Learning Activation Functions", JMLR 2024, arXiv 2210.16222.

Each channel ``c`` has its own continuous piecewise-linear function with ``K`` fixed,
uniformly spaced knots ``tau_1 < ... < tau_K`` spanning ``[-knot_range, knot_range]``::

    sigma_c(x) = b1_c + b2_c * x + sum_{k=1}^{K} a_{c,k} * ReLU(x - tau_k)

Parametrisation (as in the paper and its code, github.com/StanislasDucotterd/Lipschitz_DSNN):
the trainable tensor ``values`` [C, K + 2] holds each spline's values at the uniform grid
``g_0 < g_1 = tau_1 < ... < g_K = tau_K < g_{K+1}`` of step ``T`` (the B1-spline / "hat"
coefficients); between grid points the spline interpolates linearly and outside
``[g_1, g_K]`` it continues linearly with its first / last slope. Its ``K + 1`` slopes are
``s_j = (values_{j+1} - values_j) / T``.

1-Lipschitz constraint (the paper's slope clipping, ``slope_clipping`` in its code): every
forward clips the slopes into ``[-1, 1]``, rebuilds the values by cumulative summation and
shifts them so their mean per channel is unchanged. The clipped spline is
1-Lipschitz for any parameter values, and equals the unconstrained one whenever all slopes
already lie in ``[-1, 1]``. In the seed's form its coefficients are ``b2 = s'_0``,
``a_k = s'_k - s'_{k-1}`` and ``b1 = sigma(tau_1) - s'_0 * tau_1`` (:meth:`coefficients`).
Its TV(2) regulariser is ``||a||_1`` (:meth:`tv2`), the paper's sparsity-promoting penalty.

Differences from the paper's code: no learnable input scaling (their ``scaling_coeffs``,
which does not change the Lipschitz bound); the gradient of the clipping passes for slopes
on (or within 1e-4 of) the bound, so a ReLU- or identity-initialised spline, whose slopes
sit exactly at +-1, gets the gradients of the unconstrained spline -- ``torch.clamp`` gives
zero gradient on the bound.
"""

from __future__ import annotations

import torch
from torch import nn

from bastion._validate import check_choice, check_int, finite_positive
from bastion.errors import InputError, InputTypeError

INITS = ("relu", "identity", "absolute")
"""Initial shapes of :class:`LinearSpline`."""

_GRAD_BAND = 1e-4
"""Slopes with ``|s| <= 1 + _GRAD_BAND`` keep their gradient through the clipping."""


def clip_slopes(slopes: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    """``slopes`` clamped into ``[-bound, bound]``, with the gradient kept on the bound.

    The value is exactly ``torch.clamp(slopes, -bound, bound)``; the gradient is 1 where
    ``|slope| <= bound * (1 + 1e-4)`` and 0 beyond. (``torch.clamp`` also gives 0 for a slope
    exactly on the bound, which would cut the gradient of the ReLU-initialised pieces of
    slope 1; the band also keeps the gradient of slopes that rounding puts a few ulps past
    the bound.)

    Shape:
        any -> same.
    """
    clamped = slopes.detach().clamp(-bound, bound)
    passing = slopes.detach().abs() <= bound * (1.0 + _GRAD_BAND)
    return torch.where(passing, clamped + (slopes - slopes.detach()), clamped)


class LinearSpline(nn.Module):
    """Per-channel learnable 1-Lipschitz linear spline (Ducotterd et al. 2024, 2210.16222).

    Args:
        num_channels: number of splines ``C`` (neurons of a dense layer, or channels of a
            conv feature map; the input's dimension 1 must have this size).
        num_knots: ``K`` >= 1, the number of knots (kinks); odd for ``init="relu"`` or
            ``"absolute"``, so that 0 is a knot. The grid has ``K + 2`` points.
        knot_range: ``R`` > 0, in the input's units: the knots are uniform on ``[-R, R]``
            (for ``K = 1`` the single knot is at 0 and ``R`` is the grid step).
        init: initial shape of every channel, one of ``"relu"``, ``"identity"``,
            ``"absolute"`` (``|x|``); each is reproduced exactly (up to float rounding).

    Shape:
        [N, C] or [N, C, H, W] (any [N, C, ...]) -> same shape, same units.

    Attributes:
        values: trainable [C, K + 2], the unconstrained spline values at the grid points.
        grid: buffer [K + 2], the grid points ``g_j = (j - (K + 1) / 2) * T``.
        knots: buffer [K], ``tau_k = g_k``, ``k = 1..K``.
        step: the grid step ``T = 2R / (K - 1)`` (``R`` for ``K = 1``).
    """

    def __init__(
        self,
        num_channels: int,
        num_knots: int = 21,
        knot_range: float = 3.0,
        init: str = "relu",
    ) -> None:
        super().__init__()
        check_int(num_channels, "num_channels", low=1)
        check_int(num_knots, "num_knots", low=1)
        finite_positive(knot_range, "knot_range")
        if not isinstance(init, str):
            raise InputTypeError(f"init must be a string, one of {', '.join(INITS)}; "
                                 f"got {init!r}")
        check_choice(init, INITS, "LinearSpline init")
        if init in ("relu", "absolute") and num_knots % 2 == 0:
            raise InputError(
                f"init={init!r} needs a knot at 0, so num_knots must be odd; got "
                f"num_knots={num_knots} (use {num_knots + 1} or {num_knots - 1})"
            )
        self.num_channels = int(num_channels)
        self.num_knots = k = int(num_knots)
        self.knot_range = float(knot_range)
        self.init = init
        self.step = 2.0 * self.knot_range / (k - 1) if k > 1 else self.knot_range
        grid64 = (torch.arange(k + 2, dtype=torch.float64) - (k + 1) / 2) * self.step
        if init == "relu":
            vals = grid64.clamp(min=0.0)
        elif init == "identity":
            vals = grid64.clone()
        else:
            vals = grid64.abs()
        dtype = torch.get_default_dtype()
        self.register_buffer("grid", grid64.to(dtype), persistent=False)
        self.register_buffer("knots", grid64[1:-1].to(dtype), persistent=False)
        self.values = nn.Parameter(vals.to(dtype).expand(self.num_channels, k + 2).clone())

    # -- the constrained spline ------------------------------------------------------------
    def constrained(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipped spline's grid values [C, K + 2] and slopes [C, K + 1].

        Slopes ``s' = clip(diff(values) / T, -1, 1)``; values ``v'_j = v'_0 + T sum_{i<j} s'_i``
        with ``v'_0`` such that ``mean_j v'_j = mean_j values_j`` per channel (the paper's
        ``slope_clipping``). Differentiable in ``values``.
        """
        # The spacings of the stored grid (``T`` up to rounding): dividing and multiplying
        # by the same numbers keeps the pieces continuous and makes the initial slopes
        # exactly 0 and +-1 in any dtype.
        spacing = torch.diff(self.grid)
        slopes = clip_slopes(torch.diff(self.values, dim=1) / spacing)
        rebuilt = torch.cat(
            (torch.zeros_like(self.values[:, :1]), torch.cumsum(slopes * spacing, dim=1)),
            dim=1,
        )
        shift = (self.values - rebuilt).mean(dim=1, keepdim=True)
        return rebuilt + shift, slopes

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(b1 [C], b2 [C], a [C, K], tau [K])`` of the constrained spline.

        ``sigma_c(x) = b1_c + b2_c x + sum_k a_{c,k} ReLU(x - tau_k)`` equals
        ``forward`` on channel ``c``; ``b2 + cumsum(a)`` are the slopes right of each knot,
        all in ``[-1, 1]``.
        """
        vals, slopes = self.constrained()
        b2 = slopes[:, 0]
        a = torch.diff(slopes, dim=1)
        b1 = vals[:, 1] - b2 * self.knots[0]
        return b1, b2, a, self.knots

    def lipschitz_constant(self) -> torch.Tensor:
        """Per-channel Lipschitz constant ``max_j |s'_j|`` of the constrained spline, [C] (<= 1)."""
        return self.constrained()[1].abs().amax(dim=1)

    def tv2(self) -> torch.Tensor:
        """Second-order total variation ``sum_c sum_k |a_{c,k}|`` (a scalar, slope units).

        The paper's TV(2) regulariser (its ``totalVariation``, summed over channels), computed
        on the constrained coefficients; differentiable, add ``lambda * tv2()`` to the loss.
        """
        return torch.diff(self.constrained()[1], dim=1).abs().sum()

    # -- evaluation ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"LinearSpline expects a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise InputTypeError(f"LinearSpline expects a floating-point tensor, got {x.dtype}")
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise InputError(
                f"LinearSpline({self.num_channels}) expects [N, {self.num_channels}] or "
                f"[N, {self.num_channels}, H, W], got shape {tuple(x.shape)}"
            )
        vals, slopes = self.constrained()
        k = self.num_knots
        # Interval j covers [g_j, g_{j+1}); the end intervals extend to -inf / +inf. The
        # interval is found on the stored grid itself (not from the nominal step), so every
        # switch point is the anchor of both pieces and the function is continuous (a
        # floor((x - g_0) / T) with a float32-rounded grid jumps by up to ~1e-7 at a knot).
        inner = self.grid[1:-1].contiguous()
        idx = torch.searchsorted(inner, torch.nan_to_num(x.detach(), nan=0.0).contiguous(),
                                 right=True)
        shape = (1, self.num_channels) + (1,) * (x.dim() - 2)
        chan = torch.arange(self.num_channels, device=x.device).view(shape)
        v = vals.reshape(-1)[idx + chan * (k + 2)]
        s = slopes.reshape(-1)[idx + chan * (k + 1)]
        return v + s * (x - self.grid[idx])

    def extra_repr(self) -> str:
        return (f"num_channels={self.num_channels}, num_knots={self.num_knots}, "
                f"knot_range={self.knot_range}, init={self.init!r}")


__all__ = ["INITS", "LinearSpline", "clip_slopes"]
