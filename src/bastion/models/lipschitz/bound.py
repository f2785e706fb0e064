"""Sound L2 Lipschitz bounds of chain networks, per logit and per pair of logits.

For a network ``f = W_m o s_{m-1} o ... o s_1 o W_1`` with no skip connections and
``L_i``-Lipschitz layers, the seed's bound ("Certified Deterministic Defenses (1)") is
``Lip(f) <= prod_i L_i``. For certification only the logits' differences matter, so the last
linear layer is kept apart (Tsuzuku, Sato and Sugiyama 2018, "Lipschitz-Margin Training",
arXiv 1802.04034; Leino, Wang and Fredrikson 2021, "Globally-Robust Neural Networks",
arXiv 2102.08452):

- per logit (the seed's ``L^j``): ``K_j = P * ||W_m[j, :]||_2``,
- per pair: ``K_ij = P * ||W_m[i, :] - W_m[j, :]||_2``, which bounds the Lipschitz constant
  of ``f_i - f_j`` and is never larger than ``K_i + K_j``,

where ``P`` is the product of the constants of every layer before ``W_m`` (the
``Normalize`` layer's ``max_c 1 / std_c`` included). Rows of torch's ``Linear.weight``
``[K, D]`` are the seed's columns ``W_m[:, j]``. The certified L2 radius of ``x`` with
prediction ``y`` is ``min_{j != y} (f_y(x) - f_j(x)) / K_yj`` (``bastion.certify.lipschitz``).

Every constant here is a sound upper bound: linear and conv layers by Gram iteration
(``operator_norm.gram_bound_dense`` / ``gram_bound_conv``) or the exact SVD of small
operators, activations by their known constants. A layer whose constant is not known
raises :class:`InputError` instead of counting as 1. Everything is computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from bastion.errors import InputError
from bastion.models.lipschitz.activations import FullSort, GroupSort, MaxMin
from bastion.models.lipschitz.chain import ChainLayer, layer_chain
from bastion.models.lipschitz.operator_norm import SOUND_METHODS, layer_operator_norm
from bastion.models.lipschitz.spline import LinearSpline
from bastion.models.normalize import Normalize

# Layers whose L2 Lipschitz constant is 1 whatever their parameters.
_ONE_LIPSCHITZ: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout, nn.Tanh, nn.Hardtanh, nn.ReLU6,
    GroupSort, MaxMin, FullSort,
)


@dataclass(frozen=True)
class LayerConstant:
    """The L2 Lipschitz constant of one layer of a chain.

    Args:
        name: the layer's dotted module name.
        kind: the module's class name.
        constant: the bound (float64 value as a Python float), >= the true constant when
            ``sound``.
        method: how it was obtained (``"gram"``, ``"svd"``, ``"exact"`` for known constants,
            ``"power"`` for the lower estimate of training time, ...).
        sound: whether ``constant`` is guaranteed to be >= the layer's true constant.
    """

    name: str
    kind: str
    constant: float
    method: str
    sound: bool


def _maxpool_constant(m: nn.MaxPool2d) -> float:
    """Max pooling: each input pixel enters at most ``ceil(k/s)`` windows per axis, and
    ``|max a - max b| <= max |a - b|``, so the L2 constant is ``sqrt(prod_axes ceil(k/s))``
    (1 for non-overlapping windows)."""
    k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
    s = m.stride if isinstance(m.stride, tuple) else (m.stride,) * 2
    d = m.dilation if isinstance(m.dilation, tuple) else (m.dilation,) * 2
    if any(int(x) != 1 for x in d):
        raise InputError("MaxPool2d with dilation != 1 has no stated Lipschitz constant here")
    reach = math.prod(math.ceil(int(ki) / int(si)) for ki, si in zip(k, s, strict=True))
    return math.sqrt(reach)


def layer_class(m: nn.Module) -> type:
    """The class whose computation ``m`` runs: its own, or for a parametrized module the
    class ``torch.nn.utils.parametrize`` derived its ``Parametrized...`` class from.

    Constants are looked up by this exact class, never by ``isinstance``: a subclass may
    override ``forward`` and compute something else entirely.
    """
    cls = type(m)
    if parametrize.is_parametrized(m):
        cls = cls.__bases__[0]
    return cls


def activation_constant(m: nn.Module) -> float | None:
    """The L2 Lipschitz constant of a parameter-free or element-wise layer, or None when
    ``m`` is a linear / conv layer (whose constant is an operator norm) or unknown (any
    class not listed here, subclasses of listed ones included)."""
    cls = layer_class(m)
    if cls in _ONE_LIPSCHITZ:
        return 1.0
    if cls is nn.LeakyReLU:
        return max(1.0, abs(float(m.negative_slope)))
    if cls is nn.Sigmoid:
        return 0.25
    if cls is nn.MaxPool2d:
        return _maxpool_constant(m)
    if cls is Normalize:
        return float((1.0 / m.std.double()).max())
    if cls in (nn.BatchNorm1d, nn.BatchNorm2d):
        if m.training or m.running_var is None:
            raise InputError("a BatchNorm layer in train mode or without running statistics "
                             "(track_running_stats=False) normalises by batch statistics: it "
                             "mixes examples and has no fixed Lipschitz constant")
        scale = torch.ones_like(m.running_var, dtype=torch.float64)
        if m.weight is not None:
            scale = m.weight.detach().double().abs()
        return float((scale / torch.sqrt(m.running_var.double() + m.eps)).max())
    if cls is LinearSpline:
        return float(m.lipschitz_constant().detach().double().max())
    return None


def layer_constant(layer: ChainLayer, *, method: str = "gram") -> LayerConstant:
    """The sound L2 constant of one chain layer (see the module docstring).

    Args:
        layer: from :func:`bastion.models.lipschitz.chain.layer_chain`.
        method: for linear and conv layers, an ``operator_norm.layer_operator_norm`` method;
            must be one of the sound ones (``SOUND_METHODS``) unless you accept an estimate.

    Raises:
        InputError: for a layer whose constant bastion does not know.
    """
    m = layer.module
    kind = layer_class(m).__name__
    if layer_class(m) in (nn.Linear, nn.Conv2d):
        size = layer.input_shape[1:] if isinstance(m, nn.Conv2d) else None
        value = float(layer_operator_norm(m, size, method=method))
        return LayerConstant(layer.name, kind, value, method, bool(SOUND_METHODS[method]))
    c = activation_constant(m)
    if c is None:
        raise InputError(
            f"layer {layer.name!r} ({kind}) has no known Lipschitz constant; a certificate "
            "cannot treat it as 1. Known: Linear, Conv2d, ReLU, LeakyReLU, GroupSort, MaxMin, "
            "FullSort, LinearSpline, MaxPool2d, BatchNorm (eval), Normalize, Flatten, Dropout"
        )
    return LayerConstant(layer.name, kind, c, "exact", True)


@dataclass(frozen=True, eq=False)
class NetworkBound:
    """The Lipschitz bound of a chain classifier, split at its last linear layer.

    Args:
        layers: the constants of every layer before the last linear layer, in order.
        last_weight: float64 ``[K, D]``, the last linear layer's weight (its bias does not
            change any Lipschitz constant).
        last_name: the last layer's module name.
    """

    layers: tuple[LayerConstant, ...]
    last_weight: torch.Tensor
    last_name: str

    @property
    def prefix(self) -> float:
        """``P``: the product of the constants of the layers before the last one."""
        return math.prod(c.constant for c in self.layers)

    @property
    def sound(self) -> bool:
        """Whether every constant of the product is a guaranteed upper bound."""
        return all(c.sound for c in self.layers)

    def per_logit(self) -> torch.Tensor:
        """float64 ``[K]``: ``K_j = P ||W_m[j, :]||`` (the seed's per-logit constant)."""
        return self.prefix * torch.linalg.vector_norm(self.last_weight, dim=1)

    def pairwise(self) -> torch.Tensor:
        """float64 ``[K, K]``: ``K_ij = P ||W_m[i, :] - W_m[j, :]||``, zero on the diagonal."""
        w = self.last_weight
        diff = w[:, None, :] - w[None, :, :]
        return self.prefix * torch.linalg.vector_norm(diff, dim=2)

    def global_constant(self) -> float:
        """``P ||W_m||_2``: a bound on the Lipschitz constant of the whole logit vector."""
        return self.prefix * float(torch.linalg.matrix_norm(self.last_weight, ord=2))


def _split_last(chain: list[ChainLayer]) -> tuple[list[ChainLayer], ChainLayer]:
    last = chain[-1]
    if layer_class(last.module) is not nn.Linear:
        raise InputError(f"the model's last layer {last.name!r} is a {type(last.module).__name__}"
                         "; a margin certificate needs a Linear layer producing the logits")
    return chain[:-1], last


def network_bound(model: nn.Module, example: torch.Tensor, *, method: str = "gram",
                  constant: Callable[[ChainLayer], LayerConstant] | None = None) -> NetworkBound:
    """The sound Lipschitz bound of ``model`` (see the module docstring).

    Args:
        model: a chain classifier from [0, 1] images ``[N, C, H, W]`` to logits ``[N, K]``
            whose last layer is ``nn.Linear``.
        example: one input ``[1, C, H, W]`` on the model's device (its values do not matter).
        method: the operator-norm method of linear and conv layers (``"gram"``: Gram
            iteration, a certified bound; ``"svd"``: exact, small layers only).
        constant: override of :func:`layer_constant` (tests).

    Example:
        >>> b = network_bound(model, x[:1])
        >>> b.pairwise()[3, 5]   # bound on Lip(f_3 - f_5) in pixel units
    """
    chain = layer_chain(model, example)
    body, last = _split_last(chain)
    fn = constant or (lambda layer: layer_constant(layer, method=method))
    layers = tuple(fn(layer) for layer in body)
    last_weight = last.module.weight.detach().double().cpu().clone()
    bad = [c.name for c in layers if not (math.isfinite(c.constant) and c.constant >= 0)]
    if bad or not bool(torch.isfinite(last_weight).all()):
        raise InputError(f"non-finite Lipschitz constant or weight in {bad or [last.name]}; no "
                         "certificate can be computed")
    return NetworkBound(layers=layers, last_weight=last_weight, last_name=last.name)
