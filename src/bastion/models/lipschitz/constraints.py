"""Weight constraints as ``torch.nn.utils.parametrize`` parametrizations: spectral
normalisation to a target constant, and Björck orthonormalisation.

- :class:`SpectralNormalized` (Miyato, Kataoka, Koyama and Yoshida 2018, "Spectral
  Normalization for Generative Adversarial Networks", arXiv 1802.05957; the seed's
  "Imposing Lipschitz bounds"): ``W' = c * W / sigma(W)`` with ``sigma`` the operator norm of
  the layer (the conv as the zero-padded, strided operator on its input size, not the
  reshaped kernel), estimated by power iteration with a persistent vector. With
  ``c = L^(1/m)`` for each of ``m`` layers the product of the norms is ``L``
  (:func:`per_layer_target`). In train mode every forward advances the vector
  ``power_iters`` steps; in eval mode the vector is frozen, so the forward is deterministic.
  The power estimate approaches ``sigma`` from below, so ``||W'||`` can exceed ``c``
  slightly: the certificate never relies on it, it bounds the final weights afresh
  (``bound.network_bound``).
- :class:`BjorckOrthonormal` (Björck and Bowie 1971; Anil, Lucas and Grosse 2019, "Sorting
  Out Lipschitz Function Approximation", arXiv 1811.05381): scale ``W`` by a bound on its
  norm, then iterate ``A <- (1 + beta) A - beta A A^T A`` (``beta = 1/2``: the first-order
  Björck step), which drives every singular value towards 1: the closest orthonormal matrix.
  An orthonormal dense layer preserves gradient norms (``||W^T g|| = ||g||`` for square or
  tall ``W``), which GroupSort then keeps through the activations. For a conv the iteration
  runs on the reshaped kernel ``[c_out, c_in * kh * kw]`` (as deel-torchlip's
  ``SpectralConv2d``); that does not make the conv operator orthogonal, so conv layers
  should be certified by their actual operator norm, as every certificate here is.

:func:`constrain` applies either to every linear and conv layer of a model, and
:func:`export_plain` bakes the constraints into plain weights (``leave_parametrized=True``)
so a deployed model runs without them; its certificate is identical because the weights are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from bastion.errors import InputError
from bastion.models.lipschitz.operator_norm import (
    conv_power_bound,
    linear_power_bound,
    power_sigma,
)

CONSTRAINTS: tuple[str, ...] = ("none", "spectral", "bjorck")
"""Names accepted by :func:`constrain` and the Lipschitz architectures."""


def per_layer_target(total: float, num_layers: int) -> float:
    """``L^(1/m)``: the per-layer constant whose product over ``m`` layers is ``L``."""
    if not total > 0 or num_layers < 1:
        raise InputError(f"the Lipschitz target must be > 0 over >= 1 layers, got {total!r} "
                         f"over {num_layers}")
    return float(total) ** (1.0 / num_layers)


class _PowerNormalized(nn.Module):
    """Shared part: a persistent power vector for the layer's operator and its norm."""

    def __init__(self, weight: torch.Tensor, *, kind: str, input_size: Sequence[int] | None,
                 stride: Sequence[int], padding: Sequence[int], power_iters: int) -> None:
        super().__init__()
        if power_iters < 0:
            raise InputError(f"power_iters must be >= 0, got {power_iters}")
        self.kind = kind
        self.input_size = None if input_size is None else tuple(int(s) for s in input_size)
        self.stride = tuple(int(s) for s in stride)
        self.padding = tuple(int(p) for p in padding)
        self.power_iters = int(power_iters)
        if weight.is_meta:  # shape-only construction (config validation): no iterations
            size = self.input_size if self.input_size is not None else (1, 1)
            shape = (weight.shape[1],) if kind == "linear" else (1, weight.shape[1], *size)
            v = torch.empty(shape, device="meta", dtype=weight.dtype)
        else:
            with torch.no_grad():
                _, v = self._advance(weight.detach(), None, 30)
        self.register_buffer("v", v)

    def _advance(self, w: torch.Tensor, v: torch.Tensor | None, iters: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "linear":
            return linear_power_bound(w, v=v, iters=iters)
        if self.input_size is None:
            raise InputError("a conv constraint needs the conv's input size (H, W)")
        return conv_power_bound(w, self.input_size, stride=self.stride, padding=self.padding,
                                v=v, iters=iters)

    def sigma(self, w: torch.Tensor) -> torch.Tensor:
        """The power estimate of ``||W||`` with gradient through ``w`` (advancing the vector
        first in train mode; a shape-only meta tensor gives a meta 1)."""
        if w.is_meta:
            return torch.ones((), device="meta", dtype=w.dtype)
        if self.training and self.power_iters > 0:
            with torch.no_grad():
                _, v = self._advance(w.detach(), self.v, self.power_iters)
            self.v.copy_(v)
        v = self.v
        if self.kind == "linear":
            return power_sigma(lambda u: F.linear(u, w), v)
        return power_sigma(lambda u: F.conv2d(u, w, None, self.stride, self.padding), v)


class SpectralNormalized(_PowerNormalized):
    """Parametrization ``W -> target * W / sigma(W)`` (see the module docstring).

    Args:
        weight: the layer's weight (for the vector's shape).
        kind: ``"linear"`` or ``"conv"``.
        target: the layer's constant ``c`` (``per_layer_target(L, m)``).
        input_size: ``(H, W)`` of a conv's input.
        stride, padding: the conv's.
        power_iters: power steps per training forward (1, as Miyato et al.).
    """

    def __init__(self, weight: torch.Tensor, *, kind: str, target: float = 1.0,
                 input_size: Sequence[int] | None = None, stride: Sequence[int] = (1, 1),
                 padding: Sequence[int] = (0, 0), power_iters: int = 1) -> None:
        if not target > 0:
            raise InputError(f"target must be > 0, got {target!r}")
        super().__init__(weight, kind=kind, input_size=input_size, stride=stride,
                         padding=padding, power_iters=power_iters)
        self.target = float(target)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * (self.target / self.sigma(w))


def bjorck(w: torch.Tensor, iters: int = 15, beta: float = 0.5) -> torch.Tensor:
    """``iters`` first-order Björck steps ``A <- (1 + beta) A - beta A A^T A`` on ``w``
    ``[out, in]`` (whose singular values must be at most about sqrt(3) to converge).
    Differentiable."""
    a = w
    tall = a.shape[0] < a.shape[1]
    if tall:
        a = a.t()
    for _ in range(iters):
        a = (1 + beta) * a - beta * a @ (a.t() @ a)
    return a.t() if tall else a


class BjorckOrthonormal(_PowerNormalized):
    """Parametrization ``W -> target * bjorck(W / sigma(W))`` (see the module docstring).

    For a conv the Björck steps act on the reshaped kernel ``[c_out, c_in*kh*kw]``; the
    scaling before them uses that matrix's norm (it bounds the singular values the
    iteration sees).

    Args:
        weight: the layer's weight.
        kind: ``"linear"`` or ``"conv"``.
        target: the scale of the result (1: orthonormal).
        iters: Björck steps per forward (15 in train and eval mode alike).
        power_iters: power steps per training forward for the scaling.
    """

    def __init__(self, weight: torch.Tensor, *, kind: str, target: float = 1.0,
                 iters: int = 15, power_iters: int = 1) -> None:
        if iters < 1:
            raise InputError(f"iters must be >= 1, got {iters}")
        mat = weight.detach().reshape(weight.shape[0], -1)
        super().__init__(mat, kind="linear", input_size=None, stride=(1, 1), padding=(0, 0),
                         power_iters=power_iters)
        self.layer_kind = kind
        self.target = float(target)
        self.iters = int(iters)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        mat = w.reshape(w.shape[0], -1)
        ortho = bjorck(mat / self.sigma(mat), self.iters)
        return (self.target * ortho).reshape(w.shape)


def _lipschitz_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def constrain(model: nn.Module, constraint: str, *, total: float = 1.0,
              input_sizes: dict[str, tuple[int, int]] | None = None,
              power_iters: int = 1, bjorck_iters: int = 15) -> nn.Module:
    """Register ``constraint`` on every Linear and Conv2d weight of ``model`` (in place).

    Args:
        model: the network (no parametrizations yet).
        constraint: ``"none"``, ``"spectral"`` (each layer normalised to ``total^(1/m)``) or
            ``"bjorck"`` (each layer orthonormalised, scaled to ``total^(1/m)``).
        total: the product of the layer constants to aim for.
        input_sizes: ``{module name: (H, W)}`` of every conv's input (needed by
            ``"spectral"``, which normalises the conv operator).
        power_iters, bjorck_iters: iteration counts per training forward.

    Returns:
        ``model``.
    """
    if constraint not in CONSTRAINTS:
        raise InputError(f"unknown constraint {constraint!r}; valid: {', '.join(CONSTRAINTS)}")
    if constraint == "none":
        return model
    layers = _lipschitz_layers(model)
    if not layers:
        raise InputError("the model has no Linear or Conv2d layer to constrain")
    target = per_layer_target(total, len(layers))
    for name, m in layers:
        kind = "conv" if isinstance(m, nn.Conv2d) else "linear"
        if constraint == "bjorck":
            p: nn.Module = BjorckOrthonormal(m.weight, kind=kind, target=target,
                                             iters=bjorck_iters, power_iters=power_iters)
        else:
            size = None
            if kind == "conv":
                if input_sizes is None or name not in input_sizes:
                    raise InputError(f"spectral normalisation of conv {name!r} needs its input "
                                     "size (input_sizes)")
                size = input_sizes[name]
                if isinstance(m.padding, str) or m.padding_mode != "zeros":
                    raise InputError(f"conv {name!r}: only explicit zero padding is supported")
            p = SpectralNormalized(m.weight, kind=kind, target=target, input_size=size,
                                   stride=getattr(m, "stride", (1, 1)),
                                   padding=getattr(m, "padding", (0, 0)),
                                   power_iters=power_iters)
        parametrize.register_parametrization(m, "weight", p)
    return model


def _bake(module: nn.Module) -> None:
    """Replace ``module``'s parametrized tensors by plain parameters holding their current
    values, and give it back its own class.

    ``parametrize.remove_parametrizations`` deletes the property from the module's
    generated ``Parametrized<Layer>`` class, which ``copy.deepcopy`` shares between a
    module and its copies, so baking a copy that way breaks the original; swapping the
    class back touches nothing shared.
    """
    values = {name: getattr(module, name).detach().clone()
              for name in module.parametrizations}
    grads = {name: module.parametrizations[name].original.requires_grad for name in values}
    del module._modules["parametrizations"]
    module.__class__ = module.__class__.__bases__[0]
    for name, value in values.items():
        module.register_parameter(name, nn.Parameter(value, requires_grad=grads[name]))


def export_plain(model: nn.Module) -> nn.Module:
    """Bake every parametrization into a plain weight, in place, and return ``model``.

    Call it in eval mode (the values are then exactly those the constrained model uses at
    prediction time, so predictions and certificates do not change). Safe on a
    ``copy.deepcopy`` of a constrained model: the original keeps its constraints.
    """
    if model.training:
        raise InputError("export_plain needs the model in eval mode (model.eval()): in train "
                         "mode a forward would advance the power iterates")
    for m in list(model.modules()):
        if parametrize.is_parametrized(m):
            _bake(m)
    return model
