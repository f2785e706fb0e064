"""Attacks that see through pre-processing defenses: BPDA, EOT and the judgement over draws.

A pre-processing defense (``bastion.preprocess``) declares whether it is ``randomized`` and
whether it is ``differentiable``; this file turns the declarations into the adaptive attack
that its authors' critics use:

- **BPDA**, Backward Pass Differentiable Approximation (Athalye, Carlini and Wagner 2018,
  "Obfuscated Gradients Give a False Sense of Security", arXiv 1802.00420, Sec. 4.1): the
  forward pass runs the defense ``pre``, the backward pass runs a differentiable stand-in
  ``g = pre.bpda_standin()`` (the identity by default). ``BPDA(defended)`` is that model.
- **EOT**, Expectation over Transformation (Athalye, Engstrom, Ilyas and Kwok 2018,
  "Synthesizing Robust Adversarial Examples", arXiv 1707.07397): against a randomized
  defense the attack ascends ``E_t[grad_x L(f(t(x)), y)]``, estimated by the mean of the
  gradients of ``k`` independent draws (``expected_objective``). It is *not* the gradient
  of the loss of averaged logits, which weights the draws differently. The one PGD engine
  (``attacks.pgd.pgd``) takes it as its ``eot_samples`` option; nothing else of PGD
  changes (ball, [0, 1] box, ``keep_best``).
- **Judgement over draws**: a stochastic defense can be lucky once. AutoAttack decides
  from one forward pass (fra31/auto-attack issues #15 and #56, PR #105), so a point the
  attack leaves robust is re-classified over several fresh draws and counts as robust only
  if every draw is correct (``judge_over_draws``; ``AttackSpec.draws``).

BPDA and EOT compose: for a defense both randomized and non-differentiable (TV minimisation
over a random pixel mask) each EOT draw is one BPDA pass with a fresh draw of the defense.
``adaptive_attack_for`` and ``default_draws`` pick the attack and the judgement from the
declarations.

Randomness. A randomized defense draws from torch's global RNG unless it exposes a
``generator`` attribute (a ``torch.Generator`` or None for the global RNG). Where it does,
``defense_draws_from`` hands it the attack's generator for the attack's duration (the PGD
engine does so with its ``generator``), so an attack's draws of the defense are seeded
like its random start. The evaluation (``evaluate_attacks``) seeds the global RNG per
batch, so defenses without the attribute are reproducible there too.

Draws per image: ``expected_objective`` runs ``k`` separate forward passes, so each draw
is a fresh draw even for a defense that draws once per batch (random resize/pad picks one
size per call).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from bastion._validate import check_choice, check_int
from bastion.errors import InputError, InputTypeError
from bastion.preprocess import Defended, Preprocessor

DEFAULT_DRAWS = 10
"""Judging draws of a randomized defense (``default_draws``)."""

ADAPTIVE_BASES: tuple[str, ...] = ("pgd", "autoattack")


class BPDA(nn.Module):
    """A ``Defended`` model whose forward runs the defense and whose backward its stand-in.

    Athalye, Carlini and Wagner 2018, "Obfuscated Gradients Give a False Sense of
    Security", arXiv 1802.00420, Sec. 4.1. With ``pre`` the defense, ``g`` its
    ``bpda_standin()`` and ``f`` the classifier, the output is ``f(u)`` with

        u = pre(x) + (g(x) - g(x).detach())

    whose value is exactly ``pre(x)`` (``g(x) - g(x).detach()`` is exactly 0 for finite
    values; the textbook form ``g(x) + (pre(x) - g(x)).detach()`` rounds in float32) and
    whose Jacobian in ``x`` is that of ``g``. So the input gradient is
    ``J_g(x)^T grad f(pre(x))``: the classifier's gradient at the defended point, carried
    back through the stand-in. ``pre`` runs without autograd (its graph is not used).

    A randomized defense draws afresh in every forward pass, so BPDA inside EOT
    (``expected_objective``) averages BPDA gradients over draws.

    Args:
        model: the defended classifier, a ``bastion.preprocess.Defended``.

    Shape: input ``[N, C, H, W]`` in [0, 1]; output logits ``[N, K]``.

    Raises:
        InputError: ``model`` is not a ``Defended``, or the stand-in changes the shape.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, Defended):
            raise InputError(
                f"BPDA needs a pre-processed model (bastion.preprocess.Defended), got "
                f"{type(model).__name__}; build it as Defended(preprocessor, classifier)"
            )
        self.defended = model
        self.standin = model.preprocessor.bpda_standin()
        if not isinstance(self.standin, nn.Module):
            raise InputTypeError(
                f"{type(model.preprocessor).__name__}.bpda_standin() must return an "
                f"nn.Module, got {type(self.standin).__name__}"
            )

    @property
    def preprocessor(self) -> Preprocessor:
        """The defense whose forward pass runs."""
        return self.defended.preprocessor

    @property
    def classifier(self) -> nn.Module:
        """The classifier behind the defense."""
        return self.defended.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.preprocessor(x)
        g = self.standin(x)
        if g.shape != z.shape:
            raise InputError(
                f"the BPDA stand-in of {type(self.preprocessor).__name__} returns shape "
                f"{tuple(g.shape)} but the defense {tuple(z.shape)}; they must agree"
            )
        return self.classifier(z + (g - g.detach()))


