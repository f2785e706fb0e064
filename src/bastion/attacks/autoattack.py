"""AutoAttack in its standard and its randomized-defense configurations, composed from
torchattacks' components.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", arXiv 2003.01690. bastion does not re-implement APGD,
FAB and Square: torchattacks (a dependency) provides them. It does not use
``torchattacks.AutoAttack`` either: that class builds APGD-CE, APGD-T and FAB without their
iteration counts, so they run torchattacks' default of 10 iterations instead of the
standard 100 (torchattacks issues #188 and #196), and Square with torchattacks' default
``resc_schedule=True`` where the official code sets False.

``standard_settings`` states every parameter of the standard ensemble as the official code
sets it (``autoattack/autoattack.py``, ``AutoAttack.__init__`` and ``set_version
("standard")`` of github.com/fra31/auto-attack), for L-inf and L2 alike:

==========  ===========================================================================
attack      settings
==========  ===========================================================================
apgd-ce     100 iterations, 1 restart, cross-entropy, eot_iter 1, rho 0.75
apgd-t      100 iterations, 1 restart, targeted DLR, 9 target classes, eot_iter 1,
            rho 0.75
fab-t       100 iterations, 1 restart, targeted, 9 target classes, alpha_max 0.1,
            eta 1.05, beta 0.9
square      5,000 queries, 1 restart, p_init 0.8, margin loss, resc_schedule False
==========  ===========================================================================

The attacks run in that order, each only on the points every earlier attack failed on
(the official per-point hand-over): a point is robust only if all four fail, and its
returned point is the first adversarial example found (the clean input if none). With
fewer than 10 classes the targeted parts use all K - 1 other classes (the official code
warns and fails then). Every setting is recorded by ``AttackSpec.to_dict``, so it lands in
each ``EvalResult``. The output goes through bastion's guarantees: ball and box checked,
model mode restored, no gradient left, ``AttackResult`` record.

The ``"rand"`` version is the one the AutoAttack authors run against randomized defenses
(``set_version("rand")`` of the official code, ``rand_settings``): APGD-CE and APGD-DLR
(untargeted), each with 100 iterations, 1 restart and EOT over 20 draws (``eot_iter``:
every step follows the mean gradient of 20 forward-backward passes; Athalye, Engstrom,
Ilyas and Kwok 2018, arXiv 1707.07397), with the same per-point hand-over. Its verdicts
come from one forward pass, as in the official code; ``AttackSpec.draws`` re-judges the
points it leaves robust over fresh draws (``eot.judge_over_draws``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion.attacks.core import AttackResult, as_radius, clip_to_ball_and_box
from bastion.errors import InputError
from bastion.types import Norm

AutoAttackVersion = Literal["standard", "rand", "apgd-ce", "apgd-t"]
AUTOATTACK_VERSIONS: tuple[str, ...] = ("standard", "rand", "apgd-ce", "apgd-t")

STANDARD_ITERATIONS = 100
"""Iterations of APGD-CE, APGD-T and FAB-T in the standard ensemble."""

OFFICIAL_TARGET_CLASSES = 9
"""Target classes of APGD-T and FAB-T in the standard ensemble (10-class datasets)."""

RAND_EOT_ITERATIONS = 20
"""EOT draws per APGD step in the ``"rand"`` version (official ``apgd.eot_iter = 20``)."""


def standard_settings(num_classes: int) -> list[dict[str, Any]]:
    """Every parameter of the standard AutoAttack ensemble, in run order.

    Args:
        num_classes: K >= 2; the targeted parts use ``min(9, K - 1)`` target classes (and
            need K >= 4, which ``autoattack`` and ``AttackSpec`` check).

    Returns:
        One dict per component (``"attack"`` names it), JSON-safe.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise InputError(f"num_classes must be an int >= 2, got {num_classes!r}")
    targets = min(OFFICIAL_TARGET_CLASSES, num_classes - 1)
    return [
        {"attack": "apgd-ce", "steps": STANDARD_ITERATIONS, "n_restarts": 1, "loss": "ce",
         "eot_iter": 1, "rho": 0.75},
        {"attack": "apgd-t", "steps": STANDARD_ITERATIONS, "n_restarts": 1,
         "loss": "dlr-targeted", "n_target_classes": targets, "eot_iter": 1, "rho": 0.75},
        {"attack": "fab-t", "steps": STANDARD_ITERATIONS, "n_restarts": 1, "targeted": True,
         "n_target_classes": targets, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9},
        {"attack": "square", "n_queries": 5000, "n_restarts": 1, "p_init": 0.8,
         "loss": "margin", "resc_schedule": False},
    ]


