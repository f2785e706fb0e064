"""Run attacks over a dataset in batches and keep per-example outcomes (``EvalResult``).

``evaluate_attacks`` runs eps-bounded attacks (``AttackSpec``); ``evaluate_minimal`` runs a
minimal-perturbation attack (FMN or PGD bisection) and records the norm of the smallest
adversarial example found, so the seed's eq. (3) and its of-successes variant are
``bastion.metrics.average_perturbation`` / ``average_perturbation_of_successes`` of it.

Both draw each batch's randomness from the seed and the batch's number alone
(``sharding.batch_seed``), so under ``torchrun`` the ranks can split the batches between
them (``sharding.map_batches``) and every rank still returns the record one process would.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion._validate import check_choice, check_images, check_int, check_labels
from bastion.attacks.core import perturbation_norm
from bastion.attacks.ddn import DDN_NORMS, ddn
from bastion.attacks.minimal import MinimalResult, fmn, minimal_eps_by_bisection
from bastion.attacks.pgd import ATTACK_NORMS
from bastion.attacks.sharding import batch_seed, map_batches, process_share
from bastion.attacks.spec import AttackSpec
from bastion.errors import InputError, InputTypeError
from bastion.records import AttackOutcome, EvalResult

log = logging.getLogger(__name__)


MinimalAttack = Literal["fmn", "ddn", "bisection"]
MINIMAL_ATTACKS: tuple[str, ...] = ("fmn", "ddn", "bisection")


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
    if n == 0:
        raise InputError("images is empty: an evaluation needs at least one point")
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


@contextlib.contextmanager
def _seeded_global_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed torch's global RNG with ``seed`` inside, restore the caller's state after.

    For attacks that draw from (or reseed) the global RNG, such as torchattacks' APGD, FAB
    and Square behind ``autoattack``: the CPU generator and that of ``device`` (when it is
    an accelerator) are saved and restored.
    """
    devices = [] if device.type == "cpu" else [device]
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


class _Batches:
    """Global batch ``b`` of an evaluation: points ``[b * size, (b + 1) * size)``."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 index: torch.Tensor, size: int, device: torch.device) -> None:
        self.model, self.images, self.labels, self.index = model, images, labels, index
        self.size, self.device = size, device
        self.count = math.ceil(len(images) / size)
        self._labels_checked = False

    def clean(self, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, y, clean predictions)`` of batch ``b`` on the device (model in eval mode);
        the labels are checked against the model's number of classes on the first call."""
        sl = slice(b * self.size, (b + 1) * self.size)
        x = self.images[sl].to(self.device)
        y = self.labels[sl].to(self.device)
        with torch.no_grad():
            logits = self.model(x)
        if not self._labels_checked:
            _check_label_range(self.labels, logits)
            self._labels_checked = True
        return x, y, logits.argmax(1)

    def record(self, b: int, clean_pred: torch.Tensor,
               outcomes: Sequence[AttackOutcome]) -> EvalResult:
        """The ``EvalResult`` of batch ``b``."""
        sl = slice(b * self.size, (b + 1) * self.size)
        return EvalResult(index=self.index[sl], labels=self.labels[sl].cpu(),
                          clean_pred=clean_pred.cpu(), outcomes=tuple(outcomes))


