"""CURE's curvature penalty: a finite difference of input gradients, with double backprop.

Moosavi-Dezfooli, Fawzi, Uesato & Frossard 2019, "Robustness via Curvature Regularization,
and Vice Versa", arXiv 1811.09716 (CVPR 2019).

The penalty of an example is ``||grad_x l(x + h z) - grad_x l(x)||_2^2``, a finite-difference
estimate of ``h^2 ||H z||^2`` where ``H`` is the Hessian of the loss ``l`` in the input. The
input gradients are taken with ``create_graph=True`` so that the penalty is differentiable in
the model's parameters (double backpropagation); the direction ``z`` is a constant (detached),
as in the paper.

What the penalty measures, precisely: it vanishes exactly when the loss's input gradient is
the same at ``x`` and ``x + h z``. For a loss that is affine in ``x`` (e.g. the logit of the
label under a linear model) it is exactly 0. A *linear classifier* trained with
cross-entropy is not such a case: its logits ``W x + b`` are linear, but the cross-entropy's
input gradient ``W^T (softmax(W x + b) - e_y)`` moves with ``x``, so the penalty is
``||W^T (softmax(W (x + h z) + b) - softmax(W x + b))||^2`` -- small when the softmax is
saturated or ``h`` is small, not zero. The tests check both closed forms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bastion.errors import InputError

Direction = Literal["gradient-sign", "gradient", "gaussian"]
DIRECTIONS: tuple[str, ...] = ("gradient-sign", "gradient", "gaussian")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A per-example loss ``(logits [N, K], y [N]) -> [N]``."""


def per_example_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example, shape [N, K], [N] -> [N] (the default loss of CURE)."""
    return F.cross_entropy(logits, y, reduction="none")


def _unit(v: torch.Tensor) -> torch.Tensor:
    """Each example of ``v`` scaled to unit L2 norm; an all-zero example stays zero."""
    n = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
    return torch.where(n > 0, v / n.clamp_min(1e-30), torch.zeros_like(v))


def input_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn = per_example_ce,
    *,
    create_graph: bool = False,
) -> torch.Tensor:
    """Per-example input gradients ``grad_x l(f(x_i), y_i)``, shape of ``x``.

    The gradient of the *sum* of per-example losses is taken, so row ``i`` is example ``i``'s
    own gradient as long as the model treats examples independently (eval-mode BatchNorm,
    no dropout coupling). With ``create_graph=True`` the result is differentiable in the
    model's parameters.
    """
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(model(xg), y)
        if loss.shape != (x.shape[0],):
            raise InputError(
                f"loss_fn must return one loss per example, shape [{x.shape[0]}]; "
                f"got {tuple(loss.shape)}"
            )
        (grad,) = torch.autograd.grad(loss.sum(), xg, create_graph=create_graph)
    return grad


def curvature_direction(
    grad: torch.Tensor,
    direction: Direction = "gradient-sign",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The unit-L2 direction ``z`` (detached) along which CURE measures curvature.

    Args:
        grad: per-example input gradients ``grad_x l(x)``, [N, ...].
        direction: ``"gradient-sign"``: ``z = sign(g) / ||sign(g)||_2`` (the paper's choice);
            ``"gradient"``: ``z = g / ||g||_2`` (the lecture's formula); ``"gaussian"``:
            ``z = e / ||e||_2`` with ``e ~ N(0, I)`` drawn from ``generator`` (a uniformly
            random direction; the paper's random baseline).
        generator: randomness of the ``"gaussian"`` direction.

    Returns:
        ``z`` with the shape of ``grad``, each example of unit L2 norm, or all zeros where
        the gradient is exactly zero (then the penalty of that example is 0).
    """
    if direction not in DIRECTIONS:
        raise InputError(
            f"unknown CURE direction {direction!r}; valid choices: {', '.join(DIRECTIONS)}"
        )
    g = grad.detach()
    if direction == "gradient-sign":
        return _unit(g.sign())
    if direction == "gradient":
        return _unit(g)
    e = torch.randn(g.shape, generator=generator, device=g.device, dtype=g.dtype)
    return _unit(e)


def curvature_penalty(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    h: float,
    direction: Direction = "gradient-sign",
    draws: int = 1,
    z: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    loss_fn: LossFn = per_example_ce,
) -> torch.Tensor:
    """CURE's penalty ``||grad_x l(x + h z) - grad_x l(x)||_2^2`` per example.

    Moosavi-Dezfooli et al. 2019, "Robustness via Curvature Regularization, and Vice Versa",
    arXiv 1811.09716, eq. (6) (``L_r``; the paper sums it over the batch, the CURE method
    averages it). Both gradients are built with ``create_graph=True``, so ``penalty.mean()``
    back-propagates into the parameters (double backprop). ``z`` is detached. The point
    ``x + h z`` is not clipped to [0, 1]: it is a finite-difference probe of the loss
    surface, not an input the model must classify. The model's train/eval mode is left as
    it is; call this in eval mode (the CURE method does) so that dropout masks and
    BatchNorm batch statistics do not differ between the two gradients.

    Args:
        model: classifier on [N, C, H, W] images in [0, 1].
        x: clean images [N, C, H, W] in [0, 1].
        y: int64 labels [N].
        h: finite-difference step, the L2 length of ``h z`` in [0, 1] pixel units (> 0).
        direction: how ``z`` is chosen (see :func:`curvature_direction`); ignored if ``z``
            is given.
        draws: for ``"gaussian"``, the number of random directions the penalty is averaged
            over (a Monte-Carlo estimate of the expectation over ``z``).
        z: an explicit direction [N, C, H, W] (used as given, detached; not normalised).
        generator: randomness of the ``"gaussian"`` direction.
        loss_fn: per-example loss ``(logits, y) -> [N]``; cross-entropy by default.

    Shape:
        x [N, C, H, W], y [N] -> penalty [N].

    Returns:
        The per-example penalty [N], >= 0, differentiable in the parameters.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
        >>> curvature_penalty(model, x, y, h=0.5).shape
        torch.Size([2])
    """
    if not (isinstance(h, int | float) and math.isfinite(h) and h > 0):
        raise InputError(f"h must be a finite number > 0, got {h!r}")
    if not isinstance(draws, int) or draws < 1:
        raise InputError(f"draws must be an int >= 1, got {draws!r}")
    if draws > 1 and (z is not None or direction != "gaussian"):
        raise InputError("draws > 1 only applies to direction='gaussian' (other directions "
                         "are deterministic)")
    if z is not None and z.shape != x.shape:
        raise InputError(f"z must have the shape of x {tuple(x.shape)}, got {tuple(z.shape)}")
    g0 = input_gradient(model, x, y, loss_fn, create_graph=True)
    total = torch.zeros(x.shape[0], device=x.device, dtype=g0.dtype)
    for _ in range(draws):
        zz = z.detach() if z is not None else curvature_direction(g0, direction, generator)
        g1 = input_gradient(model, x.detach() + h * zz, y, loss_fn, create_graph=True)
        total = total + (g1 - g0).flatten(1).pow(2).sum(dim=1)
    return total / draws
