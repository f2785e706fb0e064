"""Fast forward passes of a base classifier on many randomised copies of an input.

The cost of Monte Carlo certification (randomized smoothing, Cohen et al. 2019, arXiv
1902.02918; any certifier that counts votes, ``bastion.certify.votes``) is forward passes of
the base model. This module holds the speed plumbing, none of which changes what is
computed beyond float rounding:

- ``tune``: measures the fastest memory layout (NCHW or channels-last) and chunk size (images
  per forward pass) once per (model, device, input shape, dtype, precision, candidates) and
  caches the answer (a ``ForwardPlan``) in a module-level weak dictionary;
- ``weight_layout``: temporarily stores the model's 4-D weights in a layout (channels-last
  convolutions need channels-last weights as well as inputs to be fast);
- ``resolve_precision`` / ``autocast``: ``"bf16"`` runs the base model under bf16 autocast
  where the hardware supports it natively (``bf16_supported``) and falls back to ``"fp32"``
  with a warning elsewhere; a certificate is then about that reduced-precision classifier,
  which is why the precision actually used is recorded in its parameters;
- ``empty_batch``: an uninitialised input batch in a layout.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion._validate import check_choice, check_images
from bastion.errors import InputError

log = logging.getLogger(__name__)

MemoryFormat = Literal["auto", "contiguous", "channels_last"]
MEMORY_FORMATS: tuple[str, ...] = ("auto", "contiguous", "channels_last")
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
_CPU_BATCHES = (64, 128, 256, 512, 1024)
_ACCEL_BATCHES = (256, 1024, 4096, 16384)


@dataclass(frozen=True, kw_only=True)
class ForwardPlan:
    """How to run the base model's forward passes: weight/input layout and chunk size.

    Args:
        memory_format: ``"contiguous"`` (NCHW) or ``"channels_last"`` (NHWC strides).
        batch_size: images per forward pass (>= 1).
    """

    memory_format: Literal["contiguous", "channels_last"]
    batch_size: int

    def __post_init__(self) -> None:
        check_choice(self.memory_format, _FORMATS, "memory format")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or (
            self.batch_size < 1
        ):
            raise InputError(f"batch_size must be an int >= 1, got {self.batch_size!r}")


_TUNE_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], ForwardPlan]] = (
    weakref.WeakKeyDictionary()
)


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


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` for ``precision="bf16"``, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


@contextlib.contextmanager
def weight_layout(model: nn.Module, memory_format: str) -> Iterator[None]:
    """Temporarily store the model's 4-D weights and buffers in ``memory_format``.

    The original storage is restored afterwards (also on error). Channels-last
    convolutions need channels-last weights as well as inputs to be fast.
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


def empty_batch(n: int, like: torch.Tensor, memory_format: str) -> torch.Tensor:
    """An uninitialised batch of ``n`` inputs shaped like ``like[0]``, on its device and
    dtype, in ``memory_format`` (4-D batches only; others are contiguous)."""
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
    with autocast(dev, precision):
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
) -> ForwardPlan:
    """Pick the fastest memory layout and chunk size for randomised forward passes, by timing.

    The result is cached per (model, device, input shape, dtype, precision, candidates) in a
    module-level weak dictionary, so the measurement (a second or two on a CPU) runs once.
    With a single candidate of each, nothing is measured.

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
        The fastest ``ForwardPlan``, e.g. ``ForwardPlan(memory_format="channels_last",
        batch_size=256)``.
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
        raise InputError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    key = (str(dev), tuple(example_input.shape[1:]), example_input.dtype, precision,
           tuple(int(b) for b in batch_sizes), tuple(memory_formats))
    cache = _TUNE_CACHE.setdefault(net, {})
    if not refresh and key in cache:
        return cache[key]
    if len(batch_sizes) == 1 and len(memory_formats) == 1:
        cache[key] = ForwardPlan(memory_format=memory_formats[0],  # type: ignore[arg-type]
                                 batch_size=int(batch_sizes[0]))
        return cache[key]
    best_speed, best_fmt, best_bs = 0.0, memory_formats[0], int(batch_sizes[0])
    one = example_input[:1]
    with model_mode(net, False):
        for fmt in memory_formats:
            with weight_layout(net, fmt), torch.inference_mode():
                for bs in batch_sizes:
                    batch = empty_batch(int(bs), one, fmt)
                    batch.copy_(one.expand_as(batch))
                    try:
                        speed = _time_forward(net, batch, precision, min_seconds)
                    except torch.OutOfMemoryError:
                        break
                    log.debug("tune %s batch %d: %.0f images/s", fmt, bs, speed)
                    if speed > best_speed:
                        best_speed, best_fmt, best_bs = speed, fmt, int(bs)
    log.info("tuned noisy forward: %s, batch %d (%.0f images/s)", best_fmt, best_bs, best_speed)
    cache[key] = ForwardPlan(memory_format=best_fmt, batch_size=best_bs)  # type: ignore[arg-type]
    return cache[key]


__all__ = [
    "MEMORY_FORMATS",
    "PRECISIONS",
    "ForwardPlan",
    "MemoryFormat",
    "Precision",
    "autocast",
    "bf16_supported",
    "empty_batch",
    "resolve_precision",
    "tune",
    "weight_layout",
]
