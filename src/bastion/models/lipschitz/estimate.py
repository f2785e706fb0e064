"""The differentiable Lipschitz estimate of training time, with persistent power iterates.

Training a Lipschitz-margin network (GloRo; Leino, Wang and Fredrikson 2021, arXiv
2102.08452) needs the layer norms at every step, with gradients. Computing them from
scratch each step would cost a converged iteration per layer; instead, as Miyato et al.'s
spectral normalisation (arXiv 1802.05957) and GloRo's ``LipschitzMargin`` layer do, one
power-iteration vector per layer is kept between steps (:class:`PowerIterates`) and
advanced ``iters`` steps (without gradient), and the norm is read as ``||W v||`` for that
fixed unit ``v`` (with gradient through ``W``). Because the weights move little per step the
vector stays close to the top singular vector, so the estimate is close to the norm.

It approaches the norm from BELOW, so it is for training only: certificates use
``bound.network_bound`` (Gram iteration, a sound upper bound) on the final weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion.errors import InputError
from bastion.models.lipschitz.bound import _split_last, activation_constant, layer_class
from bastion.models.lipschitz.chain import ChainLayer
from bastion.models.lipschitz.operator_norm import (
    conv_power_bound,
    linear_power_bound,
    power_sigma,
)
from bastion.models.lipschitz.spline import LinearSpline


@dataclass(eq=False)
class PowerIterates:
    """One persistent power-iteration vector per layer name (a training method's state).

    ``state_dict`` / ``load_state_dict`` make it part of a checkpoint, so a resumed run
    continues from the same vectors.
    """

    vectors: dict[str, torch.Tensor] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """``{"vectors": {layer name: tensor on the CPU}}``."""
        return {"vectors": {k: v.detach().cpu().clone() for k, v in self.vectors.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the vectors (moved to the model's device on first use)."""
        vectors = state.get("vectors", {})
        if not isinstance(vectors, dict):
            raise InputError("PowerIterates state must hold a dict of vectors")
        self.vectors = {str(k): torch.as_tensor(v) for k, v in vectors.items()}


def _conv_args(m: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int]]:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise InputError(f"conv layer with padding {m.padding!r} / mode {m.padding_mode!r}: "
                         "only explicit zero padding has a bound here")
    return tuple(m.stride), tuple(m.padding)  # type: ignore[return-value]


def layer_estimate(layer: ChainLayer, iterates: PowerIterates, *, iters: int = 1
                   ) -> torch.Tensor | float:
    """The training-time constant of one layer: differentiable ``||W v||`` for linear and
    conv layers (advancing the layer's persistent vector ``iters`` steps first), the exact
    constant of other layers (a tensor for a learnable spline, so its slopes get gradient)."""
    m = layer.module
    cls = layer_class(m)
    if cls is nn.Dropout and m.training:  # train-mode dropout scales kept units by 1/(1-p)
        return 1.0 / (1.0 - float(m.p)) if m.p < 1 else 0.0
    if cls in (nn.Linear, nn.Conv2d):
        w = m.weight
        v = iterates.vectors.get(layer.name)
        if v is not None:
            v = v.to(device=w.device, dtype=w.dtype)
        if cls is nn.Linear:
            _, v = linear_power_bound(w.detach(), v=v, iters=iters)
            iterates.vectors[layer.name] = v
            return power_sigma(lambda u: F.linear(u, w), v)
        stride, padding = _conv_args(m)
        size = layer.input_shape[1:]
        _, v = conv_power_bound(w.detach(), size, stride=stride, padding=padding, v=v,
                                iters=iters)
        iterates.vectors[layer.name] = v
        return power_sigma(lambda u: F.conv2d(u, w, None, stride, padding), v)
    if cls is LinearSpline:
        return m.lipschitz_constant().max()
    c = activation_constant(m)
    if c is None:
        raise InputError(f"layer {layer.name!r} ({type(m).__name__}) has no known Lipschitz "
                         "constant")
    return c


def training_bound(chain: list[ChainLayer], iterates: PowerIterates, *, iters: int = 1
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, W_m)``: the differentiable product of the constants before the last linear
    layer (a 0-dim tensor) and the last layer's weight ``[K, D]`` (with its graph), so that
    ``P * ||W_m[i] - W_m[j]||`` is the training-time estimate of ``K_ij``."""
    body, last = _split_last(chain)
    w = last.module.weight
    prefix = torch.ones((), dtype=w.dtype, device=w.device)
    for layer in body:
        prefix = prefix * layer_estimate(layer, iterates, iters=iters)
    return prefix, w


def pairwise_from(prefix: torch.Tensor, last_weight: torch.Tensor) -> torch.Tensor:
    """``[K, K]``: ``prefix * ||W[i] - W[j]||``, zero on the diagonal, with a gradient that
    stays finite where two rows are equal (a zero-initialised last layer)."""
    diff = last_weight[:, None, :] - last_weight[None, :, :]
    norms = torch.sqrt((diff * diff).sum(-1).clamp_min(1e-24))
    eye = torch.eye(norms.shape[0], dtype=torch.bool, device=norms.device)
    return prefix * norms.masked_fill(eye, 0.0)
