"""Total-variation minimisation with random pixel dropping (Guo et al. 2018).

Guo, Rana, Cisse and van der Maaten 2018, "Countering Adversarial Images using Input
Transformations", ICLR 2018, arXiv 1711.00117, Section 3.2 (the seed chapter's eq. (7)):
drop a random set of pixels, then reconstruct the "simplest" image consistent with the
pixels that remain,

    z* = argmin_z  || (1 - X) * (z - x) ||_2  +  lam * TV_p(z),

separately for each image and channel; here all images and channels of a batch are solved
at once, as one tensor problem on the input's device.

Conventions (stated because the sources write them differently):

- **Mask.** In the objective ``X`` is the Bernoulli set of *dropped* pixels: ``1 - X``
  weights the data term, so only the kept pixels are fitted (the authors' released code takes the
  fraction of pixels to drop). bastion's parameter is the keep probability
  ``keep_prob``: every element of ``[N, C, H, W]`` (each channel separately, as in the paper
  and ART) is kept independently with probability ``keep_prob``, i.e. ``1 - X`` is
  Bernoulli(``keep_prob``). This is ART's ``TotalVarMin(prob=...)`` exactly (ART draws
  ``rand < prob`` and 1 means *kept*), and ``keep_prob`` defaults to ART's ``prob=0.3``.
- **Data term.** The plain, non-squared Euclidean norm of the residual over the kept pixels
  of one image channel, in [0, 1] pixel units, as the paper's formula and ART's
  ``_loss_func`` write it (the authors' released code minimises a squared one instead).
- **TV.** ``tv_norm=1`` (default): anisotropic TV, the sum of the absolute vertical and
  horizontal forward differences (the seed chapter's eq. (7); ART's ``norm=1``).
  ``tv_norm=2``: the paper's ``TV_2`` as ART and the authors' code compute it: the sum over
  rows of the Euclidean norm of that row's vertical differences plus the sum over columns of
  the Euclidean norm of that column's horizontal differences (ART's default ``norm=2``; it
  is not the isotropic TV).
- **Channels.** An image's objective is the sum over its channels of the per-channel
  objectives (:func:`tv_objective`). The problem is separable across channels, so this is
  the same minimiser as ART's channel-by-channel solve.

Solver. First a certificate: if the constant image (the mean of the kept pixels) is
provably a minimiser (a dual field built by one DCT Poisson solve satisfies the optimality
condition, see :func:`_certify_flat`), the channel gets it without iterating. That is the
usual case when ``lam`` is large for the image size, e.g. ART's default ``lamb=0.5`` on
28 x 28 images. The other channels go to over-relaxed ADMM (Boyd, Parikh, Chu, Peleato and
Eckstein 2011, "Distributed Optimization and Statistical Learning via the Alternating
Direction Method of Multipliers", Found. Trends Mach. Learn. 3(1)) on the split ``v = z``
(data term), ``w = K z`` (TV term), ``K`` the forward differences (Neumann boundary). The
``z`` step solves ``(rho1 I + rho2 K^T K) z = rhs``, which the 2-D DCT-II diagonalises (two
small matrix products per side), so every iteration couples the whole image; the ``v`` step
is a closed-form shrinkage of the kept residual, the ``w`` step a soft threshold (a group
soft threshold for ``tv_norm=2``). The penalties ``rho1, rho2`` start from the scales of the
problem and are balanced per image channel (residual balancing, Boyd et al. 2011,
Section 3.4.1) during the first 100 iterations, then frozen so that the method converges.

Stopping: an image channel stops when the bound on its suboptimality that the ADMM
residuals give (Boyd et al. 2011, Section 3.3, with ``||z - z*||_2 <= sqrt(H W)`` for
images in [0, 1]),

    2 (||z - v||_2 + lam ||K z - w||_1) + sqrt(H W) ||s||_2  <=  tol * f(z),

holds (``s`` the dual residual, ``f`` the channel's objective; with over-relaxation it is the
plain-ADMM bound at the relaxed iterates, in practice conservative by five to ten times).
Converged channels leave the batch; the others run on to ``max_iter``, which is logged as a
warning. Typical counts on 28 x 28 Fashion-MNIST with ``keep_prob=0.3``: none (certified
flat) at ``lam=0.5``, 150-350 at ``lam=0.05``. Very sparse masks (a few kept pixels) make
ADMM slow: after 1000 iterations the objective can still be a few percent high there.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass

import torch

from bastion._validate import check_images, check_int, finite_positive
from bastion.errors import InputError, InputTypeError
from bastion.preprocess.base import Preprocessor

log = logging.getLogger(__name__)

TV_NORMS = (1, 2)

_RELAX = 1.6  # over-relaxation factor alpha in (0, 2)
_RHO2_PER_LAM = 20.0  # initial rho2 = 20 * lam
_ADAPT_ITERS = 100  # residual balancing only during the first iterations (then converges)
_BALANCE_MU, _BALANCE_FACTOR = 3.0, 2.0
_CHECK_EVERY = 5


@dataclass(frozen=True)
class TVSolveInfo:
    """What one batched solve did.

    Attributes:
        iterations: the most iterations any image channel ran.
        not_converged: how many image channels stopped at ``max_iter`` before ``tol``.
        channels: how many image channels the batch had (``N * C``).
        flat: how many image channels were certified to have a constant minimiser and were
            not iterated (see :func:`_certify_flat`).
    """

    iterations: int
    not_converged: int
    channels: int
    flat: int = 0


# ----------------------------------------------------------------------------- checks

def _check_keep_prob(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"keep_prob must be a number in [0, 1], got {value!r}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InputError(f"keep_prob must be a probability in [0, 1] (the chance that a "
                         f"pixel is kept), got {value!r}")


def _check_lam(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"lam must be a finite number >= 0, got {value!r}")
    if not (math.isfinite(value) and value >= 0.0):
        raise InputError(f"lam must be a finite number >= 0, got {value!r}")


def _check_tv_norm(value: object) -> None:
    if isinstance(value, bool) or value not in TV_NORMS:
        raise InputError(f"tv_norm must be 1 (anisotropic TV) or 2 (the paper's row/column "
                         f"TV_2), got {value!r}")


def _check_tol(value: object) -> None:
    finite_positive(value, "tol")  # type: ignore[arg-type]
    if value >= 1.0:  # type: ignore[operator]
        raise InputError(f"tol must be a relative tolerance in (0, 1), got {value!r}")


def _check_batch(x: object, mask: object) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = (f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor)
               else type(x).__name__)
        raise InputTypeError(f"x must be a float [N, C, H, W] tensor, got {got}")
    if not isinstance(mask, torch.Tensor):
        raise InputTypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != x.shape:
        raise InputError(f"mask must have the shape of x {tuple(x.shape)}, got "
                         f"{tuple(mask.shape)}")


# ------------------------------------------------------------------- difference operator
# Differences live in one [B, 2, H, W] tensor: [:, 0] vertical (row i+1 minus row i, last
# row 0), [:, 1] horizontal (column j+1 minus column j, last column 0).

def _grad(u: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Forward differences ``K u`` of ``u`` ``[B, H, W]`` as ``[B, 2, H, W]``."""
    b, h, w = u.shape
    if out is None:
        out = u.new_zeros((b, 2, h, w))
    torch.sub(u[:, 1:, :], u[:, :-1, :], out=out[:, 0, :-1, :])
    torch.sub(u[:, :, 1:], u[:, :, :-1], out=out[:, 1, :, :-1])
    return out


