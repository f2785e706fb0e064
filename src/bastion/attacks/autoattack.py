"""Adapter to torchattacks' AutoAttack and its APGD components.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", arXiv 2003.01690. bastion does not re-implement APGD,
FAB and Square: torchattacks (a test/extra dependency) provides them, and this adapter puts
their output through bastion's guarantees (ball and box checked, model mode restored,
``AttackResult`` record).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion.attacks.core import AttackResult, as_radius, clip_to_ball_and_box
from bastion.errors import InputError
from bastion.types import Norm

AutoAttackVersion = Literal["standard", "apgd-ce", "apgd-t"]


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    version: AutoAttackVersion = "standard",
    num_classes: int = 10,
    steps: int = 100,
    seed: int = 0,
) -> AttackResult:
    """Run AutoAttack (``"standard"``: APGD-CE, APGD-T, FAB-T, Square) or one APGD part.

    Args:
        model: classifier on [0, 1] inputs.
        x: images [N, C, H, W] in [0, 1]; y: int64 labels [N].
        eps: radius in [0, 1] pixel units; norm: ``"linf"`` or ``"l2"``.
        version: the full standard ensemble, or only APGD-CE / APGD-T (cheaper).
        num_classes: number of classes (for the targeted parts).
        steps: APGD iterations (``"apgd-*"`` versions; the ensemble uses its own).
        seed: torchattacks' seed.

    Returns:
        ``AttackResult`` (``num_steps`` is the nominal step count).
    """
    try:
        import torchattacks
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("AutoAttack needs torchattacks: pip install torchattacks") from err
    ta_norm = {"linf": "Linf", "l2": "L2"}[norm]
    net = unwrap(model)
    with model_mode(net, False):
        if version == "standard":
            atk = torchattacks.AutoAttack(net, norm=ta_norm, eps=eps, version="standard",
                                          n_classes=num_classes, seed=seed)
        elif version == "apgd-ce":
            atk = torchattacks.APGD(net, norm=ta_norm, eps=eps, steps=steps, seed=seed,
                                    loss="ce")
        elif version == "apgd-t":
            atk = torchattacks.APGDT(net, norm=ta_norm, eps=eps, steps=steps, seed=seed,
                                     n_classes=num_classes)
        else:
            raise InputError(f"unknown AutoAttack version {version!r}; valid: standard, "
                             "apgd-ce, apgd-t")
        x_adv = atk(x, y).detach()
        x_adv = clip_to_ball_and_box(x, x_adv, as_radius(eps, x), norm)
        with torch.no_grad():
            success = net(x_adv).argmax(1) != y
    for p in net.parameters():
        p.grad = None
    steps_taken = torch.full((len(x),), steps, dtype=torch.int64, device=x.device)
    return AttackResult(x_adv=x_adv, num_steps=steps_taken, success=success)
