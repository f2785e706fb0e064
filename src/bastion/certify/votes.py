"""Monte Carlo vote counting: the base classifier's predictions on randomised copies.

Randomized smoothing certifies ``g(x) = argmax_c P(f(T(x)) = c)`` for a random
transformation ``T`` of the input: additive noise ``T(x) = x + eta`` (Cohen et al. 2019,
arXiv 1902.02918; Yang et al. 2020, arXiv 2002.08118), or a random sub-sample of the input's
elements (ablation, MMCert). Every such certifier estimates ``P(f(T(x)) = c)`` from counts
of ``f`` over many draws of ``T(x)``. This module holds that counting, split from the
randomisation it counts over:

- ``Randomization``: a protocol, ``draw(x, m, generator)`` -> ``m`` randomised copies of one
  input, and ``params()`` (JSON-safe, for certificate headers);
- ``AdditiveNoise(noise)``: ``x + eta`` for a ``bastion.noise`` distribution;
- ``VoteCounter``: fills fixed-size forward batches with copies of several inputs and counts
  predictions with ``torch.bincount``: no per-draw Python work and no host round trip
  besides the final counts.

Reproducibility. Each input has its own ``torch.Generator``, and its copies are requested
in blocks of ``NOISE_BLOCK`` draws (the last block of a request shorter) whatever the
forward batch size, so an input's copies depend only on its generator and on the numbers of
draws requested, never on which inputs share a forward batch or on the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from bastion.certify.forward import autocast, empty_batch
from bastion.errors import InputError
from bastion.noise import Noise

NOISE_BLOCK = 1024
"""Draws per ``Randomization.draw`` call for one input: fixed, so that the copies an input
gets do not depend on the forward batch size."""


@runtime_checkable
class Randomization(Protocol):
    """A random transformation ``T`` of one input, drawn ``m`` times.

    ``draw(x, m, generator)`` takes one input ``x`` of shape [C, H, W] (float, on its
    device) and returns ``m`` randomised copies, float [m, C', H, W] on ``x``'s device and
    dtype (``C' = C`` for noise; a sub-sample appends keep-mask channels), drawn from
    ``generator`` only (a ``torch.Generator`` on ``x``'s device).
    ``VoteCounter`` calls it with ``m <= NOISE_BLOCK`` and successive calls continue the
    generator's stream. ``params()`` is the JSON-safe description written in certificate
    headers (e.g. ``{"noise": "gaussian", "sigma": 0.25}``).
    """

    def draw(self, x: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor: ...

    def params(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class AdditiveNoise:
    """``T(x) = x + eta`` with ``eta`` from a ``bastion.noise`` distribution.

    Draws ``noise.sample((m, *x.shape), generator, x.device, x.dtype).add_(x)``: the noise
    of randomized smoothing (Cohen et al. 2019, arXiv 1902.02918). Copies may leave [0, 1];
    the base classifier sees them unclipped, as in Cohen et al.

    Args:
        noise: ``Gaussian``, ``Laplace`` or ``Uniform`` (with its input-dependent fields,
            e.g. ``Uniform(norm="linf").dim``, filled in).
    """

    noise: Noise

    def draw(self, x: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
        """float [m, C, H, W]: ``m`` noisy copies of ``x`` [C, H, W]."""
        return self.noise.sample((m, *x.shape), generator, x.device, x.dtype).add_(x)

    def params(self) -> dict[str, Any]:
        return self.noise.params()


class VoteCounter:
    """Counts the base classifier's predictions on randomised copies of inputs.

    Meant to run inside ``SmoothedClassifier.session`` (or an equivalent context): the model
    in eval mode, under ``torch.inference_mode``, with its weights in ``memory_format``.

    Args:
        model: base classifier, inputs [N, C, H, W] -> logits [N, num_classes].
        randomization: the ``Randomization`` to count over.
        num_classes: K, the number of classes.
        memory_format: layout of the forward batches (``"contiguous"`` or
            ``"channels_last"``).
        batch_size: randomised copies per forward pass (of one or several inputs).
        precision: ``"fp32"`` or ``"bf16"`` (autocast around each forward pass).

    Attributes:
        forward_passes: images run through the model so far.
    """

    def __init__(
        self, model: nn.Module, randomization: Randomization, num_classes: int, *,
        memory_format: str, batch_size: int, precision: str,
    ) -> None:
        self.model = model
        self.randomization = randomization
        self.num_classes = num_classes
        self.memory_format = memory_format
        self.batch_size = batch_size
        self.precision = precision
        self.forward_passes = 0

    def counts(
        self, x: torch.Tensor, generators: Sequence[torch.Generator], num: int
    ) -> torch.Tensor:
        """int64 [B, K] on ``x``'s device: counts of ``f(T(x_i))`` over ``num`` draws each.

        Args:
            x: inputs [B, C, H, W].
            generators: one generator per input (its stream continues across calls).
            num: draws per input (>= 0).
        """
        b, k = x.shape[0], self.num_classes
        device = x.device
        counts = torch.zeros(b * k, dtype=torch.int64, device=device)
        if b == 0 or num == 0:
            return counts.view(b, k)
        cap = min(self.batch_size, b * num)
        buf: torch.Tensor | None = None  # shaped like the copies (a sub-sample adds channels)
        owner = torch.empty(cap, dtype=torch.int64, device=device)
        fill = 0

        def flush(m: int) -> None:
            assert buf is not None
            with autocast(device, self.precision):
                logits = self.model(buf[:m])
            if logits.dim() != 2 or logits.shape[1] != k:
                raise InputError(
                    f"the base model returned logits of shape {tuple(logits.shape)}; "
                    f"expected [N, {k}] (num_classes={k})"
                )
            keys = owner[:m] * k + logits.argmax(dim=1)
            counts.add_(torch.bincount(keys, minlength=b * k))
            self.forward_passes += m

        for i in range(b):
            left = num
            while left > 0:
                m = min(NOISE_BLOCK, left)
                copies = self.randomization.draw(x[i], m, generators[i])
                if buf is None:
                    buf = empty_batch(cap, copies, self.memory_format)
                off = 0
                while off < m:
                    take = min(cap - fill, m - off)
                    buf[fill : fill + take].copy_(copies[off : off + take])
                    owner[fill : fill + take] = i
                    fill += take
                    off += take
                    if fill == cap:
                        flush(cap)
                        fill = 0
                left -= m
        if fill:
            flush(fill)
        return counts.view(b, k)


__all__ = ["NOISE_BLOCK", "AdditiveNoise", "Randomization", "VoteCounter"]
