"""Randomized smoothing: Monte Carlo PREDICT and CERTIFY over any base classifier.

Cohen, Rosenfeld and Kolter 2019, "Certified Adversarial Robustness via Randomized
Smoothing", arXiv 1902.02918 (Algorithm "PREDICT" and "CERTIFY", Section 3.2). The smoothed
classifier is ``g(x) = argmax_c P(f(x + eta) = c)`` for noise ``eta`` from
``bastion.certify.noise`` (Gaussian: l2 radii; Laplace and uniform: l1 radii, Yang et al.
2020, arXiv 2002.08118).

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

Speed. The cost is forward passes of the base model. Noise is drawn on the input's device
in blocks, noisy copies of several inputs fill fixed-size chunks, and predictions are
counted with ``torch.bincount``: no per-draw Python work and no host round trips besides
the final counts. The memory layout (NCHW or channels-last) and the chunk size are chosen
by measuring the model once per (model, device, input shape, precision) (``tune``, cached);
both can be given explicitly. ``precision="bf16"`` runs the base model under bf16 autocast
where the hardware supports it; the certificate is then about that reduced-precision base
classifier, and its ``params["precision"]`` says so.

Reproducibility. Each input gets its own ``torch.Generator`` (one per input, or derived
from the one given), and its noise is drawn in blocks of ``NOISE_BLOCK`` draws whatever the
chunk size, so an input's noise does not depend on which other inputs share its batch or on
the tuned chunk size.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion._validate import check_choice, check_images
from bastion.certify.stats import binomial_pvalue, cp_lower, two_class_bounds
from bastion.noise import Gaussian, Noise, Uniform  # noqa: F401 (doctest)
from bastion.records import Certificate

log = logging.getLogger(__name__)

MemoryFormat = Literal["auto", "contiguous", "channels_last"]
MEMORY_FORMATS: tuple[str, ...] = ("auto", "contiguous", "channels_last")
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

NOISE_BLOCK = 1024
"""Draws per generator call for one input: fixed, so that noise is independent of chunking."""

_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
_CPU_BATCHES = (64, 128, 256, 512, 1024)
_ACCEL_BATCHES = (256, 1024, 4096, 16384)
_TUNE_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], tuple[str, int]]] = (
    weakref.WeakKeyDictionary()
)


# --------------------------------------------------------------------------- helpers


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively on ``device`` (CPU: AVX512-BF16 or AMX)."""
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, c, lambda: False)()) for c in checks)
    backend = getattr(torch, device.type, None)
    fn = getattr(backend, "is_bf16_supported", None)
    return bool(fn()) if callable(fn) else False


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """The precision actually used: ``"bf16"`` falls back to ``"fp32"`` (with a warning)
    where the hardware has no native bf16."""
    check_choice(precision, PRECISIONS, "precision")
    if precision == "bf16" and not bf16_supported(device):
        warnings.warn(
            f"bf16 autocast is not supported natively on {device}; using fp32", stacklevel=3
        )
        return "fp32"
    return precision  # type: ignore[return-value]


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


@contextlib.contextmanager
def _layout(model: nn.Module, memory_format: str) -> Iterator[None]:
    """Temporarily store the model's 4-D weights in ``memory_format``; restored afterwards.

    Channels-last convolutions need channels-last weights as well as inputs to be fast.
    """
    fmt = _FORMATS[memory_format]
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.dim() != 4:
                continue
            # ``.to`` (unlike ``.contiguous``) also re-strides ambiguous shapes (a channel
            # dimension of size 1), which is what selects the channels-last kernels.
            moved = t.data.to(memory_format=fmt)
            if moved.stride() != t.data.stride():
                saved.append((t, t.data))
                t.data = moved
    try:
        yield
    finally:
        with torch.no_grad():
            for t, data in saved:
                t.data = data


def _empty(n: int, like: torch.Tensor, memory_format: str) -> torch.Tensor:
    """An uninitialised batch of ``n`` images shaped like ``like[0]`` in the given layout."""
    shape = (n, *like.shape[1:])
    fmt = _FORMATS[memory_format] if len(shape) == 4 else torch.contiguous_format
    return torch.empty(shape, device=like.device, dtype=like.dtype, memory_format=fmt)


def _has_conv(model: nn.Module) -> bool:
    return any(p.dim() == 4 for p in model.parameters())


def _time_forward(
    model: nn.Module, batch: torch.Tensor, precision: str, min_seconds: float
) -> float:
    """Images per second of ``model(batch)`` after one warm-up call (which builds the
    kernels for this shape), timing at least ``min_seconds`` (two calls on accelerators)."""
    dev = batch.device
    least = batch.shape[0] * (1 if dev.type == "cpu" else 2)
    with _autocast(dev, precision):
        model(batch)
        _sync(dev)
        done, t0 = 0, time.perf_counter()
        while True:
            model(batch)
            done += batch.shape[0]
            _sync(dev)
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds and done >= least:
                return done / elapsed


