"""Lipschitz networks and the bounds that certify them (the seed's "Certified
Deterministic Defenses" (1)-(3)).

- ``operator_norm``: spectral norms of linear and conv layers (power and Gram iteration,
  exact SVD, the reshaped-kernel and FFT options), each marked sound or not;
- ``chain``: a model as the chain of layers its forward runs;
- ``bound``: sound per-layer, per-logit and pairwise constants of a chain network;
- ``estimate``: the differentiable training-time estimate with persistent power vectors;
- ``constraints``: spectral normalisation and Björck orthonormalisation as
  parametrizations, and ``export_plain`` to bake them in;
- ``activations``: GroupSort, MaxMin, FullSort; ``spline``: the learnable 1-Lipschitz
  linear spline;
- ``networks``: ``LipschitzCNN`` and ``LipschitzMLP``.

The certificates built on these live in ``bastion.certify.lipschitz``.
"""

from bastion.models.lipschitz.activations import ACTIVATIONS, FullSort, GroupSort, MaxMin
from bastion.models.lipschitz.bound import (
    LayerConstant,
    NetworkBound,
    activation_constant,
    layer_constant,
    network_bound,
)
from bastion.models.lipschitz.chain import ChainLayer, layer_chain
from bastion.models.lipschitz.constraints import (
    CONSTRAINTS,
    BjorckOrthonormal,
    SpectralNormalized,
    bjorck,
    constrain,
    export_plain,
    per_layer_target,
)
from bastion.models.lipschitz.estimate import PowerIterates, pairwise_from, training_bound
from bastion.models.lipschitz.networks import ACTIVATION_NAMES, LipschitzCNN, LipschitzMLP
from bastion.models.lipschitz.operator_norm import (
    SOUND_METHODS,
    conv_operator_matrix,
    conv_power_bound,
    gram_bound_conv,
    gram_bound_dense,
    layer_operator_norm,
    linear_power_bound,
    power_sigma,
)
from bastion.models.lipschitz.spline import LinearSpline

__all__ = [
    "ACTIVATIONS", "ACTIVATION_NAMES", "CONSTRAINTS", "SOUND_METHODS", "BjorckOrthonormal",
    "ChainLayer", "FullSort", "GroupSort", "LayerConstant", "LinearSpline", "LipschitzCNN",
    "LipschitzMLP", "MaxMin", "NetworkBound", "PowerIterates", "SpectralNormalized",
    "activation_constant", "bjorck", "constrain", "conv_operator_matrix", "conv_power_bound",
    "export_plain", "gram_bound_conv", "gram_bound_dense", "layer_chain", "layer_constant",
    "layer_operator_norm", "linear_power_bound", "network_bound", "pairwise_from",
    "per_layer_target", "power_sigma", "training_bound",
]
