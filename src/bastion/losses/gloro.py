"""GloRo's bottom logit, top-1 and relaxed top-k (the seed's "Certified Deterministic
Defenses (2)").

Leino, Wang and Fredrikson 2021, "Globally-Robust Neural Networks" (GloRo), arXiv 2102.08452;
Leino and Fredrikson 2021, "Relaxing Local Robustness" (RTK), arXiv 2106.06624.

With ``K_ij`` a bound on the L2 Lipschitz constant of ``f_i - f_j`` (``pairwise`` [K, K];
the seed's looser form is ``K_i + K_j``), and ``j`` the predicted class of ``x``, the logit

    y_bot = max_{i != j} ( f_i(x) + eps * K_ji )

exceeds every ``f_i(x')`` for ``||x' - x||_2 <= eps`` by at least the drop of ``f_j``, so
``f_j(x) > y_bot`` certifies that the prediction ``j`` holds on the whole eps-ball. Training
on the augmented logits ``[f(x), y_bot]`` with the true label (cross-entropy) pushes the
label's logit above ``y_bot``; prediction returns the bottom class ``K`` where
``y_bot >= max f``.

Relaxed top-k (RTK GloRo): for ``k' = 1..k`` let ``J`` be the top-``k'`` classes. The set
``J`` is certified on the eps-ball when every member beats every non-member after the worst
perturbation, ``m_k' = min_{l in J} ( f_l - max_{i not in J} (f_i + eps K_li) ) > 0``; the
prediction is robust when some ``k' <= k`` is, ``m = max_k' m_k'``, and
``y_bot = max f - m`` (GloRo's ``LipschitzMarginRtk`` stops the gradient through ``max f``;
we do not, see ``bottom_logit``). For ``k = 1`` this is the top-1 rule, and the direct form
above is used.
"""

from __future__ import annotations

import torch

from bastion.errors import InputError


