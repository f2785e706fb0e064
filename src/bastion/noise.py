"""Noise distributions of randomized smoothing and the certified radius each one gives.

A smoothed classifier ``g(x) = argmax_c P(f(x + eta) = c)`` is robust around ``x`` in the
norm and radius its noise distribution determines (Cohen et al. 2019, arXiv 1902.02918, for
Gaussian noise; Yang et al. 2020, "Randomized Smoothing of All Shapes and Sizes", arXiv
2002.08118, Table 1 and Appendix, for the others). Every distribution here is a small frozen
dataclass with:

- ``sample(shape, generator, device, dtype)``: i.i.d. noise of that shape;
- ``radius(p_lower, p_upper_b=None)``: the certified radius, float64, in ``norm``, given a
  lower bound ``p_lower`` on the top class probability ``p_A`` and optionally an upper
  bound ``p_upper_b`` on the runner-up ``p_B`` (two-class form; without it ``p_B = 1 - p_A``);
  0 where the bound gives no certificate;
- ``p_required(radius)``: the smallest ``p_A`` lower bound that certifies ``radius``
  (one-class form; above 1 when no ``p_A`` can), used by sequential certification;
- ``norm``, ``name``, ``std`` (per-coordinate standard deviation) and ``params()``.

Formulas (``rho`` = lower bound on ``p_A``, ``rho_B`` = upper bound on ``p_B``, valid for
``rho > 1/2`` resp. ``rho > rho_B``; otherwise the radius is 0):

=========  ===================================  =======  ====================================
noise      density of eta                       norm     radius
=========  ===================================  =======  ====================================
Gaussian   N(0, sigma^2 I)                      l2       sigma Phi^-1(rho)  [Cohen, Thm 1];
                                                         two-class: sigma/2 (Phi^-1(rho) -
                                                         Phi^-1(rho_B))
Laplace    prod_i exp(-|eta_i| / lam) / (2 lam)  l1      -lam log(2 (1 - rho)) [Teng et al.
                                                         2020; Yang et al. Table 1];
                                                         two-class: max(lam/2 log(rho /
                                                         rho_B), -lam log(1 - rho + rho_B))
Uniform    U([-lam, lam]^d)                     l1       2 lam (rho - 1/2) [Yang et al.
                                                         Table 1; Lee et al. 2019];
                                                         two-class: lam (rho - rho_B)
Uniform    U([-lam, lam]^d)                     linf     2 lam (1 - (3/2 - rho)^(1/d))
                                                         [Yang et al. Table 1];
                                                         two-class: 2 lam (1 - (1 - (rho -
                                                         rho_B)/2)^(1/d))
=========  ===================================  =======  ====================================

Why the uniform radii hold: for ``eta ~ U([-lam, lam]^d)`` the total variation distance
between the noise laws at ``x`` and ``x + delta`` is ``1 - prod_i (1 - |delta_i| / (2 lam))``,
at most ``||delta||_1 / (2 lam)``; any event's probability moves by at most that much, so
``p_A`` stays above ``1/2`` (resp. above ``p_B``) while it is below ``rho - 1/2`` (resp.
``(rho - rho_B) / 2``). In l-inf the worst ``delta`` has every ``|delta_i| = r``. The Laplace
one-class radius is attained in one dimension (a half-line set shifted along one coordinate);
the two-class term ``lam/2 log(rho / rho_B)`` follows from the density ratio being within
``exp(+-||delta||_1 / lam)`` (Lecuyer et al. 2019's differential-privacy argument), and the
other term is Teng et al.'s ("l1 Adversarial Robustness Certificates: a Randomized Smoothing
Approach", 2020, Theorem 1). With ``rho_B = 1 - rho`` every two-class formula reduces to the
one-class one. The tests check each one-class radius to be exact for a one-dimensional
threshold classifier, where the smoothed classifier is known in closed form.

Scales: ``Gaussian.sigma`` is the standard deviation; ``Laplace.lam`` and ``Uniform.lam`` are
the natural scale parameters of Yang et al.'s table (standard deviations ``sqrt(2) lam`` and
``lam / sqrt(3)``); ``from_std`` builds any of them from a per-coordinate standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from bastion._validate import check_choice
from bastion.errors import InputError
from bastion.types import Norm

NoiseName = Literal["gaussian", "laplace", "uniform"]
NOISES: tuple[str, ...] = ("gaussian", "laplace", "uniform")


def _positive(value: float, name: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a finite number > 0, got {value!r}")


def _prob(p: Any) -> torch.Tensor:
    t = torch.as_tensor(p, dtype=torch.float64)
    if torch.isnan(t).any() or (t < 0).any() or (t > 1).any():
        raise InputError("probability bounds must lie in [0, 1]")
    return t


def _finish(radius: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Zero where no certificate; never negative or NaN."""
    radius = torch.where(ok, radius, torch.zeros_like(radius))
    return torch.nan_to_num(radius, nan=0.0, posinf=torch.finfo(torch.float64).max).clamp_min(0)