def _grad_adjoint(g: torch.Tensor) -> torch.Tensor:
    """The adjoint ``K^T g`` (minus the divergence) of ``g`` ``[B, 2, H, W]``, ``[B, H, W]``.

    Uses that the last row of ``g[:, 0]`` and the last column of ``g[:, 1]`` are zero.
    """
    gv, gh = g[:, 0], g[:, 1]
    out = -(gv + gh)
    out[:, 1:, :] += gv[:, :-1, :]
    out[:, :, 1:] += gh[:, :, :-1]
    return out


def _tv(g: torch.Tensor, tv_norm: int) -> torch.Tensor:
    """``TV_p`` per image channel ``[B]`` from the differences ``g`` ``[B, 2, H, W]``."""
    if tv_norm == 1:
        return g.abs().sum((1, 2, 3))
    return (torch.linalg.vector_norm(g[:, 0], dim=2).sum(1)
            + torch.linalg.vector_norm(g[:, 1], dim=1).sum(1))


def _dct_basis(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``[n, n]`` (row ``k`` is frequency ``k``)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (j + 0.5) * k / n) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.to(dtype=dtype, device=device)


def _laplacian_eigs(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Eigenvalues ``[h, w]`` of ``K^T K`` (Neumann boundary) in the 2-D DCT-II basis."""
    ev = 2.0 - 2.0 * torch.cos(math.pi * torch.arange(h, dtype=torch.float64) / h)
    eh = 2.0 - 2.0 * torch.cos(math.pi * torch.arange(w, dtype=torch.float64) / w)
    return (ev[:, None] + eh[None, :]).to(dtype=dtype, device=device)


# ------------------------------------------------------------------------------ objective

def tv_objective(z: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, lam: float, *,
                 tv_norm: int = 1) -> torch.Tensor:
    """The objective :class:`TVMinimization` minimises, one value per image.

    ``sum_c ( ||mask_c * (z_c - x_c)||_2 + lam * TV_p(z_c) )`` (Guo et al. 2018,
    arXiv 1711.00117, Section 3.2, whose ``1 - X`` is ``mask``): for each channel the
    non-squared Euclidean norm of the residual on the kept pixels plus ``lam`` times the
    channel's TV, summed over the channels. Computed in float64.

    Args:
        z: candidate reconstruction ``[N, C, H, W]``.
        x: the input images ``[N, C, H, W]`` ([0, 1] pixel units).
        mask: ``[N, C, H, W]``, nonzero (True) where a pixel is kept, 0 where dropped.
        lam: the TV weight ``lambda >= 0``.
        tv_norm: 1 for anisotropic TV, 2 for the paper's ``TV_2`` (see the module).

    Returns:
        float64 tensor ``[N]``.
    """
    _check_batch(x, mask)
    _check_lam(lam)
    _check_tv_norm(tv_norm)
    if not isinstance(z, torch.Tensor) or z.shape != x.shape:
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise InputError(f"z must have the shape of x {tuple(x.shape)}, got {got}")
    n, c, h, w = x.shape
    z64 = z.detach().to(torch.float64).reshape(n * c, h, w)
    x64 = x.detach().to(device=z64.device, dtype=torch.float64).reshape(n * c, h, w)
    keep = (mask.detach().to(z64.device) != 0).reshape(n * c, h, w)
    data = torch.linalg.vector_norm(torch.where(keep, z64 - x64, 0.0), dim=(1, 2))
    per_channel = data + lam * _tv(_grad(z64), tv_norm)
    return per_channel.reshape(n, c).sum(1)


# --------------------------------------------------------------------------------- solver

def tv_minimize(x: torch.Tensor, mask: torch.Tensor, lam: float, *, tv_norm: int = 1,
                max_iter: int = 1000, tol: float = 1e-3) -> tuple[torch.Tensor, TVSolveInfo]:
    """Minimise :func:`tv_objective` for a given mask, all images and channels at once.

    On ``x``'s device, in float64 for float64 input and float32 otherwise. Channels whose
    constant minimiser is certified (:func:`_certify_flat`) get it at once; the others run
    ADMM with a DCT-diagonal ``z`` step from ``z = x`` (see the module docstring). No
    clamping and no mask draw (:class:`TVMinimization` does both). Channels without a kept
    pixel minimise TV alone; any constant does, and they get their mean. With ``lam = 0``,
    ``x`` itself is a minimiser and is returned.

    Args:
        x: images ``[N, C, H, W]``, floats in [0, 1].
        mask: ``[N, C, H, W]``, nonzero (True) where a pixel is kept.
        lam: TV weight ``>= 0``.
        tv_norm: 1 (anisotropic TV) or 2 (the paper's ``TV_2``).
        max_iter: iteration cap per image channel (>= 1).
        tol: target bound on the relative suboptimality, in (0, 1) (see the module).

    Returns:
        ``(z, info)``: the minimiser ``[N, C, H, W]`` (``x``'s dtype and device, no
        gradient) and a :class:`TVSolveInfo`.
    """
    _check_batch(x, mask)
    _check_lam(lam)
    _check_tv_norm(tv_norm)
    check_int(max_iter, "max_iter", low=1)
    _check_tol(tol)
    n, c, h, w = x.shape
    b = n * c
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        x0 = x.detach().to(work).reshape(b, h, w)
        keep = (mask.detach().to(x.device) != 0).reshape(b, h, w)
        out = x0.clone()
        empty = ~keep.flatten(1).any(1)
        if empty.any():
            out[empty] = x0[empty].mean((1, 2), keepdim=True).expand(-1, h, w)
        active = ~empty if (lam > 0.0 and h * w > 1) else torch.zeros_like(empty)
        idx = active.nonzero().squeeze(1)
        idx, flat = _certify_flat(out, x0, keep, idx, float(lam), tv_norm)
        iters, missed = _admm(out, x0, keep, idx, float(lam), tv_norm, max_iter, float(tol))
    if missed:
        log.warning("TV minimisation: %d of %d image channels stopped at max_iter=%d before "
                    "reaching tol=%g", missed, b, max_iter, tol)
    z = out.reshape(n, c, h, w).to(x.dtype)
    return z, TVSolveInfo(iterations=iters, not_converged=missed, channels=b, flat=flat)


def _certify_flat(out: torch.Tensor, x_all: torch.Tensor, keep_all: torch.Tensor,
                  idx: torch.Tensor, lam: float, tv_norm: int) -> tuple[torch.Tensor, int]:
    """Set the channels ``idx`` whose minimiser is certified constant; return the others.

    The constant ``c`` (the mean of the kept pixels) minimises the objective when some dual
    field ``y`` in the TV dual ball (``|y| <= lam`` elementwise for ``tv_norm=1``, group
    norms ``<= lam`` for 2) has ``K^T y = -g``, ``g = m (c - x) / ||m (c - x)||_2`` the
    gradient of the data term at ``c`` (the optimality condition ``0 in dG + K^T dF``). The
    least-squares field ``y = K phi`` with ``K^T K phi = -g`` (one DCT-II Poisson solve)
    meets the equation exactly; if it also lies in the ball (with a 1e-4 margin for
    rounding), ``c`` is a minimiser. A channel whose kept pixels are all equal has the
    constant as an exact zero-objective minimiser. Sufficient, not necessary: the rest go
    to ADMM.
    """
    if idx.numel() == 0:
        return idx, 0
    h, w = x_all.shape[1:]
    dt, dev = x_all.dtype, x_all.device
    x = x_all[idx]
    m = keep_all[idx].to(dt)
    c = (m * x).sum((1, 2), keepdim=True) / m.sum((1, 2), keepdim=True)
    r = m * (c - x)
    nr = torch.linalg.vector_norm(r, dim=(1, 2), keepdim=True)
    g = r / nr.clamp_min(torch.finfo(dt).tiny)
    ch = _dct_basis(h, dt, dev)
    cw = _dct_basis(w, dt, dev)
    eig = _laplacian_eigs(h, w, dt, dev)
    eig[0, 0] = 1.0  # the mean of phi is free (g sums to 0); keep it at 0
    phi_hat = torch.matmul(ch, torch.matmul(-g, cw.T)) / eig
    phi_hat[:, 0, 0] = 0.0
    y = _grad(torch.matmul(ch.T, torch.matmul(phi_hat, cw)))
    if tv_norm == 1:
        size = y.abs().amax((1, 2, 3))
    else:
        size = torch.maximum(torch.linalg.vector_norm(y[:, 0], dim=2).amax(1),
                             torch.linalg.vector_norm(y[:, 1], dim=1).amax(1))
    # kept pixels all equal (up to rounding): the constant has objective 0
    equal = nr.view(-1) <= 10.0 * torch.finfo(dt).eps * math.sqrt(h * w)
    flat = (size <= lam * (1.0 - 1e-4)) | equal
    if flat.any():
        out[idx[flat]] = c[flat].expand(-1, h, w)
    return idx[~flat], int(flat.sum())


def _admm(out: torch.Tensor, x_all: torch.Tensor, keep_all: torch.Tensor, idx: torch.Tensor,
          lam: float, tv_norm: int, max_iter: int, tol: float) -> tuple[int, int]:
    """Run ADMM on the image channels ``idx`` of ``out`` ``[B, H, W]`` (written in place).

    Scaled form, packed in ``[b, 3, H, W]`` tensors: ``S = (v, w)`` with ``v`` the copy of
    ``z`` for the data term and ``w`` the copy of ``K z`` for TV, ``D = (a, u)`` their
    scaled duals, ``Z = (z, K z)``. Returns the iterations run and how many channels missed
    ``tol``.
    """
    if idx.numel() == 0:
        return 0, 0
    h, w = x_all.shape[1:]
    dt, dev = x_all.dtype, x_all.device
    ch, cw = _dct_basis(h, dt, dev), _dct_basis(w, dt, dev)
    cht, cwt = ch.T.contiguous(), cw.T.contiguous()
    eig = _laplacian_eigs(h, w, dt, dev)
    sqrt_hw = math.sqrt(h * w)
    x = x_all[idx]
    m = keep_all[idx].to(dt)
    mx = m * x
    nb = idx.numel()
    # initial penalties from the problem's scales: rho1 = 1 / (kept residual of the flat
    # image), rho2 = 20 lam
    xbar = mx.sum((1, 2), keepdim=True) / m.sum((1, 2), keepdim=True)
    r0 = torch.linalg.vector_norm(m * (x - xbar), dim=(1, 2), keepdim=True)
    rho1 = 1.0 / r0.clamp_min(1e-3 * sqrt_hw)
    rho2 = torch.full_like(rho1, _RHO2_PER_LAM * lam)
    ratio = rho2 / rho1
    inv_den = 1.0 / (1.0 + ratio * eig)
    zk = x.new_zeros((nb, 3, h, w))
    zk[:, 0] = x
    _grad(x, out=zk[:, 1:])
    s = zk.clone()
    d = torch.zeros_like(s)
    it = 0
    while it < max_iter:
        it += 1
        # z step: (I + rho2/rho1 K^T K) z = (v - a) + rho2/rho1 K^T (w - u), in DCT-II
        t = s - d
        rhs = torch.addcmul(t[:, 0], ratio, _grad_adjoint(t[:, 1:]))
        zh = torch.matmul(ch, (rhs.reshape(-1, w) @ cwt).reshape(nb, h, w)).mul_(inv_den)
        zk[:, 0] = torch.matmul(cht, (zh.reshape(-1, w) @ cw).reshape(nb, h, w))
        _grad(zk[:, 0], out=zk[:, 1:])
        # over-relaxed point q; v step = shrink the kept residual, w step = soft threshold;
        # the new scaled duals are q minus the new split variables
        q = torch.lerp(s, zk, _RELAX).add_(d)
        r = m * q[:, 0] - mx
        nr = torch.linalg.vector_norm(r, dim=(1, 2), keepdim=True)
        d_new = torch.empty_like(q)
        torch.mul(r, (1.0 / rho1 / nr.clamp_min(1e-30)).clamp_max(1.0), out=d_new[:, 0])
        thr = lam / rho2
        if tv_norm == 1:
            t4 = thr.unsqueeze(1)
            torch.clamp(q[:, 1:], -t4, t4, out=d_new[:, 1:])
        else:
            nv = torch.linalg.vector_norm(q[:, 1], dim=2, keepdim=True)
            nh = torch.linalg.vector_norm(q[:, 2], dim=1, keepdim=True)
            torch.mul(q[:, 1], (thr / nv.clamp_min(1e-30)).clamp_max(1.0), out=d_new[:, 1])
            torch.mul(q[:, 2], (thr / nh.clamp_min(1e-30)).clamp_max(1.0), out=d_new[:, 2])
        s_new = q - d_new
        d = d_new
        if it % _CHECK_EVERY and it != max_iter:
            s = s_new
            continue
        # residuals: primal Z - S; dual rho1 (v - v_old) + rho2 K^T (w - w_old)
        res = zk - s_new
        p1 = torch.linalg.vector_norm(res[:, 0], dim=(1, 2))
        p2 = torch.linalg.vector_norm(res[:, 1:], dim=(1, 2, 3))
        p2l1 = res[:, 1:].abs().sum((1, 2, 3))
        step = s_new - s
        s = s_new
        dv = rho1 * step[:, 0]
        dkt = rho2 * _grad_adjoint(step[:, 1:])
        s_norm = torch.linalg.vector_norm(dv + dkt, dim=(1, 2))
        f = (torch.linalg.vector_norm(m * zk[:, 0] - mx, dim=(1, 2))
             + lam * _tv(zk[:, 1:], tv_norm))
        bound = 2.0 * (p1 + lam * p2l1) + sqrt_hw * s_norm
        done = bound <= tol * f.clamp_min(1e-6 * h * w)
        if it <= _ADAPT_ITERS:
            f1 = _balance(p1, torch.linalg.vector_norm(dv, dim=(1, 2))).view(-1, 1, 1)
            f2 = _balance(p2, torch.linalg.vector_norm(dkt, dim=(1, 2))).view(-1, 1, 1)
            rho1, rho2 = rho1 * f1, rho2 * f2
            d[:, 0] /= f1
            d[:, 1:] /= f2.unsqueeze(1)
            ratio = rho2 / rho1
            inv_den = 1.0 / (1.0 + ratio * eig)
        if done.any():
            out[idx[done]] = zk[done, 0]
            rest = ~done
            if not rest.any():
                return it, 0
            idx, x, m, mx, s, d, zk = (t[rest] for t in (idx, x, m, mx, s, d, zk))
            rho1, rho2, ratio, inv_den = rho1[rest], rho2[rest], ratio[rest], inv_den[rest]
            nb = idx.numel()
    out[idx] = zk[:, 0]
    return it, idx.numel()


def _balance(primal: torch.Tensor, dual: torch.Tensor) -> torch.Tensor:
    """Residual balancing factor for a penalty (Boyd et al. 2011, eq. (3.13))."""
    one = torch.ones_like(primal)
    return torch.where(primal > _BALANCE_MU * dual, _BALANCE_FACTOR * one,
                       torch.where(dual > _BALANCE_MU * primal, one / _BALANCE_FACTOR, one))


# ----------------------------------------------------------------------------- the module

class TVMinimization(Preprocessor):
    """Random pixel dropping followed by total-variation minimisation (Guo et al. 2018).

    Guo, Rana, Cisse and van der Maaten 2018, "Countering Adversarial Images using Input
    Transformations", arXiv 1711.00117, Section 3.2. Each forward pass draws a keep mask
    (every element of ``[N, C, H, W]`` kept independently with probability ``keep_prob``:
    the paper's ``1 - X``, ART's ``prob``) and returns, for each image and channel, the
    minimiser of ``||mask * (z - x)||_2 + lam * TV_p(z)`` (non-squared Euclidean data term;
    anisotropic TV for ``tv_norm=1``), clamped to [0, 1]. The module docstring states the
    conventions and the solver; :func:`tv_objective` evaluates the objective.

    Randomized (the mask); not differentiable (an iterative solve; BPDA uses the identity
    stand-in, as Athalye, Carlini and Wagner 2018, arXiv 1802.00420, do for this defense);
    costly.

    Args:
        keep_prob: probability that a pixel is kept, in [0, 1] (default 0.3, ART's
            ``prob``; the paper's pixel-drop probability is ``1 - keep_prob``).
        lam: TV weight ``lambda >= 0`` (default 0.5, ART's ``lamb``). The data term grows
            like the square root of the number of kept pixels and TV like the number of
            pixels, so large ``lam`` flattens small images: on 28 x 28 Fashion-MNIST the
            default gives an almost constant image.
        tv_norm: 1 (default, anisotropic TV) or 2 (the paper's row/column ``TV_2``, ART's
            default ``norm=2``).
        max_iter: iteration cap of the solver (>= 1); reaching it is logged as a warning.
        tol: target bound on each channel's relative suboptimality, in (0, 1).

    Attributes:
        generator: the ``torch.Generator`` the mask draws from, on the input's device;
            None (default) uses torch's global generator. Set it for reproducible masks.
        last_info: the :class:`TVSolveInfo` of the latest solve (None before one).

    Shape: input ``[N, C, H, W]`` floats in [0, 1]; output the same shape, dtype and device.

    Example:
        >>> tv = TVMinimization(keep_prob=0.5, lam=0.05)
        >>> tv.generator = torch.Generator().manual_seed(0)
        >>> tv(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 1, 8, 8])
    """

    randomized = True
    differentiable = False
    costly = True

    def __init__(self, keep_prob: float = 0.3, lam: float = 0.5, *, tv_norm: int = 1,
                 max_iter: int = 1000, tol: float = 1e-3) -> None:
        super().__init__()
        _check_keep_prob(keep_prob)
        _check_lam(lam)
        _check_tv_norm(tv_norm)
        check_int(max_iter, "max_iter", low=1)
        _check_tol(tol)
        self.keep_prob = float(keep_prob)
        self.lam = float(lam)
        self.tv_norm = int(tv_norm)
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.generator: torch.Generator | None = None
        self.last_info: TVSolveInfo | None = None

    def config(self) -> dict[str, float | int]:
        """The constructor keywords (JSON-serialisable): ``TVMinimization(**tv.config())``."""
        return {"keep_prob": self.keep_prob, "lam": self.lam, "tv_norm": self.tv_norm,
                "max_iter": self.max_iter, "tol": self.tol}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    def draw_mask(self, x: torch.Tensor) -> torch.Tensor:
        """A keep mask for ``x`` from ``self.generator``: bool, ``x``'s shape and device.

        True marks a kept pixel (probability ``keep_prob``, independently per element).
        """
        gen = self.generator
        if gen is not None and gen.device.type != x.device.type:
            raise InputError(f"generator is on {gen.device} but x is on {x.device}; the mask "
                             "is drawn on the input's device, so use a generator there")
        return torch.rand(x.shape, generator=gen, device=x.device) < self.keep_prob

    def solve(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``x`` for a given keep ``mask`` (deterministic).

        Clamped to [0, 1]: clamping moves no difference further apart and, as ``x`` is in
        [0, 1], no residual, so the clamped minimiser is a minimiser too.

        Args:
            x: images ``[N, C, H, W]`` in [0, 1].
            mask: ``[N, C, H, W]``, nonzero (True) where a pixel is kept.

        Returns:
            ``[N, C, H, W]``, ``x``'s dtype and device, no gradient.
        """
        check_images(x.detach() if isinstance(x, torch.Tensor) else x)
        return self._solve(x, mask)

    def _solve(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z, self.last_info = tv_minimize(x, mask, self.lam, tv_norm=self.tv_norm,
                                        max_iter=self.max_iter, tol=self.tol)
        return z.clamp_(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x.detach() if isinstance(x, torch.Tensor) else x)
        with torch.no_grad():
            return self._solve(x, self.draw_mask(x))
