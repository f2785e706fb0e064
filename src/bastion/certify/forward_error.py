"""A rigorous bound on the float64 rounding error of a chain network's logits.

The Lipschitz certificate (``certify.lipschitz``) is about the exact-arithmetic function of
the model's weights, but its margins are computed in float64. When intermediate values are
large and cancel (biases of 1e10 that nearly cancel, say), the rounding error of the logits
can exceed a small margin and flip the certified class. This module replays the chain layer
by layer in float64 and carries, per input, an L2 bound ``e`` on the accumulated error of
the activations, with the standard model of floating-point arithmetic (Higham, "Accuracy
and Stability of Numerical Algorithms", 2002, sec. 3.1: a dot product of length ``n`` is
computed with error at most ``gamma_n |w|.|h|``, ``gamma_n = n u / (1 - n u)``,
``u = 2^-53``):

- affine layer ``W h + b`` (Linear, Conv2d with fan-in ``n``): the error carried in is
  multiplied by ``||W||_2`` and the layer adds ``gamma_{n+1} || |W| |h| + |b| ||_2``
  (computed with ``|W|``, ``|b|`` on ``|h|``, rounded up by ``1 + 4 gamma``);
- ``Normalize``: ``1/min std`` times the error in, plus ``gamma_2 || (|h| + |mean|) / std ||``;
- BatchNorm (eval): its constant times the error in, plus ``gamma_4`` of its output scale;
- exact layers (ReLU, MaxMin, GroupSort, FullSort, max pooling, flatten, identity, eval
  dropout: comparisons and copies): the error in times their constant;
- LinearSpline (a lookup and ``v + s (x - g)``): the error in times its constant, plus
  ``gamma_4 (|v| + |s| (|x| + |g|))`` bounded by ``gamma_4 (|sigma(x)| + 2|x| + 2 max|g|)``;
- LeakyReLU, Tanh, Hardtanh, Sigmoid: their constant times the error in, plus ``gamma_4``
  of the output's magnitude.

The logit difference ``f_y - f_j`` is then off by at most ``sqrt(2) e``, which the
certificate subtracts from every margin. For ordinary networks ``e`` is about 1e-14 of the
logits and changes nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bastion.errors import InputError
from bastion.models.lipschitz.activations import FullSort, GroupSort, MaxMin
from bastion.models.lipschitz.bound import layer_class
from bastion.models.lipschitz.chain import ChainLayer
from bastion.models.lipschitz.spline import LinearSpline
from bastion.models.normalize import Normalize

UNIT_ROUNDOFF = 2.0 ** -53
"""float64's unit roundoff u."""

_EXACT = (nn.ReLU, nn.ReLU6, nn.Flatten, nn.Identity, nn.Dropout, nn.MaxPool2d, GroupSort,
          MaxMin, FullSort)
_SMOOTH = (nn.LeakyReLU, nn.Tanh, nn.Hardtanh, nn.Sigmoid)


def gamma(n: int) -> float:
    """``gamma_n = n u / (1 - n u)`` of float64."""
    nu = n * UNIT_ROUNDOFF
    if nu >= 0.5:
        raise InputError(f"a dot product of length {n} is too long for the float64 error bound")
    return nu / (1.0 - nu)


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _affine_magnitude(m: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``|W| |h| + |b|``, the scale of an affine layer's rounding error."""
    w = m.weight.detach().abs()
    b = None if m.bias is None else m.bias.detach().abs()
    if isinstance(m, nn.Linear):
        return F.linear(h.abs(), w, b)
    return F.conv2d(h.abs(), w, b, m.stride, m.padding)


def replay_with_error(chain: list[ChainLayer], constants: list[float], last_norm: float,
                      x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, error)``: the chain applied to float64 ``x`` layer by layer, and per input
    an L2 bound on the rounding error of the logits (see the module docstring).

    Args:
        chain: the float64 model's chain (``models.lipschitz.chain.layer_chain``).
        constants: the L2 constant of every layer but the last (``NetworkBound.layers``).
        last_norm: ``||W_m||_2`` of the last layer.
        x: float64 ``[N, C, H, W]``.
    """
    if x.dtype != torch.float64:
        raise InputError("replay_with_error runs in float64")
    n = x.shape[0]
    h = x
    err = torch.zeros(n, dtype=torch.float64, device=x.device)
    for i, layer in enumerate(chain):
        m = layer.module
        cls = layer_class(m)
        h = h.reshape(n, *layer.input_shape)
        out = m(h)
        lip = constants[i] if i < len(constants) else last_norm
        if cls in (nn.Linear, nn.Conv2d):
            fan_in = m.weight[0].numel() + 1
            g = gamma(fan_in)
            scale = _l2(_affine_magnitude(m, h)) * (1 + 4 * g)
            err = lip * err + g * scale
        elif cls is Normalize:
            std = m.std.detach().double()
            err = lip * err + gamma(2) * _l2((h.abs() + m.mean.detach().double().abs()) / std)
        elif cls in (nn.BatchNorm1d, nn.BatchNorm2d):
            err = lip * err + gamma(4) * _l2(out.abs() + h.abs() * lip)
        elif cls in _EXACT:
            err = lip * err
        elif cls is LinearSpline:
            grid = float(m.grid.detach().abs().max())
            err = lip * err + gamma(4) * _l2(out.abs() + 2 * h.abs() + 2 * grid)
        elif cls in _SMOOTH:
            err = lip * err + gamma(4) * _l2(out.abs() + 1.0)
        else:
            raise InputError(f"no rounding-error rule for layer {layer.name!r} "
                             f"({cls.__name__})")
        h = out
    return h.reshape(n, -1), err * (1 + 1e-12) + math.ulp(0.0)
