"""Randomized smoothing: Monte Carlo PREDICT and CERTIFY over any base classifier.

Cohen, Rosenfeld and Kolter 2019, "Certified Adversarial Robustness via Randomized
Smoothing", arXiv 1902.02918 (Algorithm "PREDICT" and "CERTIFY", Section 3.2). The smoothed
classifier is ``g(x) = argmax_c P(f(x + eta) = c)`` for noise ``eta`` from ``bastion.noise``
(Gaussian: l2 radii; Laplace and uniform: l1 radii, Yang et al. 2020, arXiv 2002.08118).

CERTIFY draws ``n0`` noisy copies of each input to guess the top class ``c_A``, then ``n``
fresh ones to count ``n_A``; ``p_A lower`` is the one-sided (1 - alpha) Clopper-Pearson
bound. It abstains when ``p_A lower < 1/2``, and otherwise returns ``c_A`` with radius
``noise.radius(p_A lower)`` (``sigma Phi^-1(p_A lower)`` for Gaussian noise). With
``two_class=True`` it uses ``R = sigma/2 (Phi^-1(p_A lower) - Phi^-1(p_B upper))`` with the
bounds of ``stats.two_class_bounds``. Guarantee, per input: with probability at least
1 - alpha over the draws, if CERTIFY does not abstain then ``g`` predicts ``c_A`` at every
point within the radius (in the noise's norm). PREDICT abstains unless the two-sided
binomial test of ``n_A`` against ``n_B`` (top two counts) has p-value <= alpha; a returned
class differs from ``g(x)`` with probability at most alpha.

The counting is ``votes.VoteCounter`` over ``votes.AdditiveNoise``; the speed plumbing
(memory layout and chunk size measured once by ``forward.tune``, bf16 autocast) is in
``forward``. ``precision="bf16"`` runs the base model under bf16 autocast where the hardware
supports it; the certificate is then about that reduced-precision base classifier, and its
``params["precision"]`` says so.

Reproducibility. Each input gets its own ``torch.Generator`` (one per input, or derived
from the one given), and its noise is drawn in blocks of ``votes.NOISE_BLOCK`` draws
whatever the chunk size, so an input's noise does not depend on which other inputs share its
batch or on the tuned chunk size.

``CohenCertifier`` and ``PredictCertifier`` wrap CERTIFY and PREDICT as dataset certifiers
for ``bastion.certify.pipeline`` (see ``bastion.certify.registry``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion._validate import check_choice, check_images
from bastion.certify.forward import (
    MEMORY_FORMATS,
    MemoryFormat,
    Precision,
    bf16_supported,  # noqa: F401 (re-exported for callers of the former location)
    resolve_precision,
    tune,
    weight_layout,
)
from bastion.certify.stats import binomial_pvalue, cp_lower, two_class_bounds
from bastion.certify.votes import AdditiveNoise, VoteCounter
from bastion.errors import InputError, InputTypeError
from bastion.noise import Noise, Uniform
from bastion.records import Certificate


def generators_for(
    x: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None
) -> list[torch.Generator]:
    """One generator per input on ``x``'s device.

    A sequence is used as given (one per input, on ``x``'s device). A single generator (or
    None: torch's global generator) draws one 63-bit seed per input, in order.
    """
    n = x.shape[0]
    if isinstance(generator, Sequence):
        gens = list(generator)
        if len(gens) != n:
            raise InputError(f"{len(gens)} generators for a batch of {n} inputs")
        return gens
    dev = generator.device if generator is not None else torch.device("cpu")
    seeds = torch.randint(0, 2**63 - 1, (n,), generator=generator, device=dev).tolist()
    return [torch.Generator(device=x.device).manual_seed(int(s)) for s in seeds]


def num_classes_of(model: nn.Module, example: torch.Tensor) -> int:
    """The number of classes of ``model``: the width of its logits on ``example`` [1, C, H, W]
    (one forward pass in eval mode; the model's mode is restored)."""
    net = unwrap(model)
    with model_mode(net, False), torch.inference_mode():
        return int(net(example).shape[1])


@dataclass(frozen=True, eq=False)
class SmoothedClassifier:
    """The smoothed classifier ``g(x) = argmax_c P(f(x + eta) = c)`` of a base model.

    Cohen et al. 2019, arXiv 1902.02918; noise of other shapes from Yang et al. 2020,
    arXiv 2002.08118 (see ``bastion.noise``).

    Args:
        base_model: classifier taking [N, C, H, W] in [0, 1] (normalisation inside) and
            returning logits [N, num_classes]; on the inputs' device. Run in eval mode
            under ``torch.inference_mode``; its mode and weight layout are restored.
        noise: a ``Gaussian`` (l2), ``Laplace`` (l1) or ``Uniform`` (l1/l-inf) distribution.
        num_classes: number of classes K (>= 2).
        memory_format: ``"auto"`` (measure, see ``forward.tune``), ``"contiguous"`` or
            ``"channels_last"``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> smooth = SmoothedClassifier(model, Gaussian(sigma=0.25), 3)
        >>> x = torch.rand(2, 1, 2, 2)
        >>> cert = smooth.certify(x, n0=10, n=100, alpha=0.001, batch_size=100,
        ...                       generator=torch.Generator().manual_seed(0))
        >>> cert.radius.shape, cert.norm
        (torch.Size([2]), 'l2')
    """

    base_model: nn.Module
    noise: Noise
    num_classes: int
    memory_format: MemoryFormat = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.base_model, nn.Module):
            raise InputTypeError(f"base_model must be an nn.Module, got {type(self.base_model)}")
        if not all(hasattr(self.noise, a) for a in ("sample", "radius", "norm", "name")):
            raise InputTypeError(f"noise must be a bastion.noise distribution, got {self.noise}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise InputError(f"num_classes must be an int >= 2, got {self.num_classes!r}")
        check_choice(self.memory_format, MEMORY_FORMATS, "memory_format")

    # -- plumbing

    @property
    def device(self) -> torch.device:
        """The device of the base model's parameters (the CPU for a model without any)."""
        p = next(unwrap(self.base_model).parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def noise_for(self, x: torch.Tensor) -> Noise:
        """The noise with input-dependent fields filled in (``Uniform(norm="linf").dim``)."""
        if isinstance(self.noise, Uniform) and self.noise.norm == "linf" and self.noise.dim is None:
            return replace(self.noise, dim=int(x[0].numel()))
        return self.noise

    @contextlib.contextmanager
    def session(
        self, x: torch.Tensor, batch_size: int | None = None, precision: str = "fp32"
    ) -> Iterator[VoteCounter]:
        """Eval mode, chosen layout, inference mode and autocast for a run of vote counting.

        Yields a ``votes.VoteCounter`` over ``AdditiveNoise(self.noise_for(x))``.
        """
        check_images(x)
        prec = resolve_precision(precision, x.device)
        net = unwrap(self.base_model)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if self.memory_format != "auto" and batch_size is not None:
            fmt, bs = self.memory_format, batch_size
        else:
            plan = tune(
                net, x[:1], precision=prec,
                batch_sizes=None if batch_size is None else (batch_size,),
                memory_formats=None if self.memory_format == "auto" else (self.memory_format,),
            )
            fmt, bs = plan.memory_format, plan.batch_size
        counter = VoteCounter(net, AdditiveNoise(self.noise_for(x)), self.num_classes,
                              memory_format=fmt, batch_size=bs, precision=prec)
        with model_mode(net, False), weight_layout(net, fmt), torch.inference_mode():
            yield counter

    def _params(self, x: torch.Tensor, precision: str, **kw: Any) -> dict[str, Any]:
        return {**self.noise_for(x).params(), **kw, "precision": precision}

    # -- algorithms

    def predict(
        self,
        x: torch.Tensor,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        precision: Precision = "fp32",
    ) -> Certificate:
        """Cohen et al.'s PREDICT on a batch: the smoothed prediction or an abstention.

        Counts ``n`` noisy predictions per input; with ``n_A``, ``n_B`` the two largest
        counts, abstains unless the two-sided binomial test of ``n_A`` successes in
        ``n_A + n_B`` trials at p = 1/2 has p-value <= ``alpha``.

        Args:
            x: inputs [B, C, H, W] in [0, 1].
            n: noisy draws per input (Cohen et al.: 100,000).
            alpha: error probability: a returned class differs from ``g(x)`` with
                probability at most ``alpha``.
            batch_size: noisy images per forward pass (None: ``forward.tune``).
            generator: one generator for the batch, or one per input.
            precision: ``"fp32"`` or ``"bf16"`` (autocast, where supported).

        Returns:
            ``Certificate`` with radius 0 (a prediction, no radius), method
            ``"smoothing-<noise>-predict"``; ``extra``: ``nA``, ``nB`` (int64 [B]) and
            ``pvalue`` (float64 [B]).
        """
        check_counts(n=n, alpha=alpha)
        gens = generators_for(x, generator)
        with self.session(x, batch_size, precision) as s:
            counts = s.counts(x, gens, n)
            prec = s.precision
        counts = counts.cpu()
        top2 = counts.topk(2, dim=1)
        n_a, n_b = top2.values[:, 0], top2.values[:, 1]
        pvalue = binomial_pvalue(n_a, n_a + n_b)
        abstained = pvalue > alpha
        return Certificate(
            prediction=top2.indices[:, 0].to(torch.int64),
            radius=torch.zeros(x.shape[0], dtype=torch.float64),
            abstained=abstained,
            norm=self.noise.norm,
            method=f"smoothing-{self.noise.name}-predict",
            params=self._params(x, prec, n=n, alpha=alpha),
            extra={"nA": n_a, "nB": n_b, "pvalue": pvalue},
        )

    def certify(
        self,
        x: torch.Tensor,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        two_class: bool = False,
        precision: Precision = "fp32",
    ) -> Certificate:
        """Cohen et al.'s CERTIFY on a batch of inputs.

        Args:
            x: inputs [B, C, H, W] in [0, 1].
            n0: draws per input to choose ``c_A`` (Cohen: 100).
            n: draws per input to bound ``p_A`` (Cohen: 100,000).
            alpha: failure probability per input (Cohen: 0.001).
            batch_size: noisy images per forward pass (None: ``forward.tune``).
            generator: one generator for the batch, or one per input (see
                ``generators_for``).
            two_class: use ``R = sigma/2 (Phi^-1(p_A) - Phi^-1(p_B))`` with
                Bonferroni-adjusted bounds (``stats.two_class_bounds``).
            precision: ``"fp32"`` or ``"bf16"`` (autocast, where supported; recorded).

        Shape:
            x [B, C, H, W] -> certificate of B examples.

        Returns:
            ``Certificate``: prediction ``c_A``, radius in ``noise.norm`` (0 where
            abstained), method ``"smoothing-<noise>"``, params (noise scale, n0, n,
            alpha, two_class, precision), extra ``nA`` and ``n`` (int64 [B]) and
            ``p_lower`` (float64 [B]), plus ``nB`` and ``p_upper_b`` with ``two_class``.

        Guarantee: for each input, with probability >= 1 - alpha, if it is not abstained
        the smoothed classifier predicts ``prediction`` everywhere within ``radius``.
        """
        check_counts(n=n, alpha=alpha, n0=n0)
        gens = generators_for(x, generator)
        with self.session(x, batch_size, precision) as s:
            counts0 = s.counts(x, gens, n0)
            counts = s.counts(x, gens, n)
            prec = s.precision
        noise = self.noise_for(x)
        top = counts0.argmax(dim=1).cpu()
        counts = counts.cpu()
        n_a = counts.gather(1, top.view(-1, 1)).squeeze(1)
        extra: dict[str, torch.Tensor] = {"nA": n_a, "n": torch.full_like(n_a, n)}
        if two_class:
            bounds = two_class_bounds(counts, top, alpha)
            p_lower, p_upper = bounds.p_lower, bounds.p_upper_b
            abstained = p_lower < p_upper
            radius = noise.radius(p_lower, p_upper)
            runner = counts.scatter(1, top.view(-1, 1), -1).max(dim=1).values
            extra.update(p_lower=p_lower, nB=runner, p_upper_b=p_upper)
        else:
            p_lower = cp_lower(n_a, n, alpha)
            abstained = p_lower < 0.5
            radius = noise.radius(p_lower)
            extra["p_lower"] = p_lower
        radius = torch.where(abstained, torch.zeros_like(radius), radius)
        return Certificate(
            prediction=top.to(torch.int64),
            radius=radius.to(torch.float64),
            abstained=abstained,
            norm=noise.norm,
            method=f"smoothing-{noise.name}",
            params=self._params(x, prec, n0=n0, n=n, alpha=alpha, two_class=two_class),
            extra=extra,
        )


def check_counts(*, n: int, alpha: float, n0: int | None = None) -> None:
    """Raise unless the draw counts are ints >= 1 and ``alpha`` lies in (0, 1)."""
    for name, v in (("n", n), ("n0", n0)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise InputError(f"{name} must be an int >= 1, got {v!r}")
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0 and math.isfinite(alpha)):
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}")


__all__ = [
    "SmoothedClassifier",
    "check_counts",
    "generators_for",
    "num_classes_of",
]