@dataclass(frozen=True, kw_only=True)
class Gaussian:
    """Isotropic Gaussian noise ``N(0, sigma^2 I)``; l2 certificates (Cohen et al. 2019).

    Args:
        sigma: standard deviation in [0, 1] pixel units (> 0).

    Example:
        >>> round(float(Gaussian(sigma=0.5).radius(0.9)), 4)
        0.6408
    """

    sigma: float = 0.25
    name: ClassVar[str] = "gaussian"
    norm: ClassVar[Norm] = "l2"

    def __post_init__(self) -> None:
        _positive(self.sigma, "sigma")

    @property
    def std(self) -> float:
        return float(self.sigma)

    def params(self) -> dict[str, Any]:
        return {"noise": self.name, "sigma": float(self.sigma)}

    def sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``sigma`` times standard normal draws of ``shape``."""
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return z.mul_(self.sigma)

    def radius(self, p_lower: Any, p_upper_b: Any = None) -> torch.Tensor:
        """``sigma Phi^-1(p_lower)``, or ``sigma/2 (Phi^-1(p_lower) - Phi^-1(p_upper_b))``."""
        pa = _prob(p_lower)
        if p_upper_b is None:
            return _finish(self.sigma * torch.special.ndtri(pa), pa > 0.5)
        pb = _prob(p_upper_b)
        r = 0.5 * self.sigma * (torch.special.ndtri(pa) - torch.special.ndtri(pb))
        return _finish(r, pa > pb)

    def p_required(self, radius: float) -> float:
        """``Phi(radius / sigma)``."""
        return float(torch.special.ndtr(torch.tensor(radius / self.sigma, dtype=torch.float64)))


@dataclass(frozen=True, kw_only=True)
class Laplace:
    """I.i.d. Laplace noise with density ``prod_i exp(-|eta_i| / lam) / (2 lam)``; l1 radii.

    Teng et al. 2020, "l1 Adversarial Robustness Certificates: a Randomized Smoothing
    Approach"; Yang et al. 2020, arXiv 2002.08118, Table 1.

    Args:
        lam: scale in [0, 1] pixel units (> 0); the standard deviation is ``sqrt(2) lam``.
    """

    lam: float = 0.25
    name: ClassVar[str] = "laplace"
    norm: ClassVar[Norm] = "l1"

    def __post_init__(self) -> None:
        _positive(self.lam, "lam")

    @property
    def std(self) -> float:
        return math.sqrt(2.0) * self.lam

    def params(self) -> dict[str, Any]:
        return {"noise": self.name, "lam": float(self.lam), "sigma": self.std}

    def sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``lam (E1 - E2)`` with ``E1, E2`` standard exponential (a Laplace variate)."""
        shape = tuple(shape)
        e1 = torch.empty(shape, device=device, dtype=dtype).exponential_(generator=generator)
        e2 = torch.empty(shape, device=device, dtype=dtype).exponential_(generator=generator)
        return e1.sub_(e2).mul_(self.lam)

    def radius(self, p_lower: Any, p_upper_b: Any = None) -> torch.Tensor:
        """``-lam log(2 (1 - p_lower))``; two-class
        ``max(lam/2 log(p_lower / p_upper_b), -lam log(1 - p_lower + p_upper_b))``."""
        pa = _prob(p_lower)
        if p_upper_b is None:
            return _finish(-self.lam * torch.log(2.0 * (1.0 - pa)), pa > 0.5)
        pb = _prob(p_upper_b)
        dp = 0.5 * self.lam * (torch.log(pa) - torch.log(pb))
        teng = -self.lam * torch.log1p(-(pa - pb))
        return _finish(torch.maximum(dp, teng), pa > pb)

    def p_required(self, radius: float) -> float:
        """``1 - exp(-radius / lam) / 2``."""
        return 1.0 - 0.5 * math.exp(-radius / self.lam)


