"""Randomized-smoothing certifiers for the dataset pipeline (``certify.pipeline``).

Each class adapts one smoothing algorithm to the ``Certifier`` protocol of
``bastion.certify.pipeline`` (header params, ``certify(x, generators)``, per-row details):

- ``CohenCertifier``: Cohen et al.'s CERTIFY (arXiv 1902.02918), one- or two-class radius
  (``SmoothedClassifier.certify``);
- ``PredictCertifier``: Cohen et al.'s PREDICT, radius 0 (``SmoothedClassifier.predict``);
- ``SequentialCertifier``: the sequential fixed-radius test (``sequential.certify_radius``).

The algorithms live in ``smoothing.py`` and ``sequential.py``; this file only says how
their certificates become rows, so the row format of every smoothing file is written here.
Each class has ``small(base_model, num_classes)`` for a cheap instance (tests, registry).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bastion._validate import check_radius
from bastion.certify.forward import Precision, resolve_precision
from bastion.certify.sequential import certify_radius, look_schedule
from bastion.certify.smoothing import SmoothedClassifier, check_counts
from bastion.errors import InputError
from bastion.noise import Gaussian, Noise
from bastion.records import Certificate


def check_batch_size(batch_size: int | None) -> None:
    """Raise unless ``batch_size`` is None (measured) or an int >= 1."""
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise InputError(f"batch_size must be an int >= 1 or None (measured), got {batch_size!r}")


def smoothing_header(
    smoothed: SmoothedClassifier, example: torch.Tensor, counts: Mapping[str, Any],
    run: Mapping[str, Any], precision: str, mode: Mapping[str, Any],
) -> dict[str, Any]:
    """The header params of a smoothing certification, in the line order of its files:
    noise, norm, number of classes, the draw counts, the pipeline's ``run`` entries (seed,
    skip, number of images), precision, then the mode's own settings."""
    noise = smoothed.noise_for(example)
    return {**noise.params(), "norm": noise.norm, "num_classes": smoothed.num_classes,
            **counts, **run, "precision": precision, **mode}


def small_smoothed(
    base_model: nn.Module, num_classes: int, noise: Noise | None = None
) -> SmoothedClassifier:
    """The smoothed classifier of the certifiers' ``small`` instances: Gaussian noise
    sigma 0.25 unless ``noise`` is given, contiguous layout (nothing measured)."""
    return SmoothedClassifier(base_model, noise if noise is not None else Gaussian(sigma=0.25),
                              num_classes, memory_format="contiguous")


@dataclass(frozen=True, kw_only=True, eq=False)
class _SmoothingCertifier:
    """What the smoothing certifiers share: the smoothed classifier, its device, and
    ``small`` (a cheap instance for tests: Gaussian noise sigma 0.25 unless ``noise``,
    contiguous layout, the class's ``SMALL`` settings; ``overrides`` replace any field)."""

    smoothed: SmoothedClassifier
    SMALL: ClassVar[dict[str, Any]] = {}

    @classmethod
    def small(cls, base_model: nn.Module, num_classes: int, *, noise: Noise | None = None,
              **overrides: Any) -> Any:
        return cls(smoothed=small_smoothed(base_model, num_classes, noise),
                   **{**cls.SMALL, **overrides})

    @property
    def device(self) -> torch.device:
        return self.smoothed.device


