"""An empirical attack on the smoothed classifier itself, to set beside its certificate.

A certificate of the smoothed classifier ``g`` (not of the base model ``f``) promises that
``g``'s prediction cannot change within the certified radius; the matching empirical test
attacks ``g``. Following Salman et al. 2019 ("Provably Robust Deep Learning via
Adversarially Trained Smoothed Classifiers", arXiv 1906.04584, SmoothAdv), PGD ascends the
cross-entropy of the Monte-Carlo soft smoothed classifier,

    loss(x') = -log( (1/m) sum_i softmax(f(x' + eta_i))_y ),   eta_i ~ the noise,

with ``m`` fresh draws per step, L2 steps of ``2 r / steps`` projected on the L2 ball of
radius ``r`` and on [0, 1]. ``g`` is then evaluated at the clean and the adversarial
points with Cohen et al.'s PREDICT (``n`` draws, failure probability ``alpha``).

How predictions are recorded (``EvalResult``):

- clean: PREDICT's class; an abstention is ``ABSTAIN`` (-1), which counts as wrong, as
  abstentions do in certified accuracy;
- adversarial: PREDICT's class at ``x'``; an abstention there counts as *not broken* (the
  prediction did not demonstrably change -- near the boundary PREDICT abstains even
  where ``g`` still predicts the class), so the record's robust accuracy is an upper
  bound of ``g``'s under this attack. ``params["adv_abstentions"]`` counts them.

So a certified accuracy at radius r above this record's robust accuracy at r can only
come from an unsound certificate (or PREDICT's own error, probability ``alpha`` per
input) -- the check ``checks.check_certified_vs_empirical``. Only L2 (Gaussian noise) is
implemented; other norms raise ``InputError``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bastion._torch import model_mode
from bastion._validate import check_images, check_labels
from bastion.certify.smoothing import SmoothedClassifier
from bastion.errors import InputError
from bastion.records import AttackOutcome, EvalResult

log = logging.getLogger(__name__)

ABSTAIN = -1
"""The recorded prediction of an abstention of the smoothed classifier."""

ATTACK_NAME = "smoothadv-pgd"


def _smoothed_pgd(model: nn.Module, noise_sample: object, x: torch.Tensor, y: torch.Tensor,
                  radius: float, steps: int, samples: int,
                  gen: torch.Generator) -> torch.Tensor:
    """SmoothAdv PGD (L2) against the soft smoothed classifier; returns x' [B, C, H, W]."""
    step = 2.0 * radius / steps
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        xa = (x + delta).repeat_interleave(samples, 0)
        eta = noise_sample(xa.shape, gen, device=x.device)  # type: ignore[operator]
        probs = F.softmax(model(xa + eta).float(), 1).view(len(x), samples, -1).mean(1)
        loss = -torch.log(probs.gather(1, y[:, None]).clamp_min(1e-12)).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            g = grad.flatten(1)
            g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
            delta = delta + step * g.view_as(delta)
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = delta * (radius / norms).clamp(max=1.0).view(-1, *[1] * (x.dim() - 1))
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def attack_smoothed(
    smoothed: SmoothedClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    radii: Sequence[float],
    *,
    steps: int = 20,
    samples: int = 16,
    n: int = 1000,
    alpha: float = 0.001,
    batch_size: int = 50,
    seed: int = 0,
    index: torch.Tensor | None = None,
) -> EvalResult:
    """SmoothAdv PGD on ``smoothed`` at each radius; one ``EvalResult`` (see the module).

    Args:
        smoothed: the smoothed classifier (Gaussian noise: L2 radii).
        images: [N, C, H, W] in [0, 1]; labels: int64 [N].
        radii: L2 radii (> 0, [0, 1] pixel units).
        steps, samples: PGD steps and noise draws per step and input.
        n, alpha: PREDICT's draws and failure probability.
        batch_size: inputs per attack batch (each makes ``samples`` noisy copies).
        seed: seed of the noise (per batch and radius, so results do not depend on order).
        index: dataset positions (default 0..N-1).
    """
    check_images(images, "images")
    check_labels(labels, images.shape[0], "labels")
    if smoothed.noise.norm != "l2":
        raise InputError(f"attack_smoothed implements L2 (Gaussian noise); the noise "
                         f"{smoothed.noise.name!r} certifies {smoothed.noise.norm}")
    rs = [float(r) for r in radii]
    if not rs or any(not math.isfinite(r) or r <= 0 for r in rs):
        raise InputError(f"radii must be finite and > 0, got {list(radii)}")
    for name, v in (("steps", steps), ("samples", samples), ("n", n),
                    ("batch_size", batch_size)):
        if not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be an int >= 1, got {v!r}")
    model = smoothed.base_model
    device = smoothed.device
    noise = smoothed.noise_for(images)
    x_all, y_all = images.to(device), labels.to(device)

    def predict(x: torch.Tensor, salt: int) -> torch.Tensor:
        gens = [torch.Generator(device=device).manual_seed(seed * 1_000_003 + salt + i)
                for i in range(len(x))]
        c = smoothed.predict(x, n=n, alpha=alpha, generator=gens)
        return torch.where(c.abstained, torch.full_like(c.prediction, ABSTAIN), c.prediction)

    t0 = time.perf_counter()
    clean = torch.cat([predict(x_all[i:i + batch_size], i)
                       for i in range(0, len(x_all), batch_size)]).cpu()
    clean_seconds = time.perf_counter() - t0
    ok = clean == labels.cpu()
    outcomes = []
    for j, r in enumerate(rs):
        t0 = time.perf_counter()
        adv = clean.clone()
        pert = torch.zeros(len(x_all))
        abst = 0
        for i in range(0, len(x_all), batch_size):
            sel = ok[i:i + batch_size]
            if not sel.any():
                continue
            rows = torch.arange(i, min(i + batch_size, len(x_all)))[sel]
            x, y = x_all[rows.to(device)], y_all[rows.to(device)]
            gen = torch.Generator(device=device).manual_seed(seed * 7919 + 104729 * (j + 1) + i)
            with model_mode(model, False):
                xa = _smoothed_pgd(model, noise.sample, x, y, r, steps, samples, gen)
            p = predict(xa, 10_000_019 * (j + 1) + i)
            abst += int((p == ABSTAIN).sum())
            p = torch.where(p == ABSTAIN, y, p).cpu()
            adv[rows] = p
            pert[rows] = (xa - x).flatten(1).norm(dim=1).float().cpu()
        outcomes.append(AttackOutcome(
            attack=ATTACK_NAME, norm="l2", eps=r, adv_pred=adv, perturbation=pert,
            params={"name": ATTACK_NAME, "threat": {"eps": r, "norm": "l2", "steps": steps},
                    "samples": samples, "n": n, "alpha": alpha, "seed": seed,
                    "noise": noise.params(), "adv_abstentions": abst,
                    "paper": "Salman et al. 2019, arXiv 1906.04584"},
            seconds=time.perf_counter() - t0))
    idx = torch.arange(len(labels)) if index is None else index
    result = EvalResult(index=idx, labels=labels.cpu(), clean_pred=clean, outcomes=tuple(outcomes),
                        params={"classifier": "smoothed", "predict_n": n, "alpha": alpha,
                                "clean_seconds": clean_seconds})
    log.info("smoothed classifier: clean %.3f, robust %s", float(ok.double().mean()),
             {r: round(float(result.adv_correct(r).double().mean()), 3) for r in rs})
    return result


__all__ = ["ABSTAIN", "ATTACK_NAME", "attack_smoothed"]
