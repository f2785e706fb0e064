"""Decoupled Direction and Norm (DDN): a minimal-perturbation L2 attack.

Rony, Hafemann, Oliveira, Ben Ayed, Sabourin and Granger 2019, "Decoupling Direction and
Norm for Efficient Gradient-Based L2 Adversarial Attacks and Defenses", CVPR 2019,
arXiv 1811.09600 (Algorithm 1). The perturbation's *direction* follows the normalised
cross-entropy gradient and its *norm* ``eps_k`` is set separately: per step ``k``

1. ``delta <- delta + alpha_k * g / ||g||_2`` with ``g`` the gradient of the CE loss
   (of ``-CE`` towards the target when targeted) at ``x + delta``;
2. ``eps_k = (1 - gamma) * eps_{k-1}`` if ``x + delta`` was adversarial before the step,
   else ``(1 + gamma) * eps_{k-1}``, never above ``||max(x, 1 - x)||_2`` (the farthest
   point of the box, as in the authors' code);
3. ``delta <- eps_k * delta / ||delta||_2`` (onto the sphere of radius ``eps_k``), then
   ``x + delta`` is clipped to ``[0, 1]`` (and optionally quantised);

and the adversarial iterate of smallest L2 norm is kept per example. The step size follows
a cosine decay from ``alpha_init`` to ``alpha_final``.

Defaults follow the paper and the authors' code (github.com/jeromerony/fast_adversarial,
``fast_adv/attacks/ddn.py``; the same in adv_lib's ``ddn``): ``steps`` 100, ``init_norm``
1.0, ``gamma`` 0.05, the step size a cosine annealing from 1.0 to 0.01 (their SGD with
``lr=1`` and ``CosineAnnealingLR(eta_min=0.01)``), a Gaussian direction where the gradient
vanishes. Two deliberate differences: quantisation to ``levels`` grey levels (256 for
8-bit images in the authors' code, on by default there) is *off* by default here
(``levels=None``), because bastion's images and norms are continuous; and the last iterate
is checked too (one extra forward pass), not only the ``steps`` iterates before it.

The unit directions (of the gradient, and of ``delta`` for the sphere), the norms and the
ball/box projection of ``ddn_within`` are ``core.normalize_gradient``,
``core.perturbation_norm`` and ``core.clip_to_ball_and_box``; none is rewritten here. The
result is the same ``MinimalResult`` as FMN's (``attacks.minimal``), so
``evaluate_minimal(attack="ddn")`` and the benchmark consume it unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion._validate import check_choice, check_images, check_labels
from bastion.attacks.core import clip_to_ball_and_box, normalize_gradient, perturbation_norm
from bastion.attacks.minimal import MinimalResult, _finish
from bastion.errors import InputError
from bastion.types import Norm

DDN_NORMS: tuple[str, ...] = ("l2",)


def _check_ddn(
    x: torch.Tensor, y: torch.Tensor, norm: str, steps: int, alpha_init: float,
    alpha_final: float, gamma: float, init_norm: float, levels: int | None,
) -> None:
    check_images(x)
    check_labels(y, x.shape[0])
    check_choice(norm, DDN_NORMS, "DDN norm (DDN is an L2 attack)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an int >= 1, got {steps!r}")
    for name, v in (("alpha_init", alpha_init), ("alpha_final", alpha_final),
                    ("init_norm", init_norm), ("gamma", gamma)):
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise InputError(f"{name} must be a finite number > 0, got {v!r}")
    if not gamma < 1:
        raise InputError(f"gamma must be in (0, 1), got {gamma}")
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int)
                               or levels < 2):
        raise InputError(f"levels must be None (no quantisation) or an int >= 2, "
                         f"got {levels!r}")


def _search(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, init_norm: float,
    gamma: float, alpha_init: float, alpha_final: float, levels: int | None,
    targeted: bool, generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DDN's iterations in the model's current mode (Algorithm 1 of arXiv 1811.09600).

    Returns ``(best, best_norm, last)``: the adversarial iterate of smallest L2 norm per
    point (``x`` where none), its norm (inf where none; 0 where ``x`` is adversarial) and
    the last iterate, all detached; shapes [N, C, H, W], [N], [N, C, H, W].
    """
    n = x.shape[0]
    shape = (n,) + (1,) * (x.dim() - 1)
    worst = perturbation_norm(torch.maximum(x, 1 - x), "l2")
    best_norm = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
    best = x.clone()
    eps = torch.minimum(torch.full_like(best_norm, float(init_norm)), worst)
    delta = torch.zeros_like(x)
    sign = -1.0 if targeted else 1.0  # ascend CE, or descend CE of the target

    def adversarial(logits: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == y if targeted else pred != y

    def keep_smaller(is_adv: torch.Tensor, dist: torch.Tensor, x_k: torch.Tensor) -> None:
        better = is_adv & (dist < best_norm)
        best_norm[better] = dist[better]
        best[better] = x_k[better]

    with torch.enable_grad():
        for k in range(steps):
            cosine = (1 + math.cos(math.pi * k / steps)) / 2
            alpha = alpha_final + (alpha_init - alpha_final) * cosine
            x_k = (x + delta).requires_grad_(True)
            logits = net(x_k)
            loss = sign * F.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_k)
            is_adv = adversarial(logits.detach())
            keep_smaller(is_adv, perturbation_norm(delta, "l2"), x_k.detach())
            flat = grad.flatten(1).norm(dim=1) == 0
            if flat.any():  # no direction: a Gaussian one, as in the authors' code
                grad[flat] = torch.randn(grad[flat].shape, generator=generator,
                                         device=x.device, dtype=x.dtype)
            delta = delta + alpha * normalize_gradient(grad, "l2")
            eps = torch.where(is_adv, eps * (1 - gamma), eps * (1 + gamma))
            eps = torch.minimum(eps, worst)
            # onto the sphere of radius eps_k: eps_k times the unit L2 direction of delta
            delta = eps.view(shape) * normalize_gradient(delta, "l2")
            x_new = x + delta
            if levels is not None:
                x_new = torch.round(x_new * (levels - 1)) / (levels - 1)
            delta = x_new.clamp(0.0, 1.0) - x
    last = x + delta
    with torch.no_grad():  # the last iterate has not been checked yet
        keep_smaller(adversarial(net(last)), perturbation_norm(delta, "l2"), last)
    return best, best_norm, last


