"""TLA: adversarial training with a triplet loss on a layer's embeddings."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bastion._torch import unwrap
from bastion.attacks.core import AttackResult
from bastion.attacks.threat import ThreatModel, init_threat
from bastion.errors import InputError
from bastion.losses.tla import (
    angular_distance,
    embedding_norm_penalty,
    hardest_negatives,
    triplet_loss,
)
from bastion.records import StepContext, StepOutput
from bastion.train.standard import at_least_fp32, batch_accuracy

_SHOW_NAMES = 60


def _module_names(net: nn.Module) -> str:
    names = [n for n, _ in net.named_modules() if n]
    shown = ", ".join(names[:_SHOW_NAMES])
    more = len(names) - _SHOW_NAMES
    return shown + (f", ... and {more} more" if more > 0 else "")


def _embedding_module(model: nn.Module, layer: str | None) -> tuple[nn.Module, bool]:
    """The module whose output (or, for ``layer=None``, whose input) is the embedding.

    Args:
        model: the classifier (a DistributedDataParallel wrapper is unwrapped).
        layer: a name from ``model.named_modules()``, e.g. ``"net.classifier.relu2"`` for
            :func:`bastion.models.build`'s small-cnn; None means the input of the model's
            last ``nn.Linear`` (the penultimate features).

    Returns:
        ``(module, use_input)``: ``use_input`` is True when the embedding is the module's
        input (the ``None`` case).

    Raises:
        ValueError: naming the available modules, when ``layer`` is not one of them or the
            model has no ``nn.Linear`` for ``layer=None``.
    """
    net = unwrap(model)
    if layer is None:
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise InputError(
                "the model has no nn.Linear layer, so the penultimate features cannot be "
                f"found; name the embedding layer with layer=...; available: {_module_names(net)}"
            )
        return linears[-1], True
    if not isinstance(layer, str) or not layer:
        raise InputError(f"layer must be a module name or None, got {layer!r}")
    try:
        return net.get_submodule(layer), False
    except AttributeError:
        raise InputError(
            f"the model has no module named {layer!r}; available names: {_module_names(net)}"
        ) from None


def _forward_with_embedding(
    model: nn.Module, x: torch.Tensor, layer: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, K] and the embedding [N, ...] of ``layer`` (see :func:`_embedding_module`).

    The embedding is captured by a forward hook during the one forward pass (removed
    afterwards); the module must run exactly once per forward pass.
    """
    module, use_input = _embedding_module(model, layer)
    captured: list[torch.Tensor] = []
    if use_input:
        handle = module.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    else:
        handle = module.register_forward_hook(lambda m, args, out: captured.append(out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    name = layer if layer is not None else "the last nn.Linear"
    if len(captured) != 1:
        raise InputError(f"{name} ran {len(captured)} times in one forward pass; the TLA "
                         "embedding layer must run exactly once")
    if not isinstance(captured[0], torch.Tensor):
        raise InputError(f"{name} does not produce a tensor (got {type(captured[0]).__name__})")
    # fp32, so that the losses are computed in fp32 also under bf16 autocast
    return at_least_fp32(logits), at_least_fp32(captured[0])


@dataclass(frozen=True, kw_only=True)
class TLA:
    """Triplet Loss Adversarial training (TLA).

    Mao, Zhong, Yang, Vondrick & Ray 2019, "Metric Learning for Adversarial Robustness",
    arXiv 1904.00887. The anchor ``x_a`` is the PGD (cross-entropy) adversarial example of
    the clean ``x_p`` (the positive); the negative ``x_n`` of each anchor is the clean
    example of the batch, of another class, whose embedding is closest to the anchor's in
    the angular distance ``D(u, v) = 1 - |<u, v>| / (||u|| ||v||)`` (hard-negative mining,
    :func:`bastion.losses.tla.hardest_negatives`). With ``e = f^(k)`` the embedding of
    layer ``k``, the loss of a batch is

        ``CE(f(x_a), y) + lambda_ * (T + lambda_norm * R)``,
        ``T = mean_i max(D(e(x_p), e(x_a)) - D(e(x_n), e(x_a)) + margin, 0)``,
        ``R = mean over examples and entries of e(x_a)^2 + e(x_p)^2 + e(x_n)^2``

    in the form of the authors' code (github.com/columbia/Metric_Learning_Adversarial_
    Robustness: ``total_loss = adv xent + lamda_triplet * (triplet + regularize_lambda *
    norm)``, adversarial-only classification loss), so the effective weight of ``R`` is
    ``lambda_ * lambda_norm``. Embeddings of the adversarial and the clean batch come from
    two forward passes in the model's own mode, both with gradients (the negatives'
    embeddings are rows of the clean pass); the mining itself is done without gradients.

    Single-class batches: an anchor with no other-class example in the batch has no
    negative; it is left out of ``T`` and of ``R``'s negative part (``T = 0`` when no anchor
    has one) and the fraction of anchors with a negative is logged as ``"valid"``. No error
    is raised, because small or class-imbalanced batches meet this legitimately.

    Defaults are the numbers of the authors' ``config_mnist.json``: ``margin = 0.05``,
    ``lambda_ = 0.5``, ``lambda_norm = 1e-4`` (that file, as published, configures an MLP
    run whose positive is another clean image of the same class; their ``config_cifar.json``
    uses 0.03, 2 and 1e-3), the embedding being the penultimate fully connected layer after
    its ReLU, their ``x4`` (``layer=None``: the input of the last ``nn.Linear``). Left out of
    the code's recipe: uniform noise on the clean inputs, label smoothing, and mining from a
    separate larger batch; the attack is this library's PGD (``steps=10``, step
    ``2.5 eps / steps``).

    Args:
        threat: the anchors' PGD (``ThreatModel``; a mapping overrides the default's
            keys): radius ``eps`` in [0, 1] pixel units (default 0.1), ``norm``, ``steps``
            (10), ``step_size`` (None: ``2.5 * eps / steps``), ``random_init`` (True) and
            ``train_mode`` (False: eval mode during the attack, restored).
        layer: embedding layer by ``named_modules()`` name (e.g. ``"net.classifier.relu2"``
            for the built small-cnn), or None for the input of the last ``nn.Linear``.
        margin: the triplet margin ``alpha`` (angular-distance units, >= 0).
        lambda_: weight of the triplet term, >= 0.
        lambda_norm: weight of the norm regulariser inside the triplet term, >= 0.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 5),
        ...                             torch.nn.ReLU(), torch.nn.Linear(5, 3))
        >>> method = TLA(threat=ThreatModel(eps=0.1, steps=2))
        >>> out = method(model, torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]))
        >>> sorted(out.logs)
        ['adv_acc', 'ce', 'neg_dist', 'norm', 'pos_dist', 'triplet', 'valid']
    """

    threat: ThreatModel = ThreatModel(eps=0.1, steps=10)
    layer: str | None = None
    margin: float = 0.05
    lambda_: float = 0.5
    lambda_norm: float = 1e-4

    def __post_init__(self) -> None:
        init_threat(self)
        for name in ("margin", "lambda_", "lambda_norm"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer):
            raise InputError(f"layer must be a module name or None, got {self.layer!r}")

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        """The anchors: PGD on the cross-entropy around the clean batch."""
        return self.threat.attack(model, x, y, generator=generator)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        _embedding_module(model, self.layer)  # a wrong name fails before the attack runs
        attack = self.perturb(model, x, y, ctx.generator if ctx is not None else None)
        logits_adv, emb_a = _forward_with_embedding(model, attack.x_adv, self.layer)
        _, emb_p = _forward_with_embedding(model, x, self.layer)
        negatives = hardest_negatives(emb_a, emb_p, y, y)
        valid = negatives.valid
        emb_n = emb_p[negatives.index]
        ce = F.cross_entropy(logits_adv, y)
        trip = triplet_loss(emb_a, emb_p, emb_n, self.margin, valid)
        reg = embedding_norm_penalty(emb_a, emb_p, emb_n, valid)
        loss = ce + self.lambda_ * (trip + self.lambda_norm * reg)
        with torch.no_grad():
            pos = angular_distance(emb_p, emb_a).mean()
            w = valid.to(pos.dtype)
            neg = (angular_distance(emb_n, emb_a) * w).sum() / w.sum().clamp_min(1.0)
        return StepOutput(loss, {
            "adv_acc": batch_accuracy(logits_adv, y),
            "ce": ce.detach(),
            "triplet": trip.detach(),
            "norm": reg.detach(),
            "pos_dist": pos,
            "neg_dist": neg,
            "valid": w.mean(),
        })
