"""Customized Adversarial Training (CAT): a radius and a soft label per training example.

Cheng et al. 2020, "CAT: Customized Adversarial Training for Improved Robustness",
arXiv 2002.06789 (IJCAI 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion._validate import check_choice, check_radius
from bastion.attacks.threat import ThreatModel, init_threat
from bastion.errors import InputError
from bastion.records import StepContext, StepOutput
from bastion.train.standard import at_least_fp32, batch_accuracy

Smoothing = Literal["dirichlet", "uniform", "none"]
SMOOTHINGS: tuple[str, ...] = ("dirichlet", "uniform", "none")


def smoothed_labels(
    y: torch.Tensor,
    eps: torch.Tensor,
    *,
    num_classes: int,
    c: float,
    kind: Smoothing = "dirichlet",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CAT's adaptive label smoothing ``y~ = (1 - c eps_i) onehot(y_i) + c eps_i u_i``.

    Args:
        y: int64 labels [N].
        eps: per-example radii [N] in pixel units.
        num_classes: K.
        c: smoothing per unit of radius (``c * eps <= 1``).
        kind: ``"dirichlet"``: u_i ~ Dirichlet(1, ..., 1) drawn from ``generator`` (the
            authors' ``dirilabel``); ``"uniform"``: u_i = 1/K (their ``uniformlabel``);
            ``"none"``: the one-hot labels.
        generator: source of the Dirichlet draws.

    Returns:
        Probabilities [N, K] (rows sum to 1).
    """
    onehot = torch.nn.functional.one_hot(y, num_classes).to(eps.dtype)
    if kind == "none":
        return onehot
    if kind == "uniform":
        u = torch.full_like(onehot, 1.0 / num_classes)
    else:
        # Dirichlet(1) = normalised Exp(1) draws; 1 - U lies in (0, 1], so the log is finite.
        r = torch.rand(onehot.shape, generator=generator, device=y.device, dtype=eps.dtype)
        e = -torch.log1p(-r)
        u = e / e.sum(dim=1, keepdim=True).clamp_min(1e-12)
    s = (c * eps).unsqueeze(1)
    return (1 - s) * onehot + s * u