def ddn(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: Norm = "l2",
    steps: int = 100,
    init_norm: float = 1.0,
    gamma: float = 0.05,
    alpha_init: float = 1.0,
    alpha_final: float = 0.01,
    levels: int | None = None,
    targeted: bool = False,
    train_mode: bool | None = False,
    generator: torch.Generator | None = None,
) -> MinimalResult:
    """Decoupled Direction and Norm attack (Rony et al. 2019, arXiv 1811.09600) in L2.

    See the module docstring for the update rules and the source of the defaults.

    Args:
        model: classifier on [0, 1] inputs returning logits [N, K].
        x: clean images [N, C, H, W] in [0, 1].
        y: int64 labels [N]: the true labels (untargeted), or the target classes when
            ``targeted``.
        norm: must be ``"l2"`` (accepted so that a call written for ``fmn`` can switch).
        steps: iterations (one forward-backward each); the paper evaluates with 100 (also
            1000). The radius moves by at most a factor ``(1 +- gamma)**steps`` from
            ``init_norm``, so with few steps choose ``init_norm`` near the expected answer.
        init_norm: the radius ``eps_0`` of the first sphere, L2 in [0, 1] pixel units.
        gamma: relative change of the radius per step (constant, as in the paper).
        alpha_init: first step length (L2, pixel units) of the normalised gradient step.
        alpha_final: last step length of the cosine decay.
        levels: quantise every iterate to this many grey levels per channel (256: 8-bit
            images, as the authors' code does by default); None (default): no quantisation.
        targeted: find the smallest perturbation classified as ``y`` instead of the
            smallest that is not classified as ``y``.
        train_mode: model mode during the attack (False: eval, default); restored after.
        generator: the randomness of the Gaussian direction used where the gradient is
            exactly zero (a flat model); the attack is otherwise deterministic.

    Shape:
        x [N, C, H, W], y [N] -> result.x_adv [N, C, H, W], result.norm [N].

    Returns:
        ``MinimalResult``: per point the adversarial iterate of smallest L2 norm (``x``
        itself and norm 0 where none was found, or where ``x`` is already adversarial).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> r = ddn(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), steps=20)
        >>> bool((r.norm >= 0).all())
        True
    """
    _check_ddn(x, y, norm, steps, alpha_init, alpha_final, gamma, init_norm, levels)
    if not isinstance(targeted, bool):
        raise InputError(f"targeted must be true or false, got {targeted!r}")
    net = unwrap(model)
    x = x.detach()
    with model_mode(net, train_mode):
        best, _, _ = _search(net, x, y, steps=steps, init_norm=init_norm, gamma=gamma,
                             alpha_init=alpha_init, alpha_final=alpha_final, levels=levels,
                             targeted=targeted, generator=generator)
        return _finish(net, x, y, best, "l2", targeted=targeted)