def tune(
    base_model: nn.Module,
    example_input: torch.Tensor,
    *,
    precision: Precision = "fp32",
    batch_sizes: Sequence[int] | None = None,
    memory_formats: Sequence[str] | None = None,
    refresh: bool = False,
    min_seconds: float = 0.05,
) -> tuple[str, int]:
    """Pick the fastest memory layout and chunk size for noisy forward passes, by timing.

    The result is cached per (model, device, input shape, dtype, precision, candidates) in a
    module-level weak dictionary, so the measurement (a second or two on a CPU) runs once.

    Args:
        base_model: the classifier (put in eval mode for the measurement, mode restored).
        example_input: one or more images [B, C, H, W] on the device to tune for.
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
        batch_sizes: candidate chunk sizes; default 64..1024 on a CPU, 256..16384 on an
            accelerator.
        memory_formats: candidates among ``"contiguous"`` and ``"channels_last"``; default
            both (channels-last only for models with convolutions).
        refresh: measure again even if cached.
        min_seconds: timing length per candidate.

    Returns:
        ``(memory_format, batch_size)``, e.g. ``("channels_last", 256)``.
    """
    check_images(example_input, "example_input")
    net = unwrap(base_model)
    dev = example_input.device
    if batch_sizes is None:
        batch_sizes = _CPU_BATCHES if dev.type == "cpu" else _ACCEL_BATCHES
    if memory_formats is None:
        memory_formats = ("contiguous", "channels_last") if _has_conv(net) else ("contiguous",)
    for f in memory_formats:
        check_choice(f, _FORMATS, "memory format")
    if any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    key = (str(dev), tuple(example_input.shape[1:]), example_input.dtype, precision,
           tuple(int(b) for b in batch_sizes), tuple(memory_formats))
    cache = _TUNE_CACHE.setdefault(net, {})
    if not refresh and key in cache:
        return cache[key]
    if len(batch_sizes) == 1 and len(memory_formats) == 1:
        cache[key] = (memory_formats[0], int(batch_sizes[0]))
        return cache[key]
    best: tuple[float, str, int] = (-1.0, memory_formats[0], int(batch_sizes[0]))
    one = example_input[:1]
    with model_mode(net, False):
        for fmt in memory_formats:
            with _layout(net, fmt), torch.inference_mode():
                for bs in batch_sizes:
                    batch = _empty(int(bs), one, fmt)
                    batch.copy_(one.expand_as(batch))
                    try:
                        speed = _time_forward(net, batch, precision, min_seconds)
                    except torch.OutOfMemoryError:
                        break
                    log.debug("tune %s batch %d: %.0f images/s", fmt, bs, speed)
                    if speed > best[0]:
                        best = (speed, fmt, int(bs))
    log.info("tuned noisy forward: %s, batch %d (%.0f images/s)", best[1], best[2], best[0])
    cache[key] = (best[1], best[2])
    return cache[key]


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
            raise ValueError(f"{len(gens)} generators for a batch of {n} inputs")
        return gens
    dev = generator.device if generator is not None else torch.device("cpu")
    seeds = torch.randint(0, 2**63 - 1, (n,), generator=generator, device=dev).tolist()
    return [torch.Generator(device=x.device).manual_seed(int(s)) for s in seeds]


# --------------------------------------------------------------------------- sampling


class _Sampler:
    """Counts the base classifier's predictions on noisy copies of inputs (one session).

    Used inside ``SmoothedClassifier.session``: the model is in eval mode, under
    ``inference_mode``, with its weights in the chosen layout.
    """

    def __init__(
        self, model: nn.Module, noise: Noise, num_classes: int, memory_format: str,
        batch_size: int, precision: str, example: torch.Tensor,
    ) -> None:
        self.model, self.noise, self.k = model, noise, num_classes
        self.fmt_name = memory_format
        self.bs = batch_size
        self.precision = precision
        self.device, self.dtype = example.device, example.dtype
        self.shape = tuple(example.shape[1:])
        self.forward_passes = 0

    def counts(
        self, x: torch.Tensor, generators: Sequence[torch.Generator], num: int
    ) -> torch.Tensor:
        """int64 [B, K]: counts of ``f(x_i + eta)`` over ``num`` draws per input."""
        b = x.shape[0]
        counts = torch.zeros(b * self.k, dtype=torch.int64, device=self.device)
        if b == 0 or num == 0:
            return counts.view(b, self.k)
        cap = min(self.bs, b * num)
        buf = _empty(cap, x, self.fmt_name)
        owner = torch.empty(cap, dtype=torch.int64, device=self.device)
        fill = 0

        def flush(m: int) -> None:
            with _autocast(self.device, self.precision):
                logits = self.model(buf[:m])
            if logits.dim() != 2 or logits.shape[1] != self.k:
                raise ValueError(
                    f"the base model returned logits of shape {tuple(logits.shape)}; "
                    f"expected [N, {self.k}] (num_classes={self.k})"
                )
            keys = owner[:m] * self.k + logits.argmax(dim=1)
            counts.add_(torch.bincount(keys, minlength=b * self.k))
            self.forward_passes += m

        for i in range(b):
            left = num
            while left > 0:
                m = min(NOISE_BLOCK, left)
                noisy = self.noise.sample(
                    (m, *self.shape), generators[i], self.device, self.dtype
                ).add_(x[i])
                off = 0
                while off < m:
                    take = min(cap - fill, m - off)
                    buf[fill : fill + take].copy_(noisy[off : off + take])
                    owner[fill : fill + take] = i
                    fill += take
                    off += take
                    if fill == cap:
                        flush(cap)
                        fill = 0
                left -= m
        if fill:
            flush(fill)
        return counts.view(b, self.k)


