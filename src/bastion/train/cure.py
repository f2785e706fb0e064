"""CURE: cross-entropy plus a penalty on the curvature of the loss in the input."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion._validate import check_choice
from bastion.errors import InputError
from bastion.losses.cure import DIRECTIONS, Direction, curvature_penalty
from bastion.records import StepContext, StepOutput
from bastion.train.standard import batch_accuracy


@dataclass(frozen=True, kw_only=True)
class CURE:
    """Curvature regularisation (CURE).

    Moosavi-Dezfooli, Fawzi, Uesato & Frossard 2019, "Robustness via Curvature
    Regularization, and Vice Versa", arXiv 1811.09716. The loss of a batch is

        ``CE(f(x), y) + lambda_ * mean_i ||grad_x l(x_i + h z_i) - grad_x l(x_i)||_2^2``

    with ``l`` the per-example cross-entropy and ``z_i`` a unit-L2 direction, by default
    ``sign(grad_x l(x_i)) / ||sign(grad_x l(x_i))||_2`` (the paper's choice; the lecture
    writes the normalised gradient, ``direction="gradient"``; ``"gaussian"`` averages over
    ``draws`` random directions). The penalty (:func:`bastion.losses.cure.curvature_penalty`)
    uses double backprop: both input gradients keep their graph, so it trains the
    parameters; ``z`` is a constant. The cross-entropy term is computed in the model's own
    mode; the penalty in eval mode (restored afterwards), so that dropout masks and
    BatchNorm batch statistics are the same at ``x`` and ``x + h z`` -- otherwise the
    difference of gradients would measure dropout noise, not curvature (the unofficial
    reference implementation, github.com/F-Salehi/CURE_robustness, also uses eval mode).
    Per step this costs one train-mode forward/backward plus two eval-mode forwards with
    double backward.

    Defaults: ``lambda_ = 4`` and ``h = 1.5``, the paper's CIFAR-10 values as far as we could
    establish (the paper's full text was not at hand; ``lambda_ = 4`` is also the default of
    the unofficial implementation). The paper does not fix the pixel scale of ``h`` for us;
    here ``h`` is the L2 length of the step in [0, 1] pixel units: along a sign direction
    that is ``1.5 / sqrt(d)`` per pixel (0.054 on 28x28 images, 0.027 = 7/255 on CIFAR-10's
    32x32x3, close to the usual eps 8/255). ``h_warmup_epochs`` ramps ``h`` linearly over the
    first epochs (the unofficial implementation's example ramps ``h`` up over five epochs);
    0, the default, turns the ramp off.

    Args:
        lambda_: weight of the curvature penalty, >= 0.
        h: finite-difference step (L2 length, pixel units), > 0.
        direction: ``"gradient-sign"``, ``"gradient"`` or ``"gaussian"``.
        draws: random directions averaged over (``"gaussian"`` only), >= 1.
        h_warmup_epochs: epochs over which ``h`` grows linearly to its value:
            ``h_e = h * min(1, (e + 1) / h_warmup_epochs)`` at 0-based epoch ``e``.
        penalty_train_mode: compute the penalty in the model's own mode (train mode during
            training) instead of eval mode.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> out = CURE()(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]))
        >>> sorted(out.logs)
        ['acc', 'ce', 'h', 'reg']
    """

    lambda_: float = 4.0
    h: float = 1.5
    direction: Direction = "gradient-sign"
    draws: int = 1
    h_warmup_epochs: int = 0
    penalty_train_mode: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.lambda_, int | float) and math.isfinite(self.lambda_)
                and self.lambda_ >= 0):
            raise InputError(f"lambda_ must be a finite number >= 0, got {self.lambda_!r}")
        if not (isinstance(self.h, int | float) and math.isfinite(self.h) and self.h > 0):
            raise InputError(f"h must be a finite number > 0, got {self.h!r}")
        check_choice(self.direction, DIRECTIONS, "CURE direction")
        if not isinstance(self.draws, int) or self.draws < 1:
            raise InputError(f"draws must be an int >= 1, got {self.draws!r}")
        if self.draws > 1 and self.direction != "gaussian":
            raise InputError("draws > 1 only applies to direction='gaussian'")
        if not isinstance(self.h_warmup_epochs, int) or self.h_warmup_epochs < 0:
            raise InputError(f"h_warmup_epochs must be an int >= 0, got "
                             f"{self.h_warmup_epochs!r}")

    def step_h(self, epoch: int) -> float:
        """The finite-difference step used at 0-based ``epoch`` (after the warm-up ramp)."""
        if self.h_warmup_epochs == 0:
            return self.h
        return self.h * min(1.0, (epoch + 1) / self.h_warmup_epochs)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        h = self.step_h(ctx.epoch if ctx is not None else 0)
        net = unwrap(model)
        with model_mode(net, None if self.penalty_train_mode else False):
            reg = curvature_penalty(
                net, x, y, h=h, direction=self.direction, draws=self.draws,
                generator=ctx.generator if ctx is not None else None,
            ).mean()
        loss = ce + self.lambda_ * reg
        return StepOutput(loss, {
            "acc": batch_accuracy(logits, y), "ce": ce.detach(), "reg": reg.detach(), "h": h,
        })