def _evaluate_sharded(
    batches: _Batches, attack_batch: Callable[[int], EvalResult], *, distributed: bool | None,
    signature: Any,
) -> EvalResult:
    """Run ``attack_batch`` on every global batch (this rank's share under a process
    group, see ``sharding``) and join the pieces, in point order, into one record."""
    rank, world = process_share(distributed)
    with model_mode(batches.model, False):
        pieces = map_batches(attack_batch, batches.count, rank=rank, world=world,
                             signature=signature)
    return EvalResult.concat(pieces)


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
    distributed: bool | None = None,
) -> EvalResult:
    """Attack ``model`` with each of ``attacks`` on the same points; one record for all.

    Points misclassified when clean are not attacked (x' = x), see ``AttackOutcome``. The
    model runs in eval mode; its mode is restored.

    Randomness: batch ``b`` (points ``[b * batch_size, (b + 1) * batch_size)``) draws from
    ``sharding.batch_seed(seed, b)`` only (``seed`` itself for batch 0): each attack gets
    its own fresh generator with that seed on the model's device, and runs with torch's
    global RNG seeded with it too (for torchattacks' components, which draw from it; the
    caller's global RNG state is restored afterwards). So an attack's outcome is the same
    whether it runs alone or beside others, and a batch's outcome does not depend on the
    batches evaluated before it; it does depend on ``batch_size``. The clean pass and the
    judging passes of a randomized defense are seeded per batch likewise.

    Judging over draws (``AttackSpec.draws`` = d > 1, for randomized defenses): each
    attacked point's returned point is classified by d forward passes (the first gives
    the one-pass prediction) and counts as robust only if all d are correct; the outcome
    records the per-point count of correct passes (``AttackOutcome.correct_draws``) and
    ``adv_pred`` is the first wrong pass's prediction where there is one
    (``eot.judge_over_draws``). Clean accuracy stays the one pass ``clean_pred``; with any
    attack's d > 1 the record also counts correct passes on the clean points over the
    largest d (``EvalResult.clean_correct_draws``, the clean pass first).
    ``EvalResult.draw_spread`` summarises the counts. An outcome's ``params`` name its
    settings (``AttackSpec.settings_for``: for a ``Defended`` model also whether it went
    through BPDA).

    Under an initialised ``torch.distributed`` process group with several ranks (and
    ``distributed`` not False), every rank must call this with the same arguments: rank
    ``r`` attacks the batches ``b`` with ``b % world_size == r``, the ranks exchange their
    pieces, and every rank returns the same full record, equal to the one a single
    process produces. Each outcome's ``seconds`` are then process-seconds: the sum of
    every rank's time on that attack. A ``DistributedDataParallel`` model is unwrapped
    first (the ranks run different numbers of batches, so no forward pass may sync).

    Args:
        model: classifier on [0, 1] inputs.
        images: [N, C, H, W] in [0, 1] (N >= 1).
        labels: int64 [N].
        attacks: the attacks' settings (at least one).
        batch_size: images per attack batch.
        seed: seed of the attacks' randomness.
        index: dataset positions of the points (default 0..N-1).
        progress: called with the number of images finished after every batch (this
            rank's batches only).
        distributed: None: split the batches across the ranks of the default process
            group if one is initialised; False: evaluate every batch in this process
            whatever the process group (e.g. when only rank 0 evaluates); True: require
            an initialised process group.

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
    model = unwrap(model)  # no DDP hooks: the ranks run different numbers of batches
    device = next(model.parameters()).device
    batches = _Batches(model, images, labels, _index(index, len(images)), batch_size, device)
    params = [{**a.settings_for(model), "seed": seed} for a in attacks]
    from bastion.attacks.eot import judge_over_draws  # (local: one edit of this function)

    clean_draws = max(a.draws for a in attacks)

    def attack_batch(b: int) -> EvalResult:
        s = batch_seed(seed, b)
        with _seeded_global_rng(device, s):  # a randomized defense's clean passes
            x, y, cp = batches.clean(b)
            clean_counts = (judge_over_draws(model, x, y, clean_draws, first=cp)[1]
                            if clean_draws > 1 else None)
        ok = cp == y
        outcomes = []
        for a, p in zip(attacks, params, strict=True):
            t0 = time.perf_counter()
            ap = cp.clone()
            pn = torch.zeros(len(x), device=device)
            counts = torch.zeros(len(x), dtype=torch.int64, device=device)
            if ok.any():
                gen = torch.Generator(device=device).manual_seed(s)
                with _seeded_global_rng(device, s):
                    r = a.run(model, x[ok], y[ok], generator=gen)
                    with torch.no_grad():
                        first = model(r.x_adv).argmax(1)
                    ap[ok], counts[ok] = judge_over_draws(model, r.x_adv, y[ok], a.draws,
                                                          first=first)
                pn[ok] = perturbation_norm(r.x_adv - x[ok], a.norm)
            outcomes.append(AttackOutcome(
                attack=a.name, norm=a.norm, eps=float(a.eps),
                adv_pred=ap.cpu(), perturbation=pn.float().cpu(), params=p,
                seconds=time.perf_counter() - t0, draws=a.draws,
                correct_draws=counts.cpu() if a.draws > 1 else None,
            ))
        if progress is not None:
            progress(len(x))
        rec = batches.record(b, cp, outcomes)
        if clean_counts is None:
            return rec
        return EvalResult(index=rec.index, labels=rec.labels, clean_pred=rec.clean_pred,
                          outcomes=rec.outcomes, params=rec.params, clean_draws=clean_draws,
                          clean_correct_draws=clean_counts.cpu())

    result = _evaluate_sharded(batches, attack_batch, distributed=distributed,
                               signature=(len(images), batch_size, seed, int(labels.sum()),
                                          repr(params)))
    for a, o in zip(attacks, result.outcomes, strict=True):
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
    distributed: bool | None = None,
) -> EvalResult:
    """``evaluate_attacks`` with one attack (same arguments and record)."""
    return evaluate_attacks(model, images, labels, [attack], batch_size=batch_size, seed=seed,
                            index=index, progress=progress, distributed=distributed)


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
    distributed: bool | None = None,
) -> EvalResult:
    """Run a minimal-perturbation attack on every clean-correct point; one record.

    ``attack="fmn"``: the Fast Minimum-Norm attack (Pintor et al. 2021, arXiv 2102.12827,
    ``attacks.minimal.fmn``). ``attack="ddn"`` (L2 only): Decoupled Direction and Norm
    (Rony et al. 2019, arXiv 1811.09600, ``attacks.ddn.ddn``). ``attack="bisection"``: PGD
    at a per-example radius found by bisection on ``[0, eps_max]``
    (``attacks.minimal.minimal_eps_by_bisection``).

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

    The model runs in eval mode (its mode is restored), and so does the attack. Batches,
    their seeds (``sharding.batch_seed(seed, b)``, the bisection's generator and torch's
    global RNG alike) and the split across ``torchrun`` ranks (``distributed``; the
    outcome's ``seconds`` are then summed over the ranks) are those of
    ``evaluate_attacks``.

    Args:
        model: classifier on [0, 1] inputs.
        images: [N, C, H, W] in [0, 1] (N >= 1).
        labels: int64 [N].
        attack: ``"fmn"``, ``"ddn"`` or ``"bisection"``.
        norm: ``"linf"`` or ``"l2"`` (``"ddn"``: ``"l2"`` only).
        steps: FMN or DDN iterations, or PGD steps per bisection run.
        batch_size: images per attack batch.
        eps_max: the largest radius the bisection searches (pixel units); required for
            ``"bisection"``, not accepted for ``"fmn"`` or ``"ddn"``.
        search_steps: bisection rounds (``"bisection"`` only).
        options: further keyword arguments of ``fmn`` (``alpha_init``, ``gamma_init``, ...),
            ``ddn`` (``init_norm``, ``gamma``, ``levels``, ...) or
            ``minimal_eps_by_bisection`` (``restarts``, ``step_size_ratio``, ...);
            recorded in the outcome's ``params``.
        seed: seed of the bisection's PGD random starts and of DDN's generator (used only
            where a gradient vanishes); FMN is deterministic.
        index: dataset positions of the points (default 0..N-1).
        progress: called with the number of images finished after every batch (this
            rank's batches only).
        distributed: as for ``evaluate_attacks``: None splits the batches across an
            initialised process group, False evaluates all of them here, True requires a
            process group.

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
    if attack != "bisection" and eps_max is not None:
        raise InputError(f"eps_max applies to attack='bisection' only; {attack.upper()} "
                         "searches unbounded")
    if attack == "ddn" and norm not in DDN_NORMS:
        raise InputError(f"attack='ddn' is an L2 attack, got norm {norm!r}; valid norms for "
                         f"ddn: {', '.join(DDN_NORMS)} (use attack='fmn' for linf)")
    opts = dict(options or {})
    reserved = {"norm", "steps", "eps_max", "search_steps", "generator", "train_mode",
                "targeted"} & set(opts)
    if reserved:
        raise InputError(f"options may not set {sorted(reserved)}; they are arguments of "
                         "evaluate_minimal (the attack is untargeted and always runs in "
                         "eval mode)")
    model = unwrap(model)  # no DDP hooks: the ranks run different numbers of batches
    device = next(model.parameters()).device
    params: dict[str, Any] = {"attack": attack, "norm": norm, "steps": steps, **opts,
                              "seed": seed}
    if attack == "bisection":
        params.update(eps_max=float(eps_max), search_steps=search_steps)  # type: ignore[arg-type]
    batches = _Batches(model, images, labels, _index(index, len(images)), batch_size, device)

    def run(x: torch.Tensor, y: torch.Tensor, s: int) -> MinimalResult:
        if attack == "fmn":
            return fmn(model, x, y, norm=norm, steps=steps,  # type: ignore[arg-type]
                       train_mode=False, **opts)
        gen = torch.Generator(device=device).manual_seed(s)
        if attack == "ddn":
            return ddn(model, x, y, steps=steps, train_mode=False, generator=gen, **opts)
        return minimal_eps_by_bisection(
            model, x, y, norm=norm, eps_max=float(eps_max),  # type: ignore[arg-type]
            steps=steps, search_steps=search_steps, train_mode=False, generator=gen, **opts,
        )

    def attack_batch(b: int) -> EvalResult:
        t0 = time.perf_counter()
        x, y, cp = batches.clean(b)
        ok = cp == y
        ap = cp.clone()
        pn = torch.zeros(len(x), dtype=torch.float32, device=device)
        if ok.any():
            s = batch_seed(seed, b)
            with _seeded_global_rng(device, s):
                r = run(x[ok], y[ok], s)
            with torch.no_grad():
                ap[ok] = model(r.x_adv).argmax(1)
            pn[ok] = r.norm.float()
        outcome = AttackOutcome(attack=attack, norm=norm, eps=math.inf,  # type: ignore[arg-type]
                                adv_pred=ap.cpu(), perturbation=pn.cpu(), params=params,
                                seconds=time.perf_counter() - t0)
        if progress is not None:
            progress(len(x))
        return batches.record(b, cp, (outcome,))

    result = _evaluate_sharded(batches, attack_batch, distributed=distributed,
                               signature=(len(images), batch_size, seed, int(labels.sum()),
                                          repr(params)))
    outcome = result.outcomes[0]
    log.info("%s %s (%d steps): clean %.4f, attack flipped %.4f of the points (%.1fs)",
             attack, norm, steps, float(result.clean_correct.double().mean()),
             float((result.clean_correct & (outcome.adv_pred != result.labels))
                   .double().mean()), outcome.seconds)
    return result
