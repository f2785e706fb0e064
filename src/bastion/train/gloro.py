"""GloRo training: cross-entropy on the logits with a bottom class that certifies eps.

Leino, Wang and Fredrikson 2021, "Globally-Robust Neural Networks", arXiv 2102.08452 (the
seed's "Training GLoRoNets"); relaxed top-k from Leino and Fredrikson 2021, "Relaxing Local
Robustness", arXiv 2106.06624. Per batch:

1. the training-time Lipschitz estimate ``K_ij = P ||W_m[i] - W_m[j]||``
   (``models.lipschitz.estimate.training_bound``): ``P`` from one persistent power vector per
   layer, advanced ``power_iters`` steps and read with gradient, as GloRo's
   ``LipschitzMargin`` layer does; the vectors are the method's state, saved with each
   checkpoint;
2. the augmented logits ``[f(x), y_bot]`` with ``y_bot = max_{i != j} f_i + eps_t K_ji``
   (``losses.gloro``; top-k form when ``top_k > 1``);
3. loss = cross-entropy of the augmented logits with the true label (the bottom class is
   never a label, so its logit is pushed under the label's).

``eps_t`` ramps linearly from ``eps / warmup_epochs`` to ``eps`` over the first
``warmup_epochs`` epochs (GloRo anneals eps too). Certification afterwards uses sound
Gram-iteration bounds of the final weights (``certify.lipschitz``), never these estimates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from bastion._torch import unwrap
from bastion.errors import InputError
from bastion.losses.gloro import gloro_logits
from bastion.models.lipschitz.chain import ChainLayer, layer_chain
from bastion.models.lipschitz.estimate import PowerIterates, pairwise_from, training_bound
from bastion.records import StepContext, StepOutput
from bastion.train.standard import at_least_fp32, batch_accuracy


@dataclass(eq=False)
class GloroState:
    """GloRo's training state: the persistent power vectors (saved) and the model's chain
    (found on the first step, not saved)."""

    iterates: PowerIterates = field(default_factory=PowerIterates)
    chain: list[ChainLayer] | None = None

    def state_dict(self) -> dict[str, Any]:
        return self.iterates.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iterates.load_state_dict(state)


@dataclass(frozen=True, kw_only=True)
class GloRo:
    """GloRo (see the module docstring).

    Args:
        eps: the L2 radius to certify, in [0, 1] pixel units (> 0). Default 0.5.
        top_k: 1 for GloRo, k > 1 for relaxed top-k robustness.
        warmup_epochs: epochs over which eps ramps up (>= 1; 1 = no ramp).
        power_iters: power steps per training step and layer (>= 1). Default 5, GloRo's
            ``num_iterations``: training flattens the spectrum it penalises, so one step per
            batch lags; on a digits lipschitz-cnn after 300 Adam steps the persistent
            estimate was 7-9% under each layer's norm with 1 step and 1-2.5% with 5.
    """

    eps: float = 0.5
    top_k: int = 1
    warmup_epochs: int = 1
    power_iters: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.eps, bool) or not isinstance(self.eps, int | float) or not (
                self.eps > 0):
            raise InputError(f"eps must be > 0 (an L2 radius in pixel units), got {self.eps!r}")
        for name in ("top_k", "warmup_epochs", "power_iters"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be an int >= 1, got {v!r}")

    def init_state(self, dataset_size: int, device: torch.device | str | None = None
                   ) -> GloroState:
        return GloroState()

    def eps_at(self, epoch: int) -> float:
        """The radius trained at 0-based ``epoch``."""
        return self.eps * min(1.0, (epoch + 1) / self.warmup_epochs)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 ctx: StepContext | None = None) -> StepOutput:
        state = ctx.state if ctx is not None else None
        if not isinstance(state, GloroState):
            raise InputError("GloRo keeps its power vectors in ctx.state: state = "
                             "gloro.init_state(n) (fit does this)")
        net = unwrap(model)
        if state.chain is None:
            state.chain = layer_chain(net, x[:1])
        # one evaluation of every parametrized weight per step (a spectral-norm constraint
        # advances its power vector once, and the bound sees the weights the forward uses)
        with parametrize.cached():
            prefix, w_last = training_bound(state.chain, state.iterates,
                                            iters=self.power_iters)
            logits = at_least_fp32(model(x))
        eps = self.eps_at(ctx.epoch if ctx is not None else 0)
        k_pair = pairwise_from(prefix.float(), w_last.float())
        aug = gloro_logits(logits, k_pair, eps, k=self.top_k)
        loss = F.cross_entropy(aug, y)
        with torch.no_grad():
            vra = (aug.argmax(1) == y).float().mean()
        return StepOutput(loss, {"acc": batch_accuracy(logits, y), "vra": vra,
                                 "lipschitz": prefix.detach(), "eps": eps})
