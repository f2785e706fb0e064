"""Build models by name, always with the :class:`Normalize` layer first, and check checkpoints.

``build("small-cnn", dataset="mnist")`` returns
``nn.Sequential(normalize=Normalize(...), net=SmallCNN(...))``: the model takes NCHW floats
in [0, 1], so attack epsilons and certified radii are in pixel units.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bastion.errors import InputError, InputTypeError
from bastion.models.lenet import LeNet
from bastion.models.lipschitz.networks import LipschitzCNN, LipschitzMLP
from bastion.models.mlp import MLP
from bastion.models.multimodal_cnn import MultiModalCNN
from bastion.models.normalize import Normalize, _as_hw, _check_positive_int
from bastion.models.preact_resnet import PreActResNet18
from bastion.models.small_cnn import SmallCNN
from bastion.models.wide_resnet import WideResNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "small-cnn": SmallCNN,
    "lenet": LeNet,
    "preact-resnet18": PreActResNet18,
    "wide-resnet": WideResNet,
    "mlp": MLP,
    "lipschitz-cnn": LipschitzCNN,
    "lipschitz-mlp": LipschitzMLP,
    "mm-small-cnn": MultiModalCNN,
}
"""Architectures by name. Each takes ``num_classes`` and ``in_channels``, plus
``input_size`` when its flatten size depends on it, plus its own keyword arguments."""



@dataclass(frozen=True)
class ChannelStats:
    """Per-channel statistics of a dataset's training images, for :class:`Normalize`.

    Args:
        mean: one float per channel, the mean pixel value in [0, 1] pixel units.
        std: one float per channel (same length as ``mean``), the standard deviation in
            [0, 1] pixel units.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASET_STATS: dict[str, ChannelStats] = {
    "fashion-mnist": ChannelStats(mean=(0.2860,), std=(0.3530,)),
    "mnist": ChannelStats(mean=(0.1307,), std=(0.3081,)),
    "cifar10": ChannelStats(mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)),
    "digits": ChannelStats(mean=(0.0,), std=(1.0,)),
    "fashion-mnist-pairs": ChannelStats(mean=(0.2860, 0.2860), std=(0.3530, 0.3530)),
    "fashion-mnist-pairs-wide": ChannelStats(mean=(0.2860,), std=(0.3530,)),
}
"""Per-channel mean and std of each dataset's training images in [0, 1] pixel units."""

# Arguments that ``build`` supplies itself; everything else is an architecture keyword.
_COMMON = ("num_classes", "in_channels", "input_size")

# How many entries of each kind ``check_state_dict_matches`` shows in its message.
_SHOW = 5


def dataset_stats(name: str) -> ChannelStats:
    """Per-channel mean and std of a dataset, for :class:`Normalize`.

    Args:
        name: one of ``DATASET_STATS`` ("fashion-mnist", "mnist", "cifar10", "digits", the
            two-view pairs).

    Returns:
        :class:`ChannelStats`: ``mean`` and ``std``, tuples with one float per channel, in
        [0, 1] pixel units.

    Example:
        >>> dataset_stats("mnist")
        ChannelStats(mean=(0.1307,), std=(0.3081,))
    """
    if name not in DATASET_STATS:
        raise InputError(
            f"no normalisation statistics for dataset {name!r}; known datasets: "
            f"{', '.join(sorted(DATASET_STATS))}"
        )
    return DATASET_STATS[name]


def check_architecture(name: str, options: Mapping[str, object]) -> None:
    """Raise unless ``name`` is in :data:`MODELS` and ``options`` are its own keywords.

    The check a run config needs before anything is built: an unknown name lists the valid
    ones, an unknown option lists the architecture's keywords, and the arguments ``build``
    fills in itself (``num_classes``, ``in_channels``, ``input_size`` from the dataset;
    ``mean``, ``std`` and ``dataset`` for :class:`Normalize`) are refused as options.

    Example:
        >>> check_architecture("mlp", {"hidden": [32]})  # fine: no error
    """
    if not isinstance(name, str) or name not in MODELS:
        raise InputError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    if not isinstance(options, Mapping):
        raise InputTypeError(f"model options must be a mapping, got {options!r}")
    valid = _architecture_keywords(name)
    reserved = sorted(k for k in options if k in (*_COMMON, "mean", "std", "dataset"))
    if reserved:
        raise InputError(
            f"{', '.join(reserved)} cannot be set as options of model {name!r}: bastion takes "
            "them from the dataset"
        )
    unknown = sorted(str(k) for k in options if k not in valid)
    if unknown:
        raise InputError(
            f"unknown option(s) {', '.join(unknown)} for model {name!r}; valid options: "
            f"{', '.join(valid) if valid else '(none)'}"
        )


