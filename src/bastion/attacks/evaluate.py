"""Run attacks over a dataset in batches and keep per-example outcomes (``EvalResult``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from bastion._torch import model_mode
from bastion._validate import check_images, check_labels
from bastion.attacks.core import perturbation_norm
from bastion.attacks.spec import AttackSpec
from bastion.records import AttackOutcome, EvalResult

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Class predictions [N] of ``model`` in eval mode, in batches."""
    with model_mode(model, False):
        chunks = [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
        return torch.cat(chunks)


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
    if not attacks:
        raise ValueError("evaluate_attacks needs at least one attack")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    device = next(model.parameters()).device
    gens = [torch.Generator(device=device).manual_seed(seed) for _ in attacks]
    clean: list[torch.Tensor] = []
    adv: list[list[torch.Tensor]] = [[] for _ in attacks]
    pert: list[list[torch.Tensor]] = [[] for _ in attacks]
    seconds = [0.0 for _ in attacks]
    with model_mode(model, False):
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device)
            y = labels[i : i + batch_size].to(device)
            with torch.no_grad():
                cp = model(x).argmax(1)
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
    result = EvalResult(
        index=torch.arange(len(images)) if index is None else index.cpu().long(),
        labels=labels.cpu(), clean_pred=torch.cat(clean), outcomes=outcomes,
    )
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