def ddn_within(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    init_norm: float | None = None,
    gamma: float = 0.05,
    alpha_init: float = 1.0,
    alpha_final: float = 0.01,
    train_mode: bool | None = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDN's example of each point inside the L2 ball of radius ``eps``: training data.

    The smallest adversarial example DDN found, projected onto the ``eps``-ball when it is
    larger (as the ``max_norm`` option of the authors' ``fast_adv/attacks/ddn.py``, with
    which they train on DDN examples); where DDN found none, its last iterate projected
    onto the ball (the authors return ``x`` there; the last iterate is DDN's CE ascent at
    the largest radius it reached, so a point robust at ``eps`` still yields a point on
    the ``eps``-sphere instead of a clean one). Projection and box are
    ``core.clip_to_ball_and_box``.

    Args:
        model: classifier on [0, 1] inputs.
        x: clean images [N, C, H, W] in [0, 1].
        y: int64 labels [N].
        eps: the L2 radius, [0, 1] pixel units (> 0).
        steps: DDN iterations.
        init_norm: the first radius; default ``eps``, since a short search moves the radius
            by at most ``(1 +- gamma)**steps`` (0.60 to 1.63 for 10 steps of 0.05): from
            the paper's 1.0 it could not look below ``eps`` for a smaller ``eps``.
        gamma, alpha_init, alpha_final: as for ``ddn``.
        train_mode: model mode during the attack (False: eval); restored afterwards.
        generator: as for ``ddn``.

    Returns:
        ``(x_adv, fooled)``: x_adv [N, C, H, W] in the ``eps``-ball and [0, 1] (detached);
        fooled bool [N], the point DDN found an adversarial example for (at any norm).
    """
    start = eps if init_norm is None else init_norm
    _check_ddn(x, y, "l2", steps, alpha_init, alpha_final, gamma, start, None)
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps > 0):
        raise InputError(f"eps must be a finite number > 0, got {eps!r}")
    net = unwrap(model)
    x = x.detach()
    with model_mode(net, train_mode):
        best, best_norm, last = _search(net, x, y, steps=steps, init_norm=start, gamma=gamma,
                                        alpha_init=alpha_init, alpha_final=alpha_final,
                                        levels=None, targeted=False, generator=generator)
    fooled = torch.isfinite(best_norm)
    source = torch.where(fooled.view(-1, *([1] * (x.dim() - 1))), best, last)
    radius = torch.as_tensor(float(eps), dtype=x.dtype, device=x.device)
    return clip_to_ball_and_box(x, source, radius, "l2").detach(), fooled
