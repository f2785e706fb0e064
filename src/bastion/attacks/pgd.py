"""Projected gradient descent: the one attack engine of bastion.

Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks",
arXiv 1706.06083. The norm supplies the random start, the gradient normalisation and the
projection (``core.py``); the objective is a parameter (a name or a per-example callable,
``objectives.py``), so TRADES' inner maximisation is this engine with ``objective="kl"``,
FGSM is its one-step case and Friendly AT's early-stopped PGD-K-tau (Zhang et al. 2020,
"Attacks Which Do Not Kill Training Make Adversarial Learning Stronger", arXiv 2002.11242)
is the ``early_stop`` flag. Against a randomized defense, EOT (Athalye, Engstrom, Ilyas and
Kwok 2018, "Synthesizing Robust Adversarial Examples", arXiv 1707.07397) is the
``eot_samples`` option: each step follows the mean of k draws' gradients (``eot.py``); BPDA
is a model wrapper (``eot.BPDA``), not an engine option.

Guarantees, whatever the model does: the returned images lie in the eps-ball of the norm
around ``x`` and in [0, 1]; no gradient is left on the model's parameters; the train/eval
mode of every sub-module is restored.

Training methods and evaluation attacks reach this engine through one threat-model config,
``attacks.threat.ThreatModel`` (its ``attack`` method), which also validates the settings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion._validate import check_choice, check_images, check_int, check_radius
from bastion.attacks.core import (
    AttackResult,
    as_radius,
    clip_to_ball_and_box,
    normalize_gradient,
    random_start,
)
from bastion.attacks.eot import defense_draws_from, expected_objective
from bastion.attacks.objectives import ObjectiveLike, per_example_objective, resolve_objective
from bastion.errors import InputError, InputTypeError
from bastion.types import Norm

ATTACK_NORMS = ("linf", "l2")
# A radius beyond which the ball covers the whole image box: linf 1, l2 sqrt(d) (checked per call).
_MAX_LINF = 1.0


def _check_label_range(label_range: tuple[int, int], k: int) -> None:
    lo, hi = label_range
    if lo < 0 or hi >= k:
        raise InputError(f"target labels must be class indices in [0, {k - 1}] for a model "
                         f"with {k} outputs, got values in [{lo}, {hi}]")


def _labels_of(target: torch.Tensor) -> torch.Tensor:
    return target if target.dtype == torch.int64 else target.argmax(dim=1)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: Norm = "linf",
    steps: int = 10,
    step_size: float | torch.Tensor | None = None,
    random_init: bool = True,
    objective: ObjectiveLike = "ce",
    targeted: bool = False,
    early_stop: bool = False,
    tau: int = 0,
    restarts: int = 1,
    keep_best: bool = False,
    train_mode: bool | None = False,
    init_std: float | None = None,
    generator: torch.Generator | None = None,
    eot_samples: int = 1,
) -> AttackResult:
    """Maximise ``objective`` over the ``norm`` ball of radius ``eps`` around ``x`` by PGD.

    Args:
        model: classifier taking [N, C, H, W] in [0, 1] and returning logits [N, K].
        x: clean images [N, C, H, W] in [0, 1].
        target: int64 labels [N] (``ce``, ``margin``, ``dlr``), or clean probabilities
            [N, K] for ``kl``. For ``targeted=True``, the labels to reach.
        eps: radius in [0, 1] pixel units, a float or a per-example tensor [N].
        norm: ``"linf"`` or ``"l2"``.
        steps: number of gradient steps K (>= 1). ``steps=1, step_size=eps,
            random_init=False`` is FGSM.
        step_size: per-step length in the norm; default ``2.5 * eps / steps`` (Madry et al.).
        random_init: start from a uniform random point of the ball (else from ``x``).
        objective: ``"ce"``, ``"kl"``, ``"margin"`` or ``"dlr"`` (see ``objectives.py``),
            or a callable ``(logits [N, K], target[idx]) -> loss [N]`` (per example; e.g. a
            BPDA/EOT or GloRo objective); its output shape is checked at every step. With a
            callable, ``target`` is int64 labels [N] or a float matrix [N, K] whose row
            argmax is the label that success is judged against.
        targeted: minimise the objective towards ``target`` instead of maximising it.
        early_stop: Friendly AT's PGD-K-tau: an example stops moving ``tau`` steps after it
            first becomes misclassified; frozen examples cost no more forward passes.
        tau: the number of extra steps after misclassification (with ``early_stop``).
        restarts: independent random restarts; per example the strongest is kept.
        keep_best: return, per example, the latest iterate that fooled the model if any did
            (stronger evaluation); otherwise the last iterate (as in training).
        train_mode: mode of the model during the attack (False: eval, the default; True:
            train; None: as it is). The previous mode is always restored.
        init_std: if given, the random start is Gaussian with this std (TRADES uses 0.001)
            instead of uniform in the ball.
        generator: source of the random start, and of the defense's draws where the model
            is a randomized ``Defended`` whose defense exposes a ``generator`` attribute
            (``eot.defense_draws_from``; else it draws from torch's global RNG).
        eot_samples: k >= 1 draws of a randomized model per step (EOT; Athalye, Engstrom,
            Ilyas and Kwok 2018, arXiv 1707.07397): the step follows the mean of the k
            draws' gradients of the objective (``eot.expected_objective``), a verdict
            (``keep_best``, ``early_stop``, ``success``) is "fooled on a strict majority of
            the k draws", and restarts compare the mean objective. 1: the plain step.

    Shape:
        x [N, C, H, W]; target [N] or [N, K]; result.x_adv [N, C, H, W].

    Returns:
        ``AttackResult`` with the adversarial images, per-example step counts and success.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
        >>> r = pgd(model, x, y, eps=0.1, steps=5)
        >>> bool(((r.x_adv - x).abs() <= 0.1 + 1e-6).all())
        True
    """
    check_images(x)
    if not isinstance(target, torch.Tensor):
        raise InputTypeError(
            f"target must be a torch.Tensor: int64 labels of shape [{x.shape[0]}] (e.g. "
            f"torch.tensor(labels, dtype=torch.int64)), or clean probabilities [N, K] for "
            f"'kl'; got {type(target).__name__}"
        )
    if target.device != x.device:
        raise InputError(f"target is on {target.device} but x is on {x.device}; put both on "
                         "the model's device")
    check_choice(norm, ATTACK_NORMS, "attack norm")
    fn = resolve_objective(objective)
    upper = _MAX_LINF if norm == "linf" else float(x[0].numel()) ** 0.5
    check_radius(eps, "eps", upper=upper)
    if isinstance(eps, torch.Tensor) and eps.numel() not in (1, x.shape[0]):
        raise InputError(f"eps must be a float or a tensor of {x.shape[0]} per-example radii, "
                         f"got shape {tuple(eps.shape)}")
    check_int(steps, "steps", low=1)
    check_int(restarts, "restarts", low=1)
    check_int(tau, "tau", low=0)
    check_int(eot_samples, "eot_samples", low=1)
    if objective == "kl":
        if target.dim() != 2 or target.shape[0] != x.shape[0]:
            raise InputError("the 'kl' objective takes clean probabilities of shape [N, K]")
        if targeted:
            raise InputError("a targeted attack needs labels, not the 'kl' objective")
    elif isinstance(objective, str):
        if target.dtype != torch.int64 or target.shape != (x.shape[0],):
            raise InputError(
                f"target must be int64 labels of shape [{x.shape[0]}] for {objective!r}"
            )
    elif not (
        (target.dtype == torch.int64 and target.shape == (x.shape[0],))
        or (target.is_floating_point() and target.dim() == 2 and target.shape[0] == x.shape[0])
    ):
        raise InputError(
            f"with a callable objective, target must be int64 labels [{x.shape[0]}] or a "
            f"float matrix [{x.shape[0]}, K]; got {target.dtype} {tuple(target.shape)}"
        )

    net = unwrap(model)
    radius = as_radius(eps, x)
    alpha = as_radius(2.5 * radius / steps if step_size is None else step_size, x)
    if step_size is not None:
        check_radius(step_size, "step_size")
    labels = _labels_of(target)
    sign = -1.0 if targeted else 1.0
    x = x.detach()

    def fooled(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """bool [n]: fooled on a strict majority of the draws (logits [k, n, K])."""
        pred = logits.argmax(dim=2)
        hit = pred == labels[idx] if targeted else pred != labels[idx]
        return 2 * hit.sum(0) > hit.shape[0]

    label_range = (int(labels.min()), int(labels.max())) if target.dtype == torch.int64 else None

    def objective_of(idx: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The signed per-example objective of the examples ``idx`` (logits [n, K] -> [n])."""
        def signed(logits: torch.Tensor) -> torch.Tensor:
            nonlocal label_range
            if label_range is not None:  # once, on the first step's logits
                _check_label_range(label_range, logits.shape[1])
                label_range = None
            return sign * per_example_objective(fn, logits, target[idx])
        return signed

    best_adv = x.clone()
    best_success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
    total_steps = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)

    with model_mode(net, train_mode), torch.enable_grad(), defense_draws_from(net, generator):
        for _ in range(restarts):
            if not random_init:
                x_adv = x.clone()
            elif init_std is not None:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x_adv = clip_to_ball_and_box(x, x + init_std * noise, radius, norm)
            else:
                x_adv = clip_to_ball_and_box(
                    x, x + random_start(x, radius, norm, generator), radius, norm
                )
            active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            budget = torch.full((x.shape[0],), tau, dtype=torch.int64, device=x.device)
            hit_adv = x_adv.clone()
            hit = torch.zeros_like(active)
            for _ in range(steps):
                idx = active.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                xa = x_adv[idx]
                ev = expected_objective(net, xa, objective_of(idx), samples=eot_samples)
                grad = ev.grad
                assert grad is not None
                is_fooled = fooled(ev.logits, idx)
                if keep_best:
                    hit_adv[idx[is_fooled]] = xa[is_fooled]
                    hit[idx[is_fooled]] = True
                move = torch.ones_like(is_fooled)
                if early_stop:
                    b = budget[idx]
                    stop = is_fooled & (b == 0)
                    budget[idx] = torch.where(is_fooled & (b > 0), b - 1, b)
                    active[idx[stop]] = False
                    move = ~stop
                mi = idx[move]
                r = radius if radius.shape[0] == 1 else radius[mi]
                a = alpha if alpha.shape[0] == 1 else alpha[mi]
                stepped = xa[move] + a * normalize_gradient(grad[move], norm)
                x_adv[mi] = clip_to_ball_and_box(x[mi], stepped, r, norm)
                total_steps[mi] += 1
            every = torch.arange(x.shape[0], device=x.device)
            ev = expected_objective(net, x_adv, objective_of(every), samples=eot_samples,
                                    grad=False)
            final_fooled = fooled(ev.logits, every)
            if keep_best:
                use_hit = hit & ~final_fooled
                x_adv = torch.where(use_hit.view(-1, 1, 1, 1), hit_adv, x_adv)
                final_fooled = final_fooled | hit
            loss = ev.loss
            same = final_fooled == best_success
            better = (final_fooled & ~best_success) | (same & (loss > best_loss))
            best_adv[better] = x_adv[better]
            best_loss = torch.where(better, loss, best_loss)
            best_success = best_success | final_fooled
    x_adv = clip_to_ball_and_box(x, best_adv, radius, norm).detach()
    return AttackResult(x_adv=x_adv, num_steps=total_steps, success=best_success)


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: Norm = "linf",
    objective: ObjectiveLike = "ce",
    train_mode: bool | None = False,
) -> AttackResult:
    """Fast gradient (sign) method: PGD with one step of length ``eps`` from ``x``.

    Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples",
    arXiv 1412.6572. Same arguments and guarantees as ``pgd``.
    """
    return pgd(
        model, x, target, eps=eps, norm=norm, steps=1, step_size=eps, random_init=False,
        objective=objective, train_mode=train_mode,
    )
