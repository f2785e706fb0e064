"""Friendly Adversarial Training (FAT): train on the weakest adversarial data that fools.

Zhang et al. 2020, "Attacks Which Do Not Kill Training Make Adversarial Learning Stronger",
arXiv 2002.11242 (ICML 2020); the authors' code is github.com/zjfheart/Friendly-Adversarial-
Training (``FAT.py``, ``earlystop.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bastion._validate import check_choice
from bastion.attacks.core import clip_to_ball_and_box, perturbation_norm
from bastion.attacks.ddn import DDN_NORMS, ddn_within
from bastion.attacks.minimal import fmn
from bastion.attacks.threat import ThreatModel, init_threat
from bastion.errors import InputError
from bastion.records import StepContext, StepOutput
from bastion.train.standard import batch_accuracy

FATAttack = Literal["pgd-k-tau", "minimal", "ddn"]
FAT_ATTACKS: tuple[str, ...] = ("pgd-k-tau", "minimal", "ddn")

# The authors' dynamic tau over their 120 epochs (``adjust_tau`` in FAT.py, 1-based epoch
# e: tau = 0 for e <= 50, 1 for e <= 90, 2 after), as fractions of training.
PAPER_TAU_SCHEDULE: tuple[tuple[float, int], ...] = ((0.0, 0), (50 / 120, 1), (90 / 120, 2))

# Slack for comparing ``epoch / epochs`` with a fraction written with finite decimals.
_FRACTION_SLACK = 1e-9


@dataclass(frozen=True, kw_only=True)
class FAT:
    """Friendly adversarial training: CE on early-stopped PGD (PGD-K-tau) examples.

    Zhang et al. 2020, "Attacks Which Do Not Kill Training Make Adversarial Learning
    Stronger", arXiv 2002.11242. The outer problem is Madry's, ``min E[CE(f(x~), y)]``, but
    x~ is the *friendly* adversarial example: PGD-K-tau runs at most K steps and stops an
    example ``tau`` steps after it first becomes misclassified, so x~ barely crosses the
    decision boundary instead of going deep into the other class (the seed's "Problems of
    conventional AT (1)"). ``tau = K`` recovers PGD-AT. The early stop is the engine's
    ``pgd(..., early_stop=True, tau=tau)``; like the authors' code, the attack starts from a
    uniform random point of the ball (``FAT.py`` uses ``uniform_randominit``; the 0.001
    Gaussian start belongs to their TRADES variant, ``init_std=0.001`` here) and runs the
    model in eval mode.

    Dynamic tau (the paper's default): ``tau_schedule`` lists ``(fraction, tau)`` pairs;
    at 0-based epoch ``t`` of ``T`` the tau in force is the one of the last pair with
    ``fraction <= t / T``. ``PAPER_TAU_SCHEDULE`` is the authors' 0 / 1 / 2 at 50 / 90 of
    120 epochs. Without a schedule (or without ``ctx``) ``tau`` is used.

    ``attack="minimal"`` is the seed's other idea ("just use an attack which searches for
    the minimal perturbation"): x~ is the Fast Minimum-Norm adversarial example
    (``attacks.minimal.fmn``, ``steps`` iterations) projected onto the eps-ball, i.e. the
    smallest perturbation that fools, capped at ``eps``; a point FMN cannot fool is used
    clean.

    ``attack="ddn"`` is the same idea in L2 with DDN (Rony et al. 2019, "Decoupling
    Direction and Norm for Efficient Gradient-Based L2 Adversarial Attacks and Defenses",
    arXiv 1811.09600; ``attacks.ddn.ddn_within``): ``steps`` DDN iterations starting at
    the radius ``eps`` (a short search moves the radius by at most ``1.05**steps``), and x~
    is the smallest adversarial iterate projected onto the eps-ball, i.e. the minimal
    perturbation that crosses the boundary when it is within ``eps`` and its projection
    onto the eps-sphere otherwise; where DDN found no adversarial iterate, x~ is its last
    iterate projected onto the ball (not the clean point). Only for an L2 ``threat``;
    ``random_init`` and ``step_size`` are not used (DDN starts at ``x``, its step size is
    its own cosine schedule from 1.0 to 0.01). Its random numbers (only for a vanishing
    gradient) come from ``ctx.generator``.

    Not reproduced: the authors also add ``omega * N(0, I)`` (omega = 0.001) to every PGD
    step "for escaping the local minimum"; the engine's steps are noise-free.

    Logs: ``adv_acc`` (accuracy on x~), ``num_steps`` (mean gradient steps per example, the
    paper's "BP count"), ``tau`` and ``adv_norm`` (mean ||x~ - x||).

    Args:
        threat: the attack (``ThreatModel``; a mapping overrides the default's keys):
            radius ``eps`` > 0 in [0, 1] pixel units (default 0.1), ``norm``, ``steps``
            (10: the maximum number of PGD steps K, FMN iterations for ``"minimal"``,
            DDN iterations for ``"ddn"``),
            ``step_size`` (None: ``2.5 * eps / steps``), ``random_init`` (True: uniform in
            the ball, or Gaussian with ``init_std``) and ``train_mode`` (False: eval mode
            during the attack, restored).
        tau: fixed number of steps taken after the first misclassification; only with
            ``tau_schedule=None`` (setting both is an error).
        tau_schedule: ``((fraction, tau), ...)`` with increasing fractions in [0, 1) starting
            at 0; default the paper's dynamic tau; None uses the fixed ``tau``.
        attack: ``"pgd-k-tau"`` (FAT), ``"minimal"`` (FMN capped at ``eps``) or ``"ddn"``
            (DDN's minimal L2 example capped at ``eps``; L2 threats only).
        init_std: Gaussian start with this std instead of the uniform one.
    """

    threat: ThreatModel = ThreatModel(eps=0.1, steps=10)
    tau: int = 0
    tau_schedule: tuple[tuple[float, int], ...] | None = PAPER_TAU_SCHEDULE
    attack: FATAttack = "pgd-k-tau"
    init_std: float | None = None

    def __post_init__(self) -> None:
        check_choice(self.attack, FAT_ATTACKS, "FAT attack")
        init_threat(self)
        if not self.threat.eps > 0:
            raise InputError(f"eps must be > 0, got {self.threat.eps}")
        if self.attack == "ddn" and self.threat.norm not in DDN_NORMS:
            raise InputError(
                f"FAT attack 'ddn' is an L2 attack, got threat norm {self.threat.norm!r}; "
                f"valid norms for 'ddn': {', '.join(DDN_NORMS)} (use attack 'minimal' or "
                "'pgd-k-tau' for linf)"
            )
        if not isinstance(self.tau, int) or self.tau < 0:
            raise InputError(f"tau must be an int >= 0, got {self.tau!r}")
        if self.init_std is not None and not self.init_std > 0:
            raise InputError(f"init_std must be > 0, got {self.init_std}")
        if self.tau_schedule is not None:
            # YAML gives lists; store the schedule as a tuple of (float, int) pairs.
            try:
                sched = tuple((float(f), t) for f, t in self.tau_schedule)
            except (TypeError, ValueError) as e:
                raise InputError(
                    "tau_schedule must be a sequence of (fraction, tau) pairs, got "
                    f"{self.tau_schedule!r}"
                ) from e
            if not sched or sched[0][0] != 0.0:
                raise InputError(f"tau_schedule must start at fraction 0.0, got {sched!r}")
            fracs = [f for f, _ in sched]
            if any(b <= a for a, b in zip(fracs, fracs[1:], strict=False)) or fracs[-1] >= 1:
                raise InputError(
                    f"tau_schedule fractions must increase strictly within [0, 1), got {fracs}"
                )
            if any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for _, t in sched):
                raise InputError(f"tau_schedule taus must be ints >= 0, got {sched!r}")
            if self.tau != 0:
                raise InputError(
                    f"tau={self.tau} would be ignored because tau_schedule is set; pass "
                    "tau_schedule=None for a fixed tau"
                )
            object.__setattr__(self, "tau_schedule", sched)

    def tau_at(self, epoch: int, epochs: int) -> int:
        """The tau in force at 0-based ``epoch`` of a run of ``epochs`` epochs."""
        if epochs < 1 or epoch < 0:
            raise InputError(f"need 0 <= epoch and epochs >= 1, got {epoch}, {epochs}")
        if self.tau_schedule is None:
            return self.tau
        progress = epoch / epochs + _FRACTION_SLACK
        return [t for f, t in self.tau_schedule if f <= progress][-1]

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext | None = None
    ) -> StepOutput:
        gen = ctx.generator if ctx is not None else None
        tau = self.tau_at(ctx.epoch, ctx.epochs) if ctx is not None else self.tau_at(0, 1)
        t = self.threat
        if self.attack == "pgd-k-tau":
            r = t.attack(model, x, y, early_stop=True, tau=tau, init_std=self.init_std,
                         generator=gen)
            x_adv, num_steps = r.x_adv, r.num_steps.double().mean()
        elif self.attack == "ddn":
            x_adv, _ = ddn_within(model, x, y, eps=t.eps, steps=t.steps,
                                  train_mode=t.train_mode, generator=gen)
            num_steps = torch.tensor(float(t.steps), dtype=torch.float64)
        else:
            m = fmn(model, x, y, norm=t.norm, steps=t.steps, train_mode=t.train_mode)
            radius = torch.as_tensor(t.eps, dtype=x.dtype, device=x.device)
            x_adv = clip_to_ball_and_box(x, m.x_adv, radius, t.norm).detach()
            num_steps = torch.tensor(float(t.steps), dtype=torch.float64)
        logits = model(x_adv)
        logs: dict[str, torch.Tensor | float] = {
            "adv_acc": batch_accuracy(logits, y),
            "num_steps": num_steps,
            "adv_norm": perturbation_norm(x_adv - x, t.norm).mean().detach(),
        }
        if self.attack == "pgd-k-tau":
            logs["tau"] = float(tau)
        return StepOutput(F.cross_entropy(logits, y), logs)
