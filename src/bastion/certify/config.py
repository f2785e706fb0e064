"""The settings of a randomized-smoothing certification of a run (``bastion certify``).

``CertifyConfig`` is a keyword-only frozen dataclass validated on construction: a bad value
raises ``InputError`` (a ``ValueError``) naming the field and its valid range before
anything is loaded or written, and ``device`` must exist on this machine. Each field carries
its command-line help in ``metadata["help"]``, from which ``bastion.cli`` builds the options
of ``bastion certify`` (``--n0``, ``--n-inputs``, ``--two-class``, ...).

Settings that are valid but cannot give the certificate the user asks for are warned about
on construction, so before any noise is drawn (``CertificationWarning``, a ``UserWarning``;
the command line prints it as ``bastion: warning: ...``). A Monte Carlo certificate is
limited by ``n`` and ``alpha`` alone: with every one of the ``n`` draws on the top class,
the one-sided Clopper-Pearson lower bound on ``p_A`` is ``alpha^(1/n)``, so no radius above
``noise.radius(alpha^(1/n))`` (Gaussian: ``sigma Phi^-1(alpha^(1/n))``) can be certified
(``max_radius``). The warnings:

- CERTIFY (no ``radius``): the bound cannot exceed 1/2, so every input abstains (n = 9 at
  alpha = 0.001: 0.001^(1/9) = 0.46); or a single draw off the top class already makes every
  input abstain (n = 10 at alpha = 0.001: the bound is 0.5012 only if all 10 draws agree,
  0.45 if one does not; the largest radius is then 0.00075 sigma-units), a common mistake.
  The message gives the cap and the smallest ``n`` that avoids it.
- sequential (``radius``): ``radius`` is above the cap of the test's last look
  (``alpha_K = alpha / 2``: ``sigma Phi^-1((alpha/2)^(1/n))``), so every input abstains;
  the message gives the cap and the ``n`` that reaches ``radius``.

Both are warnings, not errors: a deliberately tiny smoke run still runs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from bastion._validate import check_choice, check_device
from bastion.certify.forward import PRECISIONS, Precision
from bastion.certify.sequential import look_schedule
from bastion.certify.smoothing_certifiers import SequentialCertifier
from bastion.certify.stats import cp_lower, cp_upper
from bastion.errors import InputError
from bastion.noise import NOISES, Noise, NoiseName, from_std

Checkpoint = Literal["last", "best"]
CHECKPOINTS: tuple[str, ...] = ("last", "best")
SEED_LIMIT = 2**32
"""Run seeds are in [0, 2^32): ``pipeline.input_seed`` uses the seed's low 32 bits."""


class CertificationWarning(UserWarning):
    """Valid settings that cannot give the certificate asked for (see the module docstring)."""