@dataclass(frozen=True, kw_only=True)
class Uniform:
    """I.i.d. uniform noise on ``[-lam, lam]^d``; l1 (default) or l-inf radii.

    Yang et al. 2020, "Randomized Smoothing of All Shapes and Sizes", arXiv 2002.08118,
    Table 1 (l1 radius ``2 lam (rho - 1/2)``, after Lee et al. 2019, "Tight Certificates of
    Adversarial Robustness for Randomly Smoothed Classifiers", arXiv 1906.04948; l-inf
    radius ``2 lam (1 - (3/2 - rho)^(1/d))``).

    Args:
        lam: half-width of the cube in [0, 1] pixel units (> 0); std ``lam / sqrt(3)``.
        norm: ``"l1"`` or ``"linf"``.
        dim: input dimension ``d = C H W``, needed only for ``norm="linf"`` (the smoothed
            classifier sets it from its input when left None).
    """

    lam: float = 0.5
    norm: Norm = "l1"
    dim: int | None = None
    name: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        _positive(self.lam, "lam")
        check_choice(self.norm, ("l1", "linf"), "norm of uniform noise")
        if self.dim is not None and (not isinstance(self.dim, int) or self.dim < 1):
            raise InputError(f"dim must be a positive int, got {self.dim!r}")

    @property
    def std(self) -> float:
        return self.lam / math.sqrt(3.0)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"noise": self.name, "lam": float(self.lam), "sigma": self.std}
        if self.norm == "linf":
            out["dim"] = self.dim
        return out

    def sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``lam (2 U - 1)`` with ``U ~ U[0, 1)``."""
        u = torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)
        return u.mul_(2.0 * self.lam).sub_(self.lam)

    def _dim(self) -> int:
        if self.dim is None:
            raise InputError("Uniform(norm='linf') needs dim (the number of input pixels)")
        return self.dim

    def radius(self, p_lower: Any, p_upper_b: Any = None) -> torch.Tensor:
        """l1: ``2 lam (p_lower - 1/2)``, two-class ``lam (p_lower - p_upper_b)``; l-inf:
        ``2 lam (1 - (1 - gap)^(1/d))`` with ``gap = p_lower - 1/2`` resp.
        ``(p_lower - p_upper_b) / 2``."""
        pa = _prob(p_lower)
        pb = 1.0 - pa if p_upper_b is None else _prob(p_upper_b)
        gap = 0.5 * (pa - pb)  # = pa - 1/2 in the one-class form
        if self.norm == "l1":
            return _finish(2.0 * self.lam * gap, gap > 0)
        r = 2.0 * self.lam * (1.0 - torch.pow((1.0 - gap).clamp_min(0.0), 1.0 / self._dim()))
        return _finish(r, gap > 0)

    def p_required(self, radius: float) -> float:
        """l1: ``1/2 + radius / (2 lam)``; l-inf: ``3/2 - (1 - radius / (2 lam))^d``."""
        if self.norm == "l1":
            return 0.5 + radius / (2.0 * self.lam)
        return 1.5 - max(0.0, 1.0 - radius / (2.0 * self.lam)) ** self._dim()


Noise = Gaussian | Laplace | Uniform


def from_std(name: str, std: float, **kwargs: Any) -> Noise:
    """A noise distribution by name with per-coordinate standard deviation ``std``.

    ``"gaussian"``: ``sigma = std``; ``"laplace"``: ``lam = std / sqrt(2)``; ``"uniform"``:
    ``lam = sqrt(3) std`` (Yang et al. compare distributions at equal standard deviation).
    Extra keyword arguments (``norm``, ``dim``) go to ``Uniform``.
    """
    check_choice(name, NOISES, "noise")
    _positive(std, "std")
    if name == "gaussian":
        return Gaussian(sigma=std, **kwargs)
    if name == "laplace":
        return Laplace(lam=std / math.sqrt(2.0), **kwargs)
    return Uniform(lam=math.sqrt(3.0) * std, **kwargs)


__all__ = ["NOISES", "Gaussian", "Laplace", "Noise", "NoiseName", "Uniform", "from_std"]
