"""The geometry every attack shares: random start, gradient normalisation and projection.

This file is the only place in bastion where these operations are written. A norm supplies
three functions and the PGD engine (``pgd.py``) composes them, following the structure of
foolbox's gradient-descent base (Rauber et al. 2017, arXiv 1707.04131).

All tensors are image batches [N, C, H, W]; ``eps`` is a tensor broadcastable to
[N, 1, 1, 1] in [0, 1] pixel units (a per-example radius is allowed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bastion.errors import InputError
from bastion.types import Norm


def _flat_norm(v: torch.Tensor, p: float) -> torch.Tensor:
    """Per-example p-norm of a batch, shape [N, 1, 1, 1]."""
    return v.flatten(1).norm(p=p, dim=1).view(-1, *([1] * (v.dim() - 1)))


def perturbation_norm(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per-example norm of a perturbation batch, shape [N] (pixel units)."""
    p = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}[norm]
    return delta.flatten(1).norm(p=p, dim=1)


def random_start(
    x: torch.Tensor, eps: torch.Tensor, norm: Norm, generator: torch.Generator | None
) -> torch.Tensor:
    """A random perturbation inside the ``norm`` ball of radius ``eps``.

    L-inf: uniform in the cube. L2: uniform in the ball (Gaussian direction, radius
    eps * U^(1/d)). Returns delta with the shape of ``x``.
    """
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    if norm == "l2":
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = g / _flat_norm(g, 2).clamp_min(1e-12)
        d = x[0].numel()
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        r = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
        return direction * r * eps
    raise InputError(f"attacks support norms 'linf' and 'l2', got {norm!r}")


def normalize_gradient(g: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The steepest-ascent direction of unit ``norm`` for gradient ``g`` (sign for L-inf)."""
    if norm == "linf":
        return g.sign()
    if norm == "l2":
        return g / _flat_norm(g, 2).clamp_min(1e-12)
    raise InputError(f"attacks support norms 'linf' and 'l2', got {norm!r}")


def project(delta: torch.Tensor, eps: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Euclidean projection of ``delta`` onto the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, eps), -eps)
    if norm == "l2":
        n = _flat_norm(delta, 2)
        return delta * torch.clamp(eps / n.clamp_min(1e-12), max=1.0)
    raise InputError(f"attacks support norms 'linf' and 'l2', got {norm!r}")


def clip_to_ball_and_box(
    x: torch.Tensor, x_adv: torch.Tensor, eps: torch.Tensor, norm: Norm
) -> torch.Tensor:
    """Project ``x_adv`` into the ``eps``-ball around ``x``, then into [0, 1].

    Clipping to the box after the projection can only shrink every coordinate of the
    perturbation towards ``x`` (``x`` itself lies in [0, 1]), so the result lies in both sets.
    """
    return (x + project(x_adv - x, eps, norm)).clamp_(0.0, 1.0)


def as_radius(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``eps`` as a tensor broadcastable to ``x``: a float or a per-example vector [N]."""
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if e.dim() == x.dim() and e.shape[1:] == (1,) * (x.dim() - 1):
        return e
    if e.dim() == 0:
        return e.view(*([1] * x.dim()))
    if e.dim() == 1 and e.shape[0] == x.shape[0]:
        return e.view(-1, *([1] * (x.dim() - 1)))
    raise InputError(
        f"eps must be a float or a tensor of shape [N]={x.shape[0]}, got {tuple(e.shape)}"
    )


@dataclass(frozen=True)
class AttackResult:
    """The outcome of one attack on a batch.

    Args:
        x_adv: adversarial images [N, C, H, W], inside the eps-ball of the norm and [0, 1].
        num_steps: int64 [N], gradient steps actually taken for each example (fewer than
            ``steps`` with early stopping).
        success: bool [N], the model misclassifies ``x_adv`` (untargeted) or predicts the
            target (targeted), judged at the returned ``x_adv``.
    """

    x_adv: torch.Tensor
    num_steps: torch.Tensor
    success: torch.Tensor
