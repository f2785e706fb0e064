"""The settings of a randomized-smoothing certification of a run (``bastion certify``).

``CertifyConfig`` is a keyword-only frozen dataclass validated on construction: a bad value
raises ``ValueError`` naming the field and its valid range before anything is loaded or
written. Each field carries its command-line help in ``metadata["help"]``, from which
``bastion.cli`` builds the options of ``bastion certify`` (``--n0``, ``--n-inputs``,
``--two-class``, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from bastion._validate import check_choice
from bastion.certify.forward import PRECISIONS, Precision
from bastion.errors import InputError
from bastion.noise import NOISES, NoiseName

Checkpoint = Literal["last", "best"]
CHECKPOINTS: tuple[str, ...] = ("last", "best")
SEED_LIMIT = 2**32
"""Run seeds are in [0, 2^32): ``pipeline.input_seed`` uses the seed's low 32 bits."""


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


def _int_at_least(value: Any, low: int, name: str, *, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        also = " or None" if none_ok else ""
        raise InputError(f"{name} must be an int >= {low}{also}, got {value!r}")


def _num(value: float) -> str:
    """``value`` for a file name: ``:g`` when that is exact, else the round-trip repr."""
    short = format(float(value), "g")
    return short if float(short) == float(value) else repr(float(value))


def _positive_finite(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value > 0
    ):
        raise InputError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class CertifyConfig:
    """How to certify a trained run's test set with randomized smoothing.

    Cohen et al. 2019, arXiv 1902.02918 (CERTIFY: ``n0`` selection draws, ``n`` estimation
    draws, failure probability ``alpha`` per input), or, with ``radius``, the sequential
    fixed-radius test of ``bastion.certify.sequential``. Radii and ``sigma`` are in [0, 1]
    pixel units. See each field's ``metadata["help"]``.
    """

    noise: NoiseName = field(default="gaussian", metadata=_help(
        "noise distribution: gaussian (l2 radii), laplace or uniform (l1)"))
    sigma: float = field(default=0.25, metadata=_help(
        "noise standard deviation per pixel ([0, 1] units), > 0"))
    n0: int = field(default=100, metadata=_help("draws that choose the top class, >= 1"))
    n: int = field(default=100_000, metadata=_help(
        "draws that bound its probability (sequential mode: the most draws), >= 1"))
    alpha: float = field(default=0.001, metadata=_help(
        "failure probability per input, in (0, 1)"))
    n_inputs: int | None = field(default=500, metadata=_help(
        "test images to certify (at most), >= 1"))
    skip: int = field(default=20, metadata=_help("certify every skip-th test image, >= 1"))
    radius: float | None = field(default=None, metadata=_help(
        "certify only this radius (> 0), by a sequential test that stops early"))
    two_class: bool = field(default=False, metadata=_help(
        "two-class radius sigma/2 (Phi^-1(pA) - Phi^-1(pB)); not with --radius"))
    batch_size: int | None = field(default=None, metadata=_help(
        "noisy images per forward pass, >= 1; None: measured by a quick timing"))
    precision: Precision = field(default="fp32", metadata=_help(
        "bf16 autocast where the hardware supports it (recorded)"))
    checkpoint: Checkpoint = field(default="last", metadata=_help(
        "end-of-training or best checkpoint"))
    seed: int = field(default=0, metadata=_help(
        "seed of the noise (per input), in [0, 2^32)"))
    device: str = field(default="auto", metadata=_help(
        "'auto', 'cpu' or an accelerator name"))

    def __post_init__(self) -> None:
        check_choice(self.noise, NOISES, "noise")
        _positive_finite(self.sigma, "sigma")
        _int_at_least(self.n0, 1, "n0")
        _int_at_least(self.n, 1, "n")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not (
            0.0 < self.alpha < 1.0
        ):
            raise InputError(f"alpha must be a number in (0, 1), got {self.alpha!r}")
        _int_at_least(self.n_inputs, 1, "n_inputs", none_ok=True)
        _int_at_least(self.skip, 1, "skip")
        if self.radius is not None:
            _positive_finite(self.radius, "radius")
        if not isinstance(self.two_class, bool):
            raise InputError(f"two_class must be a bool, got {self.two_class!r}")
        if self.two_class and self.radius is not None:
            raise InputError("two_class and radius exclude each other: the sequential test "
                             "(radius) certifies with the one-class bound")
        _int_at_least(self.batch_size, 1, "batch_size", none_ok=True)
        check_choice(self.precision, PRECISIONS, "precision")
        check_choice(self.checkpoint, CHECKPOINTS, "checkpoint")
        _int_at_least(self.seed, 0, "seed")
        if self.seed >= SEED_LIMIT:
            raise InputError(f"seed must be in [0, 2^32), got {self.seed!r}")
        if not isinstance(self.device, str) or not self.device:
            raise InputError(f"device must be a non-empty name ('auto', 'cpu', 'cuda:0', ...), "
                             f"got {self.device!r}")

    def file_tag(self) -> str:
        """A file-name stem naming every setting that changes the rows, e.g.
        ``gaussian-sigma0.25-n0_100-n100000-alpha0.001-seed0-skip20-inputs500-fp32-last``
        (``-r<radius>`` and ``-2class`` when set; numbers exact)."""
        inputs = "all" if self.n_inputs is None else str(self.n_inputs)
        tag = (f"{self.noise}-sigma{_num(self.sigma)}-n0_{self.n0}-n{self.n}"
               f"-alpha{_num(self.alpha)}-seed{self.seed}-skip{self.skip}-inputs{inputs}")
        if self.radius is not None:
            tag += f"-r{_num(self.radius)}"
        if self.two_class:
            tag += "-2class"
        return f"{tag}-{self.precision}-{self.checkpoint}"


__all__ = ["CHECKPOINTS", "Checkpoint", "CertifyConfig"]
