"""HGD: training a denoiser in front of a fixed classifier, guided by the classifier.

Liao, Liang, Dong, Pang, Hu and Zhu 2018, "Defense against Adversarial Attacks Using
High-Level Representation Guided Denoiser", CVPR, arXiv 1712.02976.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from bastion._torch import unwrap
from bastion._validate import check_choice, check_int
from bastion.attacks.threat import ThreatModel
from bastion.errors import InputError, InputTypeError
from bastion.preprocess.base import Defended
from bastion.preprocess.hgd import GuidedDenoiser
from bastion.records import StepContext, StepOutput
from bastion.train.standard import at_least_fp32, batch_accuracy

Guidance = Literal["logits", "features", "pixel"]
GUIDANCES: tuple[str, ...] = ("logits", "features", "pixel")
"""What the loss compares: the classifier's logits (LGD), a layer's output (FGD), pixels."""

HGD_ATTACKS: tuple[str, ...] = ("fgsm", "pgd")
"""The attacks that make the denoiser's training inputs."""

DRAWS: tuple[str, ...] = ("example", "batch")
"""Whether the attack and radius are drawn for each example or once per batch."""


def _tuple_of(value: Any, name: str) -> tuple[Any, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InputTypeError(f"{name} must be a list, got {value!r}")
    if len(value) == 0:
        raise InputError(f"{name} must not be empty")
    return tuple(value)


def _l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example L1 distance ``sum_j |a_j - b_j|`` over all non-batch dims, batch mean."""
    diff = at_least_fp32(a) - at_least_fp32(b)
    return diff.abs().flatten(1).sum(1).mean()


@dataclass(frozen=True, kw_only=True)
class HGD:
    """High-level representation guided denoiser training (Liao et al. 2018, HGD).

    Called with ``Defended(GuidedDenoiser(...), classifier, frozen_model=True)`` (possibly
    wrapped in DistributedDataParallel); only the denoiser ``D`` learns. For a batch
    ``(x, y)``:

    1. Training inputs ``x*``: adversarial examples of the *undefended* classifier ``f``
       alone; the denoiser is not attacked. (The paper precomputes a fixed set of attacked
       images; here they are made afresh each batch, against the same fixed classifier,
       so from the same distribution.) Each example (``draw="example"``) or each batch
       (``draw="batch"``) gets an attack drawn uniformly from ``attacks`` and an L-inf
       radius drawn uniformly from ``eps``, from ``ctx.generator``, as the paper samples
       FGSM and iterative FGSM at several radii per image: ``"fgsm"`` is one signed
       gradient step of length eps (Goodfellow et al. 2015, arXiv 1412.6572); ``"pgd"`` is
       ``steps`` steps of ``2.5 * eps / steps`` from a uniform random start (Madry et al.
       2018, arXiv 1706.06083), both on the cross-entropy and through the one engine
       ``attacks.pgd.pgd``. With ``clean_fraction = p``, each example is instead left
       clean with probability ``p``, so the denoiser also learns to leave clean images
       alone.
    2. The loss (the paper's guided denoisers), for ``x_hat = D(x*)``:

       - ``guidance="logits"`` (LGD): ``||f(x_hat) - f(x)||_1``, the L1 distance of the
         classifier's logits (pre-softmax outputs) on the denoised and the clean image;
       - ``"features"`` (FGD): the same on the output of the classifier's sub-module
         ``layer`` (a name of ``classifier.named_modules()``, e.g. ``"features"``, the
         conv stack's output of ``small-cnn``; read with a forward hook);
       - ``"pixel"``: ``||x_hat - x||_1`` in pixels, the paper's pixel-guided (PGD)
         denoiser baseline.

       The L1 norm sums over all elements of an example (logits ``[K]``, a feature map
       ``[C', H', W']``, the image ``[C, H, W]``) and is averaged over the batch. The
       clean targets ``f(x)`` are computed without gradient; the classifier stays in
       eval mode with frozen parameters (``Defended(frozen_model=True)``), so the
       gradient reaches the denoiser only. The training forward goes through ``model``
       itself, so DDP synchronises the denoiser's gradients.

    Under bf16 autocast (``fit(precision="bf16")``) the attacks and forward passes run in
    bf16 and the L1 distances are taken in fp32 (``at_least_fp32``).

    Logs (batch accuracies of the classifier, in [0, 1]): ``nat_acc`` on the clean
    batch, ``adv_acc`` on the training inputs ``x*`` without the denoiser and
    ``denoised_adv_acc`` on ``D(x*)`` (with ``clean_fraction > 0`` the inputs include the
    clean examples left unattacked).

    Args:
        guidance: ``"logits"``, ``"features"`` or ``"pixel"``.
        layer: the classifier sub-module whose output ``"features"`` compares (required
            with it, not allowed with the others); checked against the classifier's
            module names at each step.
        attacks: the attacks to draw from, a non-empty list of ``"fgsm"`` and ``"pgd"``.
        eps: the L-inf radii to draw from, pixel units in (0, 1]. The default
            ``(0.05, 0.1, 0.15)`` spans Fashion-MNIST's usual eps 0.1.
        steps: PGD steps (an int >= 1).
        clean_fraction: probability in [0, 1) that an example is used clean.
        draw: ``"example"`` or ``"batch"`` (one attack and radius for the whole batch:
            one attack call per step instead of up to one per attack).

    Raises:
        InputError: for an option outside its choices or range (at construction); at a
            step, for a model that is not a ``Defended`` with a ``GuidedDenoiser`` and a
            frozen classifier, or an unknown ``layer`` (the message lists valid ones).

    Example:
        >>> method = HGD(attacks=["fgsm"], eps=[0.1])
        >>> method.attacks, method.eps
        (('fgsm',), (0.1,))
    """

    guidance: Guidance = "logits"
    layer: str | None = None
    attacks: tuple[str, ...] = HGD_ATTACKS
    eps: tuple[float, ...] = (0.05, 0.1, 0.15)
    steps: int = 10
    clean_fraction: float = 0.0
    draw: Literal["example", "batch"] = "example"

    def __post_init__(self) -> None:
        check_choice(self.guidance, GUIDANCES, "guidance")
        if self.guidance == "features":
            if not isinstance(self.layer, str) or not self.layer:
                raise InputError("guidance 'features' needs layer: the name of a module of "
                                 "the classifier (e.g. 'features'), got "
                                 f"{self.layer!r}")
        elif self.layer is not None:
            raise InputError(f"layer is only used with guidance 'features', not with "
                             f"{self.guidance!r}; remove it or set guidance: features")
        attacks = _tuple_of(self.attacks, "attacks")
        for a in attacks:
            if not isinstance(a, str):
                raise InputTypeError(f"attacks must be names, got {a!r}")
            check_choice(a, HGD_ATTACKS, "HGD attack")
        if len(set(attacks)) != len(attacks):
            raise InputError(f"attacks lists a name twice: {list(attacks)}")
        eps = _tuple_of(self.eps, "eps")
        for e in eps:
            if isinstance(e, bool) or not isinstance(e, int | float) or not (
                    math.isfinite(e) and 0 < e <= 1):
                raise InputError(f"each eps must be a number in (0, 1] (L-inf, pixel units "
                                 f"of [0, 1] images, not 0-255), got {e!r}")
        check_int(self.steps, "steps", low=1)
        cf = self.clean_fraction
        if isinstance(cf, bool) or not isinstance(cf, int | float) or not 0 <= cf < 1:
            raise InputError(f"clean_fraction must be a number in [0, 1), got {cf!r}")
        check_choice(self.draw, DRAWS, "draw")
        object.__setattr__(self, "attacks", attacks)
        object.__setattr__(self, "eps", tuple(float(e) for e in eps))
        object.__setattr__(self, "steps", int(self.steps))
        object.__setattr__(self, "clean_fraction", float(cf))

    # ------------------------------------------------------------------ the parts of a step

    @staticmethod
    def defended_of(model: nn.Module) -> Defended:
        """The ``Defended`` inside ``model`` (DDP unwrapped), checked for HGD training."""
        net = unwrap(model)
        if not isinstance(net, Defended) or not isinstance(net.preprocessor, GuidedDenoiser):
            got = (f"Defended({type(net.preprocessor).__name__}, ...)"
                   if isinstance(net, Defended) else type(net).__name__)
            raise InputError(
                "HGD trains a denoiser in front of a fixed classifier: pass "
                "Defended(GuidedDenoiser(...), classifier, frozen_model=True) (a run config "
                f"with preprocess: {{name: hgd}}), got {got}"
            )
        trainable = [n for n, p in net.model.named_parameters() if p.requires_grad]
        if trainable:
            raise InputError(
                "HGD keeps the classifier fixed, but its parameters "
                f"{trainable[:3]}{'...' if len(trainable) > 3 else ''} require gradients; "
                "build the model with Defended(..., frozen_model=True)"
            )
        return net

    def _layer(self, classifier: nn.Module) -> nn.Module:
        names = [n for n, _ in classifier.named_modules() if n]
        if self.layer not in names:
            raise InputError(f"unknown layer {self.layer!r} of the classifier for guidance "
                             f"'features'; valid choices: {', '.join(names)}")
        return classifier.get_submodule(self.layer)

    def draws(self, n: int, device: torch.device,
              generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per example: attack index into ``attacks`` [n] (int64), radius [n] (pixel
        units, float32) and whether it stays clean [n] (bool), drawn from ``generator``."""
        k = n if self.draw == "example" else 1
        which = torch.randint(len(self.attacks), (k,), generator=generator, device=device)
        radius_idx = torch.randint(len(self.eps), (k,), generator=generator, device=device)
        radius = torch.tensor(self.eps, device=device)[radius_idx]
        if self.clean_fraction > 0:
            clean = torch.rand(n, generator=generator, device=device) < self.clean_fraction
        else:
            clean = torch.zeros(n, dtype=torch.bool, device=device)
        return which.expand(n), radius.expand(n), clean

    def adversarial_inputs(
        self, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training inputs ``x*`` [N, C, H, W] (attacked or left clean, as drawn),
        whether each was attacked [N] (bool) and whether its attack fooled ``classifier``
        [N] (bool, False where not attacked)."""
        which, radius, clean = self.draws(x.shape[0], x.device, generator)
        x_in = x.detach().clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for a, name in enumerate(self.attacks):
            idx = ((which == a) & ~clean).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            e = radius[idx].to(x.dtype)
            if name == "fgsm":
                threat = ThreatModel(eps=max(self.eps), steps=1, random_init=False)
                res = threat.attack(classifier, x[idx], y[idx], eps=e, default_step_size=e)
            else:
                threat = ThreatModel(eps=max(self.eps), steps=self.steps)
                res = threat.attack(classifier, x[idx], y[idx], eps=e, generator=generator)
            x_in[idx] = res.x_adv
            fooled[idx] = res.success
        return x_in, ~clean, fooled

    # ------------------------------------------------------------------------ the step

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        defended = self.defended_of(model)
        classifier = defended.model
        generator = ctx.generator if ctx is not None else None
        x_in, attacked, fooled = self.adversarial_inputs(classifier, x, y, generator)

        seen: dict[str, list[torch.Tensor]] = {"layer": [], "denoised": []}

        def keep(key: str) -> Any:
            def hook(_m: nn.Module, _args: Any, out: Any) -> None:
                if not isinstance(out, torch.Tensor):
                    raise InputError(f"layer {self.layer!r} returns {type(out).__name__}, not "
                                     "a tensor; choose a module whose output is one tensor")
                seen[key].append(out)
            return hook

        hooks = [defended.preprocessor.register_forward_hook(keep("denoised"))]
        if self.guidance == "features":
            hooks.append(self._layer(classifier).register_forward_hook(keep("layer")))
        try:
            with torch.no_grad():
                clean_logits = classifier(x)
            clean_features, seen["layer"] = seen["layer"], []
            logits = model(x_in)  # through the (DDP) wrapper: D, then the classifier
        finally:
            for h in hooks:
                h.remove()

        if self.guidance == "logits":
            loss = _l1(logits, clean_logits.detach())
        elif self.guidance == "features":
            if len(clean_features) != 1 or len(seen["layer"]) != 1:
                raise InputError(
                    f"layer {self.layer!r} runs {len(seen['layer'])} times in one forward pass "
                    "of the classifier (a shared module); choose a module that runs once"
                )
            loss = _l1(seen["layer"][0], clean_features[0].detach())
        else:
            loss = _l1(seen["denoised"][0], x)
        # the attack engine judged each attacked input: right = not fooled
        right_before = torch.where(attacked, ~fooled, clean_logits.argmax(1) == y)
        return StepOutput(loss, {
            "nat_acc": batch_accuracy(clean_logits, y),
            "adv_acc": right_before.float().mean(),
            "denoised_adv_acc": batch_accuracy(logits, y),
        })


__all__ = ["DRAWS", "GUIDANCES", "HGD", "HGD_ATTACKS"]
