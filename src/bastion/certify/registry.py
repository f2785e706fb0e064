"""Every dataset certifier by name, and how to build one for a base model.

``CERTIFIERS`` maps a name to a certifier class; each class satisfies
``bastion.certify.pipeline.Certifier`` (``device``, ``inputs_per_call``,
``header(example, run)``, ``certify(x, generators) -> Certificate``, ``details(cert, j)``)
and has a classmethod ``small(base_model, num_classes, *, noise=None, **overrides)`` that
builds a cheap instance for tests (Gaussian noise sigma 0.25 unless ``noise``; contiguous
layout; a few hundred to a thousand draws; any field overridable)::

    for name, cls in CERTIFIERS.items():
        certifier = cls.small(model, num_classes=10)       # model: inputs [N, C, H, W] in [0, 1]
        gens = [torch.Generator().manual_seed(i) for i in range(len(x))]
        cert = certifier.certify(x, gens)                  # a bastion.records.Certificate

The entries, built in full for a base model ``model`` with ``k`` classes and a noise
``noise`` from ``bastion.noise`` (``smoothed = SmoothedClassifier(model, noise, k)``):

==========================  ==================================================  ============
name                        construction                                        radius
==========================  ==================================================  ============
``smoothing-cohen``         ``CohenCertifier(smoothed=smoothed, n0=100,         CERTIFY's, in
                            n=100_000, alpha=0.001, two_class=False)``          ``noise.norm``
``smoothing-sequential``    ``SequentialCertifier(smoothed=smoothed,            ``radius`` or
                            radius=0.5, n0=100, n_max=100_000, alpha=0.001)``   0
``smoothing-predict``       ``PredictCertifier(smoothed=smoothed, n=100_000,    always 0
                            alpha=0.001)``
``lipschitz``               ``LipschitzCertifier(model=model,                   the L2
                            num_classes=k)`` (no noise: the Lipschitz margin)   margin radius
``mmcert``                  ``MMCertCertifier(model=model, num_classes=k,       l0 budget
                            keep=(50, 50))`` (no noise: sub-sampling; the       along
                            model reads sub-sampled inputs)                     ``direction``
==========================  ==================================================  ============

Guarantee of every smoothing entry, per input: with probability at least 1 - alpha over its
draws, if it does not abstain, the smoothed classifier ``g(x) = argmax_c P(f(x + eta) = c)``
predicts ``prediction`` at every point within ``radius`` (in ``cert.norm``). Abstaining inputs
have radius 0. The Lipschitz and MMCert entries state their own guarantees (deterministic; and
with probability 1 - alpha over the sub-samples, for l0 budgets per modality). To check a
certificate against an attack, attack the smoothed classifier (e.g. a
Monte Carlo surrogate of it) within the radius and evaluate it with
``certifier.smoothed.predict`` at the attacked points: a non-abstained prediction there
must not differ from the certified one (except with probability about alpha).

``smoothing_certifier`` builds CERTIFY or the sequential test from flat arguments, and
``certify_smoothing`` is the one-call dataset certification with randomized smoothing
(``pipeline.certify_dataset`` over ``smoothing_certifier``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from bastion._torch import unwrap
from bastion._validate import check_images
from bastion.certify.forward import MemoryFormat, Precision
from bastion.certify.lipschitz import LipschitzCertifier
from bastion.certify.mmcert import MMCertCertifier
from bastion.certify.pipeline import Progress, certify_dataset
from bastion.certify.smoothing import SmoothedClassifier, num_classes_of
from bastion.certify.smoothing_certifiers import (
    CohenCertifier,
    PredictCertifier,
    SequentialCertifier,
)
from bastion.errors import InputError
from bastion.noise import Noise
from bastion.records import CertificationRow

CERTIFIERS: dict[str, type[Any]] = {
    "smoothing-cohen": CohenCertifier,
    "smoothing-sequential": SequentialCertifier,
    "smoothing-predict": PredictCertifier,
    "lipschitz": LipschitzCertifier,
    "mmcert": MMCertCertifier,
}
"""Certifier classes by name; see the module docstring for how to build each."""


def smoothing_certifier(
    model: nn.Module,
    noise: Noise,
    *,
    num_classes: int,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    radius: float | None = None,
    two_class: bool = False,
    batch_size: int | None = None,
    memory_format: MemoryFormat = "auto",
    precision: Precision = "fp32",
    n_first: int = 100,
    growth: float = 2.0,
) -> CohenCertifier | SequentialCertifier:
    """CERTIFY (``radius=None``) or the sequential test at ``radius`` for ``model``.

    Args:
        model: base classifier (inputs [N, C, H, W] in [0, 1]), on the device to use.
        noise: ``Gaussian``, ``Laplace`` or ``Uniform`` (``bastion.noise``).
        num_classes: number of classes K (>= 2).
        n0, n, alpha: selection draws, estimation draws (the sequential test's most draws)
            and failure probability per input.
        radius: None for CERTIFY; a radius for the sequential fixed-radius test.
        two_class: the two-class radius (CERTIFY only; ``ValueError`` with ``radius``).
        batch_size: noisy images per forward pass (None: measured).
        memory_format: ``"auto"``, ``"contiguous"`` or ``"channels_last"``.
        precision: ``"fp32"`` or ``"bf16"`` (autocast where supported; in the header).
        n_first, growth: the sequential test's first look and look growth.
    """
    smoothed = SmoothedClassifier(model, noise, num_classes, memory_format=memory_format)
    if radius is None:
        return CohenCertifier(smoothed=smoothed, n0=n0, n=n, alpha=alpha, two_class=two_class,
                              batch_size=batch_size, precision=precision)
    if two_class:
        raise InputError("two_class applies to CERTIFY only; the sequential test (radius) "
                         "uses the one-class bound")
    return SequentialCertifier(smoothed=smoothed, radius=radius, n0=n0, n_max=n,
                               n_first=n_first, growth=growth, alpha=alpha,
                               batch_size=batch_size, precision=precision)


def certify_smoothing(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    noise: Noise,
    *,
    out_path: str | os.PathLike,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int | None = None,
    skip: int = 1,
    max_inputs: int | None = None,
    seed: int = 0,
    radius: float | None = None,
    two_class: bool = False,
    num_classes: int | None = None,
    memory_format: MemoryFormat = "auto",
    precision: Precision = "fp32",
    inputs_per_call: int | None = None,
    n_first: int = 100,
    growth: float = 2.0,
    rank: int | None = None,
    world_size: int | None = None,
    progress: Progress | None = None,
) -> list[CertificationRow]:
    """Certify every ``skip``-th image with randomized smoothing, one JSONL row per input.

    Cohen et al. 2019, arXiv 1902.02918 (CERTIFY per input), or, with ``radius``, the
    sequential fixed-radius test of ``bastion.certify.sequential``; resumable and sharded
    as ``pipeline.certify_dataset`` describes.

    Args:
        model: base classifier (inputs [N, C, H, W] in [0, 1]), on the device to use.
        images: float [N, C, H, W] in [0, 1] (moved to the model's device in groups).
        labels: int64 [N].
        noise: ``Gaussian``, ``Laplace`` or ``Uniform`` (``bastion.noise``).
        out_path: the JSONL file (appended to and resumed).
        num_classes: number of classes (None: read from one forward pass).
        inputs_per_call: inputs certified together; default
            ``max(1, min(64, 4096 // (n0 + n)))``, 64 in sequential mode. Results do not
            depend on it.
        rank, world_size: this process's shard (None: from torch.distributed or torchrun's
            environment).
        progress: ``progress(done, total)`` after each group.
        n0, n, alpha, batch_size, radius, two_class, memory_format, precision, n_first,
            growth: as in ``smoothing_certifier``; skip, max_inputs, seed: as in
            ``pipeline.certify_dataset``.

    Returns:
        The rows, sorted by index (on rank 0 of several: the merged rows).
    """
    if num_classes is None:
        check_images(images, "images")
        p = next(unwrap(model).parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        num_classes = num_classes_of(model, images[:1].to(device))
    certifier = smoothing_certifier(
        model, noise, num_classes=num_classes, n0=n0, n=n, alpha=alpha, radius=radius,
        two_class=two_class, batch_size=batch_size, memory_format=memory_format,
        precision=precision, n_first=n_first, growth=growth,
    )
    return certify_dataset(
        certifier, images, labels, out_path=out_path, skip=skip, max_inputs=max_inputs,
        seed=seed, inputs_per_call=inputs_per_call, rank=rank, world_size=world_size,
        progress=progress,
    )


__all__ = ["CERTIFIERS", "certify_smoothing", "smoothing_certifier"]