@dataclass(frozen=True, kw_only=True, eq=False)
class CohenCertifier(_SmoothingCertifier):
    """Cohen et al.'s CERTIFY (arXiv 1902.02918) as a dataset certifier.

    A ``bastion.certify.pipeline.Certifier``: ``certify(x, generators)`` runs
    ``SmoothedClassifier.certify`` (one- or two-class radius) with one generator per input.

    Args:
        smoothed: the smoothed classifier (base model, noise, number of classes, layout).
        n0: selection draws per input (>= 1).
        n: estimation draws per input (>= 1).
        alpha: failure probability per input, in (0, 1).
        two_class: the two-class radius (``stats.two_class_bounds``).
        batch_size: noisy images per forward pass (None: measured by ``forward.tune``).
        precision: ``"fp32"`` or ``"bf16"``; resolved at construction for the model's
            device (``forward.resolve_precision``: bf16 falls back to fp32 with a warning).
    """

    SMALL: ClassVar[dict[str, Any]] = {"n0": 32, "n": 1000, "alpha": 0.01, "batch_size": 256}
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    two_class: bool = False
    batch_size: int | None = None
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        check_counts(n=self.n, alpha=self.alpha, n0=self.n0)
        check_batch_size(self.batch_size)
        object.__setattr__(self, "precision", resolve_precision(self.precision, self.device))

    @property
    def inputs_per_call(self) -> int:
        """Inputs certified together: enough to fill forward batches of a few thousand."""
        return max(1, min(64, 4096 // (self.n0 + self.n)))

    def header(self, example: torch.Tensor, run: Mapping[str, Any]) -> dict[str, Any]:
        return smoothing_header(
            self.smoothed, example, {"n0": self.n0, "n": self.n, "alpha": self.alpha}, run,
            self.precision, {"mode": "certify", "two_class": self.two_class},
        )

    def certify(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> Certificate:
        return self.smoothed.certify(
            x, n0=self.n0, n=self.n, alpha=self.alpha, batch_size=self.batch_size,
            generator=list(generators), two_class=self.two_class, precision=self.precision,
        )

    def details(self, cert: Certificate, j: int) -> dict[str, Any]:
        """``{"counts": {"nA", "n"[, "nB"]}, "p_lower"[, "p_upper_b"]}`` of input ``j``."""
        counts = {"nA": int(cert.extra["nA"][j]), "n": int(cert.extra["n"][j])}
        if "nB" in cert.extra:
            counts["nB"] = int(cert.extra["nB"][j])
        out: dict[str, Any] = {"counts": counts, "p_lower": float(cert.extra["p_lower"][j])}
        if "p_upper_b" in cert.extra:
            out["p_upper_b"] = float(cert.extra["p_upper_b"][j])
        return out


@dataclass(frozen=True, kw_only=True, eq=False)
class PredictCertifier(_SmoothingCertifier):
    """Cohen et al.'s PREDICT (arXiv 1902.02918) as a dataset certifier: radius 0.

    Every row is a prediction of the smoothed classifier or an abstention (never a radius);
    certified accuracy at radius 0 is the accuracy of the abstaining smoothed prediction.

    Args:
        smoothed: the smoothed classifier.
        n: draws per input (>= 1).
        alpha: probability that a returned class differs from ``g(x)``, in (0, 1).
        batch_size: noisy images per forward pass (None: measured).
        precision: ``"fp32"`` or ``"bf16"`` (resolved at construction).
    """

    SMALL: ClassVar[dict[str, Any]] = {"n": 1000, "alpha": 0.01, "batch_size": 256}
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int | None = None
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        check_counts(n=self.n, alpha=self.alpha)
        check_batch_size(self.batch_size)
        object.__setattr__(self, "precision", resolve_precision(self.precision, self.device))

    @property
    def inputs_per_call(self) -> int:
        return max(1, min(64, 4096 // self.n))

    def header(self, example: torch.Tensor, run: Mapping[str, Any]) -> dict[str, Any]:
        return smoothing_header(self.smoothed, example, {"n": self.n, "alpha": self.alpha},
                                run, self.precision, {"mode": "predict"})

    def certify(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> Certificate:
        return self.smoothed.predict(x, n=self.n, alpha=self.alpha, batch_size=self.batch_size,
                                     generator=list(generators), precision=self.precision)

    def details(self, cert: Certificate, j: int) -> dict[str, Any]:
        """``{"counts": {"nA", "nB", "n"}, "pvalue"}`` of input ``j``."""
        counts = {"nA": int(cert.extra["nA"][j]), "nB": int(cert.extra["nB"][j]), "n": self.n}
        return {"counts": counts, "pvalue": float(cert.extra["pvalue"][j])}


@dataclass(frozen=True, kw_only=True, eq=False)
class SequentialCertifier(_SmoothingCertifier):
    """The sequential fixed-radius test (``certify_radius``) as a dataset certifier.

    Every row is certified at ``radius`` or abstained (radius 0); the module docstring says
    why it keeps CERTIFY's guarantee (Cohen et al. 2019, arXiv 1902.02918).

    Args:
        smoothed: the smoothed classifier.
        radius: the radius to certify (>= 0, finite), in the noise's norm, [0, 1] pixel units.
        n0: selection draws per input (>= 1).
        n_max: the most estimation draws per input (the last look; ``n`` in the header).
        n_first: estimation draws at the first look (1 <= n_first <= n_max).
        growth: ratio of successive look sizes (> 1).
        alpha: failure probability per input, in (0, 1).
        batch_size: noisy images per forward pass (None: measured).
        precision: ``"fp32"`` or ``"bf16"`` (resolved at construction).
    """

    SMALL: ClassVar[dict[str, Any]] = {"radius": 0.1, "n0": 32, "n_max": 1000, "n_first": 100,
                                       "alpha": 0.01, "batch_size": 256}
    radius: float
    n0: int = 100
    n_max: int = 100_000
    n_first: int = 100
    growth: float = 2.0
    alpha: float = 0.001
    batch_size: int | None = None
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        check_radius(self.radius, "radius")
        if isinstance(self.n0, bool) or not isinstance(self.n0, int) or self.n0 < 1:
            raise InputError(f"n0 must be an int >= 1, got {self.n0!r}")
        if not (isinstance(self.alpha, int | float) and 0.0 < self.alpha < 1.0):
            raise InputError(f"alpha must be in (0, 1), got {self.alpha!r}")
        look_schedule(self.n_first, self.n_max, self.growth, self.alpha)  # validates them
        check_batch_size(self.batch_size)
        object.__setattr__(self, "precision", resolve_precision(self.precision, self.device))

    @property
    def inputs_per_call(self) -> int:
        """Many inputs per call: most stop after a few hundred draws."""
        return 64

    def header(self, example: torch.Tensor, run: Mapping[str, Any]) -> dict[str, Any]:
        return smoothing_header(
            self.smoothed, example, {"n0": self.n0, "n": self.n_max, "alpha": self.alpha},
            run, self.precision,
            {"mode": "sequential", "radius": float(self.radius), "n_first": self.n_first,
             "growth": float(self.growth)},
        )

    def certify(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> Certificate:
        return certify_radius(
            self.smoothed, x, self.radius, n0=self.n0, n_max=self.n_max, n_first=self.n_first,
            growth=self.growth, alpha=self.alpha, batch_size=self.batch_size,
            generator=list(generators), precision=self.precision,
        )

    def details(self, cert: Certificate, j: int) -> dict[str, Any]:
        """``{"counts": {"nA", "n", "looks"}, "p_lower"}`` of input ``j``."""
        counts = {"nA": int(cert.extra["nA"][j]), "n": int(cert.extra["n"][j]),
                  "looks": int(cert.extra["looks"][j])}
        return {"counts": counts, "p_lower": float(cert.extra["p_lower"][j])}


__all__ = [
    "CohenCertifier",
    "PredictCertifier",
    "SequentialCertifier",
    "check_batch_size",
    "small_smoothed",
    "smoothing_header",
]
