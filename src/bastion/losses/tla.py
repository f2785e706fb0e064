"""Triplet Loss Adversarial (TLA) pieces: angular distance, hard negatives, triplet loss.

Mao, Zhong, Yang, Vondrick & Ray 2019, "Metric Learning for Adversarial Robustness",
arXiv 1904.00887 (NeurIPS 2019); reference code github.com/columbia/
Metric_Learning_Adversarial_Robustness (``utils.py``: ``triplet_loss``).

Embeddings are the outputs of one layer ``f^(k)``, flattened to [N, D].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bastion.errors import InputError


def _flat(u: torch.Tensor) -> torch.Tensor:
    return u.flatten(1) if u.dim() > 1 else u[:, None]


def angular_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``D(u, v) = 1 - |<u, v>| / (||u||_2 ||v||_2)`` per row, in [0, 1].

    The absolute value makes ``u`` and ``-u`` equally close (the paper's choice). A zero
    vector is at distance 1 from everything.

    Shape:
        u [N, ...], v [N, ...] (flattened per example) -> [N].

    Example:
        >>> angular_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([[-2.0, 0.0]]))
        tensor([0.])
    """
    u, v = _flat(u), _flat(v)
    if u.shape != v.shape:
        raise InputError(f"u and v must have the same shape, got {tuple(u.shape)} and "
                         f"{tuple(v.shape)}")
    cos = (F.normalize(u, dim=1, eps=1e-12) * F.normalize(v, dim=1, eps=1e-12)).sum(dim=1)
    return 1.0 - cos.abs()


def pairwise_angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All angular distances between rows: ``out[i, j] = D(a_i, b_j)``, shape [N, M]."""
    a, b = _flat(a), _flat(b)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"a and b must have the same feature size, got {a.shape[1]} and "
                         f"{b.shape[1]}")
    an = F.normalize(a, dim=1, eps=1e-12)
    bn = F.normalize(b, dim=1, eps=1e-12)
    return 1.0 - (an @ bn.T).abs()


@dataclass(frozen=True, eq=False)
class HardNegatives:
    """The hard negative chosen for each anchor by :func:`hardest_negatives`.

    Args:
        index: int64 [N], position in ``candidates`` of each anchor's negative; 0 (and
            meaningless) where ``valid`` is False.
        valid: bool [N], True where some candidate has a class other than the anchor's.
    """

    index: torch.Tensor
    valid: torch.Tensor


def hardest_negatives(
    anchor: torch.Tensor, candidates: torch.Tensor, y_anchor: torch.Tensor,
    y_candidates: torch.Tensor,
) -> HardNegatives:
    """For each anchor, the candidate of another class closest in angular distance.

    TLA's hard-negative mining: the negative of anchor ``a_i`` is
    ``argmin_{j: y_j != y_i} D(a_i, c_j)``. Computed without gradients (the choice is
    discrete). Ties go to the lowest index. (The authors' code ranks candidates by the
    signed cosine; with the post-ReLU embeddings it uses, the two agree.)

    Args:
        anchor: anchor embeddings [N, ...].
        candidates: candidate embeddings [M, ...] (the clean batch in TLA).
        y_anchor: int64 labels [N].
        y_candidates: int64 labels [M].

    Returns:
        :class:`HardNegatives`: ``index``, int64 [N] positions in ``candidates``, and
        ``valid``, a bool [N] mask, False where no candidate has a different class (then
        ``index`` is 0 and meaningless).
    """
    with torch.no_grad():
        d = pairwise_angular_distance(anchor.detach(), candidates.detach())
        same = y_anchor[:, None] == y_candidates[None, :]
        d = d.masked_fill(same, float("inf"))
        best, index = d.min(dim=1)
        valid = torch.isfinite(best)
        index = torch.where(valid, index, torch.zeros_like(index))
    return HardNegatives(index=index, valid=valid)


def triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean_i max(D(p_i, a_i) - D(n_i, a_i) + margin, 0)`` over the valid triplets.

    Mao et al. 2019, "Metric Learning for Adversarial Robustness", arXiv 1904.00887, eq. (2)
    with the angular distance of eq. (3). Triplets with ``valid`` False are left out of the
    mean; with none valid the loss is 0 (still a tensor in the graph).

    Shape:
        anchor, positive, negative [N, ...]; valid [N] bool -> scalar.
    """
    per = F.relu(angular_distance(positive, anchor) - angular_distance(negative, anchor) + margin)
    if valid is None:
        return per.mean()
    w = valid.to(per.dtype)
    return (per * w).sum() / w.sum().clamp_min(1.0)


def embedding_norm_penalty(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """TLA's norm regulariser: the mean squared entry of the three embeddings.

    The paper writes ``||f(x_a)||_2 + ||f(x_p)||_2 + ||f(x_n)||_2``; the authors' code
    (``utils.triplet_loss``: ``reduce_mean(a * a + p * p + n * n)``) penalises
    ``(1 / (N D)) sum_i (||a_i||^2 + ||p_i||^2 + ||n_i||^2)``, which is what this returns so
    that the code's weights carry over. Negatives with ``valid`` False are left out.

    Shape:
        anchor, positive, negative [N, ...] (D entries each); valid [N] -> scalar.
    """
    a, p, n = _flat(anchor), _flat(positive), _flat(negative)
    sq_n = n.pow(2).sum(dim=1)
    if valid is not None:
        sq_n = sq_n * valid.to(sq_n.dtype)
    total = a.pow(2).sum(dim=1) + p.pow(2).sum(dim=1) + sq_n
    return total.mean() / a.shape[1]