def _architecture_keywords(name: str) -> list[str]:
    """The keyword arguments architecture ``name`` accepts besides the common ones."""
    params = inspect.signature(MODELS[name]).parameters
    return [p for p in params if p not in _COMMON]


def build(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int | Sequence[int] = 28,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    dataset: str | None = None,
    **kwargs: object,
) -> nn.Sequential:
    """Build a registered architecture with its :class:`Normalize` layer first.

    Args:
        name: one of ``MODELS`` ("small-cnn", "lenet", "preact-resnet18", "wide-resnet").
        num_classes: number of output logits. Default 10.
        in_channels: input channels. Default 1.
        input_size: input height and width in pixels (int or ``(h, w)``); used by the
            architectures whose flatten size depends on it. Default 28.
        mean: per-channel means in [0, 1] pixel units; default all 0 (or the dataset's).
        std: per-channel standard deviations; default all 1 (or the dataset's).
        dataset: take ``mean`` and ``std`` from :data:`DATASET_STATS` for this dataset
            (exclusive with ``mean``/``std``). Default None (identity normalisation).
        **kwargs: architecture keyword arguments, e.g. ``depth=34, widen_factor=10`` for
            "wide-resnet" or ``width=64`` for "preact-resnet18".

    Returns:
        ``nn.Sequential`` with children ``normalize`` (a :class:`Normalize`) and ``net``
        (the architecture).

    Shape:
        - Input: ``[N, in_channels, H, W]`` floats in [0, 1].
        - Output: ``[N, num_classes]`` logits.

    Example:
        >>> model = build("small-cnn", dataset="fashion-mnist")
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    _check_positive_int(in_channels, "in_channels")
    hw = _as_hw(input_size)

    valid = _architecture_keywords(name)
    unknown = sorted(k for k in kwargs if k not in valid)
    if unknown:
        raise InputTypeError(
            f"unknown keyword argument(s) {', '.join(unknown)} for model {name!r}; valid "
            f"keyword arguments: {', '.join(['num_classes', 'in_channels', 'input_size', *valid])}"
        )

    if dataset is not None:
        if mean is not None or std is not None:
            raise InputError("give either dataset or mean/std, not both")
        stats = dataset_stats(dataset)
        mean, std = stats.mean, stats.std
    if (mean is None) != (std is None):
        raise InputError("give both mean and std, or neither (identity normalisation)")
    if mean is None or std is None:
        mean, std = (0.0,) * in_channels, (1.0,) * in_channels
    if len(mean) != in_channels:
        raise InputError(
            f"normalisation has {len(mean)} channel(s) but in_channels={in_channels}"
            + (f" (statistics of dataset {dataset!r})" if dataset is not None else "")
        )
    params = inspect.signature(MODELS[name]).parameters
    # The flatten size of these architectures depends on the input size: the first layer
    # checks it, so a wrong image size is a clear error, not a matmul shape mismatch.
    common: dict[str, object] = {"num_classes": num_classes, "in_channels": in_channels}
    if "input_size" in params:
        common["input_size"] = hw
    net = MODELS[name](**common, **kwargs)
    # sub-sampling base classifiers read keep-mask channels after the image (models.ablation)
    masks = net.num_modalities if getattr(net, "takes_keep_masks", False) else 0
    normalize = Normalize(mean, std, input_size=hw if "input_size" in params else None,
                          mask_channels=masks)
    return nn.Sequential(OrderedDict([("normalize", normalize), ("net", net)]))


def architecture_signature(model: nn.Module) -> dict[str, list[int]]:
    """Map every state-dict key of ``model`` (parameters and buffers) to its shape.

    Two models with equal signatures can load each other's checkpoints.

    Args:
        model: any module.

    Returns:
        ``{key: shape}`` in state-dict order, shapes as lists of ints (JSON-friendly).

    Example:
        >>> architecture_signature(Normalize((0.5,), (0.5,)))
        {'mean': [1, 1, 1, 1], 'std': [1, 1, 1, 1]}
    """
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return shown + more


def check_state_dict_matches(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` unless ``state_dict`` has exactly ``model``'s keys and shapes.

    The message lists (the first few) missing keys, unexpected keys and shape mismatches, so
    that a checkpoint written for another architecture fails early and clearly.

    Args:
        model: the model the checkpoint is meant for.
        state_dict: tensors by key, e.g. from ``safetensors.torch.load_file``.

    Example:
        >>> model = build("small-cnn")
        >>> check_state_dict_matches(model, model.state_dict())  # fits: no error
    """
    expected = architecture_signature(model)
    got = {k: list(torch.as_tensor(v).shape) for k, v in state_dict.items()}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mismatched = [
        f"{k} (model {expected[k]}, checkpoint {got[k]})"
        for k in expected
        if k in got and expected[k] != got[k]
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es): {_first(mismatched)}")
    raise InputError(
        f"checkpoint does not match the {type(model).__name__} architecture: " + "; ".join(parts)
    )