def _defense_of(model: nn.Module) -> Preprocessor | None:
    """The defense in front of ``model`` (a ``Defended`` or a ``BPDA`` of one), else None."""
    if isinstance(model, BPDA):
        return model.preprocessor
    if isinstance(model, Defended):
        return model.preprocessor
    return None


def require_defended(model: nn.Module, attack: str) -> Defended:
    """``model`` itself if it is a ``Defended``; else an ``InputError`` naming ``attack``."""
    if isinstance(model, Defended):
        return model
    raise InputError(
        f"attack {attack!r} needs a pre-processed model (bastion.preprocess.Defended, "
        f"i.e. Defended(preprocessor, classifier)), got {type(model).__name__}; attack a "
        "plain classifier with 'pgd' or 'autoattack'"
    )


def needs_bpda(model: nn.Module) -> bool:
    """Whether ``model`` is a ``Defended`` whose defense declares itself non-differentiable."""
    return isinstance(model, Defended) and not model.preprocessor.differentiable


def through_bpda_if_needed(model: nn.Module) -> nn.Module:
    """``BPDA(model)`` for a non-differentiable ``Defended`` model, else ``model`` itself."""
    return BPDA(model) if needs_bpda(model) else model


@contextlib.contextmanager
def defense_draws_from(model: nn.Module, generator: torch.Generator | None) -> Iterator[None]:
    """Inside, the defense of ``model`` draws from ``generator`` where it allows.

    A defense allows it by exposing a ``generator`` attribute (``torch.Generator`` or None
    for torch's global RNG). The previous value is restored afterwards. Nothing changes
    when ``generator`` is None, ``model`` has no defense, or the defense has no such
    attribute (it then draws from the global RNG).
    """
    pre = _defense_of(model)
    if generator is None or pre is None or not hasattr(pre, "generator"):
        yield
        return
    before = pre.generator
    pre.generator = generator
    try:
        yield
    finally:
        pre.generator = before


