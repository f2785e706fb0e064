"""Minimal-perturbation attacks: the smallest adversarial perturbation found per example.

Two ways to measure "how far is each point from the decision boundary" (the seed's
"average minimal L-inf perturbation", and the minimal adversarial data that Friendly AT
trains on):

* ``fmn``: the Fast Minimum-Norm attack (Pintor et al. 2021, "Fast Minimum-norm Adversarial
  Attacks through Adaptive Norm Constraints", arXiv 2102.12827). A normalised-gradient
  ascent on the logit margin inside an L-p ball whose radius ``eps_k`` adapts every step:
  it shrinks by ``(1 - gamma)`` (never above the best norm found) while the iterate is
  adversarial, grows by ``(1 + gamma)`` after the first adversarial point was found, and
  before that jumps to ``||delta|| + |margin| / ||grad||_dual``, the linearised distance to
  the boundary. Step size ``alpha`` and ``gamma`` follow a cosine decay. Defaults follow the
  authors' code (github.com/pralab/Fast-Minimum-Norm-FMN-Attack, ``src/attacks/fmn.py``):
  ``alpha`` 1.0 -> 0.01, ``gamma`` 0.05 -> 0.001, the gradient normalised in L2 for every
  norm.
* ``minimal_eps_by_bisection``: run the one PGD engine at a per-example radius found by
  bisection. Slower (``(1 + search_steps) * steps`` gradient steps per example) but simple
  and easy to trust: every reported radius is one at which PGD found an adversarial example.

A third, L2 only, lives in ``attacks.ddn``: DDN (Rony et al. 2019, arXiv 1811.09600),
which returns the same ``MinimalResult``.

Both reuse the geometry of ``core.py`` (gradient normalisation, projection, norms); none is
written here. Both return a ``MinimalResult``; a point for which no adversarial example is
found comes back as ``x`` itself with ``success=False`` and norm 0 (no inf or NaN), and a
point misclassified when clean is a success at norm 0.

``MinimalResult`` has no summary on purpose: average minimal perturbations through
``attacks.evaluate.evaluate_minimal``, which records one ``AttackOutcome`` (clean-
misclassified points not attacked) for ``bastion.metrics.average_perturbation`` (the
seed's eq. (3), over all points) or ``average_perturbation_of_successes`` (over the points
the attack flipped); see ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion._validate import check_choice, check_images, check_labels, check_radius
from bastion.attacks.core import (
    as_radius,
    clip_to_ball_and_box,
    normalize_gradient,
    perturbation_norm,
)
from bastion.attacks.objectives import margin
from bastion.attacks.pgd import ATTACK_NORMS, pgd
from bastion.errors import InputError
from bastion.types import Norm

_DUAL: dict[str, Norm] = {"linf": "l1", "l2": "l2"}


@dataclass(frozen=True)
class MinimalResult:
    """The smallest adversarial example an attack found for each point.

    Args:
        x_adv: [N, C, H, W] in [0, 1]; the adversarial example of smallest norm found, or
            ``x`` itself where none was found.
        norm: float [N], ``||x_adv - x||`` in the attack's norm, pixel units (0 where
            ``success`` is False, and 0 for points misclassified when clean).
        success: bool [N], the model misclassifies ``x_adv`` (predicts the target, for a
            targeted attack; checked at the end, in the attack's model mode).
    """

    x_adv: torch.Tensor
    norm: torch.Tensor
    success: torch.Tensor


def _check(x: torch.Tensor, y: torch.Tensor, norm: str, steps: int) -> None:
    check_images(x)
    check_labels(y, x.shape[0])
    check_choice(norm, ATTACK_NORMS, "attack norm")
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an int >= 1, got {steps!r}")


def _finish(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, best: torch.Tensor, norm: Norm,
    *, targeted: bool = False,
) -> MinimalResult:
    """Re-check the returned points, fall back to ``x`` where they are not adversarial.

    Adversarial means ``argmax != y``, or ``argmax == y`` (``y`` the targets) when
    ``targeted`` (DDN's targeted variant, ``attacks.ddn``).
    """
    with torch.no_grad():
        pred = net(best).argmax(1)
        success = pred == y if targeted else pred != y
    x_adv = torch.where(success.view(-1, *([1] * (x.dim() - 1))), best, x).detach()
    zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    dist = torch.where(success, perturbation_norm(x_adv - x, norm), zero)
    return MinimalResult(x_adv=x_adv, norm=dist, success=success)


def fmn(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: Norm = "linf",
    steps: int = 100,
    alpha_init: float = 1.0,
    alpha_final: float | None = None,
    gamma_init: float = 0.05,
    gamma_final: float = 0.001,
    train_mode: bool | None = False,
) -> MinimalResult:
    """Fast Minimum-Norm attack (untargeted) in L-inf or L2.

    Pintor et al. 2021, "Fast Minimum-norm Adversarial Attacks through Adaptive Norm
    Constraints", arXiv 2102.12827 (see the module docstring for the update rules). The
    objective is the margin ``max_{j != y} z_j - z_y`` (``objectives.margin``); each step
    is ``x_k+1 = Proj_{B(x, eps_k) ∩ [0,1]}(x_k + alpha_k * g / ||g||_2)``.

    Args:
        model: classifier on [0, 1] inputs returning logits [N, K].
        x: clean images [N, C, H, W] in [0, 1].
        y: int64 labels [N].
        norm: ``"linf"`` or ``"l2"``; norms are in [0, 1] pixel units.
        steps: iterations (one forward-backward each); the paper's evaluations use
            100-1000, 10-20 are enough for training data.
        alpha_init: initial step length (L2 length of the normalised gradient step).
        alpha_final: final step length of the cosine decay; default ``alpha_init / 100``.
        gamma_init: initial relative change of the radius per step.
        gamma_final: final relative change of the radius.
        train_mode: model mode during the attack (False: eval, default); restored after.

    Shape:
        x [N, C, H, W], y [N] -> result.x_adv [N, C, H, W], result.norm [N].

    Returns:
        ``MinimalResult`` with the smallest adversarial example found per point.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> r = fmn(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), steps=20)
        >>> bool((r.norm >= 0).all())
        True
    """
    _check(x, y, norm, steps)
    for name, v in (("alpha_init", alpha_init), ("gamma_init", gamma_init),
                    ("gamma_final", gamma_final)):
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"{name} must be a finite number > 0, got {v!r}")
    if not (gamma_init < 1 and gamma_final < 1):
        raise InputError(f"gamma_init and gamma_final must be < 1, got {gamma_init}, "
                         f"{gamma_final}")
    a_final = alpha_init / 100 if alpha_final is None else alpha_final
    net = unwrap(model)
    x = x.detach()
    n = x.shape[0]
    worst = perturbation_norm(torch.maximum(x, 1 - x), norm)
    best_norm = worst.clone()
    best = x.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    eps = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
    x_k = x.clone()
    with model_mode(net, train_mode), torch.enable_grad():
        for k in range(steps):
            cosine = (1 + math.cos(math.pi * k / steps)) / 2
            alpha = a_final + (alpha_init - a_final) * cosine
            gamma = gamma_final + (gamma_init - gamma_final) * cosine
            xa = x_k.requires_grad_(True)
            logits = net(xa)
            m = margin(logits, y)
            (grad,) = torch.autograd.grad(m.sum(), xa)
            m = m.detach()
            dist_k = perturbation_norm(x_k.detach() - x, norm)
            is_adv = logits.detach().argmax(1) != y
            better = is_adv & (dist_k <= best_norm)
            found |= is_adv
            best_norm = torch.where(better, dist_k, best_norm)
            best[better] = x_k.detach()[better]
            to_boundary = m.abs() / perturbation_norm(grad, _DUAL[norm]).clamp_min(1e-12)
            eps = torch.where(
                is_adv,
                torch.minimum(eps * (1 - gamma), best_norm),
                torch.where(found, eps * (1 + gamma), dist_k + to_boundary),
            )
            eps = torch.minimum(eps, worst)
            stepped = x_k.detach() + alpha * normalize_gradient(grad, "l2")
            x_k = clip_to_ball_and_box(x, stepped, as_radius(eps, x), norm)
        # the last iterate has not been evaluated yet
        with torch.no_grad():
            is_adv = net(x_k).argmax(1) != y
            dist_k = perturbation_norm(x_k - x, norm)
            better = is_adv & (dist_k <= best_norm)
            best[better] = x_k[better]
        return _finish(net, x, y, best, norm)


def minimal_eps_by_bisection(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: Norm = "linf",
    eps_max: float,
    steps: int = 20,
    search_steps: int = 10,
    step_size_ratio: float = 2.5,
    random_init: bool = True,
    restarts: int = 1,
    train_mode: bool | None = False,
    generator: torch.Generator | None = None,
) -> MinimalResult:
    """Smallest radius at which PGD finds an adversarial example, by per-example bisection.

    For each clean-correct point: PGD (``attacks.pgd``, ``keep_best=True``) at ``eps_max``;
    where it succeeds, ``search_steps`` rounds of bisection on ``[lo, hi]`` with one PGD run
    per round at the per-example radius ``(lo + hi) / 2`` and step ``step_size_ratio * eps /
    steps``. The result is within ``eps_max / 2**search_steps`` of the smallest radius at
    which this PGD succeeds (an upper bound on the true minimal perturbation, exact for an
    affine model in L-inf). A point PGD cannot fool at ``eps_max`` is a failure.

    Args:
        model: classifier on [0, 1] inputs.
        x: clean images [N, C, H, W] in [0, 1].
        y: int64 labels [N].
        norm: ``"linf"`` or ``"l2"``.
        eps_max: largest radius searched, pixel units (L-inf at most 1).
        steps: PGD steps per run.
        search_steps: bisection rounds.
        step_size_ratio: PGD step is ``step_size_ratio * eps / steps``.
        random_init: PGD random start (from ``generator``).
        restarts: PGD restarts per run.
        train_mode: model mode during the attack (False: eval); restored afterwards.
        generator: randomness of the PGD starts.

    Returns:
        ``MinimalResult`` (``norm`` is the norm of the returned example, at most the
        bisection's upper end).
    """
    _check(x, y, norm, steps)
    upper = 1.0 if norm == "linf" else float(x[0].numel()) ** 0.5
    check_radius(eps_max, "eps_max", upper=upper)
    if not eps_max > 0:
        raise InputError(f"eps_max must be > 0, got {eps_max}")
    if not isinstance(search_steps, int) or search_steps < 0:
        raise InputError(f"search_steps must be an int >= 0, got {search_steps!r}")
    if not (math.isfinite(step_size_ratio) and step_size_ratio > 0):
        raise InputError(f"step_size_ratio must be a finite number > 0, got {step_size_ratio}")
    net = unwrap(model)
    x = x.detach()
    n = x.shape[0]
    with torch.no_grad(), model_mode(net, train_mode):
        wrong = net(x).argmax(1) != y
    best = x.clone()

    def attack(idx: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        r = pgd(net, x[idx], y[idx], eps=eps, norm=norm, steps=steps,
                step_size=step_size_ratio * eps / steps, random_init=random_init,
                restarts=restarts, keep_best=True, train_mode=train_mode, generator=generator)
        best[idx[r.success]] = r.x_adv[r.success]
        return r.success

    hi = torch.full((n,), float(eps_max), dtype=x.dtype, device=x.device)
    lo = torch.zeros_like(hi)
    todo = (~wrong).nonzero().squeeze(1)
    ok = torch.zeros(n, dtype=torch.bool, device=x.device)
    if todo.numel():
        ok[todo] = attack(todo, hi[todo])
    search = ok.nonzero().squeeze(1)
    for _ in range(search_steps if search.numel() else 0):
        mid = (lo[search] + hi[search]) / 2
        s = attack(search, mid)
        hi[search] = torch.where(s, mid, hi[search])
        lo[search] = torch.where(s, lo[search], mid)
    with model_mode(net, train_mode):
        return _finish(net, x, y, best, norm)
