"""Per-example objectives that the attack engine maximises.

Every objective maps ``(logits [N, K], target) -> loss [N]``; the engine ascends its sum, so
per-example gradients never mix. ``target`` is an int64 label vector [N] for ``ce``,
``margin`` and ``dlr``, and a probability matrix [N, K] for ``kl``.

Where a name is accepted, a callable with the same signature is too (``ObjectiveLike``):
an objective through a BPDA or EOT surrogate (Athalye et al. 2018, "Obfuscated Gradients
Give a False Sense of Security", arXiv 1802.00420) or a GloRo margin (Leino et al. 2021,
"Globally-Robust Neural Networks", arXiv 2102.08452). ``per_example_objective`` checks
that it returns one loss per example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from bastion.errors import InputError, InputTypeError

Objective = Literal["ce", "kl", "margin", "dlr"]
ObjectiveFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ObjectiveLike = Objective | ObjectiveFn
"""An objective by name, or a callable ``(logits [N, K], target) -> loss [N]``."""


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the labels, per example. Shape: [N, K], [N] -> [N]."""
    return F.cross_entropy(logits, target, reduction="none")


def kl_to_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)) per example, the TRADES inner objective.

    Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
    Accuracy", arXiv 1901.08573. ``target`` holds the clean probabilities f(x) [N, K].
    """
    log_q = F.log_softmax(logits, dim=1)
    return F.kl_div(log_q, target, reduction="none").sum(dim=1)


def margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin max_{j != y} z_j - z_y per example (> 0 means misclassified).

    Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural Networks",
    arXiv 1608.04644.
    """
    z_y = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], float("-inf"))
    return others.amax(dim=1) - z_y


def dlr(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits-ratio loss, -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3), per example.

    Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", arXiv 2003.01690. Invariant to shifting and scaling
    the logits; needs at least 3 classes.
    """
    if logits.shape[1] < 3:
        raise InputError(f"the DLR objective needs at least 3 classes, got {logits.shape[1]}")
    top = logits.sort(dim=1, descending=True).values
    return margin(logits, target) / (top[:, 0] - top[:, 2] + 1e-12)


OBJECTIVES: dict[str, ObjectiveFn] = {
    "ce": cross_entropy,
    "kl": kl_to_target,
    "margin": margin,
    "dlr": dlr,
}


def resolve_objective(objective: ObjectiveLike) -> ObjectiveFn:
    """The function of ``objective``: a name of ``OBJECTIVES`` or a callable as it is.

    Raises ``ValueError`` naming the valid names for an unknown name, ``TypeError`` for
    anything else.
    """
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            raise InputError(f"unknown attack objective {objective!r}; valid choices: "
                             f"{', '.join(sorted(OBJECTIVES))} (or a callable)")
        return OBJECTIVES[objective]
    if callable(objective):
        return objective
    raise InputTypeError(
        f"objective must be one of {', '.join(sorted(OBJECTIVES))} or a callable "
        f"(logits [N, K], target) -> loss [N], got {type(objective).__name__}"
    )


def per_example_objective(
    fn: ObjectiveFn, logits: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """``fn(logits, target)``, checked to be a floating per-example loss of shape [N].

    Shape: logits [N, K] -> [N]. A summed (scalar) or [N, K] loss would mix the examples'
    gradients, so it is an error (``ValueError``), not broadcast.
    """
    loss = fn(logits, target)
    n = logits.shape[0]
    if not isinstance(loss, torch.Tensor) or loss.shape != (n,) or not loss.is_floating_point():
        got = (f"{loss.dtype} {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
               else type(loss).__name__)
        name = getattr(fn, "__name__", type(fn).__name__)
        raise InputError(
            f"objective {name} must return a floating per-example loss of shape [{n}] "
            f"(reduction='none'), got {got}"
        )
    return loss