@dataclass(eq=False)
class CATState:
    """CAT's mutable training state, made by ``CAT.init_state`` and owned by the loop.

    ``fit`` passes it to every step as ``ctx.state`` and saves ``state_dict()`` in each
    checkpoint; ``load_state_dict`` restores it exactly on resume.

    Args:
        eps: float32 [dataset_size], the current radius eps_i of every training example
            (pixel units), updated in place by each step.
        num_classes: K, measured from the model on the first step (None until then).
    """

    eps: torch.Tensor
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.eps, torch.Tensor) or self.eps.dim() != 1:
            raise InputError("CATState.eps must be a vector [dataset_size]")

    def state_dict(self) -> dict[str, Any]:
        """``{"eps": radii [dataset_size] on the CPU, "num_classes": K}`` (K once known)."""
        state: dict[str, Any] = {"eps": self.eps.detach().cpu().clone()}
        if self.num_classes is not None:
            state["num_classes"] = int(self.num_classes)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the radii (and K) in place; the number of radii must match."""
        eps = torch.as_tensor(state["eps"], dtype=torch.float32)
        if eps.dim() != 1:
            raise InputError(f"CAT state 'eps' must be a vector, got shape {tuple(eps.shape)}")
        if self.eps.shape != eps.shape:
            raise InputError(
                f"CAT state has {eps.shape[0]} radii but the dataset has "
                f"{self.eps.shape[0]} examples"
            )
        self.eps.copy_(eps)
        k = state.get("num_classes")
        self.num_classes = None if k is None else int(k)


@dataclass(frozen=True, kw_only=True)
class CAT:
    """Customized adversarial training: per-example radius eps_i and soft label y~_i.

    Cheng et al. 2020, "CAT: Customized Adversarial Training for Improved Robustness",
    arXiv 2002.06789. Each training point gets the radius it can be made robust at,
    ``eps_i ~ argmin_eps {max_{x' in B(x_i, eps)} f(x') != y_i}`` capped at ``eps_max`` (the
    seed's "Problems of conventional AT (2)"), and a label smoothed in proportion to it.
    Per batch, for each example i (eps_i is kept across epochs, indexed by ``ctx.index``):

    1. ``y~_i = (1 - c eps_i) onehot(y_i) + c eps_i u_i`` (``smoothed_labels``);
    2. ``e_i = min(eps_i + eta, eps_max)``; ``x'_i`` = PGD on the soft-label cross-entropy
       (the engine's ``"kl"`` objective, the same gradient) in ``B(x_i, e_i)``, step
       ``step_size_ratio * e_i / steps``;
    3. if the attack failed (the model still classifies x'_i correctly) ``eps_i <- e_i``;
       if it succeeded, ``eps_i <- max(eps_i - eta, 0)`` (``decrease=True``, the default:
       an up/down staircase that tracks the smallest fooling radius even when the model
       becomes less robust later) or eps_i is kept (``decrease=False``, the public
       implementations' rule: eps_i only grows);
    4. loss ``= mean_i CE(softmax(f(x'_i)), y~_i)``, with y~ recomputed from the updated
       eps_i (a fresh Dirichlet draw).

    Sources of the rule (the update is not written out in the arXiv abstract we could
    read): two public implementations agree on it, the authors' ``main_adv_cus.py``
    (github.com/cmhcbb/CAT-Customized-Adversarial-Training, ``train_soadp`` version 2:
    eps += 0.0025, attack, subtract again for some examples, cap 0.035, Dirichlet smoothing
    with c = 10) and github.com/hirokiadachi/Customized-Adversarial-Training (eps += eta,
    attack, eps -= eta where x' is misclassified, cap eps_max = 8/255, eta = 0.005, c = 10,
    10 steps, no random start). In the authors' file the mask of examples that give the
    increase back is the *correctly* classified one, which contradicts the paper's
    argmin; we follow the argmin (and the second implementation). Unlike both, the trial
    radius is capped at ``eps_max`` before the attack, not after.

    Defaults are scaled to Fashion-MNIST at eps_max = 0.1 from the CIFAR-10 values (eps_max
    8/255): ``c = 3`` keeps the largest smoothing weight c * eps_max at 0.3 (10 * 8/255 =
    0.31), ``eta = 0.015`` keeps eta / eps_max near 0.16 (0.005 / (8/255)), so a point
    that resists reaches eps_max in 7 visits (epochs).

    The radii live in a ``CATState`` made by ``init_state`` (one per training example, at
    ``eps_init``), held by the training loop and handed to each step as ``ctx.state``; the
    method object itself never changes, so ``dataclasses.replace(cat, ...)`` is safe
    mid-run. Under DDP each rank updates its own copy and rank 0's is checkpointed.

    The threat model: ``threat.eps`` is CAT's cap ``eps_max``; each example is attacked in
    its own ball ``B(x_i, e_i)``, ``e_i <= threat.eps``, with the threat's ``norm``,
    ``steps``, ``random_init`` and ``train_mode``. ``threat.step_size=None`` (default) is
    the per-example step ``step_size_ratio * e_i / steps``; a number is one fixed step for
    every example.

    Logs: ``adv_acc``, ``eps_mean`` (mean eps_i of the batch after the update),
    ``attack_success``.

    Args:
        threat: the attack (``ThreatModel``; a mapping overrides the default's keys):
            ``eps`` = eps_max, the largest radius (pixel units, > 0; default 0.1),
            ``norm``, ``steps`` (10), ``step_size`` (None: the per-example rule),
            ``random_init`` (False: the public implementations start at x) and
            ``train_mode`` (False: eval mode during the attack, restored).
        eta: radius increment per visit in which the attack fails.
        eps_init: initial radius of every example (the paper starts at 0).
        c: label-smoothing weight per unit radius; ``c * eps_max <= 0.5`` keeps the true
            class the most likely one of y~.
        smoothing: ``"dirichlet"`` (the authors'), ``"uniform"`` or ``"none"``.
        step_size_ratio: PGD step is ``step_size_ratio * e_i / steps`` per example.
        decrease: lower eps_i by ``eta`` when the attack succeeds (else keep it).

    Example:
        >>> cat = CAT(threat=ThreatModel(eps=0.1, steps=7, random_init=False))
        >>> state = cat.init_state(100, "cpu")
        >>> state.eps.shape, cat.eps_max
        (torch.Size([100]), 0.1)
    """

    threat: ThreatModel = ThreatModel(eps=0.1, steps=10, random_init=False)
    eta: float = 0.015
    eps_init: float = 0.0
    c: float = 3.0
    smoothing: Smoothing = "dirichlet"
    step_size_ratio: float = 2.5
    decrease: bool = True

    def __post_init__(self) -> None:
        init_threat(self)
        check_choice(self.smoothing, SMOOTHINGS, "CAT smoothing")
        if not self.eps_max > 0:
            raise InputError(f"eps_max (threat.eps) must be > 0, got {self.eps_max}")
        check_radius(self.eps_init, "eps_init", upper=self.eps_max)
        if not (math.isfinite(self.eta) and self.eta > 0):
            raise InputError(f"eta must be a finite number > 0, got {self.eta}")
        if not (math.isfinite(self.c) and self.c >= 0):
            raise InputError(f"c must be a finite number >= 0, got {self.c}")
        if self.c * self.eps_max > 0.5:
            raise InputError(
                f"c * eps_max = {self.c * self.eps_max:.4g} > 0.5 (eps_max is threat.eps): "
                "the smoothed label could rank another class above the true one; lower c"
            )
        if not (math.isfinite(self.step_size_ratio) and self.step_size_ratio > 0):
            raise InputError(f"step_size_ratio must be > 0, got {self.step_size_ratio}")

    @property
    def eps_max(self) -> float:
        """The largest per-example radius, ``threat.eps`` (pixel units)."""
        return self.threat.eps

    # --- per-example state ---------------------------------------------------------------
    def init_state(self, dataset_size: int, device: torch.device | str | None = None) -> CATState:
        """The radii of a training set of ``dataset_size`` examples, all at ``eps_init``."""
        if not isinstance(dataset_size, int) or dataset_size < 1:
            raise InputError(f"dataset_size must be an int >= 1, got {dataset_size!r}")
        return CATState(eps=torch.full((dataset_size,), float(self.eps_init),
                                       dtype=torch.float32, device=device))

    @staticmethod
    def _num_classes(state: CATState, model: nn.Module, x: torch.Tensor) -> int:
        """K, from one eval-mode forward of one image on the first call (then in the state)."""
        if state.num_classes is None:
            net = unwrap(model)
            with torch.no_grad(), model_mode(net, False):
                state.num_classes = int(net(x[:1]).shape[1])
        return state.num_classes

    # --- the step ------------------------------------------------------------------------
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        if ctx is None or ctx.index is None:
            raise InputError("CAT keeps a radius per example and needs ctx.index (use fit)")
        state = ctx.state
        if not isinstance(state, CATState):
            raise InputError(
                "CAT needs its radii in ctx.state: state = cat.init_state(dataset_size, "
                f"device) (fit does this); got {type(state).__name__}"
            )
        store = state.eps
        idx = ctx.index.to(store.device)
        if idx.shape != y.shape:
            raise InputError(f"ctx.index has shape {tuple(idx.shape)}, labels {tuple(y.shape)}")
        gen = ctx.generator
        t = self.threat
        eps_old = store[idx].to(device=x.device, dtype=x.dtype)
        num_classes = self._num_classes(state, model, x)
        trial = (eps_old + self.eta).clamp(max=self.eps_max)
        if self.smoothing == "none":
            target: torch.Tensor = y
            objective = "ce"
        else:
            target = smoothed_labels(y, eps_old, num_classes=num_classes, c=self.c,
                                     kind=self.smoothing, generator=gen)
            objective = "kl"
        r = t.attack(
            model, x, target, eps=trial, default_step_size=self.step_size_ratio * trial / t.steps,
            objective=objective, generator=gen,
        )
        lowered = (eps_old - self.eta).clamp(min=0.0) if self.decrease else eps_old
        eps_new = torch.where(r.success, lowered, trial).clamp(0.0, self.eps_max)
        store[idx] = eps_new.to(device=store.device, dtype=store.dtype)
        logits = at_least_fp32(model(r.x_adv))  # an fp32 loss also under bf16 autocast
        soft = smoothed_labels(y, eps_new, num_classes=num_classes, c=self.c,
                               kind=self.smoothing, generator=gen).to(logits.dtype)
        loss = -(soft * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
        logs = {
            "adv_acc": batch_accuracy(logits, y),
            "eps_mean": eps_new.detach().mean(),
            "attack_success": r.success.float().mean(),
        }
        return StepOutput(loss, logs)