def rand_settings(num_classes: int) -> list[dict[str, Any]]:
    """Every parameter of AutoAttack's version for randomized defenses, in run order.

    The official ``set_version("rand")``: APGD-CE then APGD-DLR (untargeted), 100
    iterations, 1 restart, rho 0.75, EOT over ``RAND_EOT_ITERATIONS`` = 20 draws per step.

    Args:
        num_classes: K >= 3 (the DLR loss uses the three largest logits).

    Returns:
        One dict per component (``"attack"`` names it), JSON-safe.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 3:
        raise InputError(f"AutoAttack's rand version needs num_classes an int >= 3 (the DLR "
                         f"loss uses the three largest logits), got {num_classes!r}")
    return [
        {"attack": "apgd-ce", "steps": STANDARD_ITERATIONS, "n_restarts": 1, "loss": "ce",
         "eot_iter": RAND_EOT_ITERATIONS, "rho": 0.75},
        {"attack": "apgd-dlr", "steps": STANDARD_ITERATIONS, "n_restarts": 1, "loss": "dlr",
         "eot_iter": RAND_EOT_ITERATIONS, "rho": 0.75},
    ]


def _component(net: nn.Module, s: dict[str, Any], *, eps: float, norm: str, seed: int,
               num_classes: int) -> Any:
    """The torchattacks attack for one entry of ``standard_settings``."""
    import torchattacks

    common = {"norm": norm, "eps": eps, "seed": seed}
    name = s["attack"]
    if name in ("apgd-ce", "apgd-dlr"):
        return torchattacks.APGD(net, steps=s["steps"], n_restarts=s["n_restarts"],
                                 loss=s["loss"], eot_iter=s["eot_iter"], rho=s["rho"], **common)
    if name == "apgd-t":
        atk = torchattacks.APGDT(net, steps=s["steps"], n_restarts=s["n_restarts"],
                                 eot_iter=s["eot_iter"], rho=s["rho"], n_classes=num_classes,
                                 **common)
        atk.n_target_classes = s["n_target_classes"]
        return atk
    if name == "fab-t":
        atk = torchattacks.FAB(net, steps=s["steps"], n_restarts=s["n_restarts"],
                               alpha_max=s["alpha_max"], eta=s["eta"], beta=s["beta"],
                               multi_targeted=s["targeted"], n_classes=num_classes, **common)
        atk.n_target_classes = s["n_target_classes"]
        return atk
    if name == "square":
        return torchattacks.Square(net, n_queries=s["n_queries"], n_restarts=s["n_restarts"],
                                   p_init=s["p_init"], loss=s["loss"],
                                   resc_schedule=s["resc_schedule"], **common)
    raise InputError(f"unknown AutoAttack component {name!r}")


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    version: AutoAttackVersion = "standard",
    num_classes: int = 10,
    steps: int = STANDARD_ITERATIONS,
    seed: int = 0,
) -> AttackResult:
    """Run the standard AutoAttack ensemble, its randomized-defense version, or only its
    APGD-CE or APGD-T part.

    Args:
        model: classifier on [0, 1] inputs returning logits [N, K].
        x: images [N, C, H, W] in [0, 1]; y: int64 labels [N].
        eps: radius in [0, 1] pixel units; norm: ``"linf"`` or ``"l2"``.
        version: ``"standard"`` (the four attacks of ``standard_settings`` with the
            per-point hand-over), ``"rand"`` (APGD-CE and APGD-DLR with EOT over 20
            draws, ``rand_settings``, the same hand-over), or ``"apgd-ce"`` / ``"apgd-t"``
            alone with ``steps`` iterations and the standard's other settings. A
            non-differentiable defense goes through ``eot.BPDA`` before it gets here
            (``AttackSpec.run``).
        num_classes: K (>= 4 for the targeted DLR loss, which uses the four largest logits;
            >= 3 for ``"rand"``).
        steps: APGD iterations of the ``"apgd-*"`` versions (the ensembles use 100).
        seed: the components' seed (the same for each, as in the official code).

    Returns:
        ``AttackResult``: for each point the first adversarial example found (else the
        clean input); ``num_steps`` is the nominal iteration count.
    """
    if norm not in ("linf", "l2"):
        raise InputError(f"AutoAttack supports norms 'linf' and 'l2', got {norm!r}")
    if version not in AUTOATTACK_VERSIONS:
        raise InputError(f"unknown AutoAttack version {version!r}; valid: "
                         f"{', '.join(AUTOATTACK_VERSIONS)}")
    if version in ("standard", "apgd-t") and num_classes < 4:
        raise InputError(f"{version} needs at least 4 classes (the targeted DLR loss uses the "
                         f"four largest logits), got num_classes={num_classes}")
    if version == "rand":
        plan = rand_settings(num_classes)
    elif version == "standard":
        plan = standard_settings(num_classes)
    else:
        settings = standard_settings(num_classes)
        plan = [{**next(s for s in settings if s["attack"] == version), "steps": steps}]
    ta_norm = {"linf": "Linf", "l2": "L2"}[norm]
    net = unwrap(model)
    radius = as_radius(eps, x)
    x_adv = x.detach().clone()
    with model_mode(net, False):
        with torch.no_grad():
            robust = net(x).argmax(1) == y
        for s in plan:
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            atk = _component(net, s, eps=eps, norm=ta_norm, seed=seed, num_classes=num_classes)
            xs = x[idx]
            found = clip_to_ball_and_box(xs, atk(xs, y[idx]).detach(), radius, norm)
            with torch.no_grad():
                fooled = net(found).argmax(1) != y[idx]
            x_adv[idx[fooled]] = found[fooled]
            robust[idx[fooled]] = False
        with torch.no_grad():
            success = net(x_adv).argmax(1) != y
    for p in net.parameters():
        p.grad = None
    nominal = plan[0].get("steps", STANDARD_ITERATIONS)
    steps_taken = torch.full((len(x),), nominal, dtype=torch.int64, device=x.device)
    return AttackResult(x_adv=x_adv, num_steps=steps_taken, success=success)
