"""Image classifiers, each built with a :class:`Normalize` layer first.

Inputs are NCHW floats in [0, 1]; use :func:`build` to get ``Normalize`` + architecture.
"""

from bastion.models.lenet import LeNet
from bastion.models.mlp import MLP
from bastion.models.normalize import Normalize
from bastion.models.preact_resnet import PreActBlock, PreActResNet18
from bastion.models.registry import (
    DATASET_STATS,
    MODELS,
    ChannelStats,
    architecture_signature,
    build,
    check_state_dict_matches,
    dataset_stats,
)
from bastion.models.small_cnn import SmallCNN
from bastion.models.wide_resnet import WideBasicBlock, WideResNet

__all__ = [
    "DATASET_STATS",
    "MODELS",
    "ChannelStats",
    "LeNet",
    "MLP",
    "Normalize",
    "PreActBlock",
    "PreActResNet18",
    "SmallCNN",
    "WideBasicBlock",
    "WideResNet",
    "architecture_signature",
    "build",
    "check_state_dict_matches",
    "dataset_stats",
]
