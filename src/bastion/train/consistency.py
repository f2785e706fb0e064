"""Consistency regularisation: adversarial training on two augmented views plus a JS term."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bastion._validate import check_choice
from bastion.attacks.core import AttackResult
from bastion.attacks.threat import ThreatModel, init_threat
from bastion.errors import InputError
from bastion.losses.consistency import js_divergence
from bastion.records import StepContext, StepOutput
from bastion.train.standard import at_least_fp32, batch_accuracy

Augment = Literal["crop-flip", "crop", "flip", "none"]
AUGMENTS: tuple[str, ...] = ("crop-flip", "crop", "flip", "none")


def random_crop_flip(
    x: torch.Tensor,
    *,
    pad: int = 4,
    crop: bool = True,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-example random crop after zero padding, and random horizontal flip.

    The tensor version of torchvision's ``RandomCrop(size, padding=pad)`` (constant fill 0)
    followed by ``RandomHorizontalFlip()``: each image is padded by ``pad`` zeros on every
    side, cut back to its size at a uniformly random offset in ``[0, 2 pad]^2``, and
    mirrored left-right with probability 1/2. Every draw comes from ``generator`` (on the
    batch's device), so the result is reproducible. Values stay in [0, 1] when ``x`` is.

    Args:
        x: images [N, C, H, W].
        pad: padding in pixels (>= 0); 0 means no crop.
        crop: do the random crop.
        flip: do the random flip.
        generator: source of the random offsets and flips.

    Shape:
        [N, C, H, W] -> [N, C, H, W].

    Example:
        >>> x = torch.rand(3, 1, 8, 8)
        >>> random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 1, 8, 8])
    """
    if x.dim() != 4:
        raise InputError(f"x must be an NCHW batch, got shape {tuple(x.shape)}")
    if not isinstance(pad, int) or pad < 0:
        raise InputError(f"pad must be an int >= 0, got {pad!r}")
    n, _, h, w = x.shape
    out = x
    if crop and pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # [N, H, 1]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # [N, 1, W]
        batch = torch.arange(n, device=x.device)[:, None, None]
        # Gathered as [N, H, W, C], so the NCHW view below has channels-last strides.
        out = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        if x.is_contiguous():
            out = out.contiguous()
    if flip:
        coin = torch.rand((n,), generator=generator, device=x.device) < 0.5
        out = torch.where(coin[:, None, None, None], out.flip(-1), out)
    return out


@dataclass(frozen=True, kw_only=True)
class Consistency:
    """Adversarial training with consistency regularisation over attacked augmentations.

    Tack, Yu, Jeong, Kim, Hwang & Shin 2022, "Consistency Regularization for Adversarial
    Robustness", arXiv 2103.04623. Two random augmentations ``T1(x)``, ``T2(x)`` of the
    batch are each attacked by PGD (cross-entropy), giving ``x1 = T1(x) + d1`` and
    ``x2 = T2(x) + d2``; the loss is

        ``(CE(f(x1), y) + CE(f(x2), y)) / 2 + lambda_ * JS(f_tau(x1) || f_tau(x2))``

    with ``f_tau = softmax(logits / tau)`` and ``JS`` the Jensen-Shannon divergence averaged
    over the batch (:func:`bastion.losses.consistency.js_divergence`). This is the authors'
    "consistency on standard AT" (github.com/alinlab/consistency-adversarial,
    ``adv_train_consistency.py``: the two views attacked as one 2N batch, cross-entropy over
    the 2N adversarial logits). The lecture's formula writes ``T1(x) + d1`` on both sides of
    the JS, a typo: the two arguments are the two differently augmented, separately
    attacked views.

    Augmentation is done here with tensor ops and ``ctx.generator`` (reproducible), not by
    the data loader: ``"crop-flip"`` is zero-pad by ``pad`` + random crop + random
    horizontal flip (the paper's "base" augmentation, pad 4 on 32x32 CIFAR; use pad 2 on
    28x28 Fashion-MNIST), ``"crop"`` and ``"flip"`` one of the two, ``"none"`` the
    identity (then the two views differ only by their attacks' random starts).

    Defaults: ``lambda_ = 1``, ``tau = 0.5`` (the code's ``--lam`` and ``--T`` defaults,
    ``common/common.py``), ``steps = 10`` and ``step_size = eps / 4`` (its L-inf attack:
    10 steps of 2/255 at eps 8/255), eval mode during the attack (its ``EvalBN``).

    Args:
        threat: the views' PGD (``ThreatModel``; a mapping overrides the default's keys):
            radius ``eps`` in [0, 1] pixel units (default 0.1), ``norm``, ``steps`` (10),
            ``step_size`` (None means ``eps / 4``), ``random_init`` (True) and
            ``train_mode`` (False: eval mode during the attack, restored).
        lambda_: weight of the JS term, >= 0.
        tau: temperature of the JS term, > 0.
        augment: ``"crop-flip"``, ``"crop"``, ``"flip"`` or ``"none"``.
        pad: crop padding in pixels, >= 0.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> method = Consistency(threat=ThreatModel(eps=0.1, steps=2))
        >>> out = method(model, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
        >>> sorted(out.logs)
        ['adv_acc', 'ce', 'js']
    """

    threat: ThreatModel = ThreatModel(eps=0.1, steps=10)
    lambda_: float = 1.0
    tau: float = 0.5
    augment: Augment = "crop-flip"
    pad: int = 4

    def __post_init__(self) -> None:
        init_threat(self)
        if not (isinstance(self.lambda_, int | float) and math.isfinite(self.lambda_)
                and self.lambda_ >= 0):
            raise InputError(f"lambda_ must be a finite number >= 0, got {self.lambda_!r}")
        if not (isinstance(self.tau, int | float) and math.isfinite(self.tau) and self.tau > 0):
            raise InputError(f"tau must be a finite number > 0, got {self.tau!r}")
        check_choice(self.augment, AUGMENTS, "augment")
        if not isinstance(self.pad, int) or self.pad < 0:
            raise InputError(f"pad must be an int >= 0, got {self.pad!r}")

    def views(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The two augmented views of ``x`` stacked as one batch [2N, C, H, W]."""
        crop = self.augment in ("crop-flip", "crop")
        flip = self.augment in ("crop-flip", "flip")
        return torch.cat([
            random_crop_flip(x, pad=self.pad, crop=crop, flip=flip, generator=generator),
            random_crop_flip(x, pad=self.pad, crop=crop, flip=flip, generator=generator),
        ])

    def perturb(
        self, model: nn.Module, views: torch.Tensor, y2: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        """PGD (cross-entropy) on the stacked views with their labels ``y2`` [2N]."""
        return self.threat.attack(model, views, y2, default_step_size=self.threat.eps / 4,
                                  generator=generator)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        gen = ctx.generator if ctx is not None else None
        y2 = y.repeat(2)
        attack = self.perturb(model, self.views(x, gen), y2, gen)
        logits = at_least_fp32(model(attack.x_adv))  # JS in fp32 also under bf16 autocast
        ce = F.cross_entropy(logits, y2)
        logits1, logits2 = logits.chunk(2)
        js = js_divergence(logits1, logits2, self.tau)
        loss = ce + self.lambda_ * js
        return StepOutput(loss, {
            "adv_acc": batch_accuracy(logits, y2), "ce": ce.detach(), "js": js.detach(),
        })