def _check(logits: torch.Tensor, pairwise: torch.Tensor, eps: float, k: int) -> None:
    if logits.dim() != 2:
        raise InputError(f"logits must have shape [N, K], got {tuple(logits.shape)}")
    n_cls = logits.shape[1]
    if tuple(pairwise.shape) != (n_cls, n_cls):
        raise InputError(f"pairwise constants must have shape [{n_cls}, {n_cls}] (one per pair "
                         f"of classes), got {tuple(pairwise.shape)}")
    if not isinstance(eps, int | float) or isinstance(eps, bool) or eps < 0:
        raise InputError(f"eps must be a number >= 0, got {eps!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n_cls:
        raise InputError(f"k must be an int in [1, {n_cls - 1}] (fewer than the {n_cls} "
                         f"classes), got {k!r}")


def topk_margins(logits: torch.Tensor, pairwise: torch.Tensor, eps: float, k: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, order)``: ``m`` ``[N, k]`` with ``m[:, k'-1] = m_k'`` (the worst-case margin of the
    top-``k'`` set, > 0 where it is certified on the eps-ball) and ``order`` ``[N, k]`` the
    top-k classes, best first. Ties among logits count as not certified (margin <= 0)."""
    _check(logits, pairwise, eps, k)
    n, n_cls = logits.shape
    top_vals, order = logits.topk(k, dim=1)                       # [N, k]
    k_li = pairwise.to(logits.dtype)[order]                       # [N, k(l), K(i)]
    in_set = torch.zeros(n, k, n_cls, dtype=torch.bool, device=logits.device)
    member = torch.zeros(n, n_cls, dtype=torch.bool, device=logits.device)
    for r in range(k):                                            # in_set[:, r] = top-(r+1)
        member = member.clone()
        member.scatter_(1, order[:, r:r + 1], True)
        in_set[:, r] = member
    # worst[n, r, l] = max over i outside top-(r+1) of f_i + eps K_li
    cand = logits[:, None, None, :] + eps * k_li[:, None, :, :]  # [N, r, l, K]
    cand = cand.masked_fill(in_set[:, :, None, :], float("-inf"))
    worst = cand.amax(dim=3)                                      # [N, r, l]
    margin = top_vals[:, None, :] - worst                         # [N, r, l]
    l_idx = torch.arange(k, device=logits.device)
    outside = l_idx[None, :] > l_idx[:, None]                     # l > r: not in the set
    margin = margin.masked_fill(outside[None], float("inf"))
    return margin.amin(dim=2), order


def bottom_logit(logits: torch.Tensor, pairwise: torch.Tensor, eps: float, *, k: int = 1
                 ) -> torch.Tensor:
    """``[N]``: GloRo's ``y_bot`` (see the module docstring), with gradient.

    Args:
        logits: ``[N, K]``.
        pairwise: ``[K, K]``, ``K_ij`` bounds on Lip(f_i - f_j) in the input norm (L2 here).
        eps: the radius, in the same units (pixels in [0, 1]).
        k: 1 for GloRo, > 1 for relaxed top-k.
    """
    if k == 1:
        _check(logits, pairwise, eps, k)
        j = logits.detach().argmax(dim=1)
        cand = logits + eps * pairwise.to(logits.dtype)[j]        # [N, K]
        cand = cand.masked_fill(torch.nn.functional.one_hot(j, logits.shape[1]).bool(),
                                float("-inf"))
        return cand.amax(dim=1)
    m, _ = topk_margins(logits, pairwise, eps, k)
    # GloRo's LipschitzMarginRtk stops the gradient through max f here; that surrogate
    # misses that raising the top logit raises y_bot too, and on Fashion-MNIST it made the
    # Lipschitz constant grow without bound (x100 in 40 Adam steps) while the loss rose.
    # The value is the same; this is its true gradient.
    return logits.amax(dim=1) - m.amax(dim=1)


def gloro_logits(logits: torch.Tensor, pairwise: torch.Tensor, eps: float, *, k: int = 1
                 ) -> torch.Tensor:
    """``[N, K + 1]``: the logits with GloRo's bottom logit appended (class index ``K``)."""
    return torch.cat([logits, bottom_logit(logits, pairwise, eps, k=k)[:, None]], dim=1)


def gloro_predict(logits: torch.Tensor, pairwise: torch.Tensor, eps: float) -> torch.Tensor:
    """int64 ``[N]``: the predicted class, or ``K`` (bottom) where it is not certified on the
    eps-ball. A tie for the top logit is never certified."""
    aug = gloro_logits(logits.detach(), pairwise, eps)
    top = logits.detach().amax(dim=1)
    second = logits.detach().topk(2, dim=1).values[:, 1]
    pred = logits.detach().argmax(dim=1)
    robust = (top > aug[:, -1]) & (top > second)
    return torch.where(robust, pred, torch.full_like(pred, logits.shape[1]))


def topk_certified(logits: torch.Tensor, pairwise: torch.Tensor, eps: float, k: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(size, order)``: ``size`` int64 ``[N]``, the largest ``k' <= k`` whose top-``k'`` set
    is certified on the eps-ball (0 where none is), and ``order`` ``[N, k]`` the classes by
    rank. A labelled point is verified-robust top-k when ``label`` is in
    ``order[:, :size]``."""
    m, order = topk_margins(logits.detach(), pairwise, eps, k)
    ok = m > 0
    ranks = torch.arange(1, k + 1, device=logits.device)
    size = torch.where(ok, ranks[None, :], torch.zeros_like(ranks)[None, :]).amax(dim=1)
    return size, order


def topk_vra(logits: torch.Tensor, labels: torch.Tensor, pairwise: torch.Tensor, eps: float,
             k: int) -> torch.Tensor:
    """bool ``[N]``: the label is inside a top-``k' <= k`` set certified on the eps-ball
    (RTK's verified-robust accuracy per point; for ``k = 1``, GloRo's VRA)."""
    size, order = topk_certified(logits, pairwise, eps, k)
    pos = torch.arange(k, device=logits.device)[None, :]
    hit = (order == labels[:, None]) & (pos < size[:, None])
    return hit.any(dim=1)