SEQUENTIAL_N_FIRST: int = SequentialCertifier.n_first  # type: ignore[assignment]
"""Estimation draws at the sequential test's first look (``bastion certify --radius``)."""
SEQUENTIAL_GROWTH: float = SequentialCertifier.growth  # type: ignore[assignment]
"""Ratio of successive look sizes of the sequential test."""


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
        "draws that bound its probability, >= 1 (sequential mode: the most draws, >= 100)"))
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
        check_device(self.device, "device")
        if self.radius is not None and self.n < SEQUENTIAL_N_FIRST:
            raise InputError(
                f"n must be >= {SEQUENTIAL_N_FIRST} with radius: the sequential test's first "
                f"look is after {SEQUENTIAL_N_FIRST} draws (n is its most draws), got {self.n}"
            )
        self._warn_if_no_certificate()

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

    # ------------------------------------------------------------ what n and alpha allow

    def noise_distribution(self) -> Noise:
        """The noise ``certify_run`` draws: ``noise.from_std(noise, sigma)``."""
        return from_std(self.noise, self.sigma)

    def _level(self, n: int) -> float:
        """The Clopper-Pearson level of the bound on ``p_A`` once all ``n`` draws are in."""
        if self.radius is not None:
            return look_schedule(SEQUENTIAL_N_FIRST, n, SEQUENTIAL_GROWTH, self.alpha)[-1].alpha
        return self.alpha / 2 if self.two_class else self.alpha

    def _level_name(self, n: int) -> str:
        return "alpha" if math.isclose(self._level(n), self.alpha) else "(alpha/2)"

    def _radius_with(self, n_a: int, n: int) -> float:
        """The radius certified when ``n_a`` of ``n`` estimation draws hit the top class
        (two-class: the runner-up gets the rest, its best case, as with K = 2 classes)."""
        noise, level = self.noise_distribution(), self._level(n)
        p_a = float(cp_lower(n_a, n, level))
        if not self.two_class:
            return float(noise.radius(p_a))
        p_b = min(float(cp_upper(n - n_a, n, level)), 1.0 - p_a)
        return float(noise.radius(p_a, p_b))

    def _reaches(self, n: int) -> bool:
        """Whether the sequential test with at most ``n`` draws can certify ``radius`` at all
        (the test's own condition: ``p_required(radius) <= cp_lower(n, n, alpha_K)``)."""
        p_star = self.noise_distribution().p_required(float(self.radius))  # type: ignore[arg-type]
        return p_star <= float(cp_lower(n, n, self._level(n)))

    def max_radius(self) -> float:
        """The largest radius these settings can certify (0: none), in the noise's norm.

        Reached only when every estimation draw lands on the top class: the bound on
        ``p_A`` is then ``level^(1/n)`` with ``level = alpha`` (CERTIFY), ``alpha / 2``
        (two-class, where the runner-up bound is at its best, as with K = 2 classes) or
        the last look's ``alpha_K`` (the sequential test), and the radius is the noise's
        radius at it (Gaussian: ``sigma Phi^-1(level^(1/n))``).

        Example:
            >>> round(CertifyConfig(sigma=0.25, n=100, alpha=0.001).max_radius(), 4)
            0.3751
        """
        return self._radius_with(self.n, self.n)

    def _formula(self) -> str:
        level = self._level_name(self.n)
        if self.noise == "gaussian":
            return f"sigma * Phi^-1({level}^(1/n))"
        return f"the {self.noise} radius at p_A = {level}^(1/n)"

    def _smallest_n(self, ok: Any) -> int | None:
        """The smallest ``n >= self.n`` (up to 10^8) with ``ok(n)``; ``ok`` is monotone."""
        lo, hi = self.n, self.n
        while not ok(hi):
            lo, hi = hi + 1, hi * 2
            if hi > 10**8:
                return None
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
        return hi

    def _warn_if_no_certificate(self) -> None:
        """Warn before any draw when ``n`` and ``alpha`` rule out the certificate asked for."""
        what = f"n={self.n} at alpha={self.alpha:g}"
        if self.radius is not None:
            if self._reaches(self.n):
                return
            need = self._smallest_n(self._reaches)
            fix = (f"n >= {need} can reach radius {self.radius:g}" if need is not None else
                   f"no n up to 10^8 reaches radius {self.radius:g} with this noise")
            _warn(f"radius={self.radius:g} cannot be certified with {what}: the largest "
                  f"radius the sequential test can certify is {self.max_radius():.4g} "
                  f"(= {self._formula()}, every draw on the top class), so every input "
                  f"will abstain; {fix}")
            return
        cap = self.max_radius()
        if cap <= 0:
            need = self._smallest_n(lambda m: self._radius_with(m, m) > 0)
            bound = float(cp_lower(self.n, self.n, self._level(self.n)))
            _warn(f"{what} cannot certify any input: even with all {self.n} draws on the top "
                  f"class the Clopper-Pearson lower bound on p_A is {bound:.4g} "
                  f"(= {self._level_name(self.n)}^(1/n)) <= 0.5, so every input abstains; "
                  f"use n >= {need}")
            return
        if self._radius_with(self.n - 1, self.n) <= 0:
            need = self._smallest_n(lambda m: self._radius_with(m - 1, m) > 0)
            _warn(f"{what} certifies an input only if all {self.n} draws land on the top "
                  f"class (one draw off it and the input abstains), and then at most radius "
                  f"{cap:.4g} (= {self._formula()}); almost every input will abstain; use "
                  f"n >= {need}")


def _warn(message: str) -> None:
    # stacklevel: _warn <- _warn_if_no_certificate <- __post_init__ <- __init__ <- caller
    warnings.warn(message, CertificationWarning, stacklevel=5)


__all__ = ["CHECKPOINTS", "Checkpoint", "CertificationWarning", "CertifyConfig",
           "SEQUENTIAL_GROWTH", "SEQUENTIAL_N_FIRST"]