# --------------------------------------------------------------------------- classifier


@dataclass(frozen=True, eq=False)
class SmoothedClassifier:
    """The smoothed classifier ``g(x) = argmax_c P(f(x + eta) = c)`` of a base model.

    Cohen et al. 2019, arXiv 1902.02918; noise of other shapes from Yang et al. 2020,
    arXiv 2002.08118 (see ``bastion.certify.noise``).

    Args:
        base_model: classifier taking [N, C, H, W] in [0, 1] (normalisation inside) and
            returning logits [N, num_classes]; on the inputs' device. Run in eval mode
            under ``torch.inference_mode``; its mode and weight layout are restored.
        noise: a ``Gaussian`` (l2), ``Laplace`` (l1) or ``Uniform`` (l1/l-inf) distribution.
        num_classes: number of classes K (>= 2).
        memory_format: ``"auto"`` (measure, see ``tune``), ``"contiguous"`` or
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
            raise TypeError(f"base_model must be an nn.Module, got {type(self.base_model)}")
        if not all(hasattr(self.noise, a) for a in ("sample", "radius", "norm", "name")):
            raise TypeError(f"noise must be a bastion.certify.noise distribution, got {self.noise}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {self.num_classes!r}")
        check_choice(self.memory_format, MEMORY_FORMATS, "memory_format")

    # -- plumbing

    def noise_for(self, x: torch.Tensor) -> Noise:
        """The noise with input-dependent fields filled in (``Uniform(norm="linf").dim``)."""
        if isinstance(self.noise, Uniform) and self.noise.norm == "linf" and self.noise.dim is None:
            return replace(self.noise, dim=int(x[0].numel()))
        return self.noise

    @contextlib.contextmanager
    def session(
        self, x: torch.Tensor, batch_size: int | None = None, precision: str = "fp32"
    ) -> Iterator[_Sampler]:
        """Eval mode, chosen layout, inference mode and autocast for a run of sampling."""
        check_images(x)
        prec = resolve_precision(precision, x.device)
        net = unwrap(self.base_model)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if self.memory_format != "auto" and batch_size is not None:
            fmt, bs = self.memory_format, batch_size
        else:
            fmt, bs = tune(
                net, x[:1], precision=prec,
                batch_sizes=None if batch_size is None else (batch_size,),
                memory_formats=None if self.memory_format == "auto" else (self.memory_format,),
            )
        sampler = _Sampler(net, self.noise_for(x), self.num_classes, fmt, bs, prec, x)
        with model_mode(net, False), _layout(net, fmt), torch.inference_mode():
            yield sampler

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
            batch_size: noisy images per forward pass (None: ``tune``).
            generator: one generator for the batch, or one per input.
            precision: ``"fp32"`` or ``"bf16"`` (autocast, where supported).

        Returns:
            ``Certificate`` with radius 0 (a prediction, no radius), method
            ``"smoothing-<noise>-predict"``; ``extra``: ``nA``, ``nB`` (int64 [B]) and
            ``pvalue`` (float64 [B]).
        """
        _check_counts(n=n, alpha=alpha)
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
            batch_size: noisy images per forward pass (None: ``tune``).
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
        _check_counts(n=n, alpha=alpha, n0=n0)
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
            p_lower, p_upper = two_class_bounds(counts, top, alpha)
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


def _check_counts(*, n: int, alpha: float, n0: int | None = None) -> None:
    for name, v in (("n", n), ("n0", n0)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


__all__ = [
    "MEMORY_FORMATS",
    "NOISE_BLOCK",
    "PRECISIONS",
    "MemoryFormat",
    "Precision",
    "SmoothedClassifier",
    "bf16_supported",
    "generators_for",
    "resolve_precision",
    "tune",
]
