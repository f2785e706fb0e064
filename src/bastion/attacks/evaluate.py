"""Run attacks over a dataset in batches and keep per-example outcomes (``EvalResult``).

``evaluate_attacks`` runs eps-bounded attacks (``AttackSpec``); ``evaluate_minimal`` runs a
minimal-perturbation attack (FMN or PGD bisection) and records the norm of the smallest
adversarial example found, so the seed's eq. (3) and its of-successes variant are
``bastion.metrics.average_perturbation`` / ``average_perturbation_of_successes`` of it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from bastion._torch import model_mode
from bastion._validate import check_choice, check_images, check_int, check_labels
from bastion.attacks.core import perturbation_norm
from bastion.attacks.minimal import MinimalResult, fmn, minimal_eps_by_bisection
from bastion.attacks.pgd import ATTACK_NORMS
from bastion.attacks.spec import AttackSpec
from bastion.errors import InputError, InputTypeError
from bastion.records import AttackOutcome, EvalResult

log = logging.getLogger(__name__)


MinimalAttack = Literal["fmn", "bisection"]
MINIMAL_ATTACKS: tuple[str, ...] = ("fmn", "bisection")


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")


def _check_common(model: nn.Module, batch_size: int, seed: int,
                  index: torch.Tensor | None, n: int,
                  progress: Callable[[int], None] | None) -> None:
    """The arguments every evaluation takes, checked before the first forward pass."""
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise InputError("model has no parameters (the evaluation puts its inputs on the "
                         "device of the model's parameters)")
    _check_batch_size(batch_size)
    check_int(seed, "seed", low=0)
    if index is not None:
        if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.is_floating_point():
            got = (f"{index.dtype} {tuple(index.shape)}" if isinstance(index, torch.Tensor)
                   else type(index).__name__)
            raise InputTypeError(f"index must be an integer tensor of shape [N], got {got}")
        if index.shape[0] != n:
            raise InputError(f"index has {index.shape[0]} entries but there are {n} images")
    if progress is not None and not callable(progress):
        raise InputTypeError(f"progress must be callable or None, got {progress!r}")


def _check_label_range(labels: torch.Tensor, logits: torch.Tensor) -> None:
    k = logits.shape[1]
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise InputError(f"labels must be class indices in [0, {k - 1}] for a model with {k} "
                         f"outputs, got values in [{lo}, {hi}]")


def _index(index: torch.Tensor | None, n: int) -> torch.Tensor:
    return torch.arange(n) if index is None else index.detach().cpu().long()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Class predictions [N] of ``model`` in eval mode, in batches."""
    check_images(x)
    _check_batch_size(batch_size)
    with model_mode(model, False):
        chunks = [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
        return torch.cat(chunks)


def _clean_batches(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches ``(x, y, clean predictions)`` on ``device``, the model in eval mode; the
    labels are checked against the model's number of classes on the first batch."""
    with model_mode(model, False):
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device)
            y = labels[i : i + batch_size].to(device)
            with torch.no_grad():
                logits = model(x)
            if i == 0:
                _check_label_range(labels, logits)
            yield x, y, logits.argmax(1)


def evaluate_attacks(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attacks: Sequence[AttackSpec],
    *,
    batch_size: int = 250,
    seed: int = 0,
    index: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Attack ``model`` with each of ``attacks`` on the same points; one record for all.

    Points misclassified when clean are not attacked (x' = x), see ``AttackOutcome``. The
    model runs in eval mode; its mode is restored. Each attack draws its random starts
    from its own generator seeded with ``seed`` on the model's device, so an attack's
    outcome is the same whether it runs alone or beside others.

    Args:
        model: classifier on [0, 1] inputs.
        images: [N, C, H, W] in [0, 1].
        labels: int64 [N].
        attacks: the attacks' settings (at least one).
        batch_size: images per attack batch.
        seed: seed of the attacks' randomness.
        index: dataset positions of the points (default 0..N-1).
        progress: called with the number of images finished after every batch.

    Returns:
        ``EvalResult`` with one ``AttackOutcome`` per attack, in order.
    """
    check_images(images, "images")
    check_labels(labels, images.shape[0], "labels")
    if isinstance(attacks, AttackSpec):
        attacks = [attacks]
    if not isinstance(attacks, Sequence) or not attacks:
        raise InputError("evaluate_attacks needs a list of at least one AttackSpec, got "
                         f"{attacks!r}")
    bad = [type(a).__name__ for a in attacks if not isinstance(a, AttackSpec)]
    if bad:
        raise InputTypeError(f"attacks must be AttackSpec objects, got {', '.join(bad)}")
    _check_common(model, batch_size, seed, index, len(images), progress)
    device = next(model.parameters()).device
    gens = [torch.Generator(device=device).manual_seed(seed) for _ in attacks]
    clean: list[torch.Tensor] = []
    adv: list[list[torch.Tensor]] = [[] for _ in attacks]
    pert: list[list[torch.Tensor]] = [[] for _ in attacks]
    seconds = [0.0 for _ in attacks]
    for x, y, cp in _clean_batches(model, images, labels, batch_size, device):
        ok = cp == y
        clean.append(cp.cpu())
        for j, attack in enumerate(attacks):
            t0 = time.perf_counter()
            ap = cp.clone()
            pn = torch.zeros(len(x), device=device)
            if ok.any():
                r = attack.run(model, x[ok], y[ok], generator=gens[j])
                with torch.no_grad():
                    ap[ok] = model(r.x_adv).argmax(1)
                pn[ok] = perturbation_norm(r.x_adv - x[ok], attack.norm)
            adv[j].append(ap.cpu())
            pert[j].append(pn.float().cpu())
            seconds[j] += time.perf_counter() - t0
        if progress is not None:
            progress(len(x))
    outcomes = tuple(
        AttackOutcome(attack=a.name, norm=a.norm, eps=float(a.eps),
                      adv_pred=torch.cat(adv[j]), perturbation=torch.cat(pert[j]),
                      params={**a.to_dict(), "seed": seed}, seconds=seconds[j])
        for j, a in enumerate(attacks)
    )
    result = EvalResult(index=_index(index, len(images)), labels=labels.cpu(),
                        clean_pred=torch.cat(clean), outcomes=outcomes)
    for a, o in zip(attacks, outcomes, strict=True):
        log.info("%r: clean %.4f robust %.4f (%.1fs)", a,
                 float(result.clean_correct.double().mean()),
                 float(result.adv_correct(a.eps, norm=a.norm, attack=a.name)
                       .double().mean()), o.seconds)
    return result


def evaluate_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: AttackSpec,
    *,
    batch_size: int = 250,
    seed: int = 0,
    index: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """``evaluate_attacks`` with one attack (same arguments and record)."""
    return evaluate_attacks(model, images, labels, [attack], batch_size=batch_size, seed=seed,
                            index=index, progress=progress)


def evaluate_minimal(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    attack: MinimalAttack = "fmn",
    norm: str = "linf",
    steps: int = 100,
    batch_size: int = 250,
    eps_max: float | None = None,
    search_steps: int = 10,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    index: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Run a minimal-perturbation attack on every clean-correct point; one record.

    ``attack="fmn"``: the Fast Minimum-Norm attack (Pintor et al. 2021, arXiv 2102.12827,
    ``attacks.minimal.fmn``). ``attack="bisection"``: PGD at a per-example radius found by
    bisection on ``[0, eps_max]`` (``attacks.minimal.minimal_eps_by_bisection``).

    The record's one ``AttackOutcome`` has ``eps = math.inf``; per point, ``perturbation``
    is the norm (pixel units of ``norm``) of the smallest adversarial example found where
    the attack succeeded on a clean-correct point and 0 elsewhere, and ``adv_pred`` the
    model's prediction on the returned point (the clean input where no example was found).
    Points misclassified when clean are not attacked (``adv_pred`` is the clean
    prediction, perturbation 0), as in ``evaluate_attacks``. So

    * ``metrics.average_perturbation(result)`` is the seed's eq. (3), the sum of the found
      norms over all N points (unbroken and clean-misclassified points count 0);
    * ``metrics.average_perturbation_of_successes(result)`` is the mean found norm over the
      points the attack flipped;
    * ``metrics.robust_accuracy(result, eps=r)`` is robust accuracy at any radius r
      against this attack, and ``result.robust_accuracy_curve(radii)`` the curve.

    The model runs in eval mode (its mode is restored), and so does the attack.

    Args:
        model: classifier on [0, 1] inputs.
        images: [N, C, H, W] in [0, 1].
        labels: int64 [N].
        attack: ``"fmn"`` or ``"bisection"``.
        norm: ``"linf"`` or ``"l2"``.
        steps: FMN iterations, or PGD steps per bisection run.
        batch_size: images per attack batch.
        eps_max: the largest radius the bisection searches (pixel units); required for
            ``"bisection"``, not accepted for ``"fmn"``.
        search_steps: bisection rounds (``"bisection"`` only).
        options: further keyword arguments of ``fmn`` (``alpha_init``, ``gamma_init``, ...)
            or ``minimal_eps_by_bisection`` (``restarts``, ``step_size_ratio``, ...);
            recorded in the outcome's ``params``.
        seed: seed of the bisection's PGD random starts (FMN is deterministic).
        index: dataset positions of the points (default 0..N-1).
        progress: called with the number of images finished after every batch.

    Returns:
        ``EvalResult`` with one ``AttackOutcome`` named ``attack`` (``eps = inf``).

    Example:
        >>> from bastion.metrics import average_perturbation
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
        >>> r = evaluate_minimal(model, x, y, steps=20)
        >>> r.only(attack="fmn").eps
        inf
        >>> average_perturbation(r) >= 0
        True
    """
    check_images(images, "images")
    check_labels(labels, images.shape[0], "labels")
    check_choice(attack, MINIMAL_ATTACKS, "minimal attack")
    check_choice(norm, ATTACK_NORMS, "attack norm")
    _check_common(model, batch_size, seed, index, len(images), progress)
    if attack == "bisection" and eps_max is None:
        raise InputError("attack='bisection' needs eps_max, the largest radius it searches")
    if attack == "fmn" and eps_max is not None:
        raise InputError("eps_max applies to attack='bisection' only; FMN searches unbounded")
    opts = dict(options or {})
    reserved = {"norm", "steps", "eps_max", "search_steps", "generator", "train_mode"} & set(opts)
    if reserved:
        raise InputError(f"options may not set {sorted(reserved)}; they are arguments of "
                         "evaluate_minimal (the attack always runs in eval mode)")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)

    def run(x: torch.Tensor, y: torch.Tensor) -> MinimalResult:
        if attack == "fmn":
            return fmn(model, x, y, norm=norm, steps=steps,  # type: ignore[arg-type]
                       train_mode=False, **opts)
        return minimal_eps_by_bisection(
            model, x, y, norm=norm, eps_max=float(eps_max),  # type: ignore[arg-type]
            steps=steps, search_steps=search_steps, train_mode=False, generator=gen, **opts,
        )

    clean: list[torch.Tensor] = []
    adv: list[torch.Tensor] = []
    pert: list[torch.Tensor] = []
    t0 = time.perf_counter()
    for x, y, cp in _clean_batches(model, images, labels, batch_size, device):
        ok = cp == y
        ap = cp.clone()
        pn = torch.zeros(len(x), dtype=torch.float32, device=device)
        if ok.any():
            r = run(x[ok], y[ok])
            with torch.no_grad():
                ap[ok] = model(r.x_adv).argmax(1)
            pn[ok] = r.norm.float()
        clean.append(cp.cpu())
        adv.append(ap.cpu())
        pert.append(pn.cpu())
        if progress is not None:
            progress(len(x))
    params: dict[str, Any] = {"attack": attack, "norm": norm, "steps": steps, **opts,
                              "seed": seed}
    if attack == "bisection":
        params.update(eps_max=float(eps_max), search_steps=search_steps)  # type: ignore[arg-type]
    outcome = AttackOutcome(attack=attack, norm=norm, eps=math.inf,  # type: ignore[arg-type]
                            adv_pred=torch.cat(adv), perturbation=torch.cat(pert),
                            params=params, seconds=time.perf_counter() - t0)
    result = EvalResult(index=_index(index, len(images)), labels=labels.cpu(),
                        clean_pred=torch.cat(clean), outcomes=(outcome,))
    log.info("%s %s (%d steps): clean %.4f, attack flipped %.4f of the points (%.1fs)",
             attack, norm, steps, float(result.clean_correct.double().mean()),
             float((result.clean_correct & (outcome.adv_pred != result.labels))
                   .double().mean()), outcome.seconds)
    return result