@dataclass(frozen=True)
class DrawEvaluation:
    """The objective of a batch over ``k`` draws of a (possibly randomized) model.

    Args:
        loss: float [N], the mean over the draws of each draw's per-example objective.
        logits: float [k, N, K], each draw's logits (detached).
        grad: float [N, C, H, W], the mean over the draws of each draw's input gradient of
            the summed objective (the EOT estimate of the expected gradient); None when no
            gradient was asked for.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    grad: torch.Tensor | None


def expected_objective(
    model: nn.Module,
    x: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    *,
    samples: int = 1,
    grad: bool = True,
) -> DrawEvaluation:
    """EOT: the objective of ``x`` and its input gradient, averaged over ``samples`` draws.

    Athalye, Engstrom, Ilyas and Kwok 2018, "Synthesizing Robust Adversarial Examples",
    arXiv 1707.07397, eq. (2)-(3): the attack ascends ``E_t[L(f(t(x)))]``, whose gradient
    is ``E_t[grad_x L(f(t(x)))]``; with ``k = samples`` independent draws t_1..t_k the
    estimate is ``(1/k) sum_j grad_x L(f(t_j(x)))``, unbiased with variance ``Var / k``.
    Each draw is a separate forward and backward pass of ``model`` (memory of one draw at
    a time; a defense drawing once per call still gets ``k`` draws). With ``samples=1``
    this is the plain gradient, bit for bit. Where the loss has no autograd path to ``x``
    (a defense that detaches its output, e.g. one computed outside torch) the gradient is
    0: that is the obfuscated gradient an attack meets, which ``BPDA`` replaces.

    Args:
        model: classifier taking [N, C, H, W] and returning logits [N, K]; a randomized
            one draws afresh in every call.
        x: the batch [N, C, H, W] (not modified; its graph is not used).
        objective: ``logits [N, K] -> loss [N]``, per example.
        samples: k >= 1, the number of draws.
        grad: compute the gradient (else only the losses and logits, without autograd).

    Returns:
        ``DrawEvaluation`` (mean loss [N], logits [k, N, K], mean gradient or None).
    """
    check_int(samples, "eot_samples", low=1)
    x = x.detach()
    total_grad = torch.zeros_like(x) if grad else None
    total_loss: torch.Tensor | None = None
    all_logits = []
    for _ in range(samples):
        if grad:
            xa = x.clone().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xa)
                loss = objective(logits)
            if loss.requires_grad:
                (g,) = torch.autograd.grad(loss.sum(), xa, allow_unused=True)
            else:
                g = None
            if g is None:  # no graph from x to the loss (a detached defense): no signal
                g = torch.zeros_like(x)
            total_grad = g if samples == 1 else total_grad + g  # type: ignore[operator]
        else:
            with torch.no_grad():
                logits = model(x)
                loss = objective(logits)
        loss = loss.detach()
        total_loss = loss if total_loss is None else total_loss + loss
        all_logits.append(logits.detach())
    assert total_loss is not None
    if samples > 1:
        total_loss = total_loss / samples
        if total_grad is not None:
            total_grad = total_grad / samples
    return DrawEvaluation(loss=total_loss, logits=torch.stack(all_logits), grad=total_grad)


def judge_over_draws(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int, *,
    first: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classify ``x`` over ``draws`` forward passes; a point is correct only if all are.

    Args:
        model: the (possibly randomized) classifier, in the mode it should be judged in.
        x: images [N, C, H, W]; y: int64 labels [N].
        draws: the number of passes d >= 1 in all.
        first: predictions [N] of a pass already made (it counts as the first of the
            ``draws``), or None to make every pass here.

    Returns:
        ``(pred, correct)``: int64 [N] each. ``pred`` is the prediction of the first
        incorrect pass where there is one, else the (correct) label, so ``pred == y`` iff
        every pass was correct; ``correct`` counts the correct passes (0..d).
    """
    check_int(draws, "draws", low=1)
    preds = [] if first is None else [first]
    with torch.no_grad():
        while len(preds) < draws:
            preds.append(model(x).argmax(1))
    stacked = torch.stack(preds)  # [d, N]
    right = stacked == y
    correct = right.sum(0)
    wrong_first = (~right).int().argmax(0)  # the first wrong pass (0 where none is)
    pred = stacked.gather(0, wrong_first.unsqueeze(0)).squeeze(0)
    return pred, correct.long()


def adaptive_attack_for(model: nn.Module, base: str = "pgd") -> str:
    """The attack name (``AttackSpec.name``) that sees through ``model``'s defense.

    From the defense's declarations (``bastion.preprocess.Preprocessor``):

    ===============  =====================================  ====================
    base             randomized                             otherwise
    ===============  =====================================  ====================
    ``"pgd"``        ``"eot-pgd"`` (BPDA inside if the      ``"bpda-pgd"`` if
                     defense is non-differentiable)         non-differentiable,
                                                            else ``"pgd"``
    ``"autoattack"`` ``"autoattack-rand"``                  ``"autoattack"``
    ===============  =====================================  ====================

    Both AutoAttack names (like every torchattacks-based attack) run through BPDA when the
    defense is non-differentiable (``AttackSpec.run``). A model that is not a ``Defended``
    gets ``base`` itself.

    Raises:
        InputError: ``base`` is not ``"pgd"`` or ``"autoattack"``.
    """
    check_choice(base, ADAPTIVE_BASES, "adaptive attack base")
    pre = _defense_of(model)
    if base == "autoattack":
        return "autoattack-rand" if pre is not None and pre.randomized else "autoattack"
    if pre is None:
        return "pgd"
    if pre.randomized:
        return "eot-pgd"
    return "pgd" if pre.differentiable else "bpda-pgd"


def default_draws(model: nn.Module) -> int:
    """Judging draws for ``model``: ``DEFAULT_DRAWS`` (10) behind a randomized defense, else 1."""
    pre = _defense_of(model)
    return DEFAULT_DRAWS if pre is not None and pre.randomized else 1


__all__ = ["ADAPTIVE_BASES", "BPDA", "DEFAULT_DRAWS", "DrawEvaluation", "adaptive_attack_for",
           "default_draws", "defense_draws_from", "expected_objective", "judge_over_draws",
           "needs_bpda", "require_defended", "through_bpda_if_needed"]
