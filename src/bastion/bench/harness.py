"""Run an attack over a dataset in batches and keep per-example outcomes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from bastion._validate import check_images, check_labels
from bastion.attacks.core import perturbation_norm
from bastion.attacks.pgd import model_mode
from bastion.attacks.spec import AttackSpec
from bastion.bench.results import EvalResult

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Class predictions [N] of ``model`` in eval mode, in batches."""
    with model_mode(model, False):
        chunks = [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
        return torch.cat(chunks)


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
    """Attack ``model`` on ``(images, labels)`` and record per-example outcomes.

    Points misclassified when clean are not attacked (x' = x), see ``EvalResult``. The
    model runs in eval mode; its mode is restored. The attack's random starts come from a
    generator seeded with ``seed`` on the images' device, so a run is reproducible.

    Args:
        model: classifier on [0, 1] inputs.
        images: [N, C, H, W] in [0, 1].
        labels: int64 [N].
        attack: the attack's settings.
        batch_size: images per attack batch.
        seed: seed of the attack's randomness.
        index: dataset positions of the points (default 0..N-1).
        progress: called with the number of images finished after every batch.

    Returns:
        ``EvalResult``.
    """
    check_images(images, "images")
    check_labels(labels, images.shape[0], "labels")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    clean, adv, pert = [], [], []
    start = time.perf_counter()
    with model_mode(model, False):
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device)
            y = labels[i : i + batch_size].to(device)
            with torch.no_grad():
                cp = model(x).argmax(1)
            ok = cp == y
            ap = cp.clone()
            pn = torch.zeros(len(x), device=device)
            if ok.any():
                r = attack.run(model, x[ok], y[ok], generator=gen)
                with torch.no_grad():
                    ap[ok] = model(r.x_adv).argmax(1)
                pn[ok] = perturbation_norm(r.x_adv - x[ok], attack.norm)
            clean.append(cp.cpu())
            adv.append(ap.cpu())
            pert.append(pn.cpu())
            if progress is not None:
                progress(len(x))
    seconds = time.perf_counter() - start
    result = EvalResult(
        attack=attack.name,
        norm=attack.norm,
        eps=float(attack.eps),
        index=torch.arange(len(images)) if index is None else index.cpu().long(),
        labels=labels.cpu(),
        clean_pred=torch.cat(clean),
        adv_pred=torch.cat(adv),
        perturbation=torch.cat(pert),
        params={**attack.to_dict(), "seed": seed},
        seconds=seconds,
    )
    log.info("%r: clean %.4f robust %.4f (%.1fs)", attack,
             float(result.clean_correct.double().mean()),
             float(result.adv_correct.double().mean()), seconds)
    return result
